"""Where the answer token looks: a last-row attention probe and its summaries (Chen et al., ICML 2025).

    batch = vlm.prepare(images, prompts)
    record = measure(vlm, batch)             # post-softmax attention of the last prompt token, every layer/head
    kind_shares(record)                      # (layers, B, 3): share on system / image / text keys
    maps = image_maps(record)                # per item (layers, h, w): attention on each visual token
    attention_in_box(maps[0], cell_coverage(box_mask(boxes, (H, W)), grid))   # share of image attention in a box

Why a probe and not ``output_attentions``: eager attention materialises every layer's (B, H, L, L) matrix,
which at a few thousand tokens is gigabytes. The probe sits in ``vlm.attention_hook``: every layer still
computes its output with fused SDPA (``call.sdpa()``), and the probe additionally computes softmax(q·kᵀ·scale +
mask) for the chosen query rows only, from the call's q and k (already rotated, Qwen3-VL: already normed), in
O(rows · L) memory. It records only on the prefill call (query length = prompt length), so it can stay on
during generation.
"""

from __future__ import annotations
import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence
import numpy as np
import pandas as pd
import torch
from spatialkit.common.stats import bootstrap_gap, percentile_interval, resample
from spatialkit.models.organism import answer_row
from spatialkit.models.vlm import VLM, AttnCall, Batch, TokenKind
from tqdm.auto import tqdm
import inspect
from spatialkit import world as scenes



KINDS = (TokenKind.SYSTEM, TokenKind.IMAGE, TokenKind.TEXT)


KIND_NAMES = tuple(k.name.lower() for k in KINDS)  # ("system", "image", "text")


