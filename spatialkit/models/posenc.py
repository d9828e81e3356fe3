"""Positional encodings for image tokens, written out plainly: APE, RPE, RoPE, 2D RoPE, M-RoPE.

Everything works on a grid of ``h x w`` tokens in raster order (token ``r = row * w + col``). Positions
are carried as ``(t, row, col)`` triples (``grid_positions``), the layout Qwen's M-RoPE uses, so one
position tensor serves every encoding.

Three ways to tell a transformer where a token is, and where each one acts:

* **absolute** (``none``, ``learned``, ``sincos2d``): a vector per position is *added to the token*
  before the first layer (``PositionalEncoding.add``). A learned table is tied to the grid it was
  trained on; at a new grid it is bilinearly interpolated (``interpolate_table``).
* **relative bias** (``rpe2d``, Shaw et al. 2018): inside attention, query ``i`` gets the extra logit
  ``q_i . a[clip(j - i)]`` for key ``j`` (``PositionalEncoding.bias``); 2D uses a row table and a column
  table. Only offsets exist, so absolute position is lost (up to edge effects).
* **rotary** (``rope1d``, ``rope2d``, ``mrope``, Su et al. 2024): queries and keys are rotated by angles
  proportional to their position (``PositionalEncoding.rotate``), so ``q . k`` depends only on the
  offset. ``rope1d`` uses the flattened slot index (vertical neighbours are ``w`` apart), ``rope2d``
  gives half the frequencies to the row and half to the column, ``mrope`` is Qwen2-VL's split of the
  frequencies into temporal/height/width sections (contiguous, or Qwen3-VL's interleaved layout).

All rotary code uses the rotate-half layout of transformers' Llama/Qwen code: frequency ``f`` rotates
the pair of dims ``(f, f + head_dim/2)``. ``qwen_rope_index`` reproduces the (t, h, w) position ids Qwen
gives to image tokens and the text after them (``get_rope_index``); ``check_position_ids`` sets a real
checkpoint's own ids (``VLM.position_ids``) beside this module's construction from the same grids.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spatialkit.common.params import check_number
from spatialkit.models.vlm import TokenKind

ENCODINGS = ("none", "learned", "sincos2d", "rpe2d", "rope1d", "rope2d", "mrope")
ABSOLUTE = ("learned", "sincos2d")
ROTARY = ("rope1d", "rope2d", "mrope")

QWEN2_MROPE_SECTION = (16, 24, 24)  # head_dim 128: temporal, height, width frequencies (contiguous)
QWEN3_MROPE_SECTION = (24, 20, 20)  # head_dim 128: interleaved T H W T H W ...


# --- argument checks ------------------------------------------------------------------------------

def _check_grid(grid, name: str = "grid") -> tuple[int, int]:
    try:
        h, w = (int(v) for v in grid)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (h, w) of positive ints, got {grid!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be a pair (h, w) of positive ints, got {grid!r}")
    return h, w


def _check_even(value: int, multiple: int, name: str) -> None:
    if not isinstance(value, int) or value <= 0 or value % multiple:
        raise ValueError(f"{name} must be a positive multiple of {multiple}, got {value!r}")


# --- positions ------------------------------------------------------------------------------------

def grid_positions(h: int, w: int, t: int = 0) -> Tensor:
    """(h*w, 3) long tensor of (t, row, col) in raster order."""
    h, w = _check_grid((h, w))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([torch.full((h * w,), int(t)), rows.reshape(-1), cols.reshape(-1)], dim=-1)


def qwen_rope_index(input_ids: Tensor, image_grid_thw: Tensor, *, image_token_id: int,
                    spatial_merge_size: int = 2, attention_mask: Tensor | None = None) -> Tensor:
    """The (3, B, L) M-RoPE position ids Qwen2-VL / Qwen3-VL assign to a batch (images only).

    Rules (Qwen2-VL, Wang et al. 2024; transformers' get_rope_index): text tokens get t = h = w = running index. A run of image tokens starting at
    index s, with an (h', w') grid after the spatial merge, gets (s, s + row, s + col) per token in raster
    order; the text after it resumes at s + max(h', w'), not at s + h'*w'. ``image_grid_thw`` is (n_images, 3)
    in *patch* units, as the processor returns it. Padding positions (``attention_mask == 0``) get 0.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
    check_number("spatial_merge_size", spatial_merge_size, 1, None, int)
    grids = iter(image_grid_thw.tolist()) if image_grid_thw is not None else iter(())
    out = torch.zeros(3, *input_ids.shape, dtype=torch.long)
    for b, ids in enumerate(input_ids.tolist()):
        keep = range(len(ids)) if attention_mask is None else [i for i, m in enumerate(attention_mask[b].tolist()) if m]
        pos, i, seq = 0, 0, [ids[k] for k in keep]
        rows = []
        while i < len(seq):
            if seq[i] != image_token_id:
                rows.append(torch.full((3,), pos))
                pos, i = pos + 1, i + 1
                continue
            try:
                t, gh, gw = next(grids)
            except StopIteration:
                raise ValueError("image_grid_thw has fewer images than input_ids has image-token runs") from None
            hh, ww = gh // spatial_merge_size, gw // spatial_merge_size
            n = t * hh * ww
            if seq[i:i + n] != [image_token_id] * n:
                raise ValueError(f"image_grid_thw says {n} image tokens but the run in input_ids row {b} is shorter")
            tt = torch.arange(t).repeat_interleave(hh * ww)
            grid = grid_positions(hh, ww).repeat(t, 1)
            grid[:, 0] = tt
            rows.extend(grid + pos)  # (t, row, col) + s
            pos, i = pos + max(hh, ww), i + n
        out[:, b, list(keep)] = torch.stack(rows, dim=1)
    return out


def rope_index_1d(attention_mask: Tensor) -> Tensor:
    """(B, L) 1D RoPE position ids of a left-padded batch: the running index of the real tokens, 0 at padding
    (the slot index ``Rope1d`` uses, counted from each row's first real token)."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp(min=0) * mask


def _id_range(values: Tensor) -> str:
    if values.numel() == 0:
        return "none"
    return f"{int(values.min())}..{int(values.max())} ({values.numel()} ids)"


def check_position_ids(pos, atol: float = 1e-5) -> "pandas.DataFrame":  # noqa: F821
    """A model's own position ids next to this module's construction from the same grids, component by component.

    ``pos``: a :class:`spatialkit.models.vlm.PositionIds` (``VLM.position_ids``: what the model computed). Ours:
    three axes (M-RoPE) by :func:`qwen_rope_index` from the token kinds, the processor's patch grids
    (``vision["image_grid_thw"]``) and the merge size; one axis by :func:`rope_index_1d`; the rotary cos/sin by
    :func:`mrope_angles` / :func:`rope_angles_1d` with the checkpoint's theta, head_dim and section (equal: max
    |difference| <= ``atol``); which axis drives each frequency by :func:`mrope_axis_of_frequency`; a learned
    vision table read by index (``vision["ape_ids"]``) as raster order after the table's extra rows (CLS).
    Returns one row per component: component, model, posenc, equal (bool), detail. Nothing is asserted: a
    component that differs is a row with ``equal`` False.
    """
    import pandas as pd  # heavy: only the report needs it

    kind, rope, vision = pos.token_kind, pos.rope, pos.vision
    image, text = kind == TokenKind.IMAGE, (kind == TokenKind.SYSTEM) | (kind == TokenKind.TEXT)
    mrope = len(pos.axes) == 3
    if mrope:
        ours = qwen_rope_index(image.long(), vision["image_grid_thw"], image_token_id=1,
                               spatial_merge_size=vision["spatial_merge_size"], attention_mask=kind != TokenKind.PAD)
    else:
        ours = rope_index_1d(kind != TokenKind.PAD)[None]
    rows = []

    def ids_row(name: str, model: Tensor, mine: Tensor) -> None:
        wrong = int((model != mine).sum())
        rows.append(dict(component=name, model=_id_range(model), posenc=_id_range(mine), equal=wrong == 0,
                         detail=f"{wrong} of {model.numel()} ids differ"))

    for a, axis_name in enumerate(pos.axes):
        ids_row(f"image tokens: {axis_name}", pos.ids[a][image], ours[a][image])
    ids_row("text tokens: " + (" = ".join(pos.axes) if mrope else pos.axes[0]), pos.ids[:, text], ours[:, text])
    head_dim, theta = rope["head_dim"], rope["theta"]
    counts = lambda axis: "/".join(str(int((axis == a).sum())) for a in range(len(pos.axes)))  # noqa: E731
    freq_row = dict(component="frequencies per axis (" + "/".join(pos.axes) + ")",
                    model=f"{counts(rope['axis_of_frequency'])} (probed)")
    rotary_row = dict(component="rotary cos/sin at these ids", model=f"{rope['rope_type']} rope, theta {theta:g}")
    try:
        if mrope:
            section = tuple(rope["section"])
            mine_axis = mrope_axis_of_frequency(section, rope["interleaved"])
            angles = mrope_angles(pos.ids.permute(1, 2, 0), head_dim, theta, section, rope["interleaved"])
        else:
            mine_axis = torch.zeros(head_dim // 2, dtype=torch.long)
            angles = rope_angles_1d(pos.ids[0], head_dim, theta)
    except ValueError as err:  # posenc cannot build this layout at all: both rows differ, and say why
        rows.append(dict(freq_row, posenc="cannot build", equal=False, detail=str(err)))
        rows.append(dict(rotary_row, posenc="cannot build", equal=False, detail=str(err)))
    else:
        wrong = int((rope["axis_of_frequency"] != mine_axis).sum())
        rows.append(dict(freq_row, posenc=counts(mine_axis), equal=wrong == 0,
                         detail=f"{wrong} of {head_dim // 2} frequencies on another axis"))
        cos, sin = angles_to_cos_sin(angles)
        diff = float(torch.maximum((cos - rope["cos"]).abs().max(), (sin - rope["sin"]).abs().max()))
        rows.append(dict(rotary_row, posenc=f"{'mrope' if mrope else 'rope1d'}, theta {theta:g}", equal=diff <= atol,
                         detail=f"max |difference| {diff:.1e} (equal: <= {atol:g})"))
    if vision.get("ape_ids"):  # a learned vision table read by index: raster order after its extra rows (CLS)
        got = vision["ape_ids"][0]
        h, w = got.shape
        mine = grid_positions(h, w)[:, 1:] @ torch.tensor([w, 1]) + (vision["ape_table"].shape[0] - h * w)
        ids_row(f"vision tower table row per patch ({h}x{w} grid)", got.reshape(-1), mine)
    return pd.DataFrame(rows)


# --- absolute encodings ---------------------------------------------------------------------------

def sincos_1d(positions: Tensor, dim: int, theta: float = 10000.0) -> Tensor:
    """Vaswani et al.'s sinusoidal table: (..., dim) = [sin(p w_0), ..., sin(p w_{d/2-1}), cos(p w_0), ...]."""
    _check_even(dim, 2, "dim")
    check_number("theta", theta, 0, None, low_open=True)
    angles = positions.float()[..., None] * rope_inv_freq(dim, theta)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def sincos_2d(h: int, w: int, dim: int, theta: float = 10000.0) -> Tensor:
    """(h*w, dim) 2D sinusoidal table (MAE style): first half encodes the row, second half the column."""
    _check_even(dim, 4, "dim")
    pos = grid_positions(h, w)
    return torch.cat([sincos_1d(pos[:, 1], dim // 2, theta), sincos_1d(pos[:, 2], dim // 2, theta)], dim=-1)


def interpolate_table(table: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Bilinearly resize an (h*w, d) positional table from ``old_grid`` to ``new_grid`` (ViT/DeiT practice)."""
    (h0, w0), (h1, w1) = _check_grid(old_grid, "old_grid"), _check_grid(new_grid, "new_grid")
    if table.shape[0] != h0 * w0:
        raise ValueError(f"table has {table.shape[0]} rows but old_grid {old_grid} has {h0 * w0} positions")
    if (h0, w0) == (h1, w1):
        return table
    image = table.T.reshape(1, -1, h0, w0)
    resized = F.interpolate(image, size=(h1, w1), mode="bilinear", align_corners=False)
    return resized.reshape(-1, h1 * w1).T


# --- relative position bias (Shaw et al.) ---------------------------------------------------------

def clipped_offsets(positions: Tensor, max_distance: int) -> Tensor:
    """(N, N) long table index of clip(p_j - p_i, -k, k) + k, for 1D positions (N,)."""
    check_number("max_distance", max_distance, 1, None, int)
    offsets = positions[None, :] - positions[:, None]
    return offsets.clamp(-max_distance, max_distance) + max_distance


def shaw_bias(q: Tensor, table: Tensor, index: Tensor) -> Tensor:
    """Shaw et al.'s key-side term q_i . a[index[i, j]] for q (..., N, Dh), table (2k+1, Dh) -> (..., N, N).

    Computed as q @ table.T (N x (2k+1)) and a gather, so it never builds an (N, N, Dh) tensor.
    """
    per_offset = q @ table.T.to(q.dtype)  # (..., N, 2k+1)
    return per_offset.gather(-1, index.expand(*q.shape[:-1], index.shape[-1]))


# --- rotary encodings -----------------------------------------------------------------------------

def rope_inv_freq(dim: int, theta: float = 10000.0) -> Tensor:
    """The dim/2 RoPE frequencies theta^(-2f/dim), f = 0 .. dim/2 - 1 (highest first)."""
    _check_even(dim, 2, "dim")
    check_number("theta", theta, 0, None, low_open=True)
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dim: the 90-degree turn of every pair (f, f + d/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (..., Dh) by the angles whose cos/sin (..., Dh) are given (rotate-half layout)."""
    return x * cos + rotate_half(x) * sin


def angles_to_cos_sin(angles: Tensor) -> tuple[Tensor, Tensor]:
    """Per-frequency angles (..., Dh/2) -> cos, sin (..., Dh) in rotate-half layout."""
    full = torch.cat([angles, angles], dim=-1)
    return full.cos(), full.sin()


def rope_angles_1d(positions: Tensor, head_dim: int, theta: float = 10000.0) -> Tensor:
    """(..., N) positions -> (..., N, head_dim/2) angles p * theta^(-2f/head_dim)."""
    return positions.float()[..., None] * rope_inv_freq(head_dim, theta).to(positions.device)


def rope_angles_2d(rows: Tensor, cols: Tensor, head_dim: int, theta: float = 10000.0) -> Tensor:
    """Axial 2D RoPE: the first head_dim/4 frequencies rotate by row, the next head_dim/4 by column.

    Each axis gets the full frequency spectrum of a head_dim/2 RoPE (Heo et al. 2024, "RoPE-Axial"), so
    both directions have fast and slow frequencies.
    """
    _check_even(head_dim, 4, "head_dim")
    return torch.cat([rope_angles_1d(rows, head_dim // 2, theta), rope_angles_1d(cols, head_dim // 2, theta)], dim=-1)


def mrope_axis_of_frequency(section: Sequence[int], interleaved: bool = False) -> Tensor:
    """Which position axis (0 = t, 1 = h, 2 = w) drives each of the sum(section) frequencies.

    Contiguous (Qwen2-VL, [16, 24, 24]): f < 16 -> t, 16 <= f < 40 -> h, rest -> w.
    Interleaved (Qwen3-VL, [24, 20, 20]): f % 3 == 1 -> h and f % 3 == 2 -> w while f < 3 * section[axis],
    every other frequency -> t (so t gets 0, 3, ..., 57 and 60..63).
    """
    if len(section) != 3 or any((not isinstance(s, int)) or s < 0 for s in section):
        raise ValueError(f"mrope section must be three non-negative ints (t, h, w), got {section!r}")
    n = sum(section)
    if not interleaved:
        return torch.repeat_interleave(torch.arange(3), torch.tensor(section))
    axis = torch.zeros(n, dtype=torch.long)
    for a in (1, 2):
        axis[a: 3 * section[a]: 3] = a
    if [(axis == a).sum().item() for a in (1, 2)] != list(section[1:]):
        raise ValueError(f"interleaved mrope section {section!r}: h/w need 3*section <= {n} frequencies")
    return axis


def mrope_angles(positions: Tensor, head_dim: int, theta: float = 1e6, section: Sequence[int] | None = None,
                 interleaved: bool = False) -> Tensor:
    """M-RoPE angles: positions (..., N, 3) of (t, h, w) -> (..., N, head_dim/2).

    Frequency f is the ordinary 1D RoPE frequency theta^(-2f/head_dim), driven by the axis that
    ``mrope_axis_of_frequency`` assigns to it. With t = h = w (text tokens) this is exactly 1D RoPE.
    """
    section = tuple(section) if section is not None else default_mrope_section(head_dim)
    if sum(section) != head_dim // 2:
        raise ValueError(f"mrope section {section} must sum to head_dim/2 = {head_dim // 2}")
    if positions.shape[-1] != 3:
        raise ValueError(f"positions must end in a (t, h, w) axis of size 3, got shape {tuple(positions.shape)}")
    per_axis = positions.float()[..., None] * rope_inv_freq(head_dim, theta).to(positions.device)  # (..., N, 3, F)
    axis = mrope_axis_of_frequency(section, interleaved).to(positions.device)
    return per_axis.gather(-2, axis.expand(*per_axis.shape[:-2], 1, -1)).squeeze(-2)


def default_mrope_section(head_dim: int) -> tuple[int, int, int]:
    """Qwen2-VL's 1/4 : 3/8 : 3/8 split of head_dim/2 frequencies (gives [16, 24, 24] at head_dim 128)."""
    _check_even(head_dim, 2, "head_dim")
    n = head_dim // 2
    t = n // 4
    h = (n - t) // 2
    return (t, h, n - t - h)


# --- the module the models use --------------------------------------------------------------------

class PositionalEncoding(nn.Module):
    """One positional encoding, with the three hook points a transformer calls.

    ``add(x, grid)`` before the first layer; ``rotate(q, k, positions)`` and ``bias(q, grid)`` inside every
    attention layer. Each kind implements the hooks it needs; the others are identities / None, so a model
    can call all three unconditionally.
    """

    name = "none"

    def __init__(self, *, dim: int, head_dim: int, n_heads: int, grid: tuple[int, int]):
        super().__init__()
        self.dim, self.head_dim, self.n_heads = dim, head_dim, n_heads
        self.grid = _check_grid(grid)

    def add(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """x (B, N, d) in raster order on an h x w grid -> x plus the absolute encoding (if any)."""
        self._check_tokens(x, grid)
        return x

    def rotate(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """q, k (B, H, N, Dh); positions (N, 3) or (B, N, 3) of (t, row, col) -> rotated q, k."""
        return q, k

    def bias(self, q: Tensor, grid: tuple[int, int]) -> Tensor | None:
        """Additive attention-logit bias (B, H, N, N), already divided by sqrt(Dh) like q.k; else None."""
        return None

    def _check_tokens(self, x: Tensor, grid) -> tuple[int, int]:
        h, w = _check_grid(grid)
        if x.shape[-2] != h * w:
            raise ValueError(f"x has {x.shape[-2]} tokens but grid {grid} has {h * w}")
        return h, w

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, head_dim={self.head_dim}, grid={self.grid}"


class NoPosition(PositionalEncoding):
    """No positional information: attention sees a bag of patches (permutation-equivariant)."""

    name = "none"


class LearnedAPE(PositionalEncoding):
    """A learned vector per grid cell (ViT), bilinearly interpolated when the grid changes."""

    name = "learned"

    def __init__(self, **kw):
        super().__init__(**kw)
        h, w = self.grid
        self.table = nn.Parameter(torch.randn(h * w, self.dim) * 0.02)

    def table_for(self, grid: tuple[int, int]) -> Tensor:
        return interpolate_table(self.table, self.grid, grid)

    def add(self, x, grid):
        self._check_tokens(x, grid)
        return x + self.table_for(grid).to(x.dtype)


class SinCos2dAPE(PositionalEncoding):
    """Fixed 2D sinusoidal table (row half + column half), computed for whatever grid comes in."""

    name = "sincos2d"

    def __init__(self, *, theta: float = 10000.0, **kw):
        super().__init__(**kw)
        _check_even(self.dim, 4, "dim")
        self.theta = theta

    def table_for(self, grid):
        return sincos_2d(*_check_grid(grid), self.dim, self.theta)

    def add(self, x, grid):
        self._check_tokens(x, grid)
        return x + self.table_for(grid).to(device=x.device, dtype=x.dtype)


class RelativeBias2d(PositionalEncoding):
    """Shaw et al.'s relative keys in 2D: q_i . (a_row[clip(r_j - r_i)] + a_col[clip(c_j - c_i)]) / sqrt(Dh).

    Tables are shared across heads (as in Shaw et al.) and clipped at ``max_distance`` (default: the
    build grid's largest offset), so a larger grid reuses the outermost offsets.
    """

    name = "rpe2d"

    def __init__(self, *, max_distance: int | None = None, **kw):
        super().__init__(**kw)
        self.max_distance = int(max_distance) if max_distance is not None else max(self.grid) - 1
        check_number("max_distance", self.max_distance, 1, None, int)
        n = 2 * self.max_distance + 1
        self.row_table = nn.Parameter(torch.randn(n, self.head_dim) * 0.02)
        self.col_table = nn.Parameter(torch.randn(n, self.head_dim) * 0.02)

    def bias(self, q, grid):
        h, w = _check_grid(grid)
        if q.shape[-2] != h * w:
            raise ValueError(f"q has {q.shape[-2]} tokens but grid {grid} has {h * w}")
        pos = grid_positions(h, w).to(q.device)
        row_index = clipped_offsets(pos[:, 1], self.max_distance)
        col_index = clipped_offsets(pos[:, 2], self.max_distance)
        logits = shaw_bias(q, self.row_table, row_index) + shaw_bias(q, self.col_table, col_index)
        return logits / math.sqrt(self.head_dim)


class _Rotary(PositionalEncoding):
    def __init__(self, *, theta: float = 10000.0, **kw):
        super().__init__(**kw)
        check_number("theta", theta, 0, None, low_open=True)
        self.theta = float(theta)

    def angles(self, positions: Tensor) -> Tensor:  # (..., N, 3) -> (..., N, head_dim/2)
        raise NotImplementedError

    def rotate(self, q, k, positions):
        if positions.shape[-1] != 3 or positions.ndim not in (2, 3):
            raise ValueError(f"positions must be (N, 3) or (B, N, 3), got shape {tuple(positions.shape)}")
        if positions.shape[-2] != q.shape[-2]:
            raise ValueError(f"positions has {positions.shape[-2]} tokens but q has {q.shape[-2]}")
        cos, sin = angles_to_cos_sin(self.angles(positions.to(q.device)))
        if cos.ndim == 3:  # (B, N, Dh) -> (B, 1, N, Dh): same rotation for every head
            cos, sin = cos[:, None], sin[:, None]
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


class Rope1d(_Rotary):
    """1D RoPE over the token *slot* (raster index 0..N-1), as an LLM sees a flattened image (LLaVA).

    The (t, row, col) triple is ignored on purpose: that is exactly the information 1D flattening
    throws away; vertical neighbours end up w slots apart.
    """

    name = "rope1d"

    def angles(self, positions):
        slots = torch.arange(positions.shape[-2], device=positions.device).expand(positions.shape[:-1])
        return rope_angles_1d(slots, self.head_dim, self.theta)


class Rope2d(_Rotary):
    """Axial 2D RoPE: half the rotary pairs turn with the row, half with the column."""

    name = "rope2d"

    def __init__(self, **kw):
        super().__init__(**kw)
        _check_even(self.head_dim, 4, "head_dim")

    def angles(self, positions):
        return rope_angles_2d(positions[..., 1], positions[..., 2], self.head_dim, self.theta)


class MRope(_Rotary):
    """Qwen2-VL's multimodal RoPE: frequencies split into (t, h, w) sections (contiguous or interleaved)."""

    name = "mrope"

    def __init__(self, *, section: Sequence[int] | None = None, interleaved: bool = False, **kw):
        super().__init__(**kw)
        self.section = tuple(section) if section is not None else default_mrope_section(self.head_dim)
        if sum(self.section) != self.head_dim // 2:
            raise ValueError(f"section {self.section} must sum to head_dim/2 = {self.head_dim // 2}")
        mrope_axis_of_frequency(self.section, interleaved)  # validates the layout
        self.interleaved = interleaved

    def angles(self, positions):
        return mrope_angles(positions, self.head_dim, self.theta, self.section, self.interleaved)


_CLASSES = {c.name: c for c in (NoPosition, LearnedAPE, SinCos2dAPE, RelativeBias2d, Rope1d, Rope2d, MRope)}


_OPTIONS = {"theta": ("sincos2d", "rope1d", "rope2d", "mrope"), "max_distance": ("rpe2d",),
            "section": ("mrope",), "interleaved": ("mrope",)}


def build(name: str, *, dim: int, head_dim: int, n_heads: int, grid: tuple[int, int], **options) -> PositionalEncoding:
    """Make the encoding called ``name`` (one of ENCODINGS) for a model of width ``dim``.

    ``options`` go to the class: ``theta`` (rotary, sincos2d; ignored by the other kinds, so one call can
    build every kind), ``max_distance`` (rpe2d), ``section`` and ``interleaved`` (mrope). Any other option
    raises ValueError.
    """
    if name not in _CLASSES:
        raise ValueError(f"unknown positional encoding name={name!r}; allowed: {list(ENCODINGS)}")
    _check_even(dim, 2, "dim")
    _check_even(head_dim, 2, "head_dim")
    check_number("n_heads", n_heads, 1, None, int)
    options = dict(options)
    if name not in _OPTIONS["theta"]:
        options.pop("theta", None)  # one call site can build every kind with its theta
    bad = [k for k in options if name not in _OPTIONS.get(k, ())]
    if bad:
        raise ValueError(f"options {bad} are not accepted by positional encoding {name!r}")
    return _CLASSES[name](dim=dim, head_dim=head_dim, n_heads=n_heads, grid=grid, **options)


# --- looking at encodings: position kernels on a grid ---------------------------------------------

def cosine_kernel(table: Tensor) -> Tensor:
    """(N, N) cosine similarity of per-position vectors (absolute encodings)."""
    unit = F.normalize(table.float(), dim=-1)
    return unit @ unit.T


def rotary_kernel(angles: Tensor) -> Tensor:
    """(N, N) positional kernel of a rotary encoding: mean over frequencies of cos(angle_i - angle_j).

    It is q_i . k_j / |q|^2 for a query and key with the same content spread evenly over the rotary
    pairs, i.e. what position alone does to an attention logit.
    """
    diff = angles.float()[:, None, :] - angles.float()[None, :, :]
    return diff.cos().mean(dim=-1)


def encoding_kernel(enc: PositionalEncoding, grid: tuple[int, int]) -> Tensor:
    """(N, N) how similar positions i and j look to ``enc`` on an h x w grid (raster order).

    Absolute kinds: cosine of their table rows. Rotary kinds: ``rotary_kernel`` of their angles. RPE:
    cosine between the relative embedding of offset (i -> j) and that of offset 0. "none": all ones.
    """
    h, w = _check_grid(grid)
    pos = grid_positions(h, w)
    if enc.name in ABSOLUTE:
        return cosine_kernel(enc.table_for((h, w)).detach())
    if enc.name in ROTARY:
        return rotary_kernel(enc.angles(pos))
    if enc.name == "rpe2d":
        rows = clipped_offsets(pos[:, 1], enc.max_distance)
        cols = clipped_offsets(pos[:, 2], enc.max_distance)
        rel = (enc.row_table[rows] + enc.col_table[cols]).detach()  # (N, N, Dh)
        zero = enc.row_table[enc.max_distance] + enc.col_table[enc.max_distance]
        return F.cosine_similarity(rel, zero.detach()[None, None], dim=-1)
    return torch.ones(h * w, h * w)


def grid_distances(grid: tuple[int, int]) -> Tensor:
    """(N, N) Euclidean distance between the cells of an h x w grid, raster order."""
    pos = grid_positions(*_check_grid(grid))[:, 1:].float()
    return torch.cdist(pos, pos)


def distance_rank_correlation(kernel: Tensor, grid: tuple[int, int]) -> float:
    """Spearman correlation between similarity and *closeness* (minus 2D distance) over pairs i < j.

    1 means similarity falls off monotonically with true 2D distance. A constant kernel (no position)
    has no ranking at all and gets 0.
    """
    from scipy.stats import spearmanr  # heavy: only this statistic needs it

    dist = grid_distances(grid)
    if kernel.shape != dist.shape:
        raise ValueError(f"kernel shape {tuple(kernel.shape)} does not match grid {grid}")
    iu = torch.triu_indices(*dist.shape, offset=1)
    sim, closeness = kernel[iu[0], iu[1]].numpy(), -dist[iu[0], iu[1]].numpy()
    if np.ptp(sim) < 1e-9:
        return 0.0
    return float(spearmanr(sim, closeness).statistic)


def neighbour_locality(kernel: Tensor, grid: tuple[int, int]) -> dict[str, float]:
    """How near the horizontal / vertical neighbour looks, as a percentile among all other cells.

    For each cell with a right (down) neighbour: the fraction of the other cells that are strictly less
    similar to it than that neighbour, averaged over cells. 1.0: the neighbour is always the most similar
    cell; 1D flattening sends the vertical neighbour w slots away, which lowers its percentile.
    """
    h, w = _check_grid(grid)
    n = h * w
    out = {}
    for name, step, ok in (("horizontal", 1, lambda r: r % w < w - 1), ("vertical", w, lambda r: r < n - w)):
        scores = []
        for r in range(n):
            if not ok(r):
                continue
            others = torch.cat([kernel[r, :r], kernel[r, r + 1:]])
            scores.append(float((others < kernel[r, r + step] - 1e-9).float().sum()) / (n - 2))
        out[name] = float(np.mean(scores)) if scores else float("nan")
    return out
