"""The organism trainer's parts: packed rows, the stage-1 vision encoder (and its cache), the sampler, the
prefix-LM mask, and the model's init."""

import numpy as np
import pytest
import torch

from spatialkit.common import checkpoints
from spatialkit.models.organism.model import (ANS, SPECIALS, SYSTEM_PROMPT, ModelConfig, TinyVLM, prefix_lm_mask, state_dict_sha256,
                               to_pixels)
from spatialkit.models.organism import code_version
from spatialkit.models.organism import preset, train
from spatialkit.models.organism.data import (assemble, assemble_packed, build_pool, build_vocab, caption_word_bags,
                                             sample_batch)
from spatialkit.common.fingerprint import fingerprint
from spatialkit.models.organism.train import (train_vision_stage, vision_checkpoint_config,
                                               vision_checkpoint_folder, vision_stage_config)
from spatialkit.models.vlm import TokenKind


@pytest.fixture(scope="module")
def smoke_data():
    cfg = preset("smoke")
    vocab = build_vocab(cfg)
    return cfg, vocab, build_pool(cfg, vocab)


@pytest.mark.parametrize("lm_posenc", ["rope1d", "mrope", "learned", "none"])
@pytest.mark.parametrize("with_system", [False, True])
def test_packed_rows_compute_every_question_as_if_alone(smoke_data, lm_posenc, with_system):
    cfg, vocab, pool = smoke_data
    cfg = cfg.replace(lm_posenc=lm_posenc)
    torch.manual_seed(0)
    model = TinyVLM(cfg.model_config(len(vocab))).eval()
    n = cfg.model.grid[0] * cfg.model.grid[1]
    groups = [np.flatnonzero(pool.image_index == 0)[:4], np.flatnonzero(pool.image_index == 1)[:3]]
    with torch.no_grad():
        tokens = model.encode_image(to_pixels(pool.images[[0, 1]]))
        ids, kind, tgt, pos, mask = assemble_packed(vocab, n, groups, pool.tails, pool.targets, with_system)
        positions = model.positions(kind).gather(1, pos[..., None].expand(-1, -1, 3))
        packed = model.lm_head(model.hidden(None, ids, kind, visual=tokens.flatten(0, 1), positions=positions,
                                            attn_mask=mask))
        rows = np.concatenate(groups)
        owner = torch.tensor([0] * len(groups[0]) + [1] * len(groups[1]))
        ids1, kind1, tgt1 = assemble(vocab, n, pool.tails[rows], pool.targets[rows], np.full(len(rows), with_system))
        alone = model.lm_head(model.hidden(None, ids1, kind1, visual=tokens[owner].flatten(0, 1)))
    assert torch.equal(tgt[tgt != -100], tgt1[tgt1 != -100])  # the same supervised tokens, in the same order
    assert torch.allclose(packed[tgt != -100], alone[tgt1 != -100], atol=1e-5)
    # a question never sees another question of its row, and every question sees the whole image
    prefix = n + (len(vocab.encode(SYSTEM_PROMPT)) if with_system else 0)
    first = int((pool.tails[groups[0][0]] != vocab["<pad>"]).sum())
    assert not mask[0, 0, prefix + first:, prefix: prefix + first].any()
    assert mask[0, 0, prefix:, prefix - n: prefix][kind[0, prefix:] == TokenKind.TEXT].all()


@pytest.mark.parametrize("lm_posenc,lm_attention", [("rope1d", "causal"), ("rope2d", "causal"), ("learned", "causal"),
                                                     ("mrope", "prefix")])
def test_hidden_only_at_the_targets_is_the_full_forward_there(smoke_data, lm_posenc, lm_attention):
    """``hidden(only=...)`` (the trainer's last block at target positions only) returns the full forward's
    states there, bit for bit, on packed rows (their mask) and on plain causal / prefix-LM rows, and its
    gradients agree up to summation order."""
    cfg, vocab, pool = smoke_data
    cfg = cfg.replace(lm_posenc=lm_posenc, lm_attention=lm_attention, packed=lm_attention == "causal")
    torch.manual_seed(0)
    model = TinyVLM(cfg.model_config(len(vocab))).train()
    n = cfg.model.grid[0] * cfg.model.grid[1]
    tokens = model.encode_image(to_pixels(pool.images[[0, 1, 2]])).detach()
    rows = np.concatenate([np.flatnonzero(pool.image_index == i)[:k] for i, k in ((0, 1), (1, 3), (2, 2))])
    ids, kind, tgt = assemble(vocab, n, pool.tails[rows], pool.targets[rows], np.full(len(rows), True))
    owner = torch.from_numpy(pool.image_index[rows])
    calls = [dict(visual=tokens[owner].flatten(0, 1))]
    if lm_attention == "causal":  # and packed rows (one image per row, several questions)
        groups = [rows[pool.image_index[rows] == i] for i in range(3)]
        p_ids, p_kind, p_tgt, pos, mask = assemble_packed(vocab, n, groups, pool.tails, pool.targets, False)
        positions = model.positions(p_kind).gather(1, pos[..., None].expand(-1, -1, 3))
        calls.append(dict(ids=p_ids, kind=p_kind, tgt=p_tgt, visual=tokens.flatten(0, 1), positions=positions,
                          attn_mask=mask))
    params = [p for p in model.blocks.parameters()]
    for call in calls:
        i, k, t = call.pop("ids", ids), call.pop("kind", kind), call.pop("tgt", tgt)
        keep = t != -100
        assert keep.any(1).all() and (keep.sum(1) != keep.sum(1)[0]).any()  # rows of unequal target counts
        full = model.hidden(None, i, k, **call)[keep]
        part = model.hidden(None, i, k, only=keep, **call)
        assert torch.equal(full, part)
        grads = [torch.autograd.grad(h.square().sum(), params) for h in (full, part)]
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot fill a cache"):
        model.hidden(None, ids, kind, visual=calls[0]["visual"], only=tgt != -100, cache=model.new_cache())
    with pytest.raises(ValueError, match="only must be a bool mask shaped like input_ids"):
        model.hidden(None, ids, kind, visual=calls[0]["visual"], only=(tgt != -100)[:, 1:])
    with pytest.raises(ValueError, match="only must be a bool mask"):  # an index tensor, not a mask
        model.hidden(None, ids, kind, visual=calls[0]["visual"], only=(tgt != -100).long())