def row_probs(call: AttnCall, rows: torch.Tensor) -> torch.Tensor:
    """Post-softmax attention (B, H, R, Lk) of the query rows ``rows`` (B, R), in float32.

    Costs O(R·Lk) per head: only the chosen rows' logits and mask entries are ever formed (the call's own
    mask, if the model built one, is indexed, never expanded). Grouped-query heads are handled by grouping
    the query heads instead of repeating the keys.
    """
    q, k = call.query, call.key
    b, h, lq, d = q.shape
    h_kv, lk = k.shape[1], k.shape[-2]
    r = rows.shape[1]
    rows = rows.to(q.device)
    q_rows = q.gather(2, rows[:, None, :, None].expand(b, h, r, d)).float()  # (B, H, R, D)
    # query head i reads kv head i // groups (the layout repeat_interleave would produce)
    logits = q_rows.reshape(b, h_kv, (h // h_kv) * r, d) @ k.float().transpose(-1, -2)
    logits = logits.view(b, h, r, lk) * call.scale
    lowest = torch.finfo(torch.float32).min
    if call.mask is not None:
        mask = call.mask
        while mask.dim() < 4:
            mask = mask[None]
        mask = mask.expand(b, mask.shape[1], mask.shape[2], lk)
        if mask.shape[2] != 1:  # per-query-row mask: keep only our rows
            mask = torch.stack([mask[i][:, rows[i]] for i in range(b)])  # (B, Hm, R, Lk)
        if mask.dtype == torch.bool:
            logits = logits.masked_fill(~mask, lowest)
        else:
            logits = logits + mask.float()
    if call.is_causal and lq > 1:
        # query row i (of the last lq positions) may see keys up to i + (lk - lq)
        keys = torch.arange(lk, device=q.device)
        allowed = keys[None, None, None, :] <= (rows + (lk - lq))[:, None, :, None]
        logits = logits.masked_fill(~allowed, lowest)
    return logits.softmax(dim=-1)


@dataclass
class AttentionRecord:
    """What a probe recorded on one prefill pass.

    ``probs`` (layers, B, H, R, Lk) float32 on the CPU: post-softmax attention of the recorded query rows.
    ``rows`` (B, R): their positions. ``token_kind`` (B, Lk) and ``grids`` (one (h, w) per item) come from
    the batch, so summaries need nothing else.
    """

    probs: torch.Tensor
    rows: torch.Tensor
    token_kind: torch.Tensor
    grids: list[tuple[int, int]]

    @property
    def num_layers(self) -> int:
        return self.probs.shape[0]

    def mean_probs(self) -> torch.Tensor:
        """(layers, B, Lk): averaged over heads and recorded rows (the paper averages over heads)."""
        return self.probs.mean(dim=(2, 3))


def _check_rows(rows: torch.Tensor | None, batch: Batch) -> torch.Tensor:
    b, length = batch.token_kind.shape
    if rows is None:
        return batch.last_index().view(b, 1).cpu()
    rows = torch.as_tensor(rows)
    if rows.dim() == 1:
        rows = rows[:, None]
    allowed = f"a (B,) or (B, R) int tensor with B = {b} and values in [0, {length - 1}] at non-pad positions"
    if rows.dim() != 2 or rows.shape[0] != b or rows.dtype.is_floating_point or rows.numel() == 0:
        raise ValueError(f"parameter 'rows' has shape {tuple(rows.shape)} ({rows.dtype}); allowed: {allowed}")
    rows = rows.long().cpu()
    if int(rows.min()) < 0 or int(rows.max()) >= length:
        raise ValueError(f"parameter 'rows' holds {rows.tolist()}; allowed: {allowed}")
    if (batch.token_kind.cpu().gather(1, rows) == TokenKind.PAD).any():
        raise ValueError(f"parameter 'rows' points at a pad position ({rows.tolist()}); allowed: {allowed}")
    return rows


class Probe:
    """Collects one prefill pass's rows of attention; made by :func:`attention_probe`."""

    def __init__(self, batch: Batch, rows: torch.Tensor):
        self.batch, self.rows = batch, rows
        self.length = batch.token_kind.shape[1]
        self.layers: dict[int, torch.Tensor] = {}

    def __call__(self, call: AttnCall) -> torch.Tensor:
        if call.query.shape[-2] == self.length and call.key.shape[-2] == self.length:  # prefill, not a decode step
            self.layers[call.layer] = row_probs(call, self.rows).cpu()
        return call.sdpa()  # the model's own output stays on fused attention

    def record(self) -> AttentionRecord:
        if not self.layers:
            raise RuntimeError(
                f"the probe saw no prefill call of length {self.length}: run vlm.logits(batch) (or generation on "
                f"the same inputs) inside the `with attention_probe(vlm, batch)` block"
            )
        n = max(self.layers) + 1
        missing = sorted(set(range(n)) - set(self.layers))
        if missing:
            raise RuntimeError(f"the probe missed layers {missing}")
        probs = torch.stack([self.layers[i] for i in range(n)])
        return AttentionRecord(probs=probs, rows=self.rows, token_kind=self.batch.token_kind.cpu(),
                               grids=list(self.batch.grids))


@contextlib.contextmanager
def attention_probe(vlm: VLM, batch: Batch, rows: torch.Tensor | None = None) -> Iterator[Probe]:
    """Context manager: inside it, a forward pass over ``batch`` records the attention of ``rows``.

    ``rows``: (B,) or (B, R) query positions; default the last non-pad position per item (the token that
    predicts the answer, ``batch.last_index()``). Takes over ``vlm.attention_hook`` (innermost hook wins),
    restores the model on exit, also when the body raises. Read the result with ``probe.record()``.
    """
    probe = Probe(batch, _check_rows(rows, batch))
    with vlm.attention_hook(probe):
        yield probe


def measure(vlm: VLM, batch: Batch, rows: torch.Tensor | None = None) -> AttentionRecord:
    """One forward pass over ``batch`` under the probe; the recorded attention."""
    with attention_probe(vlm, batch, rows) as probe:
        vlm.logits(batch)
    return probe.record()


def kind_shares(record: AttentionRecord) -> torch.Tensor:
    """(layers, B, 3): attention share on system / image / text keys (pads get none), head- and row-averaged."""
    p = record.mean_probs()
    kinds = record.token_kind[None]  # (1, B, Lk)
    return torch.stack([(p * (kinds == k)).sum(-1) for k in KINDS], dim=-1)


def shares_frame(record: AttentionRecord, item_offset: int = 0, **columns) -> pd.DataFrame:
    """Long table: one row per (layer, item) with columns system / image / text (+ ``columns`` constants),
    and the share of the sequence that image tokens make up (``image_tokens``)."""
    shares = kind_shares(record).numpy()
    real = (record.token_kind != TokenKind.PAD).sum(1).numpy()
    image_tokens = (record.token_kind == TokenKind.IMAGE).sum(1).numpy() / real
    layers, b = shares.shape[:2]
    frame = pd.DataFrame({
        "layer": np.repeat(np.arange(layers), b),
        "item": np.tile(np.arange(b) + item_offset, layers),
        **{name: shares[..., i].ravel() for i, name in enumerate(KIND_NAMES)},
        "image_tokens": np.tile(image_tokens, layers),
    })
    for name, value in columns.items():
        frame[name] = value
    return frame


def image_maps(record: AttentionRecord) -> list[torch.Tensor]:
    """Per item, (layers, h, w): the attention each visual token gets, on that image's token grid.

    Values are shares of the whole row (they sum to the item's image share); divide by the sum for the
    distribution of image attention. One image per item, tokens in raster order (as ``Batch.grids`` says).
    """
    p = record.mean_probs()
    if len(record.grids) != p.shape[1]:
        raise ValueError(f"image_maps needs one image per item: {len(record.grids)} grids for {p.shape[1]} items")
    maps = []
    for b, (h, w) in enumerate(record.grids):
        cols = (record.token_kind[b] == TokenKind.IMAGE).nonzero().squeeze(1)
        if cols.numel() != h * w:
            raise ValueError(f"item {b} has {cols.numel()} image tokens but its grid is {h}x{w}")
        maps.append(p[:, b, cols].reshape(-1, h, w))
    return maps


def box_mask(boxes: Sequence[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the union of pixel boxes (x0, y0, x1, y1; x1/y1 exclusive), clipped to the image."""
    height, width = shape
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(int(y0), 0): max(min(int(y1), height), 0), max(int(x0), 0): max(min(int(x1), width), 0)] = True
    return mask


def _overlap(n_pixels: int, n_cells: int) -> np.ndarray:
    """(n_cells, n_pixels): the fraction of each cell that pixel p covers (cells split the side evenly)."""
    edges = np.arange(n_cells + 1) * (n_pixels / n_cells)
    p = np.arange(n_pixels)
    lo = np.maximum(p[None, :], edges[:-1, None])
    hi = np.minimum(p[None, :] + 1, edges[1:, None])
    return np.clip(hi - lo, 0, None) / (n_pixels / n_cells)


def cell_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(h, w): the fraction of each visual token's cell that lies inside ``mask`` (H, W).

    The token grid is laid evenly over the whole image (true for Qwen's resize-to-a-multiple-of-28 and
    for LLaVA/organism square inputs); pixels straddling a cell border are split by area, so this is exact.
    """
    h, w = grid
    mask = np.asarray(mask, dtype=np.float64)
    return _overlap(mask.shape[0], h) @ mask @ _overlap(mask.shape[1], w).T


def attention_in_box(maps: torch.Tensor | np.ndarray, coverage: np.ndarray) -> np.ndarray:
    """Share of image attention inside the region: sum(map · coverage) / sum(map), over the last two axes.

    ``maps`` (..., h, w) from :func:`image_maps`; ``coverage`` (h, w) from :func:`cell_coverage`. A gaze
    spread uniformly over the image scores ``coverage.mean()`` (the region's area share): the chance level.
    """
    m = np.asarray(maps, dtype=np.float64)
    total = m.sum(axis=(-1, -2))
    return (m * coverage).sum(axis=(-1, -2)) / np.where(total > 0, total, 1.0)


def allocation(vlm: VLM, images: Sequence, prompts: Sequence[str], *, system_prompt: str | None = None,
               batch_size: int = 64, progress: bool = False) -> pd.DataFrame:
    """Per-layer attention shares (system / image / text) of the last prompt token, one row per (layer, item)."""

    frames = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="attention shares", disable=not progress):
        batch = vlm.prepare(images[start: start + batch_size], prompts[start: start + batch_size],
                            system_prompt=system_prompt)
        frames.append(shares_frame(measure(vlm, batch), item_offset=start))
    return pd.concat(frames, ignore_index=True)


def gaze_vs_correctness(vlm: VLM, bench, split: str = "test", *, limit: int | None = None, batch_size: int = 64,
                        system_prompt: str | None = None, progress: bool = False) -> pd.DataFrame:
    """Attention-in-box per layer and answer correctness for the bench's "where" questions.

    One row per (item, layer): ``in_box`` = share of the last token's image attention inside the union of
    the boxes of the objects the question names, ``area`` = that union's share of the image (the in-box
    share of a uniform gaze), ``correct``: the highest-likelihood option is the gold one (as ``spatialkit.models.organism.evaluate`` scores).
    """



    if system_prompt and "system_prompt" not in inspect.signature(vlm.score_options).parameters:
        raise ValueError(f"parameter 'system_prompt': {vlm.name} scoring takes no system prompt; allowed: None")
    items = [(k, it) for k, it in enumerate(bench.splits[split][:limit]) if it.question.family == "where"]
    rows = []
    for start in tqdm(range(0, len(items), batch_size), desc="gaze vs correctness", disable=not progress):
        chunk = items[start: start + batch_size]
        chunk_scenes = [scenes.render_scene(it.scene_seed, bench.config) for _, it in chunk]
        images = [s.image for s in chunk_scenes]
        prompts = [it.question.text for _, it in chunk]
        kwargs = {"system_prompt": system_prompt} if system_prompt else {}
        options = [list(it.question.options) for _, it in chunk]
        scores = answer_row.score_options(vlm, np.stack(images), prompts, options, **kwargs)
        correct = (scores.argmax(-1).cpu() == torch.tensor([it.question.answer for _, it in chunk])).tolist()
        maps = image_maps(measure(vlm, vlm.prepare(images, prompts, system_prompt=system_prompt)))
        for (k, it), scene, amap, ok in zip(chunk, chunk_scenes, maps, correct):
            boxes = [scene.objects[i].box for i in it.question.objects]
            coverage = cell_coverage(box_mask(boxes, scene.image.shape[:2]), tuple(amap.shape[-2:]))
            in_box = attention_in_box(amap, coverage)
            for layer, share in enumerate(in_box):
                rows.append({"item": k, "task": it.question.task, "layer": layer, "in_box": float(share),
                             "area": float(coverage.mean()), "correct": bool(ok)})
    return pd.DataFrame(rows)


def gap_by_layer(gaze: pd.DataFrame, *, seed: int, n_boot: int = 2000) -> pd.DataFrame:
    """Per layer: mean in-box share for correct and wrong answers and their gap with a bootstrap CI."""
    out = []
    for layer, g in gaze.groupby("layer"):
        right, wrong = g.loc[g.correct, "in_box"].to_numpy(), g.loc[~g.correct, "in_box"].to_numpy()
        gap, low, high = bootstrap_gap(right, wrong, seed=seed + int(layer), n_boot=n_boot)
        out.append({"layer": int(layer), "correct": right.mean() if right.size else np.nan,
                    "wrong": wrong.mean() if wrong.size else np.nan, "n_correct": right.size, "n_wrong": wrong.size,
                    "gap": gap, "gap_low": low, "gap_high": high})
    return pd.DataFrame(out)


def area_normalised_share(in_box: Sequence[float], area: Sequence[float], control_in_box: Sequence[float],
                          control_area: Sequence[float], *, seed: int, n_boot: int = 2000,
                          alpha: float = 0.05) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """How much more of the gaze falls inside the named boxes than their area would draw: mean in-box share over
    mean area share (a ratio of means; 1 = a uniform gaze) per item set, with a percentile-bootstrap CI, and the
    same minus the control's (the two item sets resampled independently, this one first, from one generator
    seeded with ``seed``). Returns ((ratio, low, high), (ratio - control's, low, high)). Why a ratio: worlds
    whose boxes cover different shares of the image are compared on how much the gaze exceeds the area."""
    rng = np.random.default_rng(seed)
    points, boots = [], []
    for x, a in ((in_box, area), (control_in_box, control_area)):
        x, a = np.asarray(x, float), np.asarray(a, float)
        if x.size == 0 or x.shape != a.shape:
            raise ValueError(f"area_normalised_share: need as many in-box shares as areas, at least one; got "
                             f"{x.size} and {a.size}")
        idx = resample(rng, x.size, n_boot)
        points.append(x.mean() / a.mean())
        boots.append(x[idx].mean(1) / a[idx].mean(1))
    own = (points[0], *percentile_interval(boots[0], alpha))
    return own, (points[0] - points[1], *percentile_interval(boots[0] - boots[1], alpha))
