"""PIN on the smoke organism: it trains only its own parameters (frozen model bit-identical, optimizer sees only
the insert and the loc rows), shapes, the context manager restores the model (also on error), training lowers the
location loss, it is deterministic, and the checkpoint store round-trips a trained insert."""

from __future__ import annotations

import pytest
import torch

from spatialkit.analysis.interventions import pin as P
from spatialkit.models.organism.model import state_dict_sha256
from spatialkit.models.organism import scene_config


@pytest.fixture(scope="module")
def vlm():
    from spatialkit.models.organism import load_or_train, preset

    return load_or_train(preset("smoke"), progress=False)


@pytest.fixture(scope="module")
def data(vlm):
    n_bins = len(P.loc_token_ids(vlm.vocab))
    return P.location_set(scene_config(vlm.config), P.split_seeds(0, "train", 40), n_bins)


SHORT = P.PinConfig(n_train_scenes=40, steps=30, batch_size=16, lr=1e-2)


def test_box_bins_round_trip():
    assert P.box_to_bins((0, 0, 48, 48), 48, 16) == (0, 0, 15, 15)
    assert P.box_to_bins((3, 6, 6, 9), 48, 16) == (1, 2, 1, 2)  # one 3-px cell each way
    assert P.bins_to_box((1, 2, 1, 2), 48, 16) == (3.0, 6.0, 6.0, 9.0)
    assert P.bins_to_box((5, 5, 2, 2), 48, 16) == (6.0, 6.0, 18.0, 18.0)  # corners sorted


def test_insert_shapes_and_zero_start(vlm):
    pin = P.Pin(vlm, SHORT)
    h, w = vlm.model.grid
    table = pin.insert(vlm.model.grid)
    assert table.shape == (h * w, vlm.model.cfg.lm_dim)
    assert torch.count_nonzero(table) == 0  # zero-initialised last layer: a fresh insert changes nothing
    assert pin.insert_for([(h, w)] * 3).shape == (3 * h * w, vlm.model.cfg.lm_dim)
    assert pin.loc_rows.shape == (len(P.loc_token_ids(vlm.vocab)), vlm.model.cfg.lm_dim)
    # the sinusoidal table tells every grid cell apart
    assert torch.unique(pin.insert.table((h, w)), dim=0).shape[0] == h * w


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="PinConfig.steps"):
        P.PinConfig(steps=0)
    with pytest.raises(ValueError, match="PinConfig.table_dim"):
        P.PinConfig(table_dim=30)
    with pytest.raises(ValueError, match="nothing to train"):
        P.PinConfig(use_insert=False, train_loc_rows=False)


def test_trains_only_its_own_parameters_and_lowers_the_loss(vlm, data, adamw_params_seen):
    before = state_dict_sha256(vlm.model)
    flags = [p.requires_grad for p in vlm.model.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in vlm.model.parameters()]  # left by its own training
    seen = adamw_params_seen
    pin, metrics = P.train_pin(vlm, SHORT, data=data, progress=False)
    assert state_dict_sha256(vlm.model) == before  # the frozen model is bit-identical
    assert all((g is None and p.grad is None) or (g is not None and torch.equal(g, p.grad))
               for g, p in zip(grads, vlm.model.parameters()))  # no gradient ever reached it
    assert [p.requires_grad for p in vlm.model.parameters()] == flags  # freezing was undone
    assert seen == [{id(p) for p in pin.parameters()}]  # the optimizer holds exactly PIN's parameters
    assert not ({id(p) for p in vlm.model.parameters()} & seen[0])
    trainable = pin.trainable_parameters()
    assert metrics["optimizer_params"] == trainable["insert"] + trainable["loc_rows"] > 0
    assert metrics["final_loss"] < metrics["first_loss"] - 1.0  # the location loss goes down
    assert torch.count_nonzero(pin.insert(vlm.model.grid)) > 0  # and the insert itself learned something