def test_packed_training_is_rejected_for_a_prefix_lm():
    with pytest.raises(ValueError, match="packed=True needs model.lm_attention='causal'"):
        preset("smoke", lm_attention="prefix")
    assert preset("smoke", lm_attention="prefix", packed=False).model.lm_attention == "prefix"
    with pytest.raises(ValueError, match="vision_pretrain_pool"):
        preset("smoke", vision_pretrain_pool="sum")
    with pytest.raises(ValueError, match="vision_lr_scale"):
        preset("smoke", vision_lr_scale=-1.0)


def test_prefix_lm_mask_and_model():
    ans = SPECIALS.index(ANS)
    ids = torch.tensor([[2, 2, 9, ans, 7, 8], [2, 2, ans, 7, 0, 0]])
    m = prefix_lm_mask(ids)[:, 0]
    assert m[0, :4, :4].all() and not m[0, 3, 4] and m[0, 5, :6].all() and not m[0, 4, 5]
    assert m[1, 0, 2] and not m[1, 0, 3]  # image sees the prompt up to <ans>, not the answer
    cfg = ModelConfig(vocab_size=40, image_size=32, patch_size=8, vision_dim=32, lm_dim=32, vision_heads=2,
                      lm_heads=2, vision_layers=1, lm_layers=2, lm_attention="prefix")
    torch.manual_seed(0)
    model = TinyVLM(cfg).eval()
    n = 16
    ids = torch.tensor([[2] * n + [9, 10, ans, 11, 12]])
    kind = torch.tensor([[int(TokenKind.IMAGE)] * n + [int(TokenKind.TEXT)] * 5])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        base = model.hidden(pixels, ids, kind)
        other_question = ids.clone()
        other_question[0, n] = 13
        other_answer = ids.clone()
        other_answer[0, -1] = 13
        # image tokens read the question (prefix-LM) but nothing before the answer reads the answer
        assert not torch.allclose(model.hidden(pixels, other_question, kind)[0, :n], base[0, :n])
        assert torch.allclose(model.hidden(pixels, other_answer, kind)[0, :-1], base[0, :-1], atol=1e-6)
        # a cached decode step equals the full forward
        cache = model.new_cache()
        model.hidden(pixels, ids[:, :-1], kind[:, :-1], cache=cache)
        pos = model.positions(kind)[:, -1:]
        step = model.hidden(None, ids[:, -1:], kind[:, -1:], cache=cache, positions=pos)
    assert torch.allclose(step[0, 0], base[0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="lm_attention"):
        TinyVLM(ModelConfig(vocab_size=40, lm_attention="bidirectional"))


def test_sampler_draws_an_images_questions_without_replacement(smoke_data):
    cfg, _, pool = smoke_data
    cfg = cfg.replace(examples_per_image=8, batch_size=64, spatial_fraction=0.0, caption_fraction=0.0)
    idx = sample_batch(cfg, pool, np.random.default_rng(0))
    for start in range(0, 64, 8):
        rows = idx[start: start + 8]
        image = pool.image_index[rows[0]]
        assert (pool.image_index[rows] == image).all()
        n_what = len(pool.by_image_family[(int(image), 1)])
        # no question repeats before all of the image's what-questions were drawn
        assert len(set(rows.tolist())) == min(8, n_what)


def test_caption_word_bags_hold_content_words_only(smoke_data):
    _, vocab, pool = smoke_data
    bags = caption_word_bags(pool, vocab)
    assert bags.shape == (len(pool.images), len(vocab))
    words = {vocab.words[i] for i in bags.sum(0).nonzero().flatten().tolist()}
    assert not words & {"a", "and", ",", "<eos>"}
    assert {"red", "ball"} & words
    assert (bags.sum(1) >= 2).all()  # at least one kind and one colour per image


def test_phrase_labels_tie_each_colour_to_its_noun(smoke_data):
    _, vocab, pool = smoke_data
    words = caption_word_bags(pool, vocab)
    both = caption_word_bags(pool, vocab, phrases=True)
    assert both.shape[1] > words.shape[1] and torch.equal(both[:, : words.shape[1]], words)  # words unchanged
    # every image's phrase columns are exactly its caption's "<colour> <noun>" pairs
    caption = pool.by_family["caption"].tolist()[0]
    image = int(pool.image_index[caption])
    tokens = [vocab.words[t] for t in pool.targets[caption].tolist() if t >= 0]
    pairs = {(a, b) for a, b in zip(tokens, tokens[1:]) if a in _colours()}
    assert int(both[image, words.shape[1]:].sum()) == len(pairs) >= 1
    # a config that asks for phrases gets a different stage-1 key
    cfg = preset("smoke")
    assert (vision_stage_config(cfg.replace(vision_pretrain_labels="phrases"))
            != vision_stage_config(cfg.replace(vision_pretrain_labels="words")))


def _colours():
    from spatialkit.world import COLORS

    return tuple(COLORS)


def test_vision_stage_is_cached_shared_and_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    cfg = preset("smoke", steps=3, eval_every=3)
    plain, _, m_plain = train(cfg, progress=False)
    cached, _, m_cached = train(cfg, progress=False, cache_vision=True)
    assert state_dict_sha256(cached) == state_dict_sha256(plain)
    assert m_cached["vision_pretrain_final_loss"] == m_plain["vision_pretrain_final_loss"]
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith("."))  # .locks
    assert len(folders) == 1 and folders[0].startswith("vision-")
    # an organism that differs only after stage 1 reuses the encoder; the stage-1 result does not depend on it
    other = cfg.replace(spatial_fraction=0.2, lm_layers=2)
    assert vision_stage_config(other) == vision_stage_config(cfg)
    model, _, _ = train(other, progress=False, cache_vision=True)
    assert len([p for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith(".")]) == 1
    vision = lambda m: {k: v for k, v in m.state_dict().items() if k.startswith("vision.")}  # noqa: E731
    assert all(torch.equal(vision(model)[k], vision(plain)[k]) for k in vision(plain))
    # the frozen encoder is handed back as a normal trainable module
    assert all(p.requires_grad for p in model.parameters())
    assert vision_stage_config(cfg.replace(seed=1)) != vision_stage_config(cfg)
    key = checkpoints.config_key(vision_checkpoint_config(cfg), fingerprint("spatialkit.models.organism.train"))
    assert (tmp_path / "checkpoints" / f"vision-{key}").exists()
    # the thread count is part of the key: 1 and 2 threads train different weights
    with torch_threads_set(1):
        one = vision_checkpoint_config(cfg)
    with torch_threads_set(2):
        assert vision_checkpoint_config(cfg) != one


