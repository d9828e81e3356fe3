"""The tiny VLM's pieces: vocabulary, ViT encoder, projector norms, LM positions, KV cache, config checks."""

import dataclasses

import pytest
import torch

from spatialkit.models.organism.model import (
    LM_POSENCS, SYSTEM_PROMPT, VISION_POSENCS, ModelConfig, Projector, TinyVLM, ViTEncoder, Vocab, lm_positions,
    state_dict_sha256, to_pixels, tokenize,
)
from spatialkit.models.organism import PRESET_WHY, PRESETS, DataConfig, OrganismConfig, preset
from spatialkit.models.vlm import TokenKind


def test_tokenize_and_vocab_roundtrip():
    assert tokenize("Where is the red chick relative to the cup?") == \
        ["where", "is", "the", "red", "chick", "relative", "to", "the", "cup", "?"]
    v1 = Vocab.build(["b a", "c"], loc_grid=4)
    v2 = Vocab.build(["c", "a b"], loc_grid=4)
    assert v1.words == v2.words  # order of the texts does not matter
    assert v1.words[:5] == ["<pad>", "<unk>", "<img>", "<ans>", "<eos>"]
    assert v1.words[5:21] == [f"loc{i}" for i in range(16)] and "loc16" not in v1.index
    ids = v1.encode("a b c")
    assert v1.decode(ids) == "a b c"
    assert v1.unknown("a zebra") == ["zebra"]
    assert all(w in v1.index for w in tokenize(SYSTEM_PROMPT))


def test_vocab_rejects_bad_word_lists():
    with pytest.raises(ValueError, match="specials"):
        Vocab(["a", "b"])


@pytest.mark.parametrize("posenc", VISION_POSENCS)
def test_vit_encoder_every_posenc(posenc):
    enc = ViTEncoder(image_size=32, patch_size=8, dim=32, depth=1, n_heads=2, posenc=posenc)
    out = enc(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 16, 32) and enc.grid == (4, 4)
    out.sum().backward()


@pytest.mark.parametrize("stem", ["linear", "conv"])
def test_vit_encoder_stems(stem):
    enc = ViTEncoder(image_size=32, patch_size=8, dim=32, depth=1, n_heads=2, stem=stem)
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 16, 32)


def test_vit_encoder_position_matters_only_with_posenc():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    # swap two patches: without a position code the token set is only permuted (equivariance)
    swapped = x.clone()
    swapped[..., 0:8, 0:8], swapped[..., 0:8, 8:16] = x[..., 0:8, 8:16], x[..., 0:8, 0:8]
    for posenc, equivariant in (("none", True), ("sincos2d", False)):
        enc = ViTEncoder(image_size=32, patch_size=8, dim=32, depth=1, n_heads=2, posenc=posenc).eval()
        a, b = enc(x)[0], enc(swapped)[0]
        perm = torch.arange(16)
        perm[0], perm[1] = 1, 0
        assert torch.allclose(a[perm], b, atol=1e-5) == equivariant


def test_vit_encoder_validates():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTEncoder(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="vision posenc"):
        ViTEncoder(posenc="fourier")
    with pytest.raises(ValueError, match="stem"):
        ViTEncoder(image_size=36, patch_size=6, stem="conv")


def test_projector_norm_controls():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 16) * 30
    rms = Projector(16, 32, "rmsclip")
    norms = rms(x).detach().norm(dim=-1)
    assert float(norms.max()) <= 0.83 * 1.22 + 1e-4  # s = min(1.22/||y||, 1) then 0.83*s*y
    target = Projector(16, 32, "target", scale=2.5)
    assert torch.allclose(target(x).norm(dim=-1), torch.full((5, 7), 2.5), atol=1e-4)


