"""The one ``VLM`` interface that every intervention, probe and notebook targets.

Two kinds of implementation exist: the model organism (``spatialkit.models.organism.model``, wrapped by
``OrganismVLM``) and real Hugging Face VLMs (``spatialkit.models.hf``: Qwen2-VL, Qwen2.5-VL, Qwen3-VL,
LLaVA-1.5). Interventions are written once against this interface and work on all five kinds.

The two hook points, and why they are enough:

* ``visual_hook(fn)`` sees the visual tokens exactly as the LM will receive them (after the vision
  encoder and projector, before the LM). Permutation tests and norm rescaling live here.
* ``attention_hook(fn)`` replaces the attention computation of every LM layer. ``fn`` receives the
  queries and keys *after* rotary embedding (and after Qwen3-VL's ``k_norm``), the values, the mask and
  the scale, and must return the attention output. ``call.sdpa()`` is the default fused computation,
  so a probe can record the last row's attention (one query row: O(n) memory) and an intervention can
  recompute the last row with scaled image keys, while every other row stays on fused SDPA.

One optional hook sits inside the vision tower: ``vision_position_hook(fn)`` moves only the position signal
the tower itself uses (the content/position split of the permutation test); ``vision_position_signal`` says
what that is, or None where a model has no such hook.
"""

from __future__ import annotations

import contextlib
import enum
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from spatialkit.common.params import ParameterError


class TokenKind(enum.IntEnum):
    """What each position of the LM input sequence holds."""

    PAD = 0
    SYSTEM = 1  # system prompt / chat-template scaffolding before the user's content
    IMAGE = 2  # a visual token
    TEXT = 3  # the user's prompt text (and anything after the image that is not system scaffolding)


@dataclass
class Batch:
    """Model-ready inputs for a batch of (image, prompt) pairs.

    ``inputs`` are whatever the underlying model's forward takes (input_ids, pixel_values, ...).
    ``token_kind`` (B, L) int tensor of :class:`TokenKind` values, aligned with the LM sequence
    (left padding for HF models). ``grids`` holds, per image, the (h, w) grid of visual tokens the LM
    sees (after any merge), in raster order.
    """

    inputs: dict[str, torch.Tensor]
    token_kind: torch.Tensor
    grids: list[tuple[int, int]]
    prompts: list[str] = field(default_factory=list)

    @property
    def image_mask(self) -> torch.Tensor:
        return self.token_kind == TokenKind.IMAGE

    @property
    def text_mask(self) -> torch.Tensor:
        return (self.token_kind == TokenKind.TEXT) | (self.token_kind == TokenKind.SYSTEM)

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.token_kind != TokenKind.PAD

    def last_index(self) -> torch.Tensor:
        """Index of the last non-pad position per row (the token that predicts the answer)."""
        mask = self.attention_mask.long()
        length = mask.shape[1]
        positions = torch.arange(length, device=mask.device).expand_as(mask)
        return (positions * mask).max(dim=1).values


@dataclass
class VisualTokens:
    """The visual tokens of a batch, as the LM will receive them.

    ``tokens`` (N_total, d): every image's tokens concatenated in batch order, raster order within an
    image. ``grids``: (h, w) per image, so image i owns rows offsets[i]:offsets[i]+h*w.
    ``extras``: further per-token features the model injects alongside (Qwen3-VL DeepStack levels),
    each (N_total, d_extra); an intervention that moves tokens must move these identically.
    """

    tokens: torch.Tensor
    grids: list[tuple[int, int]]
    extras: list[torch.Tensor] = field(default_factory=list)

    def offsets(self) -> list[int]:
        out, total = [], 0
        for h, w in self.grids:
            out.append(total)
            total += h * w
        return out

    def per_image(self) -> list[torch.Tensor]:
        return [self.tokens[o : o + h * w] for o, (h, w) in zip(self.offsets(), self.grids)]

    def replace(self, **changes) -> "VisualTokens":
        return replace(self, **changes)


