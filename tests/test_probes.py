"""spatialkit.analysis.where_classifier: the where-task data, the classifier at two resolutions, the bag-of-patches property."""

import numpy as np
import pytest
import torch

from spatialkit.analysis import where_classifier as probes


@pytest.fixture(scope="module")
def data():
    return probes.where_splits(0, 64, 32, 48, 72, jitter=8)


def test_where_data_is_deterministic_and_labelled(data):
    again = probes.where_splits(0, 64, 32, 48, 72, jitter=8)
    for split in data:
        assert torch.equal(data[split].images, again[split].images)
        assert torch.equal(data[split].relative, again[split].relative)
    assert data["train"].images.shape == (64, 3, 48, 48) and data["test_unseen"].images.shape[-1] == 72
    assert set(data["train"].relative.tolist()) <= {-1, 0, 1, 2, 3}
    assert (data["train"].relative >= 0).float().mean() > 0.5


def test_where_labels_follow_the_pixels(data):
    """The red chick's pixel centre is left of the blue cup's when the label says 'left of'."""
    ws = data["train"]
    for i in range(len(ws)):
        img = ws.images[i]
        red = (img[0] > 0.5) & (img[2] < 0)
        blue = (img[2] > 0.5) & (img[0] < 0)
        (ry, rx), (by, bx) = [torch.nonzero(m).float().mean(0) for m in (red, blue)]
        label = int(ws.relative[i])
        if label == 0:
            assert rx < bx
        elif label == 1:
            assert rx > bx
        elif label == 2:
            assert ry < by
        elif label == 3:
            assert ry > by


def test_none_is_permutation_invariant_and_rope_is_not(data):
    gen = torch.Generator().manual_seed(0)
    x = data["test"].images[:8]
    shuffled = probes.shuffle_patches(x, 8, gen)
    assert not torch.equal(x, shuffled)
    torch.manual_seed(0)
    none = probes.WhereClassifier("none", image_size=48).eval()
    rope = probes.WhereClassifier("rope2d", image_size=48).eval()
    with torch.no_grad():
        assert torch.allclose(none(x)[0], none(shuffled)[0], atol=1e-5)
        assert not torch.allclose(rope(x)[0], rope(shuffled)[0], atol=1e-4)


def test_training_is_seeded_and_runs_at_an_unseen_grid(data):
    m1, l1 = probes.train_where("learned", data["train"], seed=3, steps=3, batch_size=8)
    m2, l2 = probes.train_where("learned", data["train"], seed=3, steps=3, batch_size=8)
    assert l1 == l2
    res = probes.evaluate_where(m1, data["test_unseen"])  # 9 x 9 grid: learned table interpolated
    assert set(res) == {"relative", "absolute"} and res["relative"].size == int((data["test_unseen"].relative >= 0).sum())


def test_compare_and_bootstrap(data):
    results, models = probes.compare_encodings(["none", "rope2d"], data, seeds=[0, 1], steps=2, batch_size=8,
                                               progress=False)
    assert set(models) == {("none", 0), ("none", 1), ("rope2d", 0), ("rope2d", 1)}
    acc = probes.accuracy_table(results, n_boot=200)
    assert len(acc) == 2 * 2 * 2 and ((acc.low <= acc.accuracy) & (acc.accuracy <= acc.high)).all()
    with pytest.raises(ValueError, match="encodings"):
        probes.compare_encodings(["alibi"], data, seeds=[0], steps=1)


@pytest.mark.parametrize("steps", [1, 10, 25])
def test_short_budgets_train(data, steps):
    _, losses = probes.train_where("rope2d", data["train"], seed=0, steps=steps, batch_size=4)
    assert len(losses) == steps and all(np.isfinite(losses))


def test_ape_std_sets_the_learned_table_scale_and_is_validated():
    torch.manual_seed(0)
    loud = probes.WhereClassifier("learned", image_size=32, patch_size=4, ape_std=1.0)
    assert abs(float(loud.vit.pe.table.detach().std()) - 1.0) < 0.1
    torch.manual_seed(0)
    default = probes.WhereClassifier("learned", image_size=32, patch_size=4)
    assert float(default.vit.pe.table.detach().std()) < 0.05
    for bad in (dict(posenc="sincos2d", ape_std=1.0), dict(posenc="learned", ape_std=0.0)):
        with pytest.raises(ValueError, match="ape_std"):
            probes.WhereClassifier(bad["posenc"], image_size=32, patch_size=4, ape_std=bad["ape_std"])