def test_lm_positions_follow_qwen_rule():
    # [sys, sys, img x 6 (2x3 grid), text, text]
    kind = torch.tensor([[1, 1, 2, 2, 2, 2, 2, 2, 3, 3]])
    pos = lm_positions(kind, (2, 3), "2d")[0]
    s = 2
    assert pos[:2].tolist() == [[0, 0, 0], [1, 1, 1]]
    assert pos[2:8].tolist() == [[s, s + r, s + c] for r in range(2) for c in range(3)]
    assert pos[8].tolist() == [s + 3] * 3 and pos[9].tolist() == [s + 4] * 3  # resumes at s + max(h, w)
    assert lm_positions(kind, (2, 3), "1d")[0, :, 0].tolist() == list(range(10))


def _toy_batch(vocab_size, b=3, n=16, text=6, sys_rows=(0,)):
    torch.manual_seed(1)
    length = 2 + n + text
    ids = torch.randint(5, vocab_size, (b, length))
    kind = torch.full((b, length), int(TokenKind.TEXT))
    for row in range(b):
        offset = 2 if row in sys_rows else 0
        kind[row, :offset] = int(TokenKind.SYSTEM)
        kind[row, offset: offset + n] = int(TokenKind.IMAGE)
        if not offset:
            kind[row, -2:] = int(TokenKind.PAD)
    ids[kind == TokenKind.IMAGE] = 2
    return ids, kind


@pytest.mark.parametrize("lm_posenc", LM_POSENCS)
def test_cached_decoding_matches_full_forward(lm_posenc):
    cfg = ModelConfig(vocab_size=40, image_size=32, patch_size=8, vision_dim=32, lm_dim=32, vision_heads=2,
                      lm_heads=2, vision_layers=1, lm_layers=2, lm_posenc=lm_posenc)
    torch.manual_seed(0)
    model = TinyVLM(cfg).eval()
    ids, kind = _toy_batch(40, sys_rows=(0, 1, 2))
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        full = model(pixels, ids, kind)
        cache = model.new_cache()
        prefix = model(pixels, ids[:, :-3], kind[:, :-3], cache=cache)
        steps = []
        for t in range(ids.shape[1] - 3, ids.shape[1]):
            pos = model.positions(kind[:, : t + 1])[:, -1:]
            steps.append(model(None, ids[:, t: t + 1], kind[:, t: t + 1], cache=cache, positions=pos))
    assert torch.allclose(prefix, full[:, :-3], atol=1e-5)
    assert torch.allclose(torch.cat(steps, 1), full[:, -3:], atol=1e-5)


def test_causality_and_visual_scatter():
    cfg = ModelConfig(vocab_size=40, image_size=32, patch_size=8, vision_dim=32, lm_dim=32, vision_heads=2,
                      lm_heads=2, vision_layers=1, lm_layers=1)
    torch.manual_seed(0)
    model = TinyVLM(cfg).eval()
    ids, kind = _toy_batch(40)
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        base = model(pixels, ids, kind)
        changed = ids.clone()
        changed[:, -1] = 7  # a later token cannot change earlier logits
        assert torch.allclose(model(pixels, changed, kind)[:, :-1], base[:, :-1], atol=1e-6)
        # the image matters
        assert not torch.allclose(model(pixels + 1, ids, kind)[:, -1], base[:, -1])


def test_state_dict_hash_is_stable_and_sensitive():
    cfg = ModelConfig(vocab_size=20, image_size=16, patch_size=8, vision_dim=16, lm_dim=16, vision_heads=1,
                      lm_heads=1, vision_layers=1, lm_layers=1)
    torch.manual_seed(3)
    a = TinyVLM(cfg)
    torch.manual_seed(3)
    b = TinyVLM(cfg)
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        b.lm_head.weight[0, 0] += 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)


