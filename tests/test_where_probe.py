"""The linear where-probe (spatialkit.analysis.where_probe) and the CLIP/CLOC tower under an organism
(spatialkit.models.encoder_swap)."""

import numpy as np
import pytest
import torch

from spatialkit import world as S
from spatialkit.analysis.where_probe import overlap_depth, patch_labels, probe_where

CFG = S.PRESETS["organism_easy"]  # 48 px, two objects, 5 kinds
KINDS = list(CFG.kinds)


@pytest.fixture(scope="module")
def scenes():
    return [S.render_scene(seed, CFG) for seed in range(120)]


def local_features(scenes, grid=6):
    """Each patch's feature = one-hot of what it shows + noise: position lives in *which* patch says it."""
    labels = patch_labels(scenes, KINDS, grid)
    rng = np.random.default_rng(0)
    return np.eye(1 + len(KINDS))[labels] + 0.1 * rng.standard_normal(labels.shape + (1 + len(KINDS),))


def test_patch_labels_follow_the_instance_map(scenes):
    labels = patch_labels(scenes, KINDS, 6)
    assert labels.shape == (len(scenes), 36) and labels.min() == 0 and labels.max() <= len(KINDS)
    for scene, row in zip(scenes[:10], labels[:10]):
        assert set(row[row > 0].tolist()) <= {1 + KINDS.index(o.kind) for o in scene.objects}


def test_a_local_encoder_says_where_and_a_global_one_does_not(scenes):
    train, test = range(80), range(80, 120)
    local = probe_where(local_features(scenes), scenes, KINDS, train=train, test=test)
    assert local["point_hit"].mean() > 0.9 and local["relation_correct"].mean() > 0.9
    assert local["patch_correct"].mean() > 0.95
    # the same content pooled over the image and copied to every patch: "what" is there, "where" is gone
    feats = local_features(scenes)
    pooled = np.repeat(feats.mean(1, keepdims=True), feats.shape[1], axis=1)
    pooled += 0.01 * np.random.default_rng(1).standard_normal(pooled.shape)
    glob = probe_where(pooled, scenes, KINDS, train=train, test=test)
    assert glob["point_hit"].mean() < 0.6 and glob["relation_correct"].mean() < 0.6
    assert len(glob["point_hit"]) == len(glob["point_chance"]) > 0
    assert 0 < glob["point_chance"].mean() < 0.5


def test_probe_checks_its_inputs(scenes):
    feats = local_features(scenes)
    with pytest.raises(ValueError):
        probe_where(feats[:5], scenes, KINDS, train=[0], test=[1])
    with pytest.raises(ValueError):
        probe_where(feats, scenes, KINDS, train=[0, 1], test=[1, 2])


def test_overlap_depth_reads_front_behind_from_what_the_shared_patches_show():
    cfg = S.PRESETS["organism_whatsup_b"]  # half its scenes: one object hides part of the other
    kinds = list(cfg.kinds)
    scenes = [S.render_scene(seed, cfg) for seed in range(200)]
    index = list(range(len(scenes)))
    # the true visible label of every pixel (a 48 x 48 grid): the occluder is what the overlap shows
    fine = patch_labels(scenes, kinds, 48)
    right = overlap_depth(fine, scenes, kinds, index)
    assert len(right) > 50 and right.mean() > 0.95
    # the same labels as one-hot probabilities give the same reading
    assert np.array_equal(overlap_depth(np.eye(1 + len(kinds))[fine], scenes, kinds, index), right)
    # coarse patches blur the overlap: the 6 x 6 grid of the organisms carries less
    coarse = overlap_depth(patch_labels(scenes, kinds, 6), scenes, kinds, index)
    assert 0.5 < coarse.mean() < right.mean()
    # a map that shows nothing tells nothing: every pair is a tie, scored as a coin's expected 0.5
    flat = np.full((len(scenes), 36, 1 + len(kinds)), 1.0 / (1 + len(kinds)))
    assert set(overlap_depth(flat, scenes, kinds, index).tolist()) == {0.5}
    # a map that shows the farther object in the overlap calls every pair wrong
    far_shown = fine.copy()
    for row, scene in enumerate(scenes):
        a, b = scene.objects
        if a.kind != b.kind and S.relation_depth(scene, 0, 1) is not None:
            near, far = (a, b) if a.depth < b.depth else (b, a)
            far_shown[row][fine[row] == 1 + kinds.index(near.kind)] = 1 + kinds.index(far.kind)
    assert overlap_depth(far_shown, scenes, kinds, index).max() <= 0.5
    with pytest.raises(ValueError, match="len\\(index\\)"):
        overlap_depth(fine[:3], scenes, kinds, index)
    with pytest.raises(ValueError, match="classes per patch"):
        overlap_depth(flat[..., :3], scenes, kinds, index)
    with pytest.raises(ValueError, match="scene indices"):
        overlap_depth(fine[:1], scenes, kinds, [len(scenes)])
    with pytest.raises(ValueError, match="at least one"):
        overlap_depth(fine[:0], scenes, kinds, [])


def test_a_clip_tower_under_the_organism_trains_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    from spatialkit.models import clip as C
    from spatialkit.models.encoder_swap import CLIPVisionTower, train_or_load_swapped
    from spatialkit.models.organism import preset
    from spatialkit.models.organism.model import to_pixels

    cfg = preset("smoke_llava", steps=4, eval_every=4)
    clip_model = C.build_model(C.CLIPConfig(vocab_size=20, image_size=48, width=32, depth=1, embed_dim=16), seed=0)
    vlm, metrics = train_or_load_swapped(cfg, clip_model, encoder_key="test", threads=1, progress=False)
    assert isinstance(vlm.model.vision, CLIPVisionTower) and vlm.config.optim.vision_pretrain_steps == 0
    images = np.stack([S.render_scene(k, S.PRESETS[cfg.data.scene_preset]).image for k in range(2)])
    with torch.no_grad():  # the tower is the CLIP encoder itself, frozen: same patch tokens
        ours = vlm.model.vision(to_pixels(images))
        theirs = clip_model.image(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    assert torch.allclose(ours, theirs, atol=1e-5)
    again, metrics2 = train_or_load_swapped(cfg, clip_model, encoder_key="test", threads=1, progress=False)
    assert metrics2["state_sha256"] == metrics["state_sha256"]
    assert list(tmp_path.glob("checkpoints/swap-*"))