def _patch_multiset(img, p):
    """The image's p x p patches as a sorted list of byte strings (content without position)."""
    c, h, w = img.shape
    blocks = img.reshape(c, h // p, p, w // p, p).permute(1, 3, 0, 2, 4).reshape(-1, c * p * p)
    return sorted(bytes(b.numpy().tobytes()) for b in blocks)


def test_shifted_set_moves_the_pair_in_whole_patches_keeping_the_relation():
    sh = probes.collect_shifted_set(7, 12, 48, 8)
    again = probes.collect_shifted_set(7, 12, 48, 8)
    assert torch.equal(sh.images, again.images) and torch.equal(sh.shift, again.shift)
    assert sh.n_scenes == 12 and len(sh) == 5 * 12 and sh.images.shape[1:] == (3, 48, 48)
    assert (sh.shift % 8 == 0).all() and (sh.relative >= 0).all()
    for k in range(sh.n_scenes):
        idx = torch.nonzero(sh.scene == k).flatten()
        assert sh.shift[idx[0]].tolist() == [0, 0]  # the scene's own place first
        assert len(set(sh.relative[idx].tolist())) == 1  # the relation does not move
        assert sh.shift[idx].abs().max() >= 16  # min_move = 2 patches along some axis
        base = _patch_multiset(sh.images[idx[0]], 8)
        for i in idx[1:]:
            # same patches, other positions; the red chick's pixel offset to the blue cup is unchanged
            assert _patch_multiset(sh.images[i], 8) == base
        red = [torch.nonzero((sh.images[i][0] > 0.5) & (sh.images[i][2] < 0)).float().mean(0) for i in idx]
        blue = [torch.nonzero((sh.images[i][2] > 0.5) & (sh.images[i][0] < 0)).float().mean(0) for i in idx]
        offsets = torch.stack([r - b for r, b in zip(red, blue)])
        assert torch.allclose(offsets, offsets[0].expand_as(offsets))
        moves = torch.stack([r - red[0] for r in red])  # (row, col) move of the chick = the shift (dy, dx)
        assert torch.allclose(moves, sh.shift[idx].flip(-1).float())


def test_translation_results_and_contrast():
    sh = probes.collect_shifted_set(3, 10, 48, 8)
    torch.manual_seed(0)
    none = probes.WhereClassifier("none", image_size=48, patch_size=8).eval()
    ape = probes.WhereClassifier("learned", image_size=48, patch_size=8, ape_std=1.0).eval()
    res = probes.translation_results({("none", 0): none, ("learned", 0): ape}, sh)
    assert set(res.question) == {"same answer", "accuracy", "accuracy at own place", "accuracy moved"}
    same = res[res.question == "same answer"].set_index(["encoding", "item"]).correct
    assert (same.loc["none"] == 1.0).all()  # a bag of patches answers every placement alike
    with torch.no_grad():  # the logits themselves: equal across placements without positions, not with APE
        idx = torch.nonzero(sh.scene == 0).flatten()
        r_none, r_ape = none(sh.images[idx])[0], ape(sh.images[idx])[0]
    assert torch.allclose(r_none, r_none[:1].expand_as(r_none), atol=1e-5)
    assert not torch.allclose(r_ape, r_ape[:1].expand_as(r_ape), atol=1e-3)
    acc = probes.accuracy_table(res, seed=0, n_boot=50)
    assert len(acc) == 8
    # contrast: a difference with itself is exactly zero; a single term is accuracy_table's point estimate
    zero = probes.contrast(res, [(1, "learned", "shifted", "accuracy"), (-1, "learned", "shifted", "accuracy")],
                           seed=0, n_boot=50)
    assert zero.mean == 0 and zero.low == 0 and zero.high == 0
    one = probes.contrast(res, [(1, "none", "shifted", "same answer")], seed=0, n_boot=50)
    assert one.mean == 1.0 and one.low == 1.0
    d = probes.contrast(res, [(1, "none", "shifted", "same answer"), (-1, "learned", "shifted", "same answer")],
                        seed=1, n_boot=200)
    assert d.mean == pytest.approx(1.0 - same.loc["learned"].mean()) and d.low <= d.mean <= d.high
    with pytest.raises(ValueError, match="no results"):
        probes.contrast(res, [(1, "rope2d", "shifted", "accuracy")])