def test_stage1_on_another_world_is_that_worlds_encoder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    own = preset("smoke", steps=2, eval_every=2, scene_preset="organism_easy")
    borrowing = preset("smoke", steps=2, eval_every=2, vision_pretrain_world="organism_easy")
    assert borrowing.data.scene_preset != "organism_easy"  # it answers questions on its own world
    assert vision_stage_config(borrowing) == vision_stage_config(own)
    assert vision_stage_config(borrowing) != vision_stage_config(borrowing.replace(vision_pretrain_world=None))
    # trained first through the borrowing organism: the encoder is the one the world's own organism trains
    model, _, _ = train(borrowing, progress=False, cache_vision=True)
    stored = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("vision-")]
    assert len(stored) == 1
    mine, _, _ = train(own, progress=False)  # no cache: stage 1 trained afresh on its own world
    vision = lambda m: {k: v for k, v in m.state_dict().items() if k.startswith("vision.")}  # noqa: E731
    assert all(torch.equal(vision(model)[k], vision(mine)[k]) for k in vision(mine))
    # the pool's stage-1 task (train_vision_stage) trains the same encoder into the same folder
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path / "pool"))
    assert not vision_checkpoint_folder(own).exists()
    train_vision_stage(borrowing)
    assert vision_checkpoint_folder(own).exists() and vision_checkpoint_folder(borrowing) == vision_checkpoint_folder(own)
    with pytest.raises(ValueError, match="vision_pretrain_world"):
        preset("smoke", vision_pretrain_world="no_such_world")
    # naming its own world is the plain recipe: the same stage-1 key, its own pool and vocabulary (no second build)
    from spatialkit.models.organism.train import stage1_config

    itself = own.replace(vision_pretrain_world="organism_easy")
    assert stage1_config(itself) is itself and vision_stage_config(itself) == vision_stage_config(own)


def test_init_is_fan_in_scaled():
    torch.manual_seed(0)
    model = TinyVLM(ModelConfig(vocab_size=40, lm_dim=64, vision_dim=64))
    w = model.blocks[0].attn.qkv.weight
    assert abs(float(w.detach().std()) - 64 ** -0.5) < 0.02
    assert abs(float(model.tok_emb.weight.detach().std()) - 1.0) < 0.1


class torch_threads_set:
    """Set torch's thread count inside a with-block, restored after."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)
