"""Rank statistics with bootstrap CIs: :func:`auroc` and :func:`auroc_ci`, and the AUROC as Cohen's d.

    auroc_ci(confidence_of_right_answers, confidence_of_wrong_answers, seed=0, n_boot=1000)
    auroc_from_d(0.2)   # Cohen's small effect as an AUROC: 0.556

How well a score separates two groups (e.g. a model's confidence on its right vs its wrong answers): 0.5 is
chance, 1 is perfect. A module of its own beside ``stats`` (whose bootstrap steps it reuses) because ``stats`` is in
the code fingerprint of stored encoders, which an unrelated addition there would retrain.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence

import numpy as np

from spatialkit.common.stats import Estimate, percentile_interval, resample


def auroc(positive: Sequence[float] | np.ndarray, negative: Sequence[float] | np.ndarray) -> float:
    """P(a random positive scores above a random negative), ties counting half (Mann-Whitney U / (n_pos n_neg)).
    NaN when either group is empty."""
    a, b = np.asarray(positive, float), np.asarray(negative, float)
    if a.size == 0 or b.size == 0:
        return float("nan")
    b = np.sort(b)
    below = np.searchsorted(b, a, side="left")  # negatives strictly below each positive
    tied = np.searchsorted(b, a, side="right") - below
    return float((below + 0.5 * tied).sum() / (a.size * b.size))


def auroc_ci(positive: Sequence[float], negative: Sequence[float], *, seed: int, n_boot: int = 2000,
             alpha: float = 0.05) -> Estimate:
    """:func:`auroc` with a percentile-bootstrap CI that resamples each group on its own (positives first), e.g.
    how well a model's confidence separates its right answers from its wrong ones (chance 0.5). ``n`` is the
    number of scores in both groups."""
    a, b = np.asarray(positive, float), np.asarray(negative, float)
    if a.size == 0 or b.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), int(a.size + b.size))
    rng = np.random.default_rng(seed)
    pairs = zip(resample(rng, a.size, n_boot), resample(rng, b.size, n_boot))
    boots = np.array([auroc(a[i], b[j]) for i, j in pairs])
    return Estimate(auroc(a, b), *percentile_interval(boots, alpha), int(a.size + b.size))


def auroc_from_d(d: float) -> float:
    """The AUROC of two normal groups of equal spread whose means differ by ``d`` standard deviations (Cohen's
    d): Φ(d / √2). Cohen's small, medium and large effects (0.2, 0.5, 0.8) are 0.556, 0.638 and 0.714."""
    return NormalDist().cdf(d / math.sqrt(2))


def d_from_auroc(a: float) -> float:
    """The inverse of :func:`auroc_from_d`: √2 Φ⁻¹(a), for an AUROC strictly between 0 and 1."""
    if not 0.0 < a < 1.0:
        raise ValueError(f"d_from_auroc: the AUROC must lie strictly between 0 and 1, got {a!r}")
    return math.sqrt(2) * NormalDist().inv_cdf(a)