@dataclass
class AttnCall:
    """One LM attention layer's call, handed to an ``attention_hook`` function.

    Shapes: ``query`` (B, H, Lq, D), ``key``/``value`` (B, Hkv, Lk, D) after rotary embedding.
    ``mask``: None, or a bool (True = may attend) or additive float tensor broadcastable to
    (B, H, Lq, Lk). ``is_causal`` is True when no explicit mask is given and causality is implied.
    ``token_kind`` (B, Lk) tells which keys are image / text / pad (None if unknown).
    """

    layer: int
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    scale: float
    is_causal: bool
    token_kind: torch.Tensor | None = None

    def expand_kv(self, t: torch.Tensor) -> torch.Tensor:
        """Repeat grouped key/value heads to the number of query heads (GQA)."""
        groups = self.query.shape[1] // t.shape[1]
        return t if groups == 1 else t.repeat_interleave(groups, dim=1)

    def full_mask(self) -> torch.Tensor | None:
        """An additive float mask (B or 1, 1 or H, Lq, Lk), causal included, or None if none applies."""
        lq, lk = self.query.shape[-2], self.key.shape[-2]
        mask = self.mask
        if mask is not None and mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=self.query.dtype, device=mask.device).masked_fill(
                ~mask, torch.finfo(self.query.dtype).min
            )
        if self.is_causal and lq > 1:
            causal = torch.ones(lq, lk, dtype=torch.bool, device=self.query.device).tril(lk - lq)
            add = torch.zeros(lq, lk, dtype=self.query.dtype, device=self.query.device).masked_fill(
                ~causal, torch.finfo(self.query.dtype).min
            )
            mask = add[None, None] if mask is None else mask + add
        return mask

    def sdpa(self, query=None, key=None, value=None, mask=...) -> torch.Tensor:
        """Default fused attention, (B, H, Lq, D). Arguments override the call's own tensors."""
        q = self.query if query is None else query
        k = self.expand_kv(self.key if key is None else key)
        v = self.expand_kv(self.value if value is None else value)
        m = self.mask if mask is ... else mask
        causal = self.is_causal and m is None and q.shape[-2] > 1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal, scale=self.scale)

    def probs(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Post-softmax attention (B, H, R, Lk) of the chosen query rows only (default: last row).

        ``rows``: (B,) index per batch item or None for the last position. Costs O(R·Lk), never Lq·Lk.
        """
        b, h, lq, d = self.query.shape
        if rows is None:
            rows = torch.full((b,), lq - 1, dtype=torch.long, device=self.query.device)
        q = self.query[torch.arange(b), :, rows].unsqueeze(2)  # (B, H, 1, D)
        k = self.expand_kv(self.key)
        logits = (q @ k.transpose(-1, -2)) * self.scale  # (B, H, 1, Lk)
        mask = self.full_mask()
        if mask is not None:
            mask = mask.expand(b, -1, lq, -1)[torch.arange(b), :, rows].unsqueeze(2)
            logits = logits + mask
        return logits.float().softmax(dim=-1).to(self.query.dtype)


@dataclass
class PositionIds:
    """The position ids a VLM's language model gives every token of a batch, as the model itself computes
    them (:meth:`VLM.position_ids`), with the facts of its positional construction.

    ``ids`` (A, B, L) long, aligned with the LM sequence like ``token_kind``: A = 3 axes (t, h, w) for M-RoPE,
    1 for 1D positions; ``axes`` names them. ``grids``: each image's (h, w) grid of LM visual tokens (one image
    per prompt, raster order, as :class:`Batch`). ``source``: which of the model's own functions gave ``ids``.
    ``rope``: the LM's rotary construction as the checkpoint defines it: ``rope_type``, ``theta``, ``head_dim``,
    ``section`` (the M-RoPE t/h/w frequency split, None for 1D), ``interleaved``, ``axis_of_frequency``
    ((head_dim/2,) long: the position axis that drives each rotary frequency, probed from the model's own
    rotary embedding), ``cos``/``sin`` ((B, L, head_dim) float32: the model's rotary embedding at ``ids``).
    ``vision``: the vision tower's side: ``encoding`` (words), ``patch_size``, ``patch_grids`` (per image, the
    (h, w) patch grid before any merge), ``spatial_merge_size``, and where the tower has a learned table read
    by index (CLIP), ``ape_ids`` (per image, (h, w) long: the table row each patch reads, captured in a
    forward) and ``ape_table`` ((rows, d) float32).
    """

    ids: torch.Tensor
    axes: tuple[str, ...]
    token_kind: torch.Tensor
    grids: list[tuple[int, int]]
    source: str
    rope: dict
    vision: dict

    def image_grid(self, item: int = 0) -> torch.Tensor:
        """(A, h, w): the ids of item ``item``'s image tokens on its token grid (raster order)."""
        h, w = self.grids[item]
        picked = self.ids[:, item, self.token_kind[item] == TokenKind.IMAGE]
        if picked.shape[-1] != h * w:
            raise ValueError(f"item {item} has {picked.shape[-1]} image tokens, not its grid's {h}x{w}")
        return picked.reshape(len(self.axes), h, w)

    def grid_steps(self, item: int = 0) -> tuple[list[int], list[int]]:
        """How the ids change one image token down and one to the right (per axis), on item ``item``'s grid
        (0 along a direction the grid has only one token in)."""
        grid = self.image_grid(item)
        h, w = self.grids[item]
        down = [int(grid[a, 1, 0] - grid[a, 0, 0]) if h > 1 else 0 for a in range(len(self.axes))]
        right = [int(grid[a, 0, 1] - grid[a, 0, 0]) if w > 1 else 0 for a in range(len(self.axes))]
        return down, right

    def summary(self) -> dict[str, str]:
        """The construction's facts in words, for a table."""
        rope, vision = self.rope, self.vision
        axis = rope["axis_of_frequency"]
        counts = "/".join(str(int((axis == a).sum())) for a in range(len(self.axes)))
        out = {
            "position ids from": self.source,
            "rope type": str(rope["rope_type"]),
            "rope theta": f"{rope['theta']:g}",
            "head_dim (rotary frequencies)": f"{rope['head_dim']} ({rope['head_dim'] // 2})",
            "position axes": ", ".join(self.axes),
            "frequencies per axis (probed)": counts,
            "M-RoPE section (config)": str(list(rope["section"])) if rope["section"] is not None else "none (1D RoPE)",
            "M-RoPE layout": ("interleaved" if rope["interleaved"] else "contiguous") if rope["section"] else "n/a",
            "vision tower position code": vision["encoding"],
            "patch size (px)": str(vision["patch_size"]),
            "patch grid per image (h, w)": ", ".join(f"{h}x{w}" for h, w in vision["patch_grids"]),
            "spatial merge size": str(vision.get("spatial_merge_size", 1)),
            "LM image-token grid (h, w)": ", ".join(f"{h}x{w}" for h, w in self.grids),
        }
        return out


