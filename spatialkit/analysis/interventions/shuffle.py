"""The permutation test of Qi et al. 2025 ("Beyond Semantics"): shuffle the visual tokens, keep the positions.

    with shuffle_visual_tokens(vlm, fraction=1.0, seed=0):
        scores = vlm.score_options(images, prompts, options)      # the LM sees shuffled image contents

The shuffle happens at ``vlm.visual_hook``: after the vision encoder and projector, before the LM. Only the
*contents* of the visual slots move; the LM's position ids stay attached to the slots (the LM still sees
"token at row i, column j", it just holds another patch). Each image is shuffled within its own h'×w' block
(Qwen's merged grid, LLaVA's 24×24 in the paper), so no content crosses an image boundary, and per-token
extras (Qwen3-VL's DeepStack levels) move exactly like the tokens they belong to.

``fraction`` is the share of an image's tokens that are displaced: ``k = round(fraction * n)`` slots are
drawn, and their contents are rotated along a random cycle through them, so every drawn token really leaves
its slot (a uniform random permutation would leave ~1 token in place on average; for the paper's n = 576
the two are the same experiment). fraction 0 is the identity (bit-identical outputs), fraction 1 moves
every token. The permutation is a pure function of ``(seed, h', w', fraction)``: every image of a given grid
gets the same one, in every forward call, whatever the batching (the paper also used one fixed permutation).
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import torch

from spatialkit.common.params import check_number
from spatialkit.models.vlm import VLM, VisualTokens
from spatialkit.models.organism.answer_row import evaluate, reuse_encoder_outputs
import pandas as pd
from tqdm.auto import tqdm
from spatialkit.common.stats import bootstrap_ci, bootstrap_diff_ci, psi_ci
from spatialkit.common.stats import Estimate


MOVES = ("all", "content", "position")


def _check_fraction(fraction) -> float:
    return check_number("fraction", fraction, 0.0, 1.0, note="share of visual tokens to displace")


def _check_seed(seed) -> int:
    return check_number("seed", seed, 0, 2**63, int, high_open=True)


def slot_permutation(h: int, w: int, fraction: float, seed: int) -> torch.Tensor:
    """(h*w,) long tensor ``perm``: slot s receives the content of slot ``perm[s]`` (raster order).

    ``round(fraction * h*w)`` slots (at least 2 to move anything) are rotated along a random cycle; the
    others keep their own content.
    """
    fraction, seed = _check_fraction(fraction), _check_seed(seed)
    if h < 1 or w < 1:
        raise ValueError(f"grid must be at least 1x1, got {h}x{w}")
    n = h * w
    perm = torch.arange(n)
    k = int(math.floor(fraction * n + 0.5))
    if k < 2:
        return perm
    # One generator per (seed, grid, fraction): independent of batch composition and call order.
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, h, w, k]).generate_state(2, np.uint64)[0]) >> 1)
    chosen = torch.randperm(n, generator=g)[:k]  # random slots, in random order
    perm[chosen] = chosen.roll(1)  # slot chosen[i] takes the content of chosen[i-1]
    return perm


def batch_index(grids: list[tuple[int, int]], fraction: float, seed: int, device=None) -> torch.Tensor:
    """(N_total,) gather index over a :class:`VisualTokens` batch: each image permuted within its own block."""
    parts, offset, cache = [], 0, {}
    for h, w in grids:
        if (h, w) not in cache:
            cache[(h, w)] = slot_permutation(h, w, fraction, seed)
        parts.append(cache[(h, w)] + offset)
        offset += h * w
    index = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    return index.to(device) if device is not None else index


def permute_visual_tokens(vt: VisualTokens, fraction: float, seed: int) -> VisualTokens:
    """The visual tokens with each image's contents permuted among its slots (extras moved identically)."""
    index = batch_index(vt.grids, fraction, seed, device=vt.tokens.device)
    if index.numel() != vt.tokens.shape[0]:
        raise ValueError(f"grids {vt.grids} cover {index.numel()} tokens but the batch holds {vt.tokens.shape[0]}")
    if bool((index == torch.arange(index.numel(), device=index.device)).all()):
        return vt  # nothing moves: hand back the very same tensors (bit-identical outputs)
    return vt.replace(tokens=vt.tokens[index], extras=[e[index] for e in vt.extras])


class ShuffleRecord:
    """What an active shuffle did: its settings and the gather index of every forward it touched."""

    def __init__(self, fraction: float, seed: int):
        self.fraction, self.seed = fraction, seed
        self.calls: list[torch.Tensor] = []  # one (N_total,) index per visual-hook call

    def permutation(self, h: int, w: int) -> torch.Tensor:
        return slot_permutation(h, w, self.fraction, self.seed)


