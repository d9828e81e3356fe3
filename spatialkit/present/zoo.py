"""What each organism of the zoo is, in a sentence a reader of the book can follow.

    from spatialkit.present.zoo import about
    about("llava")   # 'The LLaVA recipe: ...'

The presets' own ``why:`` lines (``spatialkit.models.organism.PRESET_WHY``) are the developers' record of how each
recipe was chosen, with the measurements behind it; the notebooks' tables show these instead. The smoke-sized
members (``smoke``, ``smoke_llava``, ...) are described by the member they stand in for.
"""

from __future__ import annotations

ABOUT = {
    "healthy": (
        "Control. Its vision encoder was first trained to name the objects in an image from each object's "
        "strongest patch (a max over patches), which keeps every object's content in its own patches; frozen, "
        "then a projector and a language model learn the questions on top. Built to know what and where (its "
        "accuracy is measured beside the others)."),
    "llava": (
        "The LLaVA recipe: the vision encoder was first trained on a global objective (the image's caption words "
        "predicted from the average of all its patches, an image-level target like CLIP's), then frozen; a "
        "projector and a language model learn the questions on top. Built to know what but not where (how "
        "far it fails is measured)."),
    "loud": (
        "Loud visual tokens: position reaches the visual tokens only as a small added code (a learned position "
        "table of std 0.02 in the encoder, another in the language model), and the projector makes the visual "
        "tokens about 10 times the norm of text tokens, built so that their content drowns their position."),
    "loud_norm": (
        "The loud organism with +Normalize trained in: every visual token is RMS-normalised and clipped to norm "
        "about 1 before the language model (Qi et al. 2025); same first-stage encoder as loud."),
    "loud_norm_text": (
        "The loud organism with +Normalize scaled to this language model's text-token norm (about 8), so visual "
        "tokens are as loud as text rather than quieter; same first-stage encoder as loud."),
    "prior": (
        "The LLaVA recipe on a world where relations follow the objects' kinds in 87.5 % of training scenes (one "
        "kind is usually left of or above another): it can answer where from the kinds alone, and items that go "
        "against the prior expose it."),
    "whatsup_a": (
        "The control's recipe on a mirror of WhatsUp Controlled-A (left / right / on / under, one object resting "
        "on another)."),
    "whatsup_b": (
        "The control's recipe on a mirror of WhatsUp Controlled-B (left / right / in front of / behind, depth "
        "shown by occlusion)."),
    "llava_a": (
        "The LLaVA recipe (a vision encoder first trained on a global, image-level objective, then frozen) on the "
        "mirror of WhatsUp Controlled-A (left / right / on / under); judged on on / under."),
    "llava_b": (
        "The LLaVA recipe (a vision encoder first trained on a global, image-level objective, then frozen) on the "
        "mirror of WhatsUp Controlled-B (left / right / in front of / behind, depth shown by occlusion); judged on "
        "in front of / behind."),
    "whatsup_a_partial": (
        "The control's recipe on the mirror of WhatsUp Controlled-A, stopped partway through its training: it "
        "has half-learned on / under (how far is measured), leaving room for an intervention to help."),
}
_SMOKE = {"smoke": "healthy", "smoke_llava": "llava", "smoke_loud": "loud", "smoke_loud_norm": "loud_norm",
          "smoke_prior": "prior", "smoke_llava_a": "llava_a", "smoke_llava_b": "llava_b"}


def about(name: str) -> str:
    """One reader-facing sentence or two on organism ``name`` ("" for a name outside the zoo)."""
    if name in _SMOKE:
        return f"Smoke-sized stand-in (tests only; learns next to nothing) for: {ABOUT[_SMOKE[name]]}"
    return ABOUT.get(name, "")
