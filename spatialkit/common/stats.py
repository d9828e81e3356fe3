"""Small statistics every notebook needs: bootstrap confidence intervals and the PSI.

Every bootstrap here draws its replicates with :func:`resample` and reads its interval with
:func:`percentile_interval`: per-item CIs (``bootstrap_ci``, paired ``bootstrap_diff_ci``, ``psi_ci``), the gap
between two independent groups (``bootstrap_gap``) and the two-level seed x item bootstrap
(``seed_item_bootstrap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean with a (1 - alpha) percentile-bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_percent(self) -> str:
        return f"{100 * self.mean:.1f} [{100 * self.low:.1f}, {100 * self.high:.1f}]"


def resample(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement from range(n): the one resampling step of every bootstrap here.

    Each call draws once from ``rng``; calling it for several groups in a fixed order keeps replicates reproducible.
    """
    return rng.integers(0, n, size=(n_boot, n))


def percentile_interval(boots: np.ndarray, alpha: float) -> tuple[float, float]:
    """(low, high): the alpha/2 and 1 - alpha/2 quantiles of the bootstrap replicates (NaN, NaN when none)."""
    if np.size(boots) == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, seed: int, n_boot: int = 2000, alpha: float = 0.05) -> Estimate:
    """Percentile bootstrap over items. ``values`` are per-item scores (e.g. 0/1 correctness)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    means = x[resample(np.random.default_rng(seed), x.size, n_boot)].mean(axis=1)
    return Estimate(float(x.mean()), *percentile_interval(means, alpha), int(x.size))


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], *, seed: int, n_boot: int = 2000, alpha: float = 0.05) -> Estimate:
    """CI of mean(a) - mean(b) for paired per-item scores (same items in the same order)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape:
        raise ValueError(f"paired bootstrap needs equal shapes, got {xa.shape} and {xb.shape}")
    return bootstrap_ci(xa - xb, seed=seed, n_boot=n_boot, alpha=alpha)


def bootstrap_gap(a: Sequence[float], b: Sequence[float], *, seed: int, n_boot: int = 2000,
                  alpha: float = 0.05) -> tuple[float, float, float]:
    """(gap, low, high): mean(a) - mean(b) for two independent groups, with a percentile-bootstrap CI
    (each group resampled on its own, ``a`` first). All NaN when either group is empty."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size == 0 or xb.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boots = xa[resample(rng, xa.size, n_boot)].mean(1) - xb[resample(rng, xb.size, n_boot)].mean(1)
    return (float(xa.mean() - xb.mean()), *percentile_interval(boots, alpha))


def seed_item_bootstrap(correct: np.ndarray, *, seed: int, n_boot: int = 2000, alpha: float = 0.05) -> Estimate:
    """Mean accuracy of a (n_seeds, n_items) 0/1 array with a two-level percentile bootstrap CI.

    Each replicate resamples training seeds, then test items (the same items for every seed, since all
    seeds are tested on one test set), so the CI covers both seed-to-seed and item-to-item variation.
    """
    x = np.asarray(correct, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"correct must be a non-empty (n_seeds, n_items) array, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    s_idx, i_idx = resample(rng, x.shape[0], n_boot), resample(rng, x.shape[1], n_boot)
    means = np.array([x[s][:, i].mean() for s, i in zip(s_idx, i_idx)])
    return Estimate(float(x.mean()), *percentile_interval(means, alpha), int(x.size))


def psi(acc: float, acc_perm: float) -> float:
    """Position Sensitivity Index (Qi et al. 2025): (Acc - Acc_perm) / Acc, in percent."""
    if acc <= 0:
        raise ValueError("PSI is undefined when the unpermuted accuracy is 0")
    return 100.0 * (acc - acc_perm) / acc


def psi_ci(correct: Sequence[float], correct_perm: Sequence[float], *, seed: int, n_boot: int = 2000, alpha: float = 0.05) -> Estimate:
    """PSI with a paired bootstrap CI over items (in percent)."""
    a, b = np.asarray(correct, dtype=np.float64), np.asarray(correct_perm, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("psi_ci needs two equal-length, non-empty arrays")
    idx = resample(np.random.default_rng(seed), a.size, n_boot)  # paired: the same items for both arrays
    ma, mb = a[idx].mean(axis=1), b[idx].mean(axis=1)
    ok = ma > 0
    boots = 100.0 * (ma[ok] - mb[ok]) / ma[ok]
    return Estimate(psi(float(a.mean()), float(b.mean())) if a.mean() > 0 else float("nan"),
                    *percentile_interval(boots, alpha), int(a.size))