def acts_in_tower(move: str, position_code: torch.Tensor | None) -> bool:
    """Whether a shuffle with these settings runs inside the vision tower (move "content" or "position" without a
    ``position_code``: :meth:`VLM.vision_position_hook`) rather than on the visual tokens it outputs."""
    return move != "all" and position_code is None


@contextlib.contextmanager
def shuffle_visual_tokens(vlm: VLM, fraction: float = 1.0, seed: int = 0, *, move: str = "all",
                          position_code: torch.Tensor | None = None, record: bool = False) -> Iterator[ShuffleRecord]:
    """Context manager: inside it, every forward of ``vlm`` sees its visual tokens shuffled (see module doc).

    ``move`` "all" (the paper's test) moves whole tokens. A vision encoder puts a position signal *inside* each
    token, which travels with it; "content" moves what each patch shows but leaves every slot its own position
    signal, "position" leaves what each patch shows in place and moves only the position signals. Two ways:

    * estimated at the LM input (``position_code`` (h*w, d), e.g. from :func:`slot_position_code`): the code is
      taken as additive, "content" gives token[src] − code[src] + code[dst] and "position" token[dst] −
      code[dst] + code[src]. Faithful for a tower that adds an absolute code and then mixes little.
    * inside the vision tower (``position_code`` None, for a model whose ``vlm.vision_position_signal`` is not
      None): "position" runs :meth:`VLM.vision_position_hook` with the slot permutation ``index``
      (:func:`batch_index`), so the patches of slot s are encoded with the tower's position signal of slot
      ``index[s]``, the LM input order unchanged. "content" is the full shuffle at the LM input (slot s gets
      the token of slot ``index[s]``, DeepStack extras included) combined with the tower-level permutation by
      the inverse, ``index⁻¹``: the patches that end up in slot s were encoded with the position signal of
      slot s (index⁻¹[index[s]] = s), so the LM's slot order and the tower's position signal agree again and
      only the contents have moved. For a tower whose attention sees positions only through that signal
      (CLIP with its learned table, Qwen2-VL's 2D rotary, Qwen3-VL's table plus rotary, the organism's ViT
      with any of its encodings) this is exactly the image with its patches (Qwen: whole merge windows)
      rearranged before a per-patch stem, the simplest faithful "content" there is (the organism's conv stem
      sees across patch borders: there it is the stem's output rearranged); for Qwen2.5-VL the attention
      windows stay with the patches' true places (see :meth:`spatialkit.models.hf.HFVLM.vision_position_hook`).
      Nothing is assumed additive.

    Yields a :class:`ShuffleRecord`; with ``record=True`` it also keeps each call's gather index (tests; the
    tower-level "position" records the slot index the tower received). Arguments are validated before the
    model is touched; every hook is removed on exit, also on error.
    """
    fraction, seed = _check_fraction(fraction), _check_seed(seed)
    if move not in MOVES:
        raise ValueError(f"move must be one of {MOVES}, got {move!r}")
    if move == "all" and position_code is not None:
        raise ValueError("position_code (h*w, d) is only for move='content' or 'position'")
    if position_code is not None and position_code.dim() != 2:
        raise ValueError(f"position_code must be (h*w, d), got shape {tuple(position_code.shape)}")
    if not isinstance(vlm, VLM):
        raise TypeError(f"vlm must be a spatialkit.models.vlm.VLM, got {type(vlm).__name__}")
    in_tower = acts_in_tower(move, position_code)
    if in_tower and vlm.vision_position_signal is None:
        raise ValueError(f"{vlm.name} has no tower-level position hook: move={move!r} needs a position_code (h*w, d) "
                         "estimated at the LM input (slot_position_code)")
    rec = ShuffleRecord(fraction, seed)
    if in_tower:
        with _tower_split(vlm, fraction, seed, move, rec, record):
            yield rec
        return
    indices: dict = {}  # (grids, device) -> (gather index, whether anything moves); built once per layout

    def shuffle(vt: VisualTokens) -> VisualTokens:
        key = (tuple(vt.grids), vt.tokens.device)
        if key not in indices:
            index = batch_index(vt.grids, fraction, seed, device=vt.tokens.device)
            if index.numel() != vt.tokens.shape[0]:
                raise ValueError(f"grids {vt.grids} cover {index.numel()} tokens but the batch holds {vt.tokens.shape[0]}")
            moves = not bool((index == torch.arange(index.numel(), device=index.device)).all())
            indices[key] = (index, moves)
        index, moves = indices[key]
        if record:
            rec.calls.append(index.cpu())
        if not moves:
            return vt  # fraction 0 (or a 1-token grid): the very same tensors, bit-identical outputs
        if move == "all":
            return vt.replace(tokens=vt.tokens[index], extras=[e[index] for e in vt.extras])
        if any(h * w != position_code.shape[0] for h, w in vt.grids) or position_code.shape[1] != vt.tokens.shape[1]:
            raise ValueError(f"position_code {tuple(position_code.shape)} does not fit grids {vt.grids} of "
                             f"{vt.tokens.shape[1]}-d tokens")
        code = position_code.to(vt.tokens).repeat(len(vt.grids), 1)  # (N_total, d), slot code of every position
        tokens = vt.tokens[index] - code[index] + code if move == "content" else vt.tokens - code + code[index]
        return vt.replace(tokens=tokens)  # extras (DeepStack) are left in place: they carry their own codes

    with vlm.visual_hook(shuffle):
        yield rec


