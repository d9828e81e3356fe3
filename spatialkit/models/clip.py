"""Tiny CLIP and tiny CLOC, trained from scratch on the procedural scene world.

CLOC (Chen et al., Apple, ICML 2025, "Contrastive Localized Language-Image Pre-training") has no public
code; this module implements it from the paper's description (Chen et al., ICML 2025) at toy scale:

    L = L_CLIP + lam * (L_CLOC + L_grounding)

- ``L_CLIP``: symmetric InfoNCE between image and caption embeddings, learnable temperature.
- ``L_CLOC``: symmetric InfoNCE between *region* embeddings (the Prompter, prompted with a box) and their
  region captions; negatives = every region caption in the batch, minus near-duplicates of the positive.
- ``L_grounding``: the Prompter prompted with a region caption's text embedding; a 2-layer GELU MLP
  regresses that region's box (L2 loss on the corners, in patch units).

Design choices the paper leaves open, decided here (and said again in notebook 05):

- **Near-duplicate filtering** ("drop negatives whose captions have cosine > 0.9"): the cosine is taken
  between *bag-of-words count vectors* of the captions, not between embeddings of the text encoder being
  trained. CLOC had a pretrained text encoder to measure similarity with; ours starts random, so its
  cosines would be noise early in training and would change from step to step. For the short templated
  captions of the scene world, word-count cosine > 0.9 means "the same words" (e.g. exact duplicates, or
  the same words in another order): "a red chick with a purple ribbon" vs "... a blue ribbon" has cosine
  8/9 = 0.889 and stays a negative.
- **Pooling**: the image embedding is the projection of the *mean* of the final patch tokens (no CLS
  token), so the RoI baseline (area-weighted mean of patch tokens inside a box, through the same
  projection) is the exact region analogue of the global embedding. The Prompter's "pool" reads the
  output at the prompt position (the prompt token attends to every patch).
- **Box prompt**: each normalized corner coordinate gets sin/cos features at octave frequencies
  (2^k * pi), then a learned linear layer maps the encoding to the model width. The same encoding of
  each patch's own cell is added to the patch tokens inside the Prompter (``CLIPConfig.prompter_pos``,
  on by default; like SAM's dense positional encoding), so boxes and patches share one coordinate
  system. The ViT's patch tokens already carry learned positions, so this is a convenience (a short
  check at 300 steps saw no clear change in the region score); set it False for the bare design.
- **Grounding loss units**: squared L2 distance between the predicted and true corner 4-vectors,
  measured in *patch units* (a one-patch error on one corner coordinate costs 1). The paper does not give
  the units; in image fractions the loss is ~64x smaller (8x8 patches), the clipped gradient is then
  dominated by the two InfoNCE terms and, in our short runs, the box head never got past predicting the
  average box. Patch units keep the three terms on comparable scales.
- **RoI ablation**: region embeddings = projection of RoI-pooled patch tokens (no Prompter). Without a
  Prompter there is nothing to prompt with a caption, so this variant trains L_CLIP + lam * L_CLOC only.

Every attention uses ``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialkit.common import checkpoints
from spatialkit.common.boxes import box_iou
from spatialkit.common.fingerprint import fingerprint
from tqdm.auto import tqdm
from spatialkit import world as S
import hashlib
import time
from dataclasses import asdict
import pandas as pd
from spatialkit.common.stats import bootstrap_ci
from spatialkit.common.stats import bootstrap_diff_ci

REGION_HEADS = ("none", "prompter", "roi", "roi_ground")


# --------------------------------------------------------------------------------------------------
# Word-level tokenizer
# --------------------------------------------------------------------------------------------------

PAD, UNK, CLS = "<pad>", "<unk>", "<cls>"


def words(text: str) -> list[str]:
    """Lower-case words of a caption (punctuation dropped)."""
    return re.findall(r"[a-z0-9]+", text.lower())


@dataclass(frozen=True)
class WordTokenizer:
    """Word-level vocabulary: id 0 = <pad>, 1 = <unk>, 2 = <cls> (prepended; the text encoder pools it)."""

    vocab: tuple[str, ...]

    @classmethod
    def from_texts(cls, texts: Sequence[str]) -> "WordTokenizer":
        found = sorted({w for t in texts for w in words(t)})
        return cls((PAD, UNK, CLS, *found))

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str], max_len: int) -> torch.Tensor:
        """(N, max_len) long tensor: <cls> w1 w2 ... <pad>...; longer captions are truncated."""
        index = self.index
        out = torch.zeros(len(texts), max_len, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [index[CLS]] + [index.get(w, index[UNK]) for w in words(text)]
            ids = ids[:max_len]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: torch.Tensor) -> str:
        return " ".join(self.vocab[i] for i in ids.tolist() if i > 2 or i == 1)


# --------------------------------------------------------------------------------------------------
# Losses and the near-duplicate filter
# --------------------------------------------------------------------------------------------------


def info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float, drop: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE for pairs (a_i, b_i); ``a``, ``b`` are (N, d) and L2-normalized.

    ``drop[i, j]`` True removes b_j as a negative of a_i (and a_i as a negative of b_j); the diagonal
    (the positives) is never dropped.
    """
    logits = logit_scale * a @ b.T
    if drop is not None:
        drop = drop & ~torch.eye(len(a), dtype=torch.bool, device=a.device)
        logits = logits.masked_fill(drop, float("-inf"))
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def duplicate_mask(features: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, N) bool: True where rows i != j have cosine similarity strictly above ``threshold``."""
    unit = F.normalize(features.float(), dim=-1)
    similar = unit @ unit.T > threshold
    return similar & ~torch.eye(len(features), dtype=torch.bool, device=features.device)


def bag_of_words(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(N, L) token ids -> (N, vocab_size) word counts, ignoring <pad> and <cls>."""
    counts = torch.zeros(len(ids), vocab_size, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=counts.dtype))
    counts[:, 0] = 0  # <pad>
    counts[:, 2] = 0  # <cls>
    return counts


