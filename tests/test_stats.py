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


def test_auroc_and_cohens_d_convert_both_ways():
    from spatialkit.common.ranks import auroc_from_d, d_from_auroc

    # Cohen's small, medium and large effects as AUROCs (two normal groups of equal spread)
    assert [round(auroc_from_d(d), 3) for d in (0.2, 0.5, 0.8)] == [0.556, 0.638, 0.714]
    assert auroc_from_d(0.0) == 0.5
    for d in (-1.0, 0.2, 1.5):
        assert d_from_auroc(auroc_from_d(d)) == pytest.approx(d)
    # an AUROC from two simulated normal groups d apart agrees with the formula
    rng = np.random.default_rng(0)
    from spatialkit.common.ranks import auroc

    assert auroc(rng.normal(0.5, 1, 20000), rng.normal(0, 1, 20000)) == pytest.approx(auroc_from_d(0.5), abs=0.01)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        d_from_auroc(1.0)


def test_area_normalised_share_is_the_ratio_of_means_and_its_gap_to_the_control():
    from spatialkit.analysis.attention import area_normalised_share

    in_box, area = np.array([0.5, 0.3, 0.4, 0.6]), np.array([0.25, 0.25, 0.2, 0.3])
    c_in, c_area = np.array([0.2, 0.3, 0.25]), np.array([0.2, 0.2, 0.25])
    own, gap = area_normalised_share(in_box, area, c_in, c_area, seed=0, n_boot=500)
    assert own[0] == pytest.approx(in_box.mean() / area.mean())  # 1.8: the gaze exceeds the area 1.8-fold
    assert gap[0] == pytest.approx(in_box.mean() / area.mean() - c_in.mean() / c_area.mean())
    assert own[1] <= own[0] <= own[2] and gap[1] <= gap[0] <= gap[2]
    # a uniform gaze (in-box share = area share) is 1 with no spread; the same seed gives the same CI
    assert area_normalised_share(area, area, c_area, c_area, seed=0, n_boot=200) == ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert area_normalised_share(in_box, area, c_in, c_area, seed=0, n_boot=500) == (own, gap)
    with pytest.raises(ValueError, match="as many in-box shares as areas"):
        area_normalised_share(in_box, area[:2], c_in, c_area, seed=0)
