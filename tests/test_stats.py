"""spatialkit.common.stats (every bootstrap: one resampling core) and spatialkit.common.boxes."""

import math

import numpy as np
import pytest
import torch

from spatialkit.common import stats
from spatialkit.common.boxes import box_iou


def test_resample_is_the_shared_draw():
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    assert np.array_equal(stats.resample(rng_a, 7, 11), rng_b.integers(0, 7, size=(11, 7)))
    assert all(math.isnan(v) for v in stats.percentile_interval(np.array([]), 0.05))


def test_bootstrap_ci_and_diff():
    est = stats.bootstrap_ci([1, 0, 1, 1, 0, 1], seed=0, n_boot=500)
    assert est.mean == pytest.approx(4 / 6) and 0 <= est.low <= est.mean <= est.high <= 1 and est.n == 6
    diff = stats.bootstrap_diff_ci([1, 1, 1, 0], [0, 1, 0, 0], seed=0, n_boot=500)
    assert diff.mean == pytest.approx(0.5)
    with pytest.raises(ValueError, match="equal shapes"):
        stats.bootstrap_diff_ci([1, 0], [1], seed=0)


def test_bootstrap_gap():
    gap, low, high = stats.bootstrap_gap([1.0, 0.9, 0.8, 1.0], [0.1, 0.2, 0.0], seed=0)
    assert gap == pytest.approx(0.925 - 0.1) and 0 < low <= gap <= high
    assert stats.bootstrap_gap([1.0], [0.2, 0.4], seed=1) == stats.bootstrap_gap([1.0], [0.2, 0.4], seed=1)
    assert all(math.isnan(x) for x in stats.bootstrap_gap([], [0.1], seed=0))


def test_bootstrap_gap_draws_a_then_b():
    """The replicates are the ones the former attention.bootstrap_gap drew: group a's indices, then group b's."""
    a, b = np.array([0.3, 0.9, 0.5, 0.7, 0.1]), np.array([0.2, 0.4, 0.0])
    rng = np.random.default_rng(4)
    boots = a[rng.integers(0, 5, (300, 5))].mean(1) - b[rng.integers(0, 3, (300, 3))].mean(1)
    assert stats.bootstrap_gap(a, b, seed=4, n_boot=300)[1:] == tuple(np.quantile(boots, [0.025, 0.975]))


def test_seed_item_bootstrap():
    est = stats.seed_item_bootstrap(np.array([[1, 0, 1, 1], [1, 1, 0, 1]]), seed=0, n_boot=500)
    assert est.mean == pytest.approx(0.75) and 0 <= est.low <= est.high <= 1 and est.n == 8
    with pytest.raises(ValueError, match="n_seeds, n_items"):
        stats.seed_item_bootstrap(np.ones(3), seed=0)


def test_box_iou_torch_and_numpy():
    a = [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.6, 0.6, 0.4, 0.4]]  # the last box is inverted: empty
    b = [[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.75, 0.5], [0.0, 0.0, 1.0, 1.0]]
    t = box_iou(torch.tensor(a), torch.tensor(b))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    assert t.tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    n = box_iou(np.array(a), b)
    assert isinstance(n, np.ndarray) and n.dtype == np.float64 and n.tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    iou = box_iou(np.array([[0, 0, 10, 10], [0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10]]))
    assert np.allclose(iou, [1.0, 50 / 150])


def test_auroc_counts_pairs_with_ties_as_half_and_its_ci_brackets_it():
    from spatialkit.common.ranks import auroc, auroc_ci

    rng = np.random.default_rng(0)
    for _ in range(50):  # against the definition, on small integer scores full of ties
        a = rng.integers(0, 4, rng.integers(1, 15)).astype(float)
        b = rng.integers(0, 4, rng.integers(1, 15)).astype(float)
        brute = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
        assert auroc(a, b) == pytest.approx(brute)
    assert auroc([1, 2], [0, 0]) == 1.0 and auroc([0], [1]) == 0.0 and auroc([1], [1]) == 0.5
    assert np.isnan(auroc([], [1.0]))
    right, wrong = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 100)
    e = auroc_ci(right, wrong, seed=1, n_boot=400)
    assert e.low < e.mean < e.high and 0.6 < e.mean < 0.9 and e.n == 400  # d = 1: AUROC = Phi(1/sqrt 2) = 0.76
    assert auroc_ci(right, wrong, seed=1, n_boot=400) == e  # seeded
    assert np.isnan(auroc_ci([], wrong, seed=0, n_boot=10).mean)
