"""Small statistics every notebook needs: bootstrap confidence intervals and the PSI."""

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


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, seed: int, n_boot: int = 2000, alpha: float = 0.05) -> Estimate:
    """Percentile bootstrap over items. ``values`` are per-item scores (e.g. 0/1 correctness)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    means = x[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def bootstrap_diff_ci(a: Sequence[float], b: Sequence[float], *, seed: int, n_boot: int = 2000, alpha: float = 0.05) -> Estimate:
    """CI of mean(a) - mean(b) for paired per-item scores (same items in the same order)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape:
        raise ValueError(f"paired bootstrap needs equal shapes, got {xa.shape} and {xb.shape}")
    return bootstrap_ci(xa - xb, seed=seed, n_boot=n_boot, alpha=alpha)


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
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    ma, mb = a[idx].mean(axis=1), b[idx].mean(axis=1)
    ok = ma > 0
    boots = 100.0 * (ma[ok] - mb[ok]) / ma[ok]
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2]) if boots.size else (float("nan"), float("nan"))
    return Estimate(psi(float(a.mean()), float(b.mean())) if a.mean() > 0 else float("nan"), float(low), float(high), int(a.size))
