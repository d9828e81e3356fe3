"""The tiny VLM "model organism", readable top to bottom (nanoGPT-style).

    image (B, 3, H, W) --ViTEncoder--> patch tokens (B, N, d_vis) --Projector (+ visual norm)--> visual tokens
    (B, N, d_lm) --scattered into the LM sequence [system?; image; prompt; <ans>] --> DecoderLM (causal) --> logits

* ``ViTEncoder`` is reusable on its own (patch embedding + bidirectional blocks + pluggable positional encoding):
  notebook 01 builds a small ViT classifier from it.
* Positional encodings come from ``spatialkit.models.posenc``. In the LM, "rope1d" rotates by the running sequence
  index (implemented as M-RoPE with t = h = w, which is exactly 1D RoPE and also works for cached decode
  steps), "rope2d"/"mrope" use Qwen2-VL's (t, h, w) ids (``lm_positions``), "learned" is nanoGPT's wpe table.
* Every LM attention layer goes through one function: ``F.scaled_dot_product_attention`` by default, or an
  ``attention_fn(AttnCall)`` hook that sees post-rotary q/k (see ``spatialkit.models.vlm``).
* ``ModelConfig`` (below, beside ``TinyVLM``) is the architecture with its one set of defaults; an organism's
  ``OrganismConfig.model`` section *is* a ``ModelConfig`` (config.py nests it with the data and optimisation
  sections), with ``vocab_size``/``max_len`` derived when the model is built. ``knob`` declares a field's
  allowed values beside its default; ``check_fields`` enforces them on construction (config.py's sections too).
* ``Vocab`` is a word-level vocabulary built deterministically from the scene world's words and templates,
  including coarse-grid coordinate tokens ``loc0`` .. ``loc{G*G-1}`` (used by the PIN notebook; the default
  organism is never trained to emit them).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Sequence

import torch
import torch.nn as nn

from spatialkit.models.posenc import build as build_posenc, grid_positions
from spatialkit.models.vlm import AttnCall, TokenKind, VisualTokens
from spatialkit.common.params import Param, ParameterError
import numpy as np
import hashlib

# --------------------------------------------------------------------------------------------------
# vocabulary

PAD, UNK, IMG, ANS, EOS = "<pad>", "<unk>", "<img>", "<ans>", "<eos>"
SPECIALS = (PAD, UNK, IMG, ANS, EOS)
CAPTION_PROMPT = "describe the image ."
SYSTEM_PROMPT = "you are a careful assistant . look at the picture and answer the question ."
# words of the organism's own templates (prompts above, PIN's "located at" phrases); the scene world adds its own
TEMPLATE_WORDS = tuple(
    "describe the image . you are a careful assistant look at picture and answer question "
    "located where is what a an in of to on with , ? ! : ; - ' yes no left right above below front behind "
    "top bottom middle center near far there how many color it".split()
)
_WORD_RE = re.compile(r"<[a-z]+>|[a-z0-9]+|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-case words, numbers and single punctuation marks; ``<...>`` specials stay whole."""
    return _WORD_RE.findall(text.lower())


class Vocab:
    """Word-level vocabulary; ids are stable for a given word list (stored in every checkpoint)."""

    def __init__(self, words: Sequence[str]):
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocab words must start with the specials {SPECIALS}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocab words must be unique")

    def __len__(self) -> int:
        return len(self.words)

    def __getitem__(self, word: str) -> int:
        return self.index.get(word, self.index[UNK])

    def __contains__(self, word: str) -> bool:  # without it, `in` would iterate __getitem__(0, 1, ...) forever
        return word in self.index

    def encode(self, text: str) -> list[int]:
        return [self[w] for w in tokenize(text)]

    def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
        out = []
        for i in ids:
            word = self.words[int(i)]
            if word == EOS and stop_at_eos:
                break
            out.append(word)
        return " ".join(out)

    def unknown(self, text: str) -> list[str]:
        """Words of ``text`` that the vocabulary does not know (to reject prompts it cannot read)."""
        return [w for w in tokenize(text) if w not in self.index]

    @classmethod
    def build(cls, texts: Sequence[str] = (), loc_grid: int = 4) -> "Vocab":
        """Specials + coordinate tokens + the template words + every word of ``texts``, sorted (deterministic)."""
        words = set(TEMPLATE_WORDS) | {str(i) for i in range(10)}
        for text in texts:
            words.update(tokenize(text))
        words -= set(SPECIALS)
        locs = [f"loc{i}" for i in range(loc_grid * loc_grid)]
        words -= set(locs)
        return cls(list(SPECIALS) + locs + sorted(words))


