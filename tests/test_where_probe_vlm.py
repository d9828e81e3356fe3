"""The where-probe on any VLM's own visual tokens (spatialkit.analysis.where_probe.visual_patch_features): every
model kind (the organism and a tiny random model of each HF family) gives (S, h*w, d) features with their grid,
the probe reads them on scenes whose side the grid does not divide."""

import numpy as np
import pytest
import torch

from spatialkit import world as S
from spatialkit.analysis.where_probe import patch_labels, probe_where, visual_patch_features
from tests.kinds import MODEL_KINDS

CFG = S.PRESETS["organism_easy"]  # 48 px, two objects, 5 kinds
KINDS = list(CFG.kinds)


@pytest.fixture(scope="module")
def scenes():
    return [S.render_scene(seed, CFG) for seed in range(24)]


@pytest.fixture(scope="module", params=MODEL_KINDS)
def case(request):
    """(vlm, size): the organism takes its own 48 px; the HF models get the scenes enlarged to 112 px (LLaVA's
    processor resizes them again)."""
    from tests.kinds import tiny_case

    return tiny_case(request.param)[1], None if request.param == "organism" else 112


def test_patch_labels_when_the_grid_does_not_divide_the_image(scenes):
    grid = 7  # 48 px: patches of 6 or 7 pixels
    labels = patch_labels(scenes, KINDS, grid)
    cell = np.arange(48) * grid // 48
    for scene, row in zip(scenes[:6], labels[:6]):
        value = np.zeros(len(scene.objects) + 1, dtype=int)
        value[1:] = [1 + KINDS.index(o.kind) for o in scene.objects]
        for p in range(grid * grid):
            pixels = scene.instance[np.ix_(cell == p // grid, cell == p % grid)].reshape(-1)
            counts = np.bincount(pixels, minlength=len(value))
            assert row[p] == value[counts.argmax()]
    # every pixel is in exactly one patch: the patch sizes sum to the image
    assert np.bincount(cell).sum() == 48 and set(np.bincount(cell)) <= {6, 7}


def test_features_are_the_visual_tokens_per_image_with_their_grid(case, scenes):
    vlm, size = case
    images = [s.image for s in scenes[:5]]
    feats, grid = visual_patch_features(vlm, images, size=size, batch_size=2)
    assert feats.dtype == torch.float32 and feats.device.type == "cpu"
    assert feats.shape[:2] == (5, grid[0] * grid[1])
    one, one_grid = visual_patch_features(vlm, images[3:4], size=size)
    assert one_grid == grid
    torch.testing.assert_close(one[0], feats[3], atol=1e-4, rtol=1e-4)  # the batch does not matter
    # exactly VLM.visual_tokens of the (enlarged) image
    from spatialkit.analysis.where_probe import _enlarged

    batch = vlm.prepare([_enlarged(images[0], size)], ["Describe the image."])
    tokens = vlm.visual_tokens(batch)
    assert tokens.grids[0] == grid
    torch.testing.assert_close(tokens.per_image()[0].float().cpu(), feats[0], atol=1e-4, rtol=1e-4)


def test_features_pass_through_an_active_visual_hook(case, scenes):
    vlm, size = case
    images = [s.image for s in scenes[:2]]
    with vlm.visual_hook(lambda vt: vt.replace(tokens=torch.zeros_like(vt.tokens))):
        feats, _ = visual_patch_features(vlm, images, size=size)
    assert feats.abs().max() == 0


def test_the_probe_runs_on_every_kind(case, scenes):
    vlm, size = case
    feats, grid = visual_patch_features(vlm, [s.image for s in scenes], size=size, batch_size=8)
    out = probe_where(feats, scenes, KINDS, train=range(16), test=range(16, 24), max_iter=50)
    assert out["grid"] == grid[0] == grid[1]
    assert len(out["patch_correct"]) == 8 * grid[0] * grid[1]
    assert len(out["point_hit"]) == len(out["point_chance"]) > 0 and len(out["relation_correct"]) > 0
    assert 0.0 <= out["relation_correct"].mean() <= 1.0


def test_a_qwen_grid_follows_the_size_and_mixed_sizes_are_refused(scenes):
    from spatialkit.testing import hf_tiny

    vlm = hf_tiny.tiny_vlm("qwen2_vl")
    assert visual_patch_features(vlm, [scenes[0].image], size=224)[1] == (8, 8)  # 28 px per token
    assert visual_patch_features(vlm, [scenes[0].image], size=112)[1] == (4, 4)
    small = scenes[1].image[:28, :28]
    with pytest.raises(ValueError, match="grid of visual tokens"):
        visual_patch_features(vlm, [scenes[0].image, small], batch_size=4)
    with pytest.raises(ValueError):
        visual_patch_features(vlm, [])


def test_bounded_features_keep_the_probe_and_bound_the_stored_size():
    """dims: the tokens reduced to their top principal components (fitted on the training scenes) give the probe
    the same patch accuracy within 3 points as the full width on a tiny LLaVA; at dims >= width nothing changes;
    the stored features are (S, P, dims) float32 and match the estimate."""
    from spatialkit.models.hf import estimate_where_probe
    from spatialkit.testing import hf_tiny

    vlm = hf_tiny.tiny_vlm("llava")
    many = [S.render_scene(seed, CFG) for seed in range(200)]
    images, train, test = [s.image for s in many], range(150), range(150, 200)
    full, grid = visual_patch_features(vlm, images, size=112)
    width = full.shape[-1]
    reduced, reduced_grid = visual_patch_features(vlm, images, size=112, dims=width // 2, fit_on=train)
    assert reduced_grid == grid and reduced.shape == (200, grid[0] * grid[1], width // 2)
    assert reduced.dtype == torch.float32
    est = estimate_where_probe(vlm, 200, 150, dims=width // 2, image_size=112, dtype=vlm.dtype, overhead=1.0)
    assert est["dims"] == width // 2 and est["features"] == reduced.nbytes == full.nbytes // 2
    a = probe_where(full, many, KINDS, train=train, test=test, max_iter=50)
    b = probe_where(reduced, many, KINDS, train=train, test=test, max_iter=50)
    assert abs(a["patch_correct"].mean() - b["patch_correct"].mean()) < 0.03
    assert abs(a["train_patch_accuracy"] - b["train_patch_accuracy"]) < 0.03
    same, _ = visual_patch_features(vlm, images[:4], size=112, dims=width, fit_on=range(2))
    torch.testing.assert_close(same, full[:4])  # nothing to reduce: exactly the unbounded features
    with pytest.raises(ValueError, match="fit_on"):
        visual_patch_features(vlm, images[:4], size=112, dims=8, fit_on=[7])


def test_the_where_probe_estimate_of_a_7b_llava_fits_the_full_profile():
    """2,000 probe scenes of LLaVA-1.5-7B (576 x 4096 tokens each): tens of GiB at full width, bounded at 1024
    components; the estimate scales with the kept dimensions."""
    from spatialkit.models.hf.memory import GiB, estimate_where_probe, published_config

    config = published_config("llava-1.5-7b-hf")
    full = estimate_where_probe(config, 2000, 1000, dims=None, dtype="float16")
    bounded = estimate_where_probe(config, 2000, 1000, dims=1024, dtype="float16")
    assert (full["image_tokens"], full["width"], full["dims"], bounded["dims"]) == (576, 4096, 4096, 1024)
    assert full["host"] > 64 * GiB and bounded["host"] < 32 * GiB
    assert bounded["features"] * 4 == full["features"] and bounded["device"] < 20 * GiB