AttentionFn = Callable[[AttnCall], torch.Tensor]
VisualFn = Callable[[VisualTokens], VisualTokens]
# grids (each image's (h, w) LM token grid, as VisualTokens.grids) -> (N_total,) long gather index over those slots
SlotIndexFn = Callable[[list[tuple[int, int]]], torch.Tensor]


@dataclass
class Generation:
    """Greedy generation result for one prompt."""

    text: str
    token_ids: list[int]
    first_token_prob: float  # max softmax probability of the first generated token (AdaptVis gate)


@dataclass
class Prefill:
    """The prompt run once with a KV cache, ready for :meth:`VLM.decode` (see :meth:`VLM.prefill`).

    ``first_logits`` (B, V): next-token logits at each item's last prompt position, in input order.
    ``batch``: the prepared prompts. ``state``: the adapter's own cache and bookkeeping; nothing outside the
    adapter reads it. A prefill is decoded at most once (decoding extends its cache in place).
    """

    first_logits: torch.Tensor
    batch: Batch
    state: object = None
    decoded: bool = False

    def start_decode(self, max_new_tokens: int) -> None:
        """Checks every adapter's ``decode`` makes first, then marks this prefill as used."""
        if self.decoded:
            raise ValueError("this Prefill was already decoded (decoding extends its cache in place)")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.decoded = True


