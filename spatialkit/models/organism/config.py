"""Training the model organism: config, presets, a pre-rendered example pool, and a seeded trainer.

    cfg = preset("quick", spatial_fraction=0.0)     # OrganismConfig (validated)
    model, vocab, metrics = train(cfg)               # deterministic on CPU for a given config

Examples come from the scene world (``spatialkit.world``): per training scene a caption, and its WhereBench
"what" and "where" questions. ``spatial_fraction`` is the share of each batch drawn from the where-questions
(0 = the "global caption / what only" regime the blog blames), ``caption_fraction`` the share of captions,
the rest are what-questions. A fixed system prompt is prepended to ``system_prompt_fraction`` of the batches.

Two stages when ``vision_pretrain_steps`` > 0 (the presets): first the vision encoder alone learns which
content words each image's caption contains (``pretrain_vision``; cached and shared between organisms that
differ only later), then the VQA stage below, with the encoder frozen when ``vision_lr_scale`` is 0.
With ``packed`` an image's questions share one LM row (``assemble_packed``), computed exactly as if alone.

Sequence layout (``TokenKind`` per position): [system words?] [<img> x N] [prompt words] <ans> [answer] <eos>;
the loss is next-token cross-entropy on the answer words and <eos> only.
"""

from __future__ import annotations
import dataclasses
from dataclasses import dataclass, fields
from spatialkit.models.organism.model import ModelConfig
from spatialkit.models.organism.data import FAMILIES, max_sequence_length  # noqa: F401  (FAMILIES re-exported)





@dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines a trained organism (its hash keys the checkpoint store)."""

    # model
    image_size: int = 48
    patch_size: int = 8
    vision_dim: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_posenc: str = "sincos2d"
    vision_stem: str = "conv"  # "linear" (plain ViT patchify) | "conv" (two 3x3 stride-2 convs, then patchify)
    # LayerNorm on the patch embeddings before the APE is added: content then has norm sqrt(d), comparable to the
    # sincos table's sqrt(d/2). Without it the position code is ~5x louder than content and colours/kinds are
    # learned several times slower (measured with a probe; see the organism notebook).
    vision_embed_norm: bool = True
    lm_dim: int = 64
    lm_layers: int = 2
    lm_heads: int = 4
    lm_posenc: str = "rope1d"
    lm_attention: str = "causal"  # "causal" (LLaVA / Qwen-VL) | "prefix" (PaliGemma: image + prompt see each other)
    visual_norm: str = "none"  # "none" | "rmsclip" (Qi et al.'s +Normalize) | "target"
    visual_norm_scale: float = 1.0
    loc_grid: int = 4  # coordinate tokens loc0 .. loc{loc_grid^2 - 1} in the vocabulary (unused by default)
    # data
    scene_preset: str = "organism"  # a spatialkit.world.PRESETS name (image_size is taken from this config)
    bench_seed: int = 0  # WhereBench seed: training scenes come from its train seeds, never from val/test
    n_train_scenes: int = 4000
    n_val: int = 300
    n_test: int = 1000
    spatial_fraction: float = 0.5
    caption_fraction: float = 0.1
    system_prompt_fraction: float = 0.25
    # stage 1 (0 = off): pretrain the vision encoder alone on an image-level objective (which content words the
    # image's caption contains, from per-patch word logits pooled over the patches) before the VQA stage, as
    # real VLMs start from a CLIP encoder trained on a global objective. Nothing in its target says where
    # anything is.
    vision_pretrain_steps: int = 0
    # how stage 1 pools the per-patch word logits into image-level ones: "max" (multiple-instance learning: a
    # word is in the caption if some patch shows it, so each patch learns to describe what *it* covers) or
    # "mean" (of the patch tokens, then a linear head: CLIP-like global pooling)
    vision_pretrain_pool: str = "max"
    # the vision encoder's learning rate in the VQA stage, relative to ``lr`` (0 = frozen, as in LLaVA's stage 1)
    vision_lr_scale: float = 1.0
    # optimisation
    steps: int = 3000
    batch_size: int = 128
    # questions drawn per sampled scene: the batch holds batch_size / examples_per_image distinct images and the
    # vision encoder runs once per image (a step costs less; same number of supervised answers)
    examples_per_image: int = 1
    # pack an image's questions into one LM row, [system?][image][q1 <ans> a1 <eos>][q2 ...]...: each question
    # sees the image and itself only (a block mask) at the positions it would have alone, so every question is
    # computed exactly as in its own row, and the image's tokens pass through the LM once, not once per question
    packed: bool = False
    lr: float = 1e-3  # peak of the one-cycle schedule
    lr_schedule: str = "onecycle"  # "onecycle" | "constant"
    warmup_frac: float = 0.2
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # bookkeeping
    seed: int = 0
    eval_every: int = 250
    target: float | None = 0.97  # stop early once every trained family reaches this val accuracy

    def __post_init__(self):
        validate(self)

    def replace(self, **changes) -> "OrganismConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OrganismConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown OrganismConfig fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size // self.patch_size,) * 2

    def model_config(self, vocab_size: int) -> ModelConfig:
        names = {f.name for f in fields(ModelConfig)}
        return ModelConfig(vocab_size=vocab_size, max_len=max_sequence_length(self),
                           **{k: v for k, v in self.to_dict().items() if k in names and k != "max_len"})


def _check_int(cfg, name, low, high):
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ValueError(f"OrganismConfig.{name} must be an int in [{low}, {high}], got {v!r}")


def _check_float(cfg, name, low, high):
    v = getattr(cfg, name)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not low <= v <= high:
        raise ValueError(f"OrganismConfig.{name} must be a number in [{low}, {high}], got {v!r}")


def _check_choice(cfg, name, choices):
    v = getattr(cfg, name)
    if v not in choices:
        raise ValueError(f"OrganismConfig.{name} must be one of {tuple(choices)}, got {v!r}")


def validate(cfg: OrganismConfig) -> None:
    """ValueError naming the field and its allowed range for the first bad value."""
    from spatialkit.models.organism.model import LM_POSENCS, VISION_POSENCS

    for name, low, high in [("image_size", 16, 512), ("patch_size", 2, 64), ("vision_dim", 8, 1024),
                            ("vision_layers", 1, 24), ("vision_heads", 1, 32), ("lm_dim", 8, 1024),
                            ("lm_layers", 1, 24), ("lm_heads", 1, 32), ("loc_grid", 1, 32),
                            ("n_train_scenes", 10, 1_000_000), ("n_val", 10, 100_000), ("n_test", 10, 100_000),
                            ("steps", 1, 10_000_000), ("vision_pretrain_steps", 0, 10_000_000), ("batch_size", 1, 65_536),
                            ("examples_per_image", 1, 64), ("seed", 0, 2**31 - 1),
                            ("eval_every", 1, 10_000_000)]:
        _check_int(cfg, name, low, high)
    for name, low, high in [("spatial_fraction", 0.0, 1.0), ("caption_fraction", 0.0, 1.0),
                            ("system_prompt_fraction", 0.0, 1.0), ("lr", 1e-6, 1.0), ("warmup_frac", 0.0, 0.9),
                            ("weight_decay", 0.0, 1.0), ("vision_lr_scale", 0.0, 10.0), ("grad_clip", 0.0, 1e6), ("visual_norm_scale", 1e-3, 1e3)]:
        _check_float(cfg, name, low, high)
    _check_choice(cfg, "vision_posenc", VISION_POSENCS)
    _check_choice(cfg, "vision_stem", ("linear", "conv"))
    if not isinstance(cfg.vision_embed_norm, bool):
        raise ValueError(f"OrganismConfig.vision_embed_norm must be True or False, got {cfg.vision_embed_norm!r}")
    _check_choice(cfg, "lm_posenc", LM_POSENCS)
    _check_choice(cfg, "lm_attention", ("causal", "prefix"))
    _check_choice(cfg, "vision_pretrain_pool", ("max", "mean"))
    _check_choice(cfg, "visual_norm", ("none", "rmsclip", "target"))
    from spatialkit import world as scenes

    _check_choice(cfg, "scene_preset", tuple(scenes.PRESETS))
    _check_int(cfg, "bench_seed", 0, 2**31 - 1)
    _check_choice(cfg, "lr_schedule", ("onecycle", "constant"))
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"OrganismConfig.image_size ({cfg.image_size}) must be a multiple of patch_size ({cfg.patch_size})")
    if cfg.vision_stem == "conv" and cfg.patch_size % 4:
        raise ValueError(f"OrganismConfig.patch_size ({cfg.patch_size}) must be a multiple of 4 with vision_stem='conv'")
    for dim, heads in (("vision_dim", "vision_heads"), ("lm_dim", "lm_heads")):
        d, h = getattr(cfg, dim), getattr(cfg, heads)
        if d % h or (d // h) % 4:
            raise ValueError(f"OrganismConfig.{dim} ({d}) must be divisible by {heads} ({h}) with a head size "
                             "that is a multiple of 4 (2D rotary encodings)")
    if not isinstance(cfg.packed, bool):
        raise ValueError(f"OrganismConfig.packed must be True or False, got {cfg.packed!r}")
    if cfg.packed and cfg.lm_attention == "prefix":
        raise ValueError("OrganismConfig.packed=True needs lm_attention='causal' (a prefix-LM's image tokens see the "
                         "question, so questions sharing an image cannot share its tokens)")
    if cfg.spatial_fraction + cfg.caption_fraction > 1.0 + 1e-9:
        raise ValueError(f"OrganismConfig.spatial_fraction + caption_fraction must be <= 1, got "
                         f"{cfg.spatial_fraction} + {cfg.caption_fraction}")
    if cfg.target is not None:
        _check_float(cfg, "target", 0.0, 1.0)


# Named presets (measured with benchmarks/bench_organism.py; see the README's performance section).
# All train on the "organism_easy" scene world (5 kinds x 4 colours, larger sprites, one background), in two
# stages like LLaVA: (1) the ViT alone learns which caption words each image has (max-pooled per-patch logits,
# 2000 steps), (2) it is frozen and the projector + LM learn the questions, 4 questions per image packed into
# one LM row. What made the difference (issue 3): the LM's fan-in init (the 0.02 init kept it on a plateau), the
# stage-1 encoder (kinds were learned ~10x slower through the LM), max- rather than mean-pooling in stage 1
# (mean-pooled features spread "there is a car" over every patch: two-object where 0.30, chance 0.25, with the
# encoder frozen), and drawing an image's questions without replacement. Colour -- which object has which colour --
# is learned last (a late jump after ~2000 steps).
# "default": 5000 steps (early stop at 97% val); "quick": 2000 steps (the notebooks' organism); "smoke": seconds.
_EASY = dict(scene_preset="organism_easy", vision_stem="linear", n_train_scenes=8000, vision_pretrain_steps=2000,
             vision_lr_scale=0.0, packed=True, examples_per_image=4, batch_size=64)


PRESETS: dict[str, dict] = {
    "default": dict(_EASY, steps=5000, eval_every=500),
    "quick": dict(_EASY, steps=2000, n_val=200, n_test=400, eval_every=500, target=0.95),
    "smoke": dict(steps=20, batch_size=16, n_train_scenes=60, n_val=30, n_test=30, eval_every=10,
                  vision_layers=1, lm_layers=1, vision_dim=32, lm_dim=32, target=None, examples_per_image=2,
                  vision_pretrain_steps=4, vision_lr_scale=0.0, packed=True),
}


def preset(name: str = "default", **overrides) -> OrganismConfig:
    """The named preset with ``overrides`` applied (validated)."""
    if name not in PRESETS:
        raise ValueError(f"organism preset must be one of {tuple(PRESETS)}, got {name!r}")
    return OrganismConfig(**{**PRESETS[name], **overrides})