# --------------------------------------------------------------------------------------------------
# positional encodings (spatialkit.models.posenc)

VISION_POSENCS = ("none", "learned", "sincos2d", "rpe2d", "rope1d", "rope2d", "mrope")
LM_POSENCS = ("none", "learned", "rope1d", "rope2d", "mrope")  # "learned" in the LM = a 1D wpe table
LM_ATTENTIONS = ("causal", "prefix")


def prefix_lm_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool "may attend" mask of a prefix-LM (PaliGemma): every token up to and including the
    row's first ``<ans>`` attends to that whole prefix (so image tokens see the question); the answer after it
    is causal. A row without ``<ans>`` is all prefix."""
    b, length = input_ids.shape
    is_ans = input_ids == SPECIALS.index(ANS)  # specials have fixed ids (Vocab requires them first)
    end = torch.where(is_ans.any(1), is_ans.long().argmax(1), torch.full((b,), length - 1, device=input_ids.device))
    i = torch.arange(length, device=input_ids.device)
    causal = i[:, None] >= i[None, :]
    in_prefix = i[None, :] <= end[:, None]  # (B, L)
    return (causal[None] | (in_prefix[:, :, None] & in_prefix[:, None, :]))[:, None]
ROTARY = ("rope1d", "rope2d", "mrope")
STEMS = ("linear", "conv")
VISUAL_NORMS = ("none", "rmsclip", "target")  # Projector's visual-token norm control


def lm_positions(token_kind: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """(B, L, 3) long (t, h, w) position ids of an LM sequence that holds one image block per row.

    ``mode`` "1d": every token gets its running index (LLaVA). "2d": M-RoPE style (Qwen2-VL ``get_rope_index``):
    the image token at raster index r = i*w + j gets (s, s+i, s+j), s = first image index, and text after the
    image resumes at s + max(h, w).
    """
    b, length = token_kind.shape
    idx = torch.arange(length, device=token_kind.device).expand(b, length)
    if mode == "1d":
        return idx[..., None].expand(b, length, 3).contiguous()
    h, w = grid
    is_img = token_kind == TokenKind.IMAGE
    start = is_img.long().argmax(dim=1, keepdim=True)  # (B, 1)
    r = (idx - start).clamp(min=0, max=h * w - 1)
    after = idx >= start + h * w
    t = torch.where(is_img, start.expand_as(idx), torch.where(after, idx - h * w + max(h, w), idx))
    row = torch.where(is_img, start + r // w, t)
    col = torch.where(is_img, start + r % w, t)
    return torch.stack([t, row, col], dim=-1)


# --------------------------------------------------------------------------------------------------
# transformer pieces


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} must be divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, pe, positions=None, *, grid=None, causal=False, cache=None, attention_fn=None,
                layer=0, token_kind=None, attn_mask=None, queries=None):
        """``queries`` (B, K) long: compute the output at these positions only (keys and values stay at all
        positions), (B, K, dim) -- a last layer whose other outputs nothing reads."""
        b, length, dim = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if positions is not None:
            q, k = pe.rotate(q, k, positions)
        if queries is not None:
            q = q.gather(2, queries[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1]))
            if attn_mask is None:  # causal: query i sees keys 0..i
                attn_mask = queries[:, None, :, None] >= torch.arange(length, device=x.device)
            else:
                attn_mask = attn_mask.expand(b, -1, -1, -1).gather(
                    2, queries[:, None, :, None].expand(-1, attn_mask.shape[1], -1, length))
            length = queries.shape[1]
        if cache is not None:  # (k, v) of earlier positions; decode step: attend to all of them
            if cache.get("k") is not None:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        mask = pe.bias(q, grid) if grid is not None else attn_mask  # RPE: additive logit bias; prefix-LM: bool
        call = AttnCall(layer=layer, query=q, key=k, value=v, mask=mask, scale=1.0 / math.sqrt(self.head_dim),
                        is_causal=causal and length > 1 and mask is None, token_kind=token_kind)
        out = attention_fn(call) if attention_fn is not None else call.sdpa()
        return self.proj(out.transpose(1, 2).reshape(b, length, dim))


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x, pe, positions=None, queries=None, **kw):
        """``queries`` (B, K) long: the block's output at these positions only, (B, K, dim)."""
        attended = self.attn(self.ln1(x), pe, positions, queries=queries, **kw)
        if queries is not None:
            x = x.gather(1, queries[..., None].expand(-1, -1, x.shape[-1]))
        x = x + attended
        return x + self.mlp(self.ln2(x))