class VLM(ABC):
    """A vision-language model as spatialkit sees it.

    Subclasses set ``family`` ("organism", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava"),
    ``model`` (the torch module), ``device`` and ``dtype``. Only the adapters read ``family``: code written
    against this interface never branches on it (``tests/test_vlm_interface.py`` checks), so every
    intervention runs unchanged on every kind.

    Images, wherever a method takes them: a sequence of PIL images or HxWx3 uint8 arrays, or one stacked
    (B, H, W, 3) array; both adapters accept either. ``options`` of :meth:`score_options` may hold a different
    number of options per prompt.
    """

    family: str
    model: torch.nn.Module
    device: torch.device
    dtype: torch.dtype

    # -- inputs ---------------------------------------------------------------------------------
    @abstractmethod
    def prepare(self, images: Sequence, prompts: Sequence[str], *, system_prompt: str | None = None) -> Batch:
        """Turn PIL images (or HxWx3 uint8 arrays) and prompts into a :class:`Batch`."""

    # -- running --------------------------------------------------------------------------------
    @abstractmethod
    def logits(self, batch: Batch) -> torch.Tensor:
        """Next-token logits (B, L, V) for the whole prompt sequence, through both hook points."""

    @abstractmethod
    def score_options(self, images: Sequence, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> torch.Tensor:
        """Sum log-likelihood of each option's tokens as the answer: (B, K) float tensor, K the most options
        of any prompt; -inf where a prompt has fewer options."""

    @abstractmethod
    def generate(self, images: Sequence, prompts: Sequence[str], max_new_tokens: int = 8) -> list[Generation]:
        """Greedy generation (through both hook points; attention hooks see prefill and decode calls)."""

    # -- hooks ----------------------------------------------------------------------------------
    @abstractmethod
    def visual_hook(self, fn: VisualFn) -> contextlib.AbstractContextManager:
        """Context manager: every forward inside passes its visual tokens through ``fn``.

        Restores the model on exit, also when the body raises.
        """

    @abstractmethod
    def attention_hook(self, fn: AttentionFn) -> contextlib.AbstractContextManager:
        """Context manager: every LM attention layer computes ``fn(AttnCall)`` instead of SDPA.

        The ``AttnCall.token_kind`` is filled from the batch being run. Restores on exit, also on error.
        """

    @property
    def vision_position_signal(self) -> str | None:
        """What :meth:`vision_position_hook` moves inside this model's vision tower, in words; None when the model
        has no such hook (then a content/position split can only use a position code estimated at the LM input)."""
        return None

    def vision_position_hook(self, fn: SlotIndexFn) -> contextlib.AbstractContextManager:
        """Context manager: inside the vision tower, move only the position signal the tower itself uses.

        ``fn(grids)`` gets each image's (h, w) grid of LM visual tokens (as :class:`VisualTokens` lays them out)
        and returns a (N_total,) gather index over those slots, each image's block a permutation of its own slots
        (:func:`spatialkit.analysis.interventions.shuffle.batch_index`'s layout). The patches that become LM
        slot s then carry, inside the tower, the position signal of the patches of slot ``index[s]``; their
        pixels (content) stay where they are, and so do the LM's position ids. An identity index leaves the
        model untouched (bit-identical outputs). Restores the model on exit, also when the body raises.
        Models without a tower-level hook (``vision_position_signal`` None) raise NotImplementedError."""
        raise NotImplementedError(f"{self.name} has no tower-level position hook")

    @staticmethod
    def _slot_index(fn: SlotIndexFn, grids: list[tuple[int, int]]) -> tuple[torch.Tensor, bool]:
        """``fn(grids)`` on the CPU, checked (one permutation of its own slots per image), and whether it is the
        identity."""
        index = torch.as_tensor(fn(list(grids))).long().cpu().reshape(-1)
        total = sum(h * w for h, w in grids)
        if index.numel() != total:
            raise ValueError(f"a slot index for grids {grids} must hold {total} entries, got {index.numel()}")
        offset = 0
        for h, w in grids:
            block = index[offset:offset + h * w] - offset
            if not torch.equal(block.sort().values, torch.arange(h * w)):
                raise ValueError(f"a slot index must permute each image's own {h}x{w} slots")
            offset += h * w
        return index, bool(torch.equal(index, torch.arange(total)))


    @abstractmethod
    def visual_tokens(self, batch: Batch) -> VisualTokens:
        """The visual tokens the LM would receive for this batch (after any active visual hook)."""

    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Number of LM decoder layers."""

    def text_embeddings(self, batch: Batch) -> torch.Tensor:
        """LM input embeddings of the text tokens (N_text, d); used for norm comparisons."""
        raise NotImplementedError

    def prompt_format(self, fmt: str) -> contextlib.AbstractContextManager:
        """Context manager: while inside, prompts are rendered the ``fmt`` way — "chat": the model's own chat
        template; "official": the prompt string a benchmark's official evaluation used for this model (e.g.
        AdaptVis' ``<image>\nUSER: ...\nASSISTANT:`` for LLaVA-1.5). Restored on exit. The default (the
        organism, Qwen models): the model's own template is the official one."""
        return contextlib.nullcontext()

    @property
    def name(self) -> str:
        """A short human-readable name of the model, for messages."""
        return getattr(self, "family", type(self).__name__)

    def check_layer(self, layer: int, *, param: str = "layer", allow_minus_one: bool = True) -> int:
        """``layer`` if it names one of this model's LM layers (``-1`` too when ``allow_minus_one``: the
        caller's "default" layer), else a one-line ``ParameterError``: "parameter 'layer' = 40 is invalid;
        allowed: int in [-1, 27] (Qwen2-VL-7B-Instruct has 28 LM layers)". Validates against the loaded model,
        not against any other model a notebook also runs."""

        low = -1 if allow_minus_one else 0
        n = self.num_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not low <= layer <= n - 1:
            raise ParameterError(f"parameter '{param}' = {layer!r} is invalid; allowed: int in [{low}, {n - 1}] "
                                 f"({self.name} has {n} LM layers)")
        return layer

    def position_ids(self, images: Sequence, prompts: Sequence[str]) -> PositionIds:
        """The position ids the LM gives each token of these (image, prompt) pairs, computed by the model's own
        code (not re-derived), with its rotary and vision-tower position facts: see :class:`PositionIds`."""
        raise NotImplementedError(f"{self.name} does not implement position_ids")

    # -- model parts ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def lm_layers(self) -> torch.nn.ModuleList:
        """The LM decoder layers in order; a forward hook on layer i sees its output hidden states first."""

    @abstractmethod
    def input_embeddings(self) -> torch.nn.Embedding:
        """The LM's input embedding table (token id -> the vector the LM reads)."""

    @abstractmethod
    def output_embeddings(self) -> torch.nn.Module:
        """The LM's unembedding (``.weight`` (V, d)): logits = final hidden states @ weightᵀ."""

    def location_token_ids(self) -> torch.Tensor:
        """Ids of the coordinate tokens loc0, loc1, ... of a coarse location grid, in order (PIN reads boxes
        with them). Only models whose vocabulary has such tokens implement it."""
        raise NotImplementedError(f"{self.name} has no location tokens (loc0, loc1, ...) in its vocabulary")

    # -- differentiable LM pass -----------------------------------------------------------------
    def append_tokens(self, batch: Batch, suffixes: Sequence[Sequence[int]]) -> Batch:
        """The batch with token ids appended right after each row's last prompt token (kind TEXT)."""
        raise NotImplementedError(f"{self.name} does not implement append_tokens")

    def lm_hidden(self, batch: Batch, visual: torch.Tensor | None = None) -> torch.Tensor:
        """Final (normalised) LM hidden states (B, L, d), with gradients: ``output_embeddings`` of them are
        the logits. ``visual`` (N_total, d): visual tokens to use instead of the image's (as
        :meth:`visual_tokens` lays them out); None = the image's, through the active visual hooks. Active
        attention hooks apply. For training something outside a frozen model (PIN)."""
        raise NotImplementedError(f"{self.name} does not implement lm_hidden")

    # -- prefill, then decode -------------------------------------------------------------------
    @abstractmethod
    def prefill(self, images: Sequence, prompts: Sequence[str]) -> Prefill:
        """Run the prompts once with a KV cache (through the active hooks): the first token's logits, and
        the cache that :meth:`decode` continues from. ``decode(prefill(x), n)`` is ``generate(x, n)``."""

    @abstractmethod
    def decode(self, prefill: Prefill, max_new_tokens: int = 8, *,
               attention_fn_for: Callable[[list[int]], AttentionFn] | None = None,
               rerun_last: bool = False) -> list[Generation]:
        """Greedy decoding from a :class:`Prefill` (consumes it).

        ``attention_fn_for(items)``: the attention function for the steps decoded here (as an innermost
        :meth:`attention_hook` would be), given the batch items (indices in input order) that one sequence
        of forward passes runs; adapters may decode the batch in several such groups (the organism groups
        rows by prompt length), so per-item settings index with ``items``. None = the active hooks.
        ``rerun_last``: first drop the last prompt position from the cache and run it again alone over the
        cache of the positions before it (one forward pass per group, under the group's function); the
        first token comes from that rerun. The rows before never see the last one
        (causal attention), so their cached keys and values hold whatever the last row does: a prefill
        read unscaled can be decoded with the last row's attention changed (AdaptVis) at the cost of one
        single-token step. ``Generation.first_token_prob`` is that of the token actually chosen first.
        """


@contextlib.contextmanager
def stacked(*managers: contextlib.AbstractContextManager) -> Iterator[None]:
    """Enter several hook context managers at once (innermost last)."""
    with contextlib.ExitStack() as stack:
        for m in managers:
            stack.enter_context(m)
        yield


def softmax_confidence(logits: torch.Tensor) -> float:
    """Max softmax probability rounded to 2 decimals, as the AdaptVis gate uses it."""
    return math.floor(float(logits.float().softmax(-1).max()) * 100 + 0.5) / 100
