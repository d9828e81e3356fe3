"""OrganismVLM: the VLM interface, determinism, the checkpoint store round trip, and a learning threshold."""

import math

import numpy as np
import pytest
import torch

from spatialkit.common import checkpoints
from spatialkit import world as scenes
from spatialkit.common.checkpoints import CheckpointError
from spatialkit.models.organism.model import SYSTEM_PROMPT, state_dict_sha256
from spatialkit.models.organism import (
    OrganismVLM, accuracy_by_family, accuracy_by_task, code_version, evaluate, load_or_train, preset, wherebench,
)
from spatialkit.models.organism import train
from spatialkit.models.vlm import TokenKind, VisualTokens


@pytest.fixture(scope="module")
def smoke():
    """A smoke organism trained once for this module (seconds)."""
    torch.set_num_threads(1)
    cfg = preset("smoke")
    model, vocab, metrics = train(cfg, progress=False)
    return OrganismVLM(model, vocab, cfg), metrics


def _images_and_questions(vlm, n=4):
    bench = wherebench(vlm.config)
    items = bench.splits["test"][:n]
    images = np.stack([scenes.render_scene(it.scene_seed, bench.config).image for it in items])
    return images, [it.question for it in items]


def test_training_is_deterministic(smoke):
    vlm, metrics = smoke
    model2, _, metrics2 = train(vlm.config, progress=False)
    assert state_dict_sha256(model2) == state_dict_sha256(vlm.model) == metrics["state_sha256"]
    strip = lambda m: {k: v for k, v in m.items() if k != "timing"}  # noqa: E731 (wall time is not deterministic)
    assert strip(metrics2) == strip(metrics)


def test_prepare_layout(smoke):
    vlm, _ = smoke
    images, qs = _images_and_questions(vlm, 2)
    batch = vlm.prepare(images, [q.text for q in qs], system_prompt=SYSTEM_PROMPT)
    n_sys = len(vlm.vocab.encode(SYSTEM_PROMPT))
    h, w = vlm.model.grid
    kinds = batch.token_kind[0].tolist()
    assert kinds[:n_sys] == [TokenKind.SYSTEM] * n_sys
    assert kinds[n_sys: n_sys + h * w] == [TokenKind.IMAGE] * (h * w)
    assert batch.image_mask.sum(1).tolist() == [h * w, h * w] and batch.grids == [(h, w)] * 2
    last = batch.last_index()
    assert batch.inputs["input_ids"][torch.arange(2), last].tolist() == [vlm.vocab["<ans>"]] * 2
    with pytest.raises(ValueError, match="does not know"):
        vlm.prepare(images[:1], ["where is the zebra ?"])
    with pytest.raises(ValueError, match="48x48"):
        vlm.prepare(np.zeros((1, 32, 32, 3), np.uint8), ["describe the image ."])


def test_score_options_shape_and_consistency(smoke):
    vlm, _ = smoke
    images, qs = _images_and_questions(vlm, 3)
    options = [list(q.options) for q in qs]
    scores = vlm.score_options(images, [q.text for q in qs], options)
    assert scores.shape == (3, max(len(o) for o in options))
    assert torch.isfinite(scores[0, : len(options[0])]).all()
    assert (scores <= 0).all()
    # one item alone scores the same as inside the batch
    alone = vlm.score_options(images[1:2], [qs[1].text], [options[1]])
    assert torch.allclose(alone[0, : len(options[1])], scores[1, : len(options[1])], atol=1e-5)
    # a single-word option's score is the log-softmax of the logits at <ans>
    batch = vlm.prepare(images[:1], [qs[0].text])
    logp = vlm.logits(batch)[0, batch.last_index()[0]].log_softmax(-1)
    word = vlm.vocab.encode(options[0][0])
    if len(word) == 1:
        assert math.isclose(float(scores[0, 0]), float(logp[word[0]]), abs_tol=1e-5)


