"""Semantic loudness: how large visual tokens are next to text, and the norm fix of Qi et al. 2025.

    with normalize_visual_norms(vlm, mode="rmsclip"):          # the paper's "+Normalize", at inference (w = 1)
        scores = vlm.score_options(images, prompts, options)
    token_norms(vlm, batch)                                     # per-layer L2 norms of image vs text positions
    position_content_norms(vt)                                  # slot-mean ("where") vs residual ("what") parts

The two rules, applied to every visual token y (and to every DeepStack level of Qwen3-VL, by default):

* ``"rmsclip"`` (Qi et al. 2025): y₁ = w ⊙ y / sqrt(mean(y²) + ε) (RMSNorm; at inference w = 1),
  s = min(clip / ‖y₁‖, 1), out = gain · scale · s · y₁. The paper's constants clip = 1.22 and gain = 0.83 are
  LLaVA-1.5's max and mean text-embedding norms, so every visual token ends near norm 1. ``scale`` = 1 is
  the paper; other values give the dose-response sweep.
* ``"target"``: out = target · y / ‖y‖, every visual token rescaled to the same norm. ``target="text"``
  uses the model's mean text-embedding norm (rows of the LM's input embedding table).

The same rules are the training option of the organism (``OrganismConfig.visual_norm``, implemented in
``spatialkit.models.organism.model.Projector``, with a learnable RMSNorm weight); :func:`rms_clip` is the shared math, and a
test checks that the projector computes exactly it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import pandas as pd
import torch

from spatialkit.common.params import check_number
from spatialkit.models.vlm import VLM, Batch, TokenKind, VisualTokens

MODES = ("rmsclip", "target")
PAPER_CLIP, PAPER_GAIN = 1.22, 0.83  # LLaVA-1.5 text-embedding norms: max and mean (Qi et al. 2025)


# -- the math --------------------------------------------------------------------------------------
def rms_clip(y: torch.Tensor, weight: torch.Tensor | None = None, *, clip: float = PAPER_CLIP,
             gain: float = PAPER_GAIN, scale: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """The paper's RMSNorm → clip → scale rule over the last dimension (see module doc)."""
    y1 = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y1 = y1 * weight
    s = (clip / y1.norm(dim=-1, keepdim=True).clamp_min(1e-6)).clamp(max=1.0)
    return gain * scale * s * y1


def rescale_to_norm(y: torch.Tensor, target: float) -> torch.Tensor:
    """Every vector (last dimension) rescaled to L2 norm ``target``; zero vectors stay zero."""
    return target * y / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def text_embedding_norm(vlm: VLM) -> float:
    """Mean L2 norm of the rows of the LM's input embedding table (the "text" norm of the target rule)."""
    table = vlm.input_embeddings().weight
    return float(table.detach().float().norm(dim=-1).mean())


def _positive(name: str, value, high: float = 1e6) -> float:
    return check_number(name, value, 0.0, high, low_open=True)