def test_to_pixels_checks_input():
    import numpy as np

    x = to_pixels(np.full((2, 8, 8, 3), 255, np.uint8))
    assert x.shape == (2, 3, 8, 8) and float(x.max()) == 1.0
    with pytest.raises(ValueError, match="uint8"):
        to_pixels(np.zeros((2, 8, 8, 3), np.float32))
    images = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    assert torch.equal(to_pixels(images[::-1]), to_pixels(images).flip(0))  # a reversed view (negative strides)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, r"OptimConfig: parameter 'steps' = 0 is invalid; allowed: int in \[1, "),
    ("steps", 6.0, r"parameter 'steps' = 6.0 is invalid"),  # strict types: no silent 6.0 -> 6
    ("spatial_fraction", 1.5, r"DataConfig: parameter 'spatial_fraction' = 1.5 is invalid; allowed: float in \[0, 1\]"),
    ("vision_posenc", "fourier", "parameter 'vision_posenc' = 'fourier' is invalid; allowed: one of"),
    ("lm_posenc", "sincos2d", "parameter 'lm_posenc' = 'sincos2d' is invalid; allowed: one of"),
    ("visual_norm", "layer", "parameter 'visual_norm' = 'layer' is invalid; allowed: one of"),
    ("vision_embed_norm", 1, "parameter 'vision_embed_norm' = 1 is invalid; allowed: bool"),
    ("scene_preset", "mars", "parameter 'scene_preset' = 'mars' is invalid; allowed: one of"),
    ("patch_size", 7, "multiple of patch_size"),
    ("lm_heads", 3, "lm_dim"),
    ("vocab_size", 50, "model.vocab_size is derived"),
    ("seed", -1, "parameter 'seed' = -1"),
])
def test_config_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        preset("smoke", **{field: value})


def test_fractions_must_fit_and_presets_exist():
    with pytest.raises(ValueError, match="spatial_fraction \\+ caption_fraction"):
        OrganismConfig(data=DataConfig(spatial_fraction=0.8, caption_fraction=0.3))
    with pytest.raises(ValueError, match="preset must be one of"):
        preset("huge")
    for name in PRESETS:
        cfg = preset(name)
        assert OrganismConfig.from_dict(cfg.to_dict()) == cfg
        assert PRESET_WHY[name]  # every preset says what it is for


def test_config_sections_and_overrides():
    # one set of defaults: a bare ModelConfig is the organism's model section
    assert OrganismConfig().model == ModelConfig()
    cfg = preset("smoke", steps=6, eval_every=3, seed=5, lm_posenc="mrope", spatial_fraction=0.0)
    assert (cfg.optim.steps, cfg.optim.eval_every, cfg.seed, cfg.model.lm_posenc, cfg.data.spatial_fraction) == (
        6, 3, 5, "mrope", 0.0)
    assert cfg.model.lm_dim == 32 and cfg.optim.packed  # the rest of the preset stays
    # flat, dotted and section-dict overrides are the same change
    assert (cfg.replace(lm_dim=16) == cfg.replace(**{"model.lm_dim": 16}) == cfg.replace(model={"lm_dim": 16})
            == cfg.replace(model=dataclasses.replace(cfg.model, lm_dim=16)))
    assert cfg.replace(data={"n_val": 50}).data.n_val == 50
    with pytest.raises(ValueError, match="unknown OrganismConfig field 'stepz'"):
        preset("smoke", stepz=3)
    with pytest.raises(ValueError, match="unknown OrganismConfig field 'data.steps'"):
        cfg.replace(**{"data.steps": 3})
    with pytest.raises(ValueError, match="given twice"):
        cfg.replace(steps=3, **{"optim.steps": 4})
    # the built model gets the derived fields; the config keeps them None
    built = cfg.model_config(123)
    assert (built.vocab_size, built.max_len) == (123, 32 + 36 + 64) and cfg.model.vocab_size is None
    assert ModelConfig(vocab_size=5).seq_len == 32 + 36 + 64
    with pytest.raises(ValueError, match="vocab_size must be set"):
        TinyVLM(ModelConfig())
    assert set(cfg.to_dict()) == {"model", "data", "optim", "seed"}
    # a read-only flat view for the notebooks
    assert (cfg.steps, cfg.image_size, cfg.bench_seed) == (cfg.optim.steps, cfg.model.image_size, cfg.data.bench_seed)
    assert not hasattr(cfg, "stepz")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 3
    import copy
    import pickle

    assert pickle.loads(pickle.dumps(cfg)) == copy.deepcopy(cfg) == cfg
