"""PIN on tiny random Hugging Face VLMs of every family: the location tokens (one-token hexadecimal spellings of
the bins, also with LLaVA's SentencePiece tokenizer), training with finite and falling loss on the frozen model
(weights bit-identical, only PIN's parameters in the optimizer, no gradient reaches the model), the insert's
hook restores the model (also on error), the checkpoint store round-trips an HF insert, and the memory/time
estimate of a PIN step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spatialkit import world as scenes
from spatialkit.analysis.interventions import pin as P
from spatialkit.models import hf
from spatialkit.models.organism.model import state_dict_sha256
from spatialkit.testing import hf_tiny

FAMILIES = hf_tiny.FAMILIES
SHORT = P.PinConfig(n_train_scenes=12, steps=25, batch_size=8, lr=1e-2)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def vlm(family):
    return hf_tiny.tiny_vlm(family, seed=0)


@pytest.fixture(scope="module")
def world():
    return dataclasses.replace(scenes.PRESETS["organism"], image_size=56)  # small images: fast


@pytest.fixture(scope="module")
def data(vlm, world):
    return P.location_set(world, P.split_seeds(0, "train", SHORT.n_train_scenes), len(vlm.location_token_ids()))


def _check_location_ids(vlm):
    ids = vlm.location_token_ids()
    assert ids.dtype == torch.long and len(ids) == 16 and len(set(ids.tolist())) == 16
    assert [vlm.tokenizer.decode([t]).strip() for t in ids.tolist()] == list(hf.LOCATION_SPELLINGS)
    assert int(ids.max()) < vlm.output_embeddings().weight.shape[0]  # rows the model already has


def test_location_tokens_are_one_token_hex_spellings(vlm):
    _check_location_ids(vlm)


def test_location_tokens_of_the_sentencepiece_llava(tmp_path):
    folder = hf_tiny.save_hub_layout("llava", tmp_path / "llava_sp", tokenizer="sentencepiece")
    sp = hf.load(folder)
    pieces = sp.tokenizer.convert_ids_to_tokens(sp.tokenizer("where is the cup", add_special_tokens=False)["input_ids"])
    assert all(p.startswith("▁") for p in pieces)  # SentencePiece word-start markers, not byte-level BPE
    _check_location_ids(sp)
    # bins 0-9 fall back to byte tokens, a lone word-start marker is dropped: still one token per bin
    assert all(len(sp.tokenizer(s, add_special_tokens=False)["input_ids"]) <= 2 for s in hf.LOCATION_SPELLINGS)


def test_pin_trains_on_the_frozen_model_only(vlm, data, adamw_params_seen):
    before = state_dict_sha256(vlm.model)
    flags = [p.requires_grad for p in vlm.model.parameters()]
    seen = adamw_params_seen
    pin, metrics = P.train_pin(vlm, SHORT, data=data, progress=False, encode_batch_size=5)
    assert state_dict_sha256(vlm.model) == before  # the frozen model is bit-identical
    assert all(p.grad is None for p in vlm.model.parameters())  # no gradient ever reached it
    assert [p.requires_grad for p in vlm.model.parameters()] == flags  # freezing was undone
    assert seen == [{id(p) for p in pin.parameters()}]
    assert not ({id(p) for p in vlm.model.parameters()} & seen[0])
    losses = [h["loss"] for h in metrics["history"]]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert metrics["final_loss"] < metrics["first_loss"]  # the location loss goes down
    trainable = pin.trainable_parameters()
    assert metrics["optimizer_params"] == trainable["insert"] + trainable["loc_rows"] > 0
    assert pin.loc_rows.dtype == torch.float32 and trainable["loc_rows"] == 16 * vlm.output_embeddings().weight.shape[1]
    grid = vlm.prepare(data.images[:1], data.prompts[:1]).grids[0]
    assert torch.count_nonzero(pin.insert(grid)) > 0  # the insert learned something
    bins = P.predict_boxes(vlm, data, pin.readout_weight(vlm.output_embeddings().weight), batch_size=7)
    assert bins.shape == (len(data), 4) and bins.min() >= 0 and bins.max() < 16


def test_readout_logits_equal_the_readout_weight(vlm, data):
    pin = P.Pin(vlm, SHORT)
    with torch.no_grad():
        pin.loc_rows.add_(torch.randn_like(pin.loc_rows))
    hidden = torch.randn(5, vlm.output_embeddings().weight.shape[1])
    full = hidden @ pin.readout_weight(vlm.output_embeddings().weight).T
    torch.testing.assert_close(pin.readout_logits(hidden, vlm.output_embeddings().weight), full, atol=1e-5, rtol=1e-5)


def test_applied_adds_the_insert_and_restores_also_on_error(vlm, data):
    pin, _ = P.train_pin(vlm, dataclasses.replace(SHORT, steps=4), data=data, progress=False)
    batch = vlm.prepare(data.images[:2], data.prompts[:2])
    plain, logits = vlm.visual_tokens(batch).tokens, vlm.logits(batch)
    with pin.applied(vlm):
        inserted = vlm.visual_tokens(batch).tokens
        assert not torch.equal(vlm.logits(batch), logits)  # the insert reaches the LM
    torch.testing.assert_close(inserted - plain, pin.insert_for(batch.grids).detach(), atol=1e-5, rtol=1e-5)
    assert torch.equal(vlm.visual_tokens(batch).tokens, plain) and torch.equal(vlm.logits(batch), logits)
    with pytest.raises(RuntimeError, match="boom"):
        with pin.applied(vlm):
            raise RuntimeError("boom")
    assert torch.equal(vlm.visual_tokens(batch).tokens, plain) and torch.equal(vlm.logits(batch), logits)


def test_deterministic_checkpoint_round_trip_and_data_required(vlm, data):
    with pytest.raises(ValueError, match="no scene world of its own"):
        P.train_pin(vlm, SHORT, progress=False)
    cfg = dataclasses.replace(SHORT, steps=3)
    a, ma = P.train_pin(vlm, cfg, data=data, progress=False)  # deterministic on the CPU
    b, mb = P.train_pin(vlm, cfg, data=data, progress=False)
    assert ma["history"] == mb["history"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    trained, m1 = P.load_or_train_pin(vlm, cfg, data=data, progress=False)
    loaded, m2 = P.load_or_train_pin(vlm, cfg, data=data, allow_train=False, progress=False)
    assert m1["history"] == m2["history"]
    assert all(torch.equal(x, y) for x, y in zip(trained.state_dict().values(), loaded.state_dict().values()))


def test_pin_train_memory_and_time_estimate():
    config = hf.published_config("llava-1.5-7b-hf")
    small, big = (hf.estimate_memory(config, b, step="pin_train", image_size=224) for b in (4, 8))
    assert big.lm_activations == 2 * small.lm_activations > 0 and big.kv_cache == 0
    inference = hf.estimate_memory(config, 8, step="forward", image_size=224)
    assert big.lm_activations > 10 * inference.lm_activations  # every layer's activations kept for backward
    assert hf.estimate_memory(config, 8, step="pin_train", cached_images=100).cached == 100 * 576 * 4096 * 2
    cost = hf.estimate_pin_cost(config, steps=10, batch_size=8, n_train_images=100, n_test_examples=50)
    assert cost["tokens_per_example"] == 576 + 40 + 4  # LLaVA-1.5: 576 image tokens at any image size
    assert cost["total_s"] > cost["train_s"] > 0 and cost["memory"].weights > 12 * 2**30
    qwen = hf.estimate_pin_cost(hf.published_config("Qwen2-VL-7B-Instruct"), steps=10, batch_size=8,
                                n_train_images=100, n_test_examples=50, image_size=224)
    assert qwen["tokens_per_example"] == 64 + 40 + 4  # 224 px: 8 x 8 merged tokens