@contextlib.contextmanager
def normalize_visual_norms(vlm: VLM, mode: str = "rmsclip", *, target: float | str = "text",
                           clip: float = PAPER_CLIP, gain: float = PAPER_GAIN, scale: float = 1.0,
                           eps: float = 1e-6, extras: bool = True) -> Iterator[dict]:
    """Context manager: inside it, every forward of ``vlm`` gets norm-controlled visual tokens.

    ``mode`` "rmsclip" (the paper's rule; ``clip``, ``gain``, ``scale``, ``eps``) or "target" (rescale to
    ``target``, a positive number or "text" = :func:`text_embedding_norm`). ``extras``: apply the same rule
    to DeepStack levels. Yields a dict with the settings actually used (``target`` resolved).
    Arguments are checked before the model is touched; the hook is removed on exit, also on error.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    clip, gain, scale = _positive("clip", clip), _positive("gain", gain), _positive("scale", scale, 1e3)
    eps = _positive("eps", eps, 1.0)
    if mode == "target":
        if target == "text":
            target = text_embedding_norm(vlm)
        else:
            target = _positive("target", target)
    settings = {"mode": mode, "target": target if mode == "target" else None, "clip": clip, "gain": gain,
                "scale": scale, "eps": eps, "extras": bool(extras)}

    def rule(y: torch.Tensor) -> torch.Tensor:
        if mode == "rmsclip":
            return rms_clip(y.float(), clip=clip, gain=gain, scale=scale, eps=eps).to(y.dtype)
        return rescale_to_norm(y.float(), target).to(y.dtype)

    def normalize(vt: VisualTokens) -> VisualTokens:
        return vt.replace(tokens=rule(vt.tokens), extras=[rule(e) for e in vt.extras] if extras else vt.extras)

    with vlm.visual_hook(normalize):
        yield settings


# -- measuring loudness ----------------------------------------------------------------------------
def layer_modules(vlm: VLM) -> torch.nn.ModuleList:
    """The LM decoder layers (``VLM.lm_layers``)."""
    return vlm.lm_layers


def _hidden_of(value) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


@torch.no_grad()
def hidden_states(vlm: VLM, batch: Batch) -> list[torch.Tensor]:
    """[LM input, output of layer 1, ..., output of layer L], each (B, L, d), captured by forward hooks
    on the decoder layers during one ``vlm.logits(batch)`` (active visual hooks apply)."""
    layers = layer_modules(vlm)
    seen: list[torch.Tensor] = []

    def grab_input(module, args, kwargs):
        seen.append(_hidden_of(args[0] if args else kwargs["hidden_states"]).detach())

    def grab_output(module, args, kwargs, output):
        seen.append(_hidden_of(output).detach())

    handles = [layers[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
    handles += [layer.register_forward_hook(grab_output, with_kwargs=True) for layer in layers]
    try:
        vlm.logits(batch)
    finally:
        for h in handles:
            h.remove()
    if len(seen) != len(layers) + 1:
        raise RuntimeError(f"captured {len(seen)} hidden states, expected {len(layers) + 1} (one forward)")
    return seen


KIND_NAMES = {TokenKind.IMAGE: "image", TokenKind.TEXT: "text", TokenKind.SYSTEM: "system"}


def token_norms(vlm: VLM, batch: Batch) -> pd.DataFrame:
    """Per-token L2 norms through the LM, one row per (layer, token): columns layer (0 = LM input), kind
    ("image", "text", "system") and norm. Layer 0 holds the visual tokens as the LM receives them and the
    text embeddings."""
    states = hidden_states(vlm, batch)
    kinds = batch.token_kind.reshape(-1).cpu().numpy()
    keep = kinds != int(TokenKind.PAD)
    names = np.array([KIND_NAMES.get(TokenKind(k), "pad") for k in kinds[keep]])
    frames = []
    for layer, h in enumerate(states):
        norms = h.float().norm(dim=-1).reshape(-1).cpu().numpy()[keep]
        frames.append(pd.DataFrame({"layer": layer, "kind": names, "norm": norms}))
    return pd.concat(frames, ignore_index=True)


def loudness_ratio(norms: pd.DataFrame, image: str = "image", text: str = "text") -> pd.Series:
    """Per layer: mean norm of image tokens / mean norm of text tokens (the paper's "≈10×")."""
    means = norms.groupby(["layer", "kind"])["norm"].mean().unstack()
    return (means[image] / means[text]).rename("image/text")


def position_content_norms(vt: VisualTokens) -> pd.DataFrame:
    """Split visual tokens into a positional and a content part and give each part's per-token norm.

    Over a batch of images of one grid: positional part of slot s = (mean over images of the token at s)
    − (mean over all tokens); content part = token − (mean over images at its slot). The positional part is
    what every image carries at that slot whatever it shows; the content part is what varies with the image.
    token = shared + position + content, where "shared" (the mean of all tokens, one row with slot −1) is what
    every visual token carries. Columns: slot, part ("shared", "position", "content", "total") and norm; needs
    ≥ 2 images of the same grid.
    """
    if len(set(vt.grids)) != 1 or len(vt.grids) < 2:
        raise ValueError(f"position_content_norms needs >= 2 images of one grid, got grids {vt.grids}")
    h, w = vt.grids[0]
    x = vt.tokens.detach().float().cpu().reshape(len(vt.grids), h * w, -1)
    slot_mean = x.mean(0)  # (n, d)
    shared = x.reshape(-1, x.shape[-1]).mean(0)  # what every visual token carries
    position = slot_mean - shared
    content = x - slot_mean
    n = h * w
    rows = [pd.DataFrame({"slot": np.tile(np.arange(n), len(vt.grids)), "part": "content",
                          "norm": content.norm(dim=-1).reshape(-1).numpy()}),
            pd.DataFrame({"slot": np.tile(np.arange(n), len(vt.grids)), "part": "total",
                          "norm": x.norm(dim=-1).reshape(-1).numpy()}),
            pd.DataFrame({"slot": np.arange(n), "part": "position", "norm": position.norm(dim=-1).numpy()}),
            pd.DataFrame({"slot": [-1], "part": "shared", "norm": [float(shared.norm())]})]
    return pd.concat(rows, ignore_index=True)


def loudness_profile(vlm: VLM, batch: Batch) -> pd.DataFrame:
    """Mean per-token L2 norm through the LM (layer 0 = LM input) of five components, one row per
    (layer, component): "image" (visual tokens as they are), "image: shared", "image: position" and
    "image: content" (the :func:`position_content_norms` split of the image positions' hidden states, over the batch's images),
    and "text" (the prompt's text tokens). Every row of ``batch`` must hold one image of the same grid."""
    if len(set(batch.grids)) != 1 or len(batch.grids) < 2:
        raise ValueError(f"loudness_profile needs >= 2 images of one grid, got grids {batch.grids}")
    states = hidden_states(vlm, batch)
    image, text = batch.image_mask, batch.token_kind == TokenKind.TEXT
    rows = []
    for layer, h in enumerate(states):
        h = h.detach().float().cpu()
        split = position_content_norms(VisualTokens(tokens=h[image.cpu()], grids=list(batch.grids)))
        means = split.groupby("part")["norm"].mean()
        rows += [(layer, "image", means["total"]), (layer, "image: shared", means["shared"]),
                 (layer, "image: position", means["position"]), (layer, "image: content", means["content"]),
                 (layer, "text", float(h[text.cpu()].norm(dim=-1).mean()))]
    return pd.DataFrame(rows, columns=["layer", "component", "norm"])