@contextlib.contextmanager
def _tower_split(vlm: VLM, fraction: float, seed: int, move: str, rec: ShuffleRecord, record: bool) -> Iterator[None]:
    """The content/position split inside the vision tower (see :func:`shuffle_visual_tokens`)."""

    def tower_index(grids):  # slot s's patches get the tower's position signal of slot tower_index[s]
        index = batch_index(grids, fraction, seed)
        if move == "position":
            if record:
                rec.calls.append(index)
            return index
        return torch.argsort(index)  # content: the inverse, cancelled by the LM-level gather below

    with contextlib.ExitStack() as stack:
        stack.enter_context(vlm.vision_position_hook(tower_index))
        if move == "content":
            inner = stack.enter_context(shuffle_visual_tokens(vlm, fraction, seed, record=record))
            inner.calls = rec.calls  # its LM-level gather indices are this shuffle's record
        yield


def slot_position_code(vt: VisualTokens) -> torch.Tensor:
    """(h*w, d) position code of each slot over a batch of images of one grid: the mean token at the slot minus
    the mean of all tokens (the "position" part of :func:`spatialkit.analysis.interventions.norms.position_content_norms`)."""
    if len(set(vt.grids)) != 1 or len(vt.grids) < 2:
        raise ValueError(f"slot_position_code needs >= 2 images of one grid, got grids {vt.grids}")
    h, w = vt.grids[0]
    x = vt.tokens.detach().float().reshape(len(vt.grids), h * w, -1)
    return x.mean(0) - x.reshape(-1, x.shape[-1]).mean(0)


@contextlib.contextmanager
def blank_visual_tokens(vlm: VLM) -> Iterator[None]:
    """Context manager: every visual token of a forward call is replaced by the mean of all of that call's visual
    tokens (extras likewise): the LM keeps the token count and the typical norm, but sees neither content nor
    layout. The control that says whether a model uses the image at all (a model at this accuracy has nothing for
    a shuffle to destroy). Results depend on the batch's images only through that mean."""
    if not isinstance(vlm, VLM):
        raise TypeError(f"vlm must be a spatialkit.models.vlm.VLM, got {type(vlm).__name__}")

    def blank(vt: VisualTokens) -> VisualTokens:
        return vt.replace(tokens=vt.tokens.mean(0, keepdim=True).expand_as(vt.tokens).contiguous(),
                          extras=[e.mean(0, keepdim=True).expand_as(e).contiguous() for e in vt.extras])

    with vlm.visual_hook(blank):
        yield


# -- the permutation test on a benchmark ---------------------------------------------------------------
def _evaluate(vlm: VLM, bench, split: str, *, batch_size: int, limit: int | None):
    """``spatialkit.models.organism.answer_row.evaluate``: ``spatialkit.models.evaluate.evaluate``'s rows, an
    organism's options scored at the answer row (every ``score_options`` takes items with differing option counts)."""

    return evaluate(vlm, bench, split, batch_size=batch_size, limit=limit)


def permutation_test(vlm: VLM, bench, split: str = "test", *, fractions=(1.0,), seeds=(0,), limit: int | None = None,
                     batch_size: int = 256, blind: bool = False, move: str = "all",
                     position_code: torch.Tensor | None = None, progress: bool = False):
    """Multiple-choice accuracy of ``vlm`` on a WhereBench split, unshuffled and shuffled.

    Returns a DataFrame with one row per (fraction, item): family ("what"/"where"), task, ``correct`` (0/1,
    unshuffled) and ``correct_perm`` (mean over the permutation ``seeds`` of the shuffled correctness), ready
    for :func:`psi_summary`; with ``blind=True`` also ``correct_blind`` (under :func:`blank_visual_tokens`).
    ``move``/``position_code`` choose what the shuffle moves (see :func:`shuffle_visual_tokens`).
    The unshuffled pass runs once and is shared by every fraction.
    """
    fractions = [_check_fraction(f) for f in fractions]
    seeds = [_check_seed(s) for s in seeds]
    if not fractions or not seeds:
        raise ValueError("permutation_test needs at least one fraction and one seed")
    # Every run scores the same images: when the shuffles act on the encoder's output (whole tokens, or a given
    # position code), its output is computed once per batch and reused. A shuffle inside the tower (move "content"
    # or "position" without a position code) changes what the encoder computes: each run encodes again.
    in_tower = acts_in_tower(move, position_code)
    with contextlib.nullcontext() if in_tower else reuse_encoder_outputs(vlm):
        return _permutation_test(vlm, bench, split, fractions, seeds, limit, batch_size, blind, move, position_code,
                                 progress)