def test_generate_greedy_matches_argmax(smoke):
    vlm, _ = smoke
    images, qs = _images_and_questions(vlm, 3)
    prompts = [qs[0].text, "describe the image .", qs[2].text]  # different lengths: grouped decoding
    gens = vlm.generate(images, prompts, max_new_tokens=4)
    assert len(gens) == 3
    for g, img, p in zip(gens, images, prompts):
        assert 0 < g.first_token_prob <= 1 and len(g.token_ids) <= 4
        batch = vlm.prepare(img[None], [p])
        probs = vlm.logits(batch)[0, -1].softmax(-1)
        assert math.isclose(g.first_token_prob, float(probs.max()), rel_tol=1e-5)
        if g.token_ids:
            assert g.token_ids[0] == int(probs.argmax())
        assert g.text == vlm.vocab.decode(g.token_ids)


def test_visual_hook_sees_exactly_the_lm_input_and_restores(smoke):
    vlm, _ = smoke
    images, qs = _images_and_questions(vlm, 2)
    batch = vlm.prepare(images, [q.text for q in qs])
    seen, lm_input = [], []
    handle = vlm.model.blocks[0].register_forward_pre_hook(lambda mod, args: lm_input.append(args[0].detach()))
    try:
        with vlm.visual_hook(lambda vt: (seen.append(vt), vt)[1]):
            base = vlm.logits(batch)
    finally:
        handle.remove()
    (vt,) = seen
    assert vt.grids == batch.grids and vt.tokens.shape == (2 * 36, vlm.model.cfg.lm_dim)
    # lm_posenc "rope1d" adds nothing to the embeddings: block 0's input at image slots = the hooked tokens
    assert vlm.config.model.lm_posenc == "rope1d"
    assert torch.equal(lm_input[0][batch.image_mask], vt.tokens)
    # a hook that changes the tokens changes the answer logits, and is gone after the block
    zero = lambda vt: vt.replace(tokens=torch.zeros_like(vt.tokens))  # noqa: E731
    with vlm.visual_hook(zero):
        changed = vlm.logits(batch)
    assert not torch.allclose(changed, base)
    assert torch.equal(vlm.logits(batch), base)
    with pytest.raises(RuntimeError, match="inside"):
        with vlm.visual_hook(zero):
            raise RuntimeError("inside")
    assert torch.equal(vlm.logits(batch), base) and not vlm._visual_fns
    # visual_tokens goes through the active hooks too
    with vlm.visual_hook(zero):
        assert float(vlm.visual_tokens(batch).tokens.abs().sum()) == 0.0


def test_attention_hook_sdpa_identity_and_probs(smoke):
    vlm, _ = smoke
    images, qs = _images_and_questions(vlm, 2)
    batch = vlm.prepare(images, [q.text for q in qs], system_prompt=SYSTEM_PROMPT)
    base = vlm.logits(batch)
    calls = []

    def probe(call):
        calls.append(call)
        return call.sdpa()

    with vlm.attention_hook(probe):
        hooked = vlm.logits(batch)
    assert torch.equal(hooked, base)
    assert [c.layer for c in calls] == list(range(vlm.num_layers))
    call = calls[0]
    assert call.token_kind is not None and torch.equal(call.token_kind, batch.token_kind)
    rows = batch.last_index()
    probs = call.probs(rows)  # (B, H, 1, L)
    q = call.query[torch.arange(2), :, rows]  # (B, H, D)
    logits = torch.einsum("bhd,bhld->bhl", q, call.key) * call.scale
    causal = torch.arange(call.key.shape[2])[None, None, :] <= rows[:, None, None]
    explicit = logits.masked_fill(~causal, float("-inf")).softmax(-1)
    assert torch.allclose(probs[:, :, 0], explicit, atol=1e-6)
    # restored after an exception; the hook also runs during generation (prefill + decode calls)
    with pytest.raises(ValueError):
        with vlm.attention_hook(probe):
            raise ValueError
    assert not vlm._attention_fns and torch.equal(vlm.logits(batch), base)
    calls.clear()
    with vlm.attention_hook(probe):
        (gen,) = vlm.generate(images[:1], [qs[0].text], max_new_tokens=2)
    prefill = [c for c in calls if c.query.shape[2] > 1]
    decode = [c for c in calls if c.query.shape[2] == 1]
    assert len(prefill) == vlm.num_layers
    assert len(decode) == (vlm.num_layers if gen.token_ids else 0)  # one decode step unless <eos> came first
    assert all(not c.is_causal and c.token_kind.shape[1] == c.key.shape[2] for c in decode)


