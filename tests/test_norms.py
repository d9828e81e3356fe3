"""Visual-norm control (the paper's RMSNorm -> clip -> scale rule and rescale-to-target) on all five model
kinds, its equivalence with the organism's training-time projector, and the loudness measurements."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spatialkit.analysis.interventions import (loudness_ratio, normalize_visual_norms, position_content_norms, rescale_to_norm,
                                      rms_clip, text_embedding_norm, token_norms)
from spatialkit.analysis.interventions.norms import PAPER_CLIP, PAPER_GAIN, hidden_states
from spatialkit.models.vlm import VisualTokens

from tests.kinds import MODEL_KINDS as KINDS, tiny_case


@pytest.fixture(scope="module", params=KINDS)
def case(request):
    """(kind, vlm, batch) with position-dependent images (random pixels: every patch differs)."""
    return tiny_case(request.param)


# -- the math ----------------------------------------------------------------------------------------
def test_rms_clip_lands_every_token_at_the_papers_norm():
    y = torch.randn(50, 64) * torch.logspace(-1, 3, 50)[:, None]  # norms from ~1 to ~10^4, like LLaVA's
    out = rms_clip(y)
    # RMSNorm gives norm sqrt(d) = 8 > 1.22, so the clip always bites: norm = 0.83 * 1.22 for every token
    assert torch.allclose(out.norm(dim=-1), torch.full((50,), PAPER_GAIN * PAPER_CLIP), rtol=1e-5)
    assert torch.allclose(rms_clip(y, scale=3.0).norm(dim=-1), torch.full((50,), 3 * PAPER_GAIN * PAPER_CLIP), rtol=1e-5)
    # direction is kept
    assert torch.allclose(torch.nn.functional.cosine_similarity(out, y, dim=-1), torch.ones(50), atol=1e-5)


def test_rms_clip_leaves_small_tokens_unclipped():
    g = torch.Generator().manual_seed(0)  # |y| >= 0.5: RMSNorm's eps moves tiny values off the exact gain
    y = torch.randn(10, 1, generator=g).sign() * (0.5 + torch.rand(10, 1, generator=g))  # d = 1: norm 1 < 1.22, s = 1
    assert torch.allclose(rms_clip(y).abs(), torch.full((10, 1), PAPER_GAIN), atol=1e-4)


def test_rescale_to_norm():
    y = torch.randn(7, 16) * 100
    assert torch.allclose(rescale_to_norm(y, 0.5).norm(dim=-1), torch.full((7,), 0.5))
    assert torch.equal(rescale_to_norm(torch.zeros(2, 4), 1.0), torch.zeros(2, 4))


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_organism_projector_computes_the_same_rules(scale):
    """The training option (OrganismConfig.model.visual_norm -> models.Projector) is the inference rule + a learned w."""
    from spatialkit.models.organism.model import Projector

    torch.manual_seed(0)
    x = torch.randn(5, 9, 32)
    rms = Projector(32, 48, norm="rmsclip", scale=scale)
    with torch.no_grad():
        rms.rms.weight.uniform_(0.5, 1.5)
        expected = rms_clip(rms.mlp(x), rms.rms.weight, scale=scale)
        assert torch.allclose(rms(x), expected, atol=1e-6)
    target = Projector(32, 48, norm="target", scale=scale)
    with torch.no_grad():
        assert torch.allclose(target(x), rescale_to_norm(target.mlp(x), scale), atol=1e-6)


# -- the context manager on every model kind -------------------------------------------------------------
@pytest.mark.parametrize("mode", ["rmsclip", "target"])
def test_lm_receives_norm_controlled_tokens(case, mode):
    kind, vlm, batch = case
    deepstack: list = []

    def grab(module, args, kwargs):
        deepstack.append(kwargs.get("deepstack_visual_embeds"))

    handle = vlm.model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True) if kind == "qwen3_vl" else None
    try:
        with normalize_visual_norms(vlm, mode, target=2.5) as used:
            lm_input = hidden_states(vlm, batch)[0]
    finally:
        if handle is not None:
            handle.remove()
    expected = PAPER_GAIN * PAPER_CLIP if mode == "rmsclip" else 2.5
    assert used["mode"] == mode
    norms = lm_input[batch.image_mask].norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, expected), rtol=1e-4)
    if kind == "qwen3_vl":
        for level in deepstack[0]:
            assert torch.allclose(level.norm(dim=-1), torch.full((level.shape[0],), expected), rtol=1e-4)


def test_target_text_uses_the_embedding_table(case):
    _, vlm, batch = case
    with normalize_visual_norms(vlm, "target") as used:
        tokens = vlm.visual_tokens(batch).tokens
    assert used["target"] == pytest.approx(text_embedding_norm(vlm))
    assert torch.allclose(tokens.norm(dim=-1), torch.full((len(tokens),), used["target"]), rtol=1e-4)


@pytest.mark.parametrize("raise_inside", [False, True])
def test_restored_after_exit(case, raise_inside):
    _, vlm, batch = case
    base = vlm.logits(batch)
    if raise_inside:
        with pytest.raises(KeyError):
            with normalize_visual_norms(vlm, "rmsclip"):
                raise KeyError("inside")
    else:
        with normalize_visual_norms(vlm, "rmsclip"):
            changed = vlm.logits(batch)
        assert not torch.equal(changed, base)
    assert torch.equal(vlm.logits(batch), base)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="layernorm"), "mode must be one of"),
    (dict(mode="target", target=-1.0), r"parameter 'target' = .* allowed: float in \(0, "),
    (dict(mode="target", target="huge"), r"parameter 'target' = .* allowed: float in \(0, "),
    (dict(scale=0.0), r"parameter 'scale' = .* allowed: float in \(0, "),
    (dict(clip=float("nan")), r"parameter 'clip' = .* allowed: float in \(0, "),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        with normalize_visual_norms(None, **kwargs):
            pass


# -- measurements -----------------------------------------------------------------------------------
def test_token_norms_cover_every_layer_and_kind(case):
    _, vlm, batch = case
    df = token_norms(vlm, batch)
    assert sorted(df["layer"].unique()) == list(range(vlm.num_layers + 1))
    assert {"image", "text"} <= set(df["kind"])
    n_image = int(batch.image_mask.sum())
    assert (df[(df.layer == 0) & (df.kind == "image")].shape[0]) == n_image
    # layer 0 image norms are the visual tokens' norms
    visual = vlm.visual_tokens(batch).tokens.float().norm(dim=-1).numpy()
    layer0 = df[(df.layer == 0) & (df.kind == "image")]["norm"].to_numpy()
    np.testing.assert_allclose(np.sort(layer0), np.sort(visual), rtol=1e-5)
    ratio = loudness_ratio(df)
    assert len(ratio) == vlm.num_layers + 1 and np.isfinite(ratio.to_numpy()).all()


def test_hidden_states_agree_with_the_logits(case):
    _, vlm, batch = case
    states = hidden_states(vlm, batch)
    assert len(states) == vlm.num_layers + 1
    assert all(s.shape == states[0].shape for s in states)


def test_position_content_split_recovers_a_known_mixture():
    torch.manual_seed(0)
    n_images, h, w, d = 400, 3, 4, 16
    position = torch.randn(h * w, d) * 5.0
    position -= position.mean(0)  # zero-mean over slots
    content = torch.randn(n_images, h * w, d) * 0.5
    vt = VisualTokens(tokens=(position + content).reshape(-1, d), grids=[(h, w)] * n_images)
    df = position_content_norms(vt)
    pos = df[df.part == "position"].sort_values("slot")["norm"].to_numpy()
    np.testing.assert_allclose(pos, position.norm(dim=-1).numpy(), rtol=0.05)
    assert df[df.part == "content"]["norm"].mean() == pytest.approx(0.5 * math.sqrt(d), rel=0.05)
    assert df[df.part == "shared"]["norm"].item() < 0.1  # the slot vectors were centred
    with pytest.raises(ValueError, match="one grid"):
        position_content_norms(VisualTokens(tokens=torch.zeros(12 + 6, d), grids=[(3, 4), (2, 3)]))


def test_loudness_profile_components_per_layer(case):
    from spatialkit.analysis.interventions import loudness_profile

    _, vlm, batch = case
    prof = loudness_profile(vlm, batch)
    assert set(prof.component) == {"image", "image: shared", "image: position", "image: content", "text"}
    assert sorted(prof.layer.unique()) == list(range(vlm.num_layers + 1))
    assert (prof.norm > 0).all() and np.isfinite(prof.norm).all()
    with normalize_visual_norms(vlm, "target", target=3.0):
        quiet = loudness_profile(vlm, batch)
    layer0 = quiet[(quiet.layer == 0) & (quiet.component == "image")]["norm"].item()
    assert layer0 == pytest.approx(3.0, rel=1e-4)


@pytest.mark.parametrize("mode, scale, expected", [("rmsclip", 0.5, 0.5 * PAPER_GAIN * PAPER_CLIP), ("target", 2.0, 2.0)])
def test_organism_trained_with_the_norm_option_feeds_the_lm_controlled_norms(mode, scale, expected):
    """The training option end to end: OrganismConfig.model.visual_norm -> trained model -> what the LM receives."""
    from spatialkit.models.organism import load_or_train, preset

    vlm = load_or_train(preset("smoke", visual_norm=mode, visual_norm_scale=scale, steps=5), progress=False)
    images = np.random.default_rng(0).integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)
    batch = vlm.prepare(images, ["where is the chick ?"] * 2)
    lm_input = hidden_states(vlm, batch)[0][batch.image_mask]
    assert torch.allclose(lm_input.norm(dim=-1), torch.full((lm_input.shape[0],), expected), rtol=1e-4)