# --------------------------------------------------------------------------------------------------
# Box geometry: sinusoidal encoding, RoI pooling weights, IoU
# --------------------------------------------------------------------------------------------------


def box_encoding(boxes: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of boxes (..., 4) = normalized (x0, y0, x1, y1) in [0, 1] -> (..., dim).

    Each coordinate c gets [sin(2^k pi c), cos(2^k pi c)] for k = 0 .. dim/8 - 1, concatenated in
    the order x0, y0, x1, y1 (the two corners). Octave frequencies resolve ~1/2^(dim/8) of the image.
    """
    if dim % 8:
        raise ValueError(f"box_encoding needs dim divisible by 8, got {dim}")
    n_freq = dim // 8
    freqs = math.pi * 2.0 ** torch.arange(n_freq, device=boxes.device, dtype=boxes.dtype)
    angles = boxes[..., :, None] * freqs  # (..., 4, n_freq)
    enc = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., 4, 2 * n_freq)
    return enc.flatten(-2)


def cell_boxes(grid: int) -> torch.Tensor:
    """(grid*grid, 4) normalized boxes of the patch cells, row-major (the ViT's patch order)."""
    i, j = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    i, j = i.flatten().float(), j.flatten().float()
    return torch.stack([j, i, j + 1, i + 1], dim=1) / grid


def roi_weights(boxes: torch.Tensor, grid: int) -> torch.Tensor:
    """(R, 4) normalized boxes -> (R, grid*grid) weights: each patch's overlap area with the box, summing to 1.

    Average RoI pooling over the patch grid (the toy analogue of RoI-Align); a box smaller than a patch
    still gets the patches it touches.
    """
    edges = torch.arange(grid + 1, device=boxes.device, dtype=boxes.dtype) / grid
    lo, hi = edges[:-1], edges[1:]

    def overlap(a0, a1):  # (R,) -> (R, grid)
        return (torch.minimum(a1[:, None], hi) - torch.maximum(a0[:, None], lo)).clamp(min=0)

    ox, oy = overlap(boxes[:, 0], boxes[:, 2]), overlap(boxes[:, 1], boxes[:, 3])
    w = (oy[:, :, None] * ox[:, None, :]).flatten(1)  # row-major patches: y first, then x
    return w / w.sum(1, keepdim=True).clamp(min=1e-12)


# --------------------------------------------------------------------------------------------------
# Transformer pieces (pre-LN, fused attention)
# --------------------------------------------------------------------------------------------------


class CLIPBlock(nn.Module):
    """Pre-LN transformer encoder block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """``pad`` (B, T) True marks padding keys that nobody may attend to."""
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if pad is None else ~pad[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln2(x))


class ImageEncoder(nn.Module):
    """A small ViT: conv patch embedding + learned positions + blocks. Returns the final patch tokens."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.grid = image_size // patch_size
        self.patch = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.pos = nn.Parameter(0.02 * torch.randn(self.grid * self.grid, width))
        self.blocks = nn.ModuleList(CLIPBlock(width, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, grid*grid, width), row-major patch order."""
        x = self.patch(images * 2 - 1).flatten(2).transpose(1, 2) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.ln(x)


class TextEncoder(nn.Module):
    """Word embeddings + learned positions + blocks (bidirectional, padding masked); pools the <cls> token."""

    def __init__(self, vocab_size: int, max_len: int, width: int, depth: int, heads: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(0.02 * torch.randn(max_len, width))
        self.blocks = nn.ModuleList(CLIPBlock(width, heads) for _ in range(depth))
        self.ln = nn.LayerNorm(width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pad = ids == 0
        x = self.tok(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, pad)
        return self.ln(x[:, 0])


class Prompter(nn.Module):
    """CLOC's Prompter: one single-head encoder layer over [prompt; patch tokens], read at the prompt.

    Only the prompt position's output is used, so only its query is computed: the result equals running
    the whole layer on [prompt; patches] and reading position 0 (tests check this), at a fraction of the
    cost. The patches' keys and values depend only on the image, so they are computed once per image and
    shared by all of that image's regions.
    """

    def __init__(self, width: int):
        super().__init__()
        self.layer = CLIPBlock(width, heads=1)
        self.ln = nn.LayerNorm(width)

    def forward(self, prompt: torch.Tensor, patches: torch.Tensor, owner: torch.Tensor,
                patch_pos: torch.Tensor | None = None) -> torch.Tensor:
        """prompt (R, width); patches (B, P, width); owner (R,) = the image of each prompt -> (R, width).

        ``patch_pos`` (P, width), if given, is added to the patch tokens (a positional encoding in the
        prompt's coordinate system)."""
        layer, width = self.layer, prompt.shape[-1]
        if patch_pos is not None:
            patches = patches + patch_pos
        q, k_prompt, v_prompt = layer.qkv(layer.ln1(prompt)).split(width, dim=-1)
        k_patch, v_patch = layer.qkv(layer.ln1(patches))[..., width:].split(width, dim=-1)
        k = torch.cat([k_prompt[:, None], k_patch[owner]], dim=1)  # (R, 1 + P, width)
        v = torch.cat([v_prompt[:, None], v_patch[owner]], dim=1)
        y = F.scaled_dot_product_attention(q[:, None, None], k[:, None], v[:, None])  # one head, one query
        x = prompt + layer.proj(y.reshape(-1, width))
        x = x + layer.mlp(layer.ln2(x))
        return self.ln(x)


# --------------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CLIPConfig:
    vocab_size: int
    image_size: int = 64
    patch_size: int = 8
    width: int = 64
    depth: int = 2
    heads: int = 4
    text_depth: int = 2
    max_text_len: int = 16
    embed_dim: int = 64
    # "none" = CLIP, "prompter" = CLOC, "roi" = CLOC with RoI pooling and no grounding loss (no Prompter to
    # ground with), "roi_ground" = CLOC with RoI pooling (through the image projection) whose Prompter serves the
    # grounding loss only: the same losses and initial weights as "prompter", another region head (the paper's
    # Prompter-vs-RoI-Align ablation)
    region_head: str = "none"
    prompter_pos: bool = True  # add the box encoding of each patch's cell to the patches the Prompter sees

    def __post_init__(self):
        if self.region_head not in REGION_HEADS:
            raise ValueError(f"region_head must be one of {REGION_HEADS}, got {self.region_head!r}")


class TinyCLIP(nn.Module):
    """CLIP (region_head="none") and CLOC (region_head="prompter", "roi" or "roi_ground") in one readable class.

    The CLIP parts are built first, so under the same torch seed a CLOC model starts from exactly the
    CLIP model's initial weights plus its own extra modules.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ImageEncoder(cfg.image_size, cfg.patch_size, cfg.width, cfg.depth, cfg.heads)
        self.text = TextEncoder(cfg.vocab_size, cfg.max_text_len, cfg.width, cfg.text_depth, cfg.heads)
        self.image_proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        if cfg.region_head in ("prompter", "roi_ground"):  # the same modules, built in the same order: one init
            self.box_prompt = nn.Linear(cfg.width, cfg.width)  # sinusoidal box encoding -> prompt token
            self.text_prompt = nn.Linear(cfg.embed_dim, cfg.width)  # caption embedding -> prompt token
            self.prompter = Prompter(cfg.width)
            self.region_proj = nn.Linear(cfg.width, cfg.embed_dim, bias=False)
            self.box_head = nn.Sequential(nn.Linear(cfg.width, cfg.width), nn.GELU(), nn.Linear(cfg.width, 4))

    @property
    def has_regions(self) -> bool:
        return self.cfg.region_head != "none"

    @property
    def has_grounding(self) -> bool:
        return self.cfg.region_head in ("prompter", "roi_ground")

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()  # CLIP caps the logit scale at 100

    # -- embeddings (all L2-normalized) --
    def patches(self, images: torch.Tensor) -> torch.Tensor:
        return self.image(images)

    def embed_image(self, patches: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(patches.mean(1)), dim=-1)

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids[:, : max(1, int((ids != 0).sum(1).max()))]  # drop all-padding columns: same result, less work
        return F.normalize(self.text_proj(self.text(ids)), dim=-1)

    def embed_regions(self, patches: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor, how: str | None = None) -> torch.Tensor:
        """Region embeddings for boxes (R, 4) on images ``patches`` (B, P, width); ``owner`` (R,) = image of each box.

        ``how``: "prompter" or "roi"; default = the model's own region head. CLIP and "roi_ground" use "roi".
        """
        how = how or ("prompter" if self.cfg.region_head == "prompter" else "roi")
        if how == "prompter":
            prompt = self.box_prompt(box_encoding(boxes, self.cfg.width))
            return F.normalize(self.region_proj(self.prompter(prompt, patches, owner, self.patch_pos())), dim=-1)
        if how == "roi":
            pooled = torch.einsum("rp,rpc->rc", roi_weights(boxes, self.image.grid), patches[owner])
            return F.normalize(self.image_proj(pooled), dim=-1)
        raise ValueError(f"unknown region embedding {how!r}; use 'prompter' or 'roi'")

    def patch_pos(self) -> torch.Tensor | None:
        """Each patch cell encoded like a box prompt (same sinusoids, same linear layer), so box prompts and
        patches share one coordinate system (as SAM's prompt encoder does for its image embedding)."""
        if not self.cfg.prompter_pos:
            return None
        cells = cell_boxes(self.image.grid).to(self.box_prompt.weight.device)
        return self.box_prompt(box_encoding(cells, self.cfg.width))

    def ground(self, patches: torch.Tensor, text_emb: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """Caption-prompted Prompter -> 2-layer GELU MLP -> box (R, 4) in [0, 1]."""
        hidden = self.prompter(self.text_prompt(text_emb), patches, owner, self.patch_pos())
        return torch.sigmoid(self.box_head(hidden))

    # -- the training objective --
    def losses(self, batch: dict, lam: float, dup_threshold: float) -> dict[str, torch.Tensor]:
        """L = L_CLIP + lam * (L_CLOC + L_grounding); returns every term and ``total``."""
        patches = self.patches(batch["images"])
        img, txt = self.embed_image(patches), self.embed_text(batch["caption_ids"])
        out = {"clip": info_nce(img, txt, self.scale())}
        total = out["clip"]
        if self.has_regions:
            owner, slot = batch["region_valid"].nonzero(as_tuple=True)  # flatten the regions of the batch
            boxes, ids = batch["region_boxes"][owner, slot], batch["region_ids"][owner, slot]
            reg = self.embed_regions(patches, boxes, owner)
            reg_txt = self.embed_text(ids)
            drop = duplicate_mask(bag_of_words(ids, self.cfg.vocab_size), dup_threshold)
            out["cloc"] = info_nce(reg, reg_txt, self.scale(), drop)
            extra = out["cloc"]
            if self.has_grounding:
                # L2 loss: squared distance between predicted and true corners, in patch units (see docstring)
                error = (self.ground(patches, reg_txt, owner) - boxes) * self.image.grid
                out["grounding"] = error.pow(2).sum(-1).mean()
                extra = extra + out["grounding"]
            total = total + lam * extra
        out["total"] = total
        return out


# --------------------------------------------------------------------------------------------------
# Data: scenes -> tensors
# --------------------------------------------------------------------------------------------------


@dataclass
class SceneTextData:
    """A fixed set of rendered scenes as tensors, with captions, region boxes and region captions."""

    images: torch.Tensor  # (N, 3, H, W) float in [0, 1]
    caption_ids: torch.Tensor  # (N, L)
    region_boxes: torch.Tensor  # (N, M, 4) normalized x0, y0, x1, y1
    region_ids: torch.Tensor  # (N, M, L)
    region_valid: torch.Tensor  # (N, M) bool
    captions: list[str]
    region_captions: list[list[str]]  # per image, the valid regions' captions
    region_kinds: list[list[str]]
    region_colors: list[list[str]]
    seeds: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, index: torch.Tensor, device: str = "cpu") -> dict:
        keys = ("images", "caption_ids", "region_boxes", "region_ids", "region_valid")
        return {k: getattr(self, k)[index].to(device) for k in keys}

    def regions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(owner image index, slot) of every valid region, in image order."""
        return self.region_valid.nonzero(as_tuple=True)


CAPTION_ORDERS = ("canonical", "left_to_right")


def global_caption(scene, order: str = "canonical") -> str:
    """The image-level caption CLIP is trained on: every object's region caption, joined like ``Scene.caption``.

    ``order`` "canonical" sorts the region captions alphabetically (by kind, then colour, ...), so the text
    says *what* is in the image and nothing about *where*: two scenes with the same objects get the same
    caption whatever their layout. "left_to_right" is ``Scene.caption`` (objects from left to right), which
    would hand a "global" objective horizontal-order supervision through the word order.
    """
    if order == "left_to_right":
        return scene.caption()
    if order != "canonical":
        raise ValueError(f"caption order must be one of {CAPTION_ORDERS}, got {order!r}")
    parts = sorted(scene.region_caption(i) for i in range(len(scene.objects)))
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def scene_texts(scenes) -> list[str]:
    """Every caption and region caption of some scenes (to build a vocabulary)."""
    out = []
    for s in scenes:
        out.append(s.caption())
        out.extend(s.region_caption(i) for i in range(len(s.objects)))
    return out


def pick_regions(scene, max_regions: int, rng: np.random.Generator) -> list[int]:
    """Up to ``max_regions`` object indices of a scene, chosen at random (all of them if fewer)."""
    n = len(scene.objects)
    order = rng.permutation(n)[: min(n, max_regions)]
    return sorted(int(i) for i in order)


def scenes_to_data(images: np.ndarray, scenes, tokenizer: WordTokenizer, *, max_regions: int, max_text_len: int, seed: int,
                   caption_order: str = "canonical") -> SceneTextData:
    """Tensors for training/evaluation. ``images`` (N, H, W, 3) uint8 as from ``render_batch``; the global
    captions are ``global_caption(scene, caption_order)`` (order-free by default)."""
    N = len(scenes)
    H, W = images.shape[1:3]
    rng = np.random.default_rng(seed)
    boxes = torch.zeros(N, max_regions, 4)
    valid = torch.zeros(N, max_regions, dtype=torch.bool)
    region_ids = torch.zeros(N, max_regions, max_text_len, dtype=torch.long)
    region_captions, region_kinds, region_colors = [], [], []
    for n, scene in enumerate(scenes):
        chosen = pick_regions(scene, max_regions, rng)
        caps = [scene.region_caption(i) for i in chosen]
        region_captions.append(caps)
        region_kinds.append([scene.objects[i].kind for i in chosen])
        region_colors.append([scene.objects[i].color for i in chosen])
        for m, i in enumerate(chosen):
            x0, y0, x1, y1 = scene.objects[i].box
            # clip to the image (the contract's box is the full extent, which may leave the canvas)
            boxes[n, m] = torch.tensor([max(x0, 0) / W, max(y0, 0) / H, min(x1, W) / W, min(y1, H) / H])
            valid[n, m] = True
        if caps:
            region_ids[n, : len(caps)] = tokenizer.encode(caps, max_text_len)
    captions = [global_caption(s, caption_order) for s in scenes]
    return SceneTextData(
        images=torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0,
        caption_ids=tokenizer.encode(captions, max_text_len),
        region_boxes=boxes, region_ids=region_ids, region_valid=valid,
        captions=captions, region_captions=region_captions,
        region_kinds=region_kinds, region_colors=region_colors,
        seeds=[int(s.seed) for s in scenes],
    )


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.1  # fraction of steps with a linear warm-up, then cosine decay
    lam: float = 1.0
    dup_threshold: float = 0.9


def build_model(cfg: CLIPConfig, seed: int) -> TinyCLIP:
    torch.manual_seed(seed)
    return TinyCLIP(cfg)


def train(model: TinyCLIP, data: SceneTextData, tc: TrainConfig, *, seed: int, device: str = "cpu", progress: bool = False) -> list[dict]:
    """AdamW with warm-up + cosine decay. The batch order depends on ``seed`` only, so CLIP and CLOC
    trained with the same seed see exactly the same images in the same order. Returns per-step losses."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    warm = max(1, int(tc.warmup * tc.steps))

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, tc.steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    order = torch.Generator().manual_seed(seed)
    history = []
    steps = range(tc.steps)
    if progress:

        steps = tqdm(steps, desc=f"train {model.cfg.region_head if model.has_regions else 'clip'}", leave=False)
    for step in steps:
        index = torch.randperm(len(data), generator=order)[: tc.batch_size]
        losses = model.losses(data.batch(index, device), tc.lam, tc.dup_threshold)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append({"step": step, **{k: v.item() for k, v in losses.items()}})
    model.eval()
    return history


# --------------------------------------------------------------------------------------------------
# Evaluation (every metric per item, so the notebook can bootstrap over items)
# --------------------------------------------------------------------------------------------------


def hits_at_k(sim: torch.Tensor, correct: torch.Tensor, k: int) -> np.ndarray:
    """Per query (row): 1 if any of the top-k candidates is correct. ``correct`` (Q, C) bool.

    Correctness is by caption *string*, so identical captions of different scenes are all correct
    answers (otherwise R@1 would be capped by chance among duplicates).
    """
    top = sim.topk(min(k, sim.shape[1]), dim=1).indices
    return correct.gather(1, top).any(1).float().numpy()


def same_string(a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
    codes = {s: i for i, s in enumerate(sorted(set(a) | set(b)))}
    ca = torch.tensor([codes[s] for s in a])
    cb = torch.tensor([codes[s] for s in b])
    return ca[:, None] == cb[None, :]


@torch.no_grad()
def encode_data(model: TinyCLIP, data: SceneTextData, device: str = "cpu", chunk: int = 256) -> dict:
    """Patch tokens, image embeddings and caption embeddings of a whole data set (in chunks)."""
    model.eval().to(device)
    patches, img, txt = [], [], []
    for lo in range(0, len(data), chunk):
        b = data.batch(torch.arange(lo, min(lo + chunk, len(data))), device)
        p = model.patches(b["images"])
        patches.append(p.cpu())
        img.append(model.embed_image(p).cpu())
        txt.append(model.embed_text(b["caption_ids"]).cpu())
    return {"patches": torch.cat(patches), "image": torch.cat(img), "text": torch.cat(txt)}


@torch.no_grad()
def evaluate_clip(model: TinyCLIP, data: SceneTextData, tokenizer: WordTokenizer, *, kinds: Sequence[str], colors: Sequence[str],
                  names: dict[str, str] | None = None, region_how: str | None = None, device: str = "cpu") -> dict[str, np.ndarray]:
    """Per-item scores on held-out scenes.

    Image level (per image / per caption): i2t_r1, i2t_r5, t2i_r1, t2i_r5 and ``image_score`` (their mean).
    Region level (per ground-truth region): r2t_r10, t2r_r10 (region <-> region-caption retrieval over all
    test regions), cls_kind (zero-shot "a {kind}" classification, COCO-like), cls_color_kind ("a {color}
    {kind}", finer, LVIS-like) and ``region_score`` (mean of the four). Grounding: iou (if the model has a
    grounding head). ``names`` maps a kind to how captions write it (scenes.NAMES: "dog house");
    ``region_how`` overrides how region embeddings are made ("prompter"/"roi").
    """
    names = names or {}
    enc = encode_data(model, data, device)
    out: dict[str, np.ndarray] = {}
    sim = enc["image"] @ enc["text"].T
    correct = same_string(data.captions, data.captions)
    out["i2t_r1"], out["i2t_r5"] = hits_at_k(sim, correct, 1), hits_at_k(sim, correct, 5)
    out["t2i_r1"], out["t2i_r5"] = hits_at_k(sim.T, correct.T, 1), hits_at_k(sim.T, correct.T, 5)
    out["image_score"] = (out["i2t_r1"] + out["i2t_r5"] + out["t2i_r1"] + out["t2i_r5"]) / 4

    owner, slot = data.regions()
    boxes = data.region_boxes[owner, slot]
    caps = [data.region_captions[o][s] for o, s in zip(owner.tolist(), slot.tolist())]
    reg = torch.cat([
        model.embed_regions(enc["patches"][owner[lo:lo + 256]].to(device), boxes[lo:lo + 256].to(device),
                            torch.arange(len(owner[lo:lo + 256]), device=device), region_how).cpu()
        for lo in range(0, len(owner), 256)
    ])
    reg_txt = model.embed_text(data.region_ids[owner, slot].to(device)).cpu()
    rsim = reg @ reg_txt.T
    rcorrect = same_string(caps, caps)
    out["r2t_r10"], out["t2r_r10"] = hits_at_k(rsim, rcorrect, 10), hits_at_k(rsim.T, rcorrect.T, 10)
    kind_of = [data.region_kinds[o][s] for o, s in zip(owner.tolist(), slot.tolist())]
    color_of = [data.region_colors[o][s] for o, s in zip(owner.tolist(), slot.tolist())]
    out["cls_kind"] = zero_shot(model, reg, [phrase(names.get(k, k)) for k in kinds],
                                [list(kinds).index(k) for k in kind_of], tokenizer, device)
    pairs = [(c, k) for c in colors for k in kinds]
    out["cls_color_kind"] = zero_shot(model, reg, [phrase(f"{c} {names.get(k, k)}") for c, k in pairs],
                                      [pairs.index((c, k)) for c, k in zip(color_of, kind_of)], tokenizer, device)
    out["region_score"] = (out["r2t_r10"] + out["t2r_r10"] + out["cls_kind"] + out["cls_color_kind"]) / 4
    if model.has_grounding:
        pred = torch.cat([
            model.ground(enc["patches"][owner[lo:lo + 256]].to(device), reg_txt[lo:lo + 256].to(device),
                         torch.arange(len(owner[lo:lo + 256]), device=device)).cpu()
            for lo in range(0, len(owner), 256)
        ])
        out["iou"] = box_iou(pred, boxes).numpy()
        out["pred_boxes"] = pred.numpy()
    out["gt_boxes"] = boxes.numpy()
    return out


def phrase(noun: str) -> str:
    """"a red chick", "an orange cup": the article the scene captions use."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


@torch.no_grad()
def zero_shot(model: TinyCLIP, emb: torch.Tensor, prompts: list[str], labels: list[int], tokenizer: WordTokenizer, device: str) -> np.ndarray:
    """Per-item 0/1: is the nearest class prompt the right one?"""
    class_emb = model.embed_text(tokenizer.encode(prompts, model.cfg.max_text_len).to(device)).cpu()
    pred = (emb @ class_emb.T).argmax(1)
    return (pred == torch.tensor(labels)).float().numpy()


def mean_box_iou(train_boxes: torch.Tensor, test_boxes: np.ndarray) -> np.ndarray:
    """Per test region: IoU of the mean training box (a "no looking" grounding baseline)."""
    mean = train_boxes.mean(0, keepdim=True).expand(len(test_boxes), 4)
    return box_iou(mean, torch.as_tensor(test_boxes)).numpy()


# --------------------------------------------------------------------------------------------------
# The experiment of notebook 05: same data, steps and seeds for CLIP, CLOC and the RoI ablation
# --------------------------------------------------------------------------------------------------

VARIANTS = {"CLIP": "none", "CLOC": "prompter", "CLOC-RoI": "roi", "CLOC-RoI+G": "roi_ground"}  # name -> region head


def split_seeds(seed: int, n_train: int, n_test: int) -> tuple[list[int], list[int]]:
    """Distinct scene seeds for the training and test scenes, drawn from ``seed``."""
    drawn = np.random.default_rng(seed).choice(2**31 - 1, size=n_train + n_test, replace=False)
    return [int(s) for s in drawn[:n_train]], [int(s) for s in drawn[n_train:]]


def prepare_data(seed: int, scene_config, *, n_train: int, n_test: int, regions: int, max_text_len: int = 24,
                 caption_order: str = "canonical"):
    """Render the training and test scenes once; returns (tokenizer, train data, test data, test scenes).

    The vocabulary comes from the training captions only (a test word never seen becomes <unk>). Global
    captions list the objects in ``caption_order`` (``global_caption``; "canonical": no position in the text).
    """

    train_seeds, test_seeds = split_seeds(seed, n_train, n_test)
    train_images, train_scenes = S.render_batch(train_seeds, scene_config)
    test_images, test_scenes = S.render_batch(test_seeds, scene_config)
    tok = WordTokenizer.from_texts(scene_texts(train_scenes))
    train = scenes_to_data(train_images, train_scenes, tok, max_regions=regions, max_text_len=max_text_len, seed=seed,
                           caption_order=caption_order)
    test = scenes_to_data(test_images, test_scenes, tok, max_regions=regions, max_text_len=max_text_len, seed=seed + 1,
                          caption_order=caption_order)
    return tok, train, test, test_scenes


def code_version() -> str:
    """The fingerprint of this module's import closure: a code change retrains instead of loading stale
    checkpoints."""
    return fingerprint("spatialkit.models.clip")


def data_fingerprint(data: SceneTextData) -> str:

    h = hashlib.sha256(data.images.numpy().tobytes())
    for t in (data.caption_ids, data.region_boxes, data.region_ids, data.region_valid):
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_config(model_cfg: CLIPConfig, data: SceneTextData, tc: TrainConfig, *, seed: int,
                      device: str = "cpu") -> dict:
    """What a trained model's checkpoint key is made of: the model and training configs, the seed and a
    fingerprint of the training tensors (plus the device type when not the CPU: GPU-trained weights differ)."""
    config = {"model": asdict(model_cfg), "train": asdict(tc), "seed": seed, "data": data_fingerprint(data)}
    if torch.device(device).type != "cpu":  # trained on a GPU (weights differ): its own key; CPU keys unchanged
        config["device"] = torch.device(device).type
    return config


def checkpoint_folder(model_cfg: CLIPConfig, data: SceneTextData, tc: TrainConfig, *, seed: int,
                      device: str = "cpu"):
    """The store folder that holds (or will hold) ``train_or_load``'s model for these arguments."""
    config = checkpoint_config(model_cfg, data, tc, seed=seed, device=device)
    return checkpoints.checkpoint_dir("cloc05", checkpoints.config_key(config, code_version()))


def train_or_load(model_cfg: CLIPConfig, data: SceneTextData, tc: TrainConfig, *, seed: int, device: str = "cpu",
                  progress: bool = False, use_cache: bool = True) -> tuple[TinyCLIP, dict]:
    """A trained model and its metrics ({"history": per-step losses, "cpu_s": training CPU seconds}).

    Goes through the checkpoint store (spatialkit.common.checkpoints): the key covers the model and training
    configs, the seed, a fingerprint of the training tensors and this module's source.
    """

    def fit():
        model = build_model(model_cfg, seed)
        start = time.process_time()
        history = train(model, data, tc, seed=seed, device=device, progress=progress)
        return model.state_dict(), {"history": history, "cpu_s": time.process_time() - start}

    if not use_cache:
        state, metrics = fit()
    else:
        config = checkpoint_config(model_cfg, data, tc, seed=seed, device=device)
        state, metrics, _ = checkpoints.load_or_train("cloc05", config, code_version(), fit)
    model = TinyCLIP(model_cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), metrics


def summarize(scores: dict[str, list[dict]], metrics: Sequence[str], *, seed: int, n_boot: int) -> "pd.DataFrame":
    """Mean and bootstrap CI per (variant, metric). Per-item scores are first averaged over training
    seeds (the same test items for every seed), then items are resampled."""


    rows = []
    for variant, runs in scores.items():
        for m in metrics:
            if m not in runs[0]:
                continue
            per_item = np.mean([r[m] for r in runs], axis=0)
            est = bootstrap_ci(per_item, seed=seed, n_boot=n_boot)
            per_seed = [float(np.mean(r[m])) for r in runs]
            rows.append({"variant": variant, "metric": m, "mean": est.mean, "low": est.low, "high": est.high,
                         "seed_min": min(per_seed), "seed_max": max(per_seed), "n_items": est.n})
    return pd.DataFrame(rows)


def paired_difference(scores: dict[str, list[dict]], a: str, b: str, metric: str, *, seed: int, n_boot: int):
    """Bootstrap CI of mean(a) - mean(b) on ``metric`` (paired over the same test items, seed-averaged)."""

    xa = np.mean([r[metric] for r in scores[a]], axis=0)
    xb = np.mean([r[metric] for r in scores[b]], axis=0)
    return bootstrap_diff_ci(xa, xb, seed=seed, n_boot=n_boot)


def dropped_negative_fraction(data: SceneTextData, index: torch.Tensor, vocab_size: int, threshold: float) -> float:
    """Fraction of region negative pairs (i != j) in the batch ``index`` that the duplicate filter drops."""
    owner, slot = data.region_valid[index].nonzero(as_tuple=True)
    ids = data.region_ids[index][owner, slot]
    n = len(ids)
    if n < 2:
        return 0.0
    return float(duplicate_mask(bag_of_words(ids, vocab_size), threshold).sum()) / (n * (n - 1))