def test_text_embeddings_and_num_layers(smoke):
    vlm, _ = smoke
    images, qs = _images_and_questions(vlm, 1)
    batch = vlm.prepare(images, [qs[0].text])
    emb = vlm.text_embeddings(batch)
    assert emb.shape == (int(batch.text_mask.sum()), vlm.model.cfg.lm_dim)
    assert vlm.num_layers == vlm.config.model.lm_layers


def test_evaluate_reports_per_item_correctness(smoke):
    vlm, _ = smoke
    df = evaluate(vlm, wherebench(vlm.config), "test", batch_size=16)
    assert len(df) == vlm.config.data.n_test and df["correct"].dtype == bool
    assert set(df["family"]) == {"what", "where"} and "where_two" in set(df["task"])
    table = accuracy_by_task(df)
    assert set(table.columns) >= {"family", "task", "accuracy", "n"}
    acc = accuracy_by_family(df)
    assert acc["what"] == pytest.approx(df[df.family == "what"]["correct"].mean())


def test_load_or_train_round_trip_and_interrupted_training(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    cfg = preset("smoke", steps=6, eval_every=3, seed=5)
    with pytest.raises(CheckpointError, match="training is disabled"):
        load_or_train(cfg, allow_train=False)

    # a run that dies inside the training loop leaves nothing a later run would load
    from spatialkit.models.organism import store

    real_train = store.train
    monkeypatch.setattr(store, "train", lambda c, **kw: real_train(c, fail_at_step=2, **kw))
    with pytest.raises(RuntimeError, match="simulated failure"):
        load_or_train(cfg)
    monkeypatch.setattr(store, "train", real_train)
    with pytest.raises(CheckpointError, match="training is disabled"):
        load_or_train(cfg, allow_train=False)

    trained = load_or_train(cfg, progress=False)
    loaded = load_or_train(cfg, allow_train=False)
    assert state_dict_sha256(loaded.model) == state_dict_sha256(trained.model) == trained.metrics["state_sha256"]
    assert loaded.vocab.words == trained.vocab.words
    images, qs = _images_and_questions(loaded, 2)
    args = (images, [q.text for q in qs], [list(q.options) for q in qs])
    assert torch.equal(loaded.score_options(*args), trained.score_options(*args))

    # a truncated weights file: refused without training, retrained (same weights) with
    folder = store.checkpoint_folder(cfg)  # the key holds the config plus torch's version and thread count
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt|sha256"):
        load_or_train(cfg, allow_train=False)
    again = load_or_train(cfg, progress=False)
    assert state_dict_sha256(again.model) == state_dict_sha256(trained.model)


@pytest.mark.slow(seconds=150)  # the suite's longest test: started first (conftest)
def test_small_organism_learns_what_and_where():
    """Learning threshold on the "quick" recipe at 1200 VQA steps (about 100 s of one CPU core, both stages; its
    2000-step stage 1 is 60 s of it): on the held-out test split (80 items per task, balanced per question text)
    it answers "what" and two-object "where" questions well above chance (1/4; presence 1/2). Measured at 1200
    steps: what 0.863 (presence 0.912, identity 0.975, colour 0.700), where_one 0.612, where_two 0.625; at 2000
    steps (benchmarks/bench_zoo.py's scoring, 400 items per task) what 0.969, where_one 0.688, where_two 0.598 --
    where is learned after what (the preset's own run, a 6000-step schedule, early-stopped at step 4000 for two
    seeds with where_two 0.945 and 0.968).
    Its world asks no count question (two objects always: answerable blind). The thresholds leave room for seed
    and platform noise (80 items: one standard error is about 5 points)."""
    cfg = preset("quick", steps=1200)  # under a third of the notebooks' ~4000 VQA steps keeps the suite's time down
    model, vocab, metrics = train(cfg, progress=False)
    vlm = OrganismVLM(model, vocab, cfg)
    df = evaluate(vlm, wherebench(cfg), "test")
    acc = accuracy_by_task(df).set_index("task")["accuracy"]
    assert accuracy_by_family(df)["what"] >= 0.75, acc
    assert acc["where_two"] >= 0.45, acc
    assert acc["presence"] >= 0.8 and acc["identity"] >= 0.8, acc
    assert "count" not in acc.index, acc
    assert metrics["vision_pretrain_final_loss"] < 0.2, metrics["vision_pretrain_final_loss"]