class ViTEncoder(nn.Module):
    """Patch embedding + bidirectional transformer blocks + pluggable positional encoding.

    ``stem`` "linear" (ViT patchify) or "conv" (two 3x3 stride-2 convs first); ``embed_norm`` puts a LayerNorm
    on the patch embeddings before an absolute positional table is added, so content and position have
    comparable norms.

    ``forward(pixels (B, 3, H, W) float) -> (B, N, dim)`` tokens in raster order on ``self.grid``.
    """

    def __init__(self, image_size=48, patch_size=8, dim=64, depth=2, n_heads=4, posenc="sincos2d", mlp_ratio=4,
                 stem="linear", embed_norm=False):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if posenc not in VISION_POSENCS:
            raise ValueError(f"vision posenc must be one of {VISION_POSENCS}, got {posenc!r}")
        if stem not in STEMS or (stem == "conv" and patch_size % 4):
            raise ValueError(f"stem must be one of {STEMS} ('conv' needs patch_size % 4 == 0), got {stem!r}")
        self.patch_size, self.grid = patch_size, (image_size // patch_size, image_size // patch_size)
        if stem == "linear":  # ViT: one linear map per patch
            self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        else:  # two stride-2 3x3 convs before patchifying (Xiao et al. 2021: early convolutions optimise faster)
            self.patch_embed = nn.Sequential(
                nn.Conv2d(3, dim // 4, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(dim // 4, dim // 2, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(dim // 2, dim, kernel_size=patch_size // 4, stride=patch_size // 4))
        self.embed_norm = nn.LayerNorm(dim) if embed_norm else nn.Identity()
        self.pe = build_posenc(posenc, dim=dim, head_dim=dim // n_heads, n_heads=n_heads, grid=self.grid)
        self.rotary = posenc in ROTARY
        self.register_buffer("positions", grid_positions(*self.grid), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, n_heads, mlp_ratio) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, N, dim), raster order
        x = self.pe.add(self.embed_norm(x), self.grid)
        positions = self.positions if self.rotary else None
        for block in self.blocks:
            x = block(x, self.pe, positions, grid=self.grid)
        return self.ln_f(x)


class Projector(nn.Module):
    """2-layer MLP into the LM width, then the optional visual-token norm control of Qi et al. 2025.

    ``norm`` "none"; "rmsclip" = the paper's "+Normalize": RMSNorm (learnable weight) -> s = min(1.22/||y||, 1)
    -> 0.83*s*y (times ``scale``, 1.0 = the paper), so every token ends near norm 1; "target" = rescale each
    token to norm ``scale`` exactly.
    """

    def __init__(self, in_dim: int, out_dim: int, norm: str = "none", scale: float = 1.0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
        self.norm, self.scale = norm, scale
        if norm == "rmsclip":
            self.rms = nn.RMSNorm(out_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mlp(x)
        if self.norm == "rmsclip":
            y = self.rms(y)
            s = (1.22 / y.norm(dim=-1, keepdim=True).clamp_min(1e-6)).clamp(max=1.0)
            y = 0.83 * self.scale * s * y
        elif self.norm == "target":
            y = self.scale * y / y.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        return y


# --------------------------------------------------------------------------------------------------
# the whole VLM


def knob(default, low=None, high=None, choices=None, *, kind: type | None = None, optional: bool = False):
    """A config field whose allowed values sit beside its default: ints/floats in [``low``, ``high``], or one of
    ``choices``; ``optional`` also allows None. ``check_fields`` enforces them (strict types: 8.0 is no int)."""
    spec = dict(kind=kind or type(default), low=low, high=high, choices=choices, optional=optional or default is None)
    return field(default=default, metadata={"knob": spec})


def check_fields(obj) -> None:
    """ValueError (``spatialkit.common.params.ParameterError``, one line naming the class, the field and what is
    allowed) for the first field of the dataclass ``obj`` whose value breaks its ``knob``."""

    where = type(obj).__name__
    for f in fields(obj):
        spec = f.metadata.get("knob")
        value = getattr(obj, f.name)
        if spec is None or (value is None and spec["optional"]):
            continue
        kind = spec["kind"]
        param = Param(f.name, kind, f.default, low=spec["low"], high=spec["high"], choices=spec["choices"])
        exact = (isinstance(value, bool) if kind is bool else
                 isinstance(value, kind if kind is not float else (int, float)) and not isinstance(value, bool))
        if not exact:
            raise ParameterError(f"{where}: parameter {f.name!r} = {value!r} is invalid; allowed: {param.allowed()}"
                                 + (" or None" if spec["optional"] else ""))
        param.coerce(value, where)


def default_max_len(grid: tuple[int, int]) -> int:
    """The organism's longest LM row: system prompt (< 32 words) + image (h * w) + prompt, <ans>, answer, <eos>."""
    h, w = grid
    return 32 + h * w + 64


@dataclass(frozen=True)
class ModelConfig:
    """The architecture, with the one set of defaults (``OrganismConfig.model`` is this class; the presets in
    presets.yml override some fields). ``vocab_size`` and ``max_len`` are derived when an organism is built
    (``OrganismConfig.model_config``: the size of its ``Vocab``; ``default_max_len`` of the grid); a
    ``ModelConfig`` built directly must set ``vocab_size``, and ``max_len`` None means ``default_max_len``.
    Every field is checked on construction (``knob``)."""

    image_size: int = knob(48, 16, 512)
    patch_size: int = knob(8, 2, 64)
    vision_dim: int = knob(64, 8, 1024)
    vision_layers: int = knob(2, 1, 24)
    vision_heads: int = knob(4, 1, 32)
    vision_posenc: str = knob("sincos2d", choices=VISION_POSENCS)
    # "linear" (plain ViT patchify) | "conv" (two 3x3 stride-2 convs, then patchify)
    vision_stem: str = knob("conv", choices=STEMS)
    # LayerNorm on the patch embeddings before the APE is added: content then has norm sqrt(d), comparable to the
    # sincos table's sqrt(d/2). Without it the position code is ~5x louder than content and colours/kinds are
    # learned several times slower (measured with a probe; see the organism notebook).
    vision_embed_norm: bool = knob(True)
    lm_dim: int = knob(64, 8, 1024)
    lm_layers: int = knob(2, 1, 24)
    lm_heads: int = knob(4, 1, 32)
    lm_posenc: str = knob("rope1d", choices=LM_POSENCS)
    # "causal" (LLaVA, Qwen-VL) | "prefix" (PaliGemma: image + prompt see each other, full attention up to <ans>)
    lm_attention: str = knob("causal", choices=LM_ATTENTIONS)
    visual_norm: str = knob("none", choices=VISUAL_NORMS)  # Projector: "rmsclip" = Qi et al.'s +Normalize
    visual_norm_scale: float = knob(1.0, 1e-3, 1e3)
    vocab_size: int | None = knob(None, 1, 10_000_000, kind=int)  # derived: len(Vocab)
    max_len: int | None = knob(None, 1, 1_000_000, kind=int)  # longest LM sequence; None: default_max_len(grid)

    def __post_init__(self):
        check_fields(self)
        if self.image_size % self.patch_size:
            raise ValueError(f"ModelConfig.image_size ({self.image_size}) must be a multiple of patch_size "
                             f"({self.patch_size})")
        if self.vision_stem == "conv" and self.patch_size % 4:
            raise ValueError(f"ModelConfig.patch_size ({self.patch_size}) must be a multiple of 4 with vision_stem='conv'")
        for dim, heads in (("vision_dim", "vision_heads"), ("lm_dim", "lm_heads")):
            d, h = getattr(self, dim), getattr(self, heads)
            if d % h or (d // h) % 4:
                raise ValueError(f"ModelConfig.{dim} ({d}) must be divisible by {heads} ({h}) with a head size "
                                 "that is a multiple of 4 (2D rotary encodings)")

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size // self.patch_size,) * 2

    @property
    def seq_len(self) -> int:
        """``max_len``, or ``default_max_len(grid)`` when it is None."""
        return self.max_len if self.max_len is not None else default_max_len(self.grid)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


class TinyVLM(nn.Module):
    """ViT -> projector -> causal decoder LM. The sequence layout is given by ``token_kind`` (one image block)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size must be set to build a TinyVLM (an organism derives it: "
                             "OrganismConfig.model_config(len(vocab)))")
        self.cfg = cfg
        self.vision = ViTEncoder(cfg.image_size, cfg.patch_size, cfg.vision_dim, cfg.vision_layers,
                                 cfg.vision_heads, cfg.vision_posenc, stem=cfg.vision_stem,
                                 embed_norm=cfg.vision_embed_norm)
        self.projector = Projector(cfg.vision_dim, cfg.lm_dim, cfg.visual_norm, cfg.visual_norm_scale)
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.lm_dim)
        head_dim = cfg.lm_dim // cfg.lm_heads
        if cfg.lm_posenc == "learned":  # nanoGPT's wpe: one vector per sequence index
            self.pos_emb = nn.Embedding(cfg.seq_len, cfg.lm_dim)
        # LM rope1d = M-RoPE fed t = h = w = running index (posenc's Rope1d uses the slot index of the call,
        # which is wrong for a cached decode step); identical angles on the whole sequence.
        lm_kind = {"rope1d": "mrope", "rope2d": "rope2d", "mrope": "mrope"}.get(cfg.lm_posenc, "none")
        self.lm_pe = build_posenc(lm_kind,
                                  dim=cfg.lm_dim, head_dim=head_dim, n_heads=cfg.lm_heads, grid=self.vision.grid)
        self.blocks = nn.ModuleList(Block(cfg.lm_dim, cfg.lm_heads) for _ in range(cfg.lm_layers))
        self.ln_f = nn.LayerNorm(cfg.lm_dim)
        self.lm_head = nn.Linear(cfg.lm_dim, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m):
        # Fan-in scaled weights (std 1/sqrt(in)) and unit-variance embeddings. GPT-2's fixed std 0.02 is about
        # 1/sqrt(d) at d = 768, but at d = 64 it is 6x too small: value and output projections then shrink
        # every attention read-out ~40x, and the LM sat on a loss plateau for ~1000 steps before it learned
        # to read the image at all (measured on presence-only and identity-only training: chance at step
        # 1000 with 0.02, ~97% with this init).
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features ** -0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=1.0)

    @property
    def grid(self) -> tuple[int, int]:
        return self.vision.grid

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> visual tokens as the LM receives them, (B, N, lm_dim) (before any visual hook)."""
        return self.projector(self.vision(pixels))

    def positions(self, token_kind: torch.Tensor) -> torch.Tensor:
        return lm_positions(token_kind, self.grid, "1d" if self.cfg.lm_posenc in ("rope1d", "learned") else "2d")

    def embed(self, input_ids, token_kind, visual: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the visual tokens (B*N, d) scattered into the IMAGE positions."""
        x = self.tok_emb(input_ids)
        if visual is not None:
            x = x.masked_scatter((token_kind == TokenKind.IMAGE)[..., None], visual.to(x.dtype))
        return x

    def forward(self, pixels, input_ids, token_kind, **kw) -> torch.Tensor:
        """Logits (B, L, V) for the sequence ``input_ids`` whose IMAGE slots take the image's visual tokens.

        ``pixels`` None means no image in this call (decode steps with a cache). Keywords: ``visual_fn`` and
        ``attention_fn`` hooks (see spatialkit.models.vlm); ``cache``: a list of per-layer dicts filled/extended in
        place; ``positions`` (B, L, 3) override (decode steps pass the new tokens' ids).
        """
        return self.lm_head(self.hidden(pixels, input_ids, token_kind, **kw))

    def hidden(self, pixels, input_ids, token_kind, *, visual_fn: Callable | None = None,
               attention_fn: Callable | None = None, cache: list | None = None, positions=None,
               visual: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
               only: torch.Tensor | None = None) -> torch.Tensor:
        """Final normalised hidden states (B, L, d); ``lm_head`` of them are the logits (the trainer applies
        the head only where there is a target). ``visual`` (B*N, d): ready visual tokens instead of ``pixels``.
        ``attn_mask`` (B, 1, L, L) bool replaces the causal / prefix-LM mask (the trainer's packed rows).

        ``only`` (B, L) bool: return just ``hidden[only]``, (n, d). The same numbers up to float rounding, for
        less work: the last block then computes its attention queries, output projection and MLP at those
        positions alone (its keys and values still at all of them). The trainer's loss reads ~1 position in 7.
        """
        queries = valid = None
        if only is not None:
            # an attention hook still runs, but the last layer's call then holds only these query rows
            if cache is not None:
                raise ValueError("hidden(only=...) computes some positions only; it cannot fill a cache")
            if only.shape != input_ids.shape or only.dtype != torch.bool:
                raise ValueError(f"only must be a bool mask shaped like input_ids {tuple(input_ids.shape)}; got "
                                 f"{only.dtype} {tuple(only.shape)}")
            counts = only.sum(1)
            # each row's kept positions first, in order (a stable sort); rows with fewer are padded with
            # position 0's copy, dropped again by ``valid``
            queries = torch.argsort((~only).to(torch.uint8), dim=1, stable=True)[:, :max(1, int(counts.max()))]
            valid = torch.arange(queries.shape[1], device=only.device) < counts[:, None]
            queries = torch.where(valid, queries, 0)
        if pixels is not None:
            tokens = self.encode_image(pixels)  # (B, N, d)
            b, n, d = tokens.shape
            visual = tokens.reshape(b * n, d)
            if visual_fn is not None:  # the hook sees exactly what the LM receives
                visual = visual_fn(VisualTokens(tokens=visual, grids=[self.grid] * b)).tokens
        x = self.embed(input_ids, token_kind, visual)
        if positions is None:
            positions = self.positions(token_kind)
        if self.cfg.lm_posenc == "learned":
            x = x + self.pos_emb(positions[..., 0].clamp(max=self.cfg.seq_len - 1))
        rot = positions if self.cfg.lm_posenc in ROTARY else None
        kind_keys = token_kind if cache is None or cache[0].get("kind") is None else torch.cat([cache[0]["kind"], token_kind], 1)
        if cache is not None:
            cache[0]["kind"] = kind_keys
        # prefix-LM: only a call that starts the sequence needs the mask; a cached decode step's new tokens are
        # answer tokens, which see every earlier position anyway
        first_call = cache is None or cache[0].get("k") is None
        if attn_mask is None and self.cfg.lm_attention == "prefix" and first_call:
            attn_mask = prefix_lm_mask(input_ids)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, self.lm_pe, rot, causal=True, cache=None if cache is None else cache[i],
                      attention_fn=attention_fn, layer=i, token_kind=kind_keys, attn_mask=attn_mask,
                      queries=queries if i == last else None)
        return self.ln_f(x) if valid is None else self.ln_f(x[valid])

    def new_cache(self) -> list[dict]:
        return [dict() for _ in self.blocks]


def to_pixels(images) -> torch.Tensor:
    """(B, H, W, 3) uint8 array/tensor, or a list of PIL images / arrays -> (B, 3, H, W) float in [-1, 1]."""

    if not isinstance(images, (np.ndarray, torch.Tensor)):
        images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    x = torch.as_tensor(np.ascontiguousarray(images))  # contiguous: torch takes no negative strides (a[::-1])
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (B, H, W, 3) uint8, got {tuple(x.shape)} {x.dtype}")
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over every tensor of the state dict (names, dtypes, shapes and bytes) in name order."""

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