def test_insert_only_variant_keeps_loc_rows_frozen(vlm, data):
    cfg = P.PinConfig(n_train_scenes=40, steps=3, batch_size=8, train_loc_rows=False)
    pin, metrics = P.train_pin(vlm, cfg, data=data, progress=False)
    assert metrics["trainable"]["loc_rows"] == 0
    assert torch.equal(pin.loc_rows, vlm.model.lm_head.weight[P.loc_token_ids(vlm.vocab)])
    assert torch.equal(pin.readout_weight(vlm.model.lm_head.weight), vlm.model.lm_head.weight)


def test_training_is_deterministic(vlm, data):
    cfg = P.PinConfig(n_train_scenes=40, steps=5, batch_size=8)
    a, ma = P.train_pin(vlm, cfg, data=data, progress=False)
    b, mb = P.train_pin(vlm, cfg, data=data, progress=False)
    assert ma["history"] == mb["history"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_applied_adds_insert_and_restores_also_on_error(vlm, data):
    pin, _ = P.train_pin(vlm, P.PinConfig(n_train_scenes=40, steps=5, batch_size=8, lr=1e-2), data=data, progress=False)
    images = data.images[:2]
    batch = vlm.prepare(images, ["a", "a"])
    plain = vlm.visual_tokens(batch).tokens
    with pin.applied(vlm):
        inserted = vlm.visual_tokens(batch).tokens
    assert torch.allclose(inserted - plain, pin.insert_for(batch.grids).detach(), atol=1e-6)
    assert torch.equal(vlm.visual_tokens(batch).tokens, plain)
    with pytest.raises(RuntimeError, match="boom"):
        with pin.applied(vlm):
            raise RuntimeError("boom")
    assert torch.equal(vlm.visual_tokens(batch).tokens, plain)
    assert vlm._visual_fns == []


def test_forget_free_what_scores_bit_identical(vlm):
    from spatialkit.models.organism import wherebench

    bench = wherebench(vlm.config)
    items = [it for it in bench.splits["test"] if it.question.family == "what"][:12]
    sc = scene_config(vlm.config)
    before = P.what_scores(vlm, items, sc)
    pin, _ = P.train_pin(vlm, SHORT, progress=False)
    with pin.applied(vlm):
        with_insert = P.what_scores(vlm, items, sc)
    after = P.what_scores(vlm, items, sc)
    assert torch.equal(before, after)
    assert not torch.equal(before, with_insert)  # the insert does reach the LM


def test_predict_boxes_shapes_and_bounds(vlm, data):
    bins = P.predict_boxes(vlm, data, batch_size=7)
    assert bins.shape == (len(data), 4) and bins.min() >= 0 and bins.max() < data.n_bins
    assert P.predicted_ious(data, data.bins).min() > 0.3  # the gold bins decode onto the gold box


def test_checkpoint_round_trip(vlm):
    cfg = P.PinConfig(n_train_scenes=20, steps=3, batch_size=8)
    trained, m1 = P.load_or_train_pin(vlm, cfg, progress=False)
    loaded, m2 = P.load_or_train_pin(vlm, cfg, allow_train=False, progress=False)
    assert m1["history"] == m2["history"]
    assert all(torch.equal(x, y) for x, y in zip(trained.state_dict().values(), loaded.state_dict().values()))


def test_greedy_decoding_matches_teacher_forcing(vlm, data):
    """Feeding the greedy coordinates back as the answer, every step's loc-restricted argmax is that coordinate."""
    pin, _ = P.train_pin(vlm, P.PinConfig(n_train_scenes=40, steps=10, batch_size=8, lr=1e-2), data=data, progress=False)
    subset = P.LocationSet(data.images, data.image_index[:12], data.prompts[:12], data.boxes[:12], data.bins[:12],
                           data.image_size, data.n_bins)
    readout = pin.readout_weight(vlm.model.lm_head.weight)
    with pin.applied(vlm):
        bins = P.predict_boxes(vlm, subset, readout, batch_size=5)
        batch, tgt = P.location_batch(vlm, subset.images[subset.image_index], subset.prompts, bins)
        with torch.no_grad():
            hidden = vlm.lm_hidden(batch)  # the image's visual tokens, insert added
    loc_ids = P.loc_token_ids(vlm.vocab)
    has = tgt != -100
    forced = (hidden[has] @ readout[loc_ids].T).argmax(-1).view(len(subset), 4)
    assert torch.equal(forced, torch.from_numpy(bins))