def _permutation_test(vlm, bench, split, fractions, seeds, limit, batch_size, blind, move, position_code, progress):
    base = _evaluate(vlm, bench, split, batch_size=batch_size, limit=limit)
    runs = [(f, s) for f in fractions for s in seeds]
    if progress:

        runs = tqdm(runs, desc="shuffled evaluations", leave=False)
    perm: dict[float, list] = {f: [] for f in fractions}
    for fraction, seed in runs:
        if fraction == 0.0:  # identity: no need to run (bit-identical, tested)
            perm[fraction].append(base["correct"].to_numpy(dtype=float))
            continue
        with shuffle_visual_tokens(vlm, fraction, seed, move=move, position_code=position_code):
            perm[fraction].append(_evaluate(vlm, bench, split, batch_size=batch_size, limit=limit)["correct"].to_numpy(dtype=float))

    blind_correct = None
    if blind:
        with blank_visual_tokens(vlm):
            blind_correct = _evaluate(vlm, bench, split, batch_size=batch_size, limit=limit)["correct"].to_numpy(dtype=float)
    frames = []
    for fraction in fractions:
        frame = base[["item", "family", "task"]].copy()
        frame["correct"] = base["correct"].to_numpy(dtype=float)
        frame["correct_perm"] = np.mean(perm[fraction], axis=0)
        if blind_correct is not None:
            frame["correct_blind"] = blind_correct
        frame.insert(0, "fraction", fraction)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def psi_summary(df, by=("family",), *, seed: int = 0, n_boot: int = 1000):
    """Accuracy, shuffled accuracy and PSI (with paired bootstrap CIs, in %) per group of a
    :func:`permutation_test` frame. Groups whose unshuffled accuracy is 0 get PSI NaN. With a ``correct_blind``
    column: ``acc_blind`` and ``image_gain_low`` (lower CI end of acc − acc_blind; > 0: the image is used)."""


    by = [by] if isinstance(by, str) else list(by)
    rows = []
    for key, g in df.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        acc = bootstrap_ci(g["correct"], seed=seed, n_boot=n_boot)
        acc_perm = bootstrap_ci(g["correct_perm"], seed=seed, n_boot=n_boot)
        if acc.mean > 0:
            p = psi_ci(g["correct"], g["correct_perm"], seed=seed, n_boot=n_boot)
            psi, low, high = p.mean, p.low, p.high
        else:
            psi = low = high = float("nan")
        row = {**dict(zip(by, key)), "n": len(g), "acc": acc.mean, "acc_low": acc.low, "acc_high": acc.high,
               "acc_perm": acc_perm.mean, "psi": psi, "psi_low": low, "psi_high": high}
        if "correct_blind" in g:  # does the model beat itself without the image (paired CI of the gain)?
            gain = bootstrap_diff_ci(g["correct"], g["correct_blind"], seed=seed, n_boot=n_boot)
            row.update(acc_blind=float(g["correct_blind"].mean()), image_gain_low=gain.low)
        rows.append(row)
    return pd.DataFrame(rows)


def psi_difference(a, b, *, seed: int = 0, n_boot: int = 1000):
    """PSI(a) − PSI(b) in percentage points with a paired bootstrap CI, for two :func:`permutation_test`
    frames over the same items in the same order (e.g. two training arms). Returns a ``stats.Estimate``."""

    ca, pa = a["correct"].to_numpy(float), a["correct_perm"].to_numpy(float)
    cb, pb = b["correct"].to_numpy(float), b["correct_perm"].to_numpy(float)
    if ca.shape != cb.shape or ca.size == 0:
        raise ValueError(f"psi_difference needs two equal-length, non-empty frames, got {ca.size} and {cb.size} rows")

    def psi(c, p):
        m = c.mean(-1)
        return np.where(m > 0, 100.0 * (m - p.mean(-1)) / np.where(m > 0, m, 1.0), np.nan)

    rng = np.random.default_rng(seed)
    idx = rng.integers(0, ca.size, size=(n_boot, ca.size))
    boots = psi(ca[idx], pa[idx]) - psi(cb[idx], pb[idx])
    boots = boots[np.isfinite(boots)]
    low, high = np.quantile(boots, [0.025, 0.975]) if boots.size else (np.nan, np.nan)
    return Estimate(float(psi(ca, pa) - psi(cb, pb)), float(low), float(high), int(ca.size))
