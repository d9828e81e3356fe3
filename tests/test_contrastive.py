"""Tiny CLIP / CLOC: losses on hand-made tensors, the duplicate filter, box encoding, Prompter, training."""

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from spatialkit.models import clip as C


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models: one thread is faster than two fighting over a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- InfoNCE ----------------------------------------------------------------------------------------

def test_info_nce_matches_hand_computation():
    # a_i . b_j = identity logits; each row: -log(e^1 / (e^1 + e^0)) = log(1 + e^-1)
    eye = torch.eye(2)
    assert C.info_nce(eye, eye, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)


def test_info_nce_asymmetric_case_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    s = 2.0
    logits = s * (a @ b.T).numpy()  # [[0, 2], [1.6, 1.2]]
    assert np.allclose(logits, [[0, 2], [1.6, 1.2]])
    row = lambda z, i: -(z[i] - math.log(sum(math.exp(v) for v in z)))  # noqa: E731
    a2b = (row(logits[0], 0) + row(logits[1], 1)) / 2
    b2a = (row(logits[:, 0], 0) + row(logits[:, 1], 1)) / 2
    assert C.info_nce(a, b, s).item() == pytest.approx((a2b + b2a) / 2, abs=1e-5)


def test_dropping_every_negative_leaves_zero_loss_and_never_drops_positive():
    a = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    all_true = torch.ones(4, 4, dtype=torch.bool)  # includes the diagonal, which must be kept
    assert C.info_nce(a, b, 10.0, all_true).item() == pytest.approx(0.0, abs=1e-6)
    assert C.info_nce(a, b, 10.0).item() > 0


def test_dropping_one_negative_equals_loss_without_that_column():
    g = torch.Generator().manual_seed(2)
    a = torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(3, 5, generator=g), dim=-1)
    drop = torch.zeros(3, 3, dtype=torch.bool)
    drop[0, 2] = True
    logits = 3.0 * a @ b.T
    ce = lambda z, t: -(z[t] - torch.logsumexp(z, 0))  # noqa: E731
    a2b = (ce(logits[0, :2], 0) + ce(logits[1], 1) + ce(logits[2], 2)) / 3
    b2a = (ce(logits[:, 0], 0) + ce(logits[:, 1], 1) + ce(logits[1:, 2], 1)) / 3  # a_0 dropped for b_2
    assert C.info_nce(a, b, 3.0, drop).item() == pytest.approx(((a2b + b2a) / 2).item(), abs=1e-5)


# -- near-duplicate filtering -----------------------------------------------------------------------

def test_duplicate_filter_removes_exactly_the_near_duplicates():
    captions = [
        "a red chick",                        # 0
        "a red chick",                        # 1: exact duplicate of 0
        "a blue cup",                         # 2
        "chick red a",                        # 3: same words as 0 (cosine 1)
        "a red chick with a purple ribbon",   # 4
        "a red chick with a blue ribbon",     # 5: cosine 8/9 = 0.889 with 4
    ]
    tok = C.WordTokenizer.from_texts(captions)
    bow = C.bag_of_words(tok.encode(captions, 10), len(tok))
    drop = C.duplicate_mask(bow, 0.9)
    expected = {(0, 1), (1, 0), (0, 3), (3, 0), (1, 3), (3, 1)}
    assert {tuple(ij) for ij in drop.nonzero().tolist()} == expected
    cos45 = torch.nn.functional.cosine_similarity(bow[4], bow[5], dim=0).item()
    assert cos45 == pytest.approx(8 / 9)
    looser = C.duplicate_mask(bow, 0.85)
    assert looser[4, 5] and looser[5, 4] and not looser[4, 4]


def test_tokenizer_roundtrip_and_unknown_words():
    tok = C.WordTokenizer.from_texts(["a red chick", "a blue cup"])
    ids = tok.encode(["a red chick", "a green chick, now"], 5)
    assert ids.shape == (2, 5)
    assert ids[0, 0].item() == tok.index[C.CLS] and ids[0, 4].item() == 0  # <cls> first, padded
    assert tok.decode(ids[0]) == "a red chick"
    assert ids[1, 2].item() == tok.index[C.UNK]
    assert ids[1].tolist().count(0) == 0  # truncated to max_len


# -- boxes ------------------------------------------------------------------------------------------

def test_box_encoding_values_and_shape():
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 1.0, 1.0]])
    enc = C.box_encoding(boxes, 16)  # 2 frequencies per coordinate: pi, 2 pi
    assert enc.shape == (2, 16)
    x0 = 0.25
    assert enc[0, :4].tolist() == pytest.approx([math.sin(math.pi * x0), math.sin(2 * math.pi * x0),
                                                 math.cos(math.pi * x0), math.cos(2 * math.pi * x0)], abs=1e-6)
    y1 = 1.0
    assert enc[0, 12:].tolist() == pytest.approx([math.sin(math.pi * y1), math.sin(2 * math.pi * y1),
                                                  math.cos(math.pi * y1), math.cos(2 * math.pi * y1)], abs=1e-6)
    # boxes that differ only in one corner get different encodings; encoding is bounded
    moved = C.box_encoding(torch.tensor([[0.25, 0.5, 0.70, 1.0]]), 64)
    assert not torch.allclose(moved, C.box_encoding(boxes[:1], 64))
    assert C.box_encoding(torch.rand(100, 4), 64).abs().max() <= 1.0
    with pytest.raises(ValueError, match="divisible by 8"):
        C.box_encoding(boxes, 12)


def test_roi_weights_cover_the_box_area():
    w = C.roi_weights(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.0, 0.5, 0.25]]), grid=2)
    assert w[0].tolist() == pytest.approx([1, 0, 0, 0])  # top-left patch only
    assert w[1].tolist() == pytest.approx([1, 0, 0, 0])
    w = C.roi_weights(torch.tensor([[0.25, 0.25, 0.75, 0.75]]), grid=2)
    assert w[0].tolist() == pytest.approx([0.25] * 4)
    w = C.roi_weights(torch.tensor([[0.0, 0.5, 1.0, 1.0]]), grid=2)  # bottom row: patches 2 and 3
    assert w[0].tolist() == pytest.approx([0, 0, 0.5, 0.5])


# -- models -----------------------------------------------------------------------------------------

def small_cfg(region_head="prompter", vocab=20):
    return C.CLIPConfig(vocab_size=vocab, image_size=16, patch_size=4, width=32, depth=1, heads=2,
                         text_depth=1, max_text_len=8, embed_dim=16, region_head=region_head)


def test_prompter_shapes_and_region_embeddings():
    model = C.build_model(small_cfg(), seed=0)
    patches = model.patches(torch.rand(3, 3, 16, 16))
    assert patches.shape == (3, 16, 32)
    owner = torch.tensor([0, 0, 1, 2, 2])
    p = C.Prompter(32)(torch.randn(5, 32), patches, owner)
    assert p.shape == (5, 32)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.1, 0.2, 0.3, 0.9]])
    for how in ("prompter", "roi"):
        r = model.embed_regions(patches, boxes, torch.arange(3), how)
        assert r.shape == (3, 16)
        assert torch.allclose(r.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the region embedding depends on the box: same image, two boxes, two embeddings
    two = model.embed_regions(patches, boxes[:2], torch.tensor([0, 0]))
    assert not torch.allclose(two[0], two[1])
    pred = model.ground(patches, model.embed_text(torch.randint(3, 20, (3, 8))), torch.arange(3))
    assert pred.shape == (3, 4) and ((pred >= 0) & (pred <= 1)).all()


def test_prompter_equals_full_encoder_layer_read_at_the_prompt():
    torch.manual_seed(0)
    prompter = C.Prompter(32)
    patches, prompt = torch.randn(2, 9, 32), torch.randn(4, 32)
    owner = torch.tensor([1, 0, 1, 1])
    full = prompter.ln(prompter.layer(torch.cat([prompt[:, None], patches[owner]], dim=1))[:, 0])
    assert torch.allclose(prompter(prompt, patches, owner), full, atol=1e-5)


def test_prompter_patch_positions_are_added_to_every_patch():
    torch.manual_seed(1)
    prompter = C.Prompter(32)
    patches, prompt, pos = torch.randn(2, 4, 32), torch.randn(3, 32), torch.randn(4, 32)
    owner = torch.tensor([0, 1, 1])
    full = prompter.ln(prompter.layer(torch.cat([prompt[:, None], (patches + pos)[owner]], dim=1))[:, 0])
    assert torch.allclose(prompter(prompt, patches, owner, pos), full, atol=1e-5)


def test_cell_boxes_follow_the_patch_order():
    cells = C.cell_boxes(3)
    assert cells.shape == (9, 4)
    assert cells[1].tolist() == pytest.approx([1 / 3, 0, 2 / 3, 1 / 3])  # second patch: top row, middle column
    assert cells[3].tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3])  # fourth patch: middle row, left column
    # the RoI weights of a cell's own box select exactly that patch
    assert torch.allclose(C.roi_weights(cells, 3), torch.eye(9), atol=1e-6)


def test_roi_region_embedding_of_whole_image_is_the_image_embedding():
    model = C.build_model(small_cfg("none"), seed=0)
    patches = model.patches(torch.rand(2, 3, 16, 16))
    whole = model.embed_regions(patches, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2), torch.arange(2))
    assert torch.allclose(whole, model.embed_image(patches), atol=1e-5)


def test_cloc_starts_from_clip_weights_under_same_seed():
    clip = C.build_model(small_cfg("none"), seed=3)
    cloc = C.build_model(small_cfg("prompter"), seed=3)
    cloc_state = cloc.state_dict()
    for name, value in clip.state_dict().items():
        assert torch.equal(value, cloc_state[name]), name
    assert any(n.startswith("prompter") for n in cloc_state) and not any(n.startswith("prompter") for n in clip.state_dict())



def test_roi_ground_is_cloc_with_roi_region_embeddings_and_the_grounding_loss():
    # the paper's ablation: the same initial weights as CLOC (its Prompter included, which only grounds here),
    # region embeddings by RoI pooling, and the grounding term in the loss; "roi" has no grounding term
    cloc = C.build_model(small_cfg("prompter"), seed=3)
    roi_g = C.build_model(small_cfg("roi_ground"), seed=3)
    assert cloc.state_dict().keys() == roi_g.state_dict().keys()
    assert all(torch.equal(v, roi_g.state_dict()[k]) for k, v in cloc.state_dict().items())
    assert roi_g.has_regions and roi_g.has_grounding and not C.build_model(small_cfg("roi"), 3).has_grounding
    patches = roi_g.patches(torch.rand(2, 3, 16, 16))
    boxes, owner = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 1.0, 1.0]]), torch.tensor([0, 1])
    assert torch.allclose(roi_g.embed_regions(patches, boxes, owner), roi_g.embed_regions(patches, boxes, owner, "roi"))
    assert not torch.allclose(cloc.embed_regions(patches, boxes, owner), cloc.embed_regions(patches, boxes, owner, "roi"))
    batch = {"images": torch.rand(2, 3, 16, 16), "caption_ids": torch.randint(3, 20, (2, 8)),
             "region_valid": torch.ones(2, 1, dtype=torch.bool), "region_boxes": boxes[:, None],
             "region_ids": torch.randint(3, 20, (2, 1, 8))}
    terms = roi_g.losses(batch, lam=1.0, dup_threshold=0.9)
    assert {"clip", "cloc", "grounding"} <= set(terms)
    assert torch.allclose(terms["total"], terms["clip"] + terms["cloc"] + terms["grounding"])
    assert "grounding" not in C.build_model(small_cfg("roi"), 3).losses(batch, lam=1.0, dup_threshold=0.9)


# -- data + training on a hand-made scene world that follows the scenes contract ---------------------

@dataclass(frozen=True)
class FakeObject:
    kind: str
    color: str
    box: tuple
    depth: int = 0
    accessory: str | None = None


@dataclass
class FakeScene:
    objects: tuple
    seed: int

    def caption(self):
        return " and ".join(f"a {o.color} {o.kind}" for o in self.objects)

    def region_caption(self, i):
        return f"a {self.objects[i].color} {self.objects[i].kind}"


RGB = {"red": (230, 30, 30), "blue": (30, 30, 230), "green": (30, 200, 30)}
SHAPES = ("square", "bar")


def fake_world(n, seed, size=16):
    """Coloured squares/bars on black; two objects per image (one in each half)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 3), np.uint8)
    scenes = []
    for k in range(n):
        objs = []
        for half in range(2):
            color, kind = rng.choice(list(RGB)), rng.choice(SHAPES)
            x0 = half * size // 2 + int(rng.integers(0, 3))
            y0 = int(rng.integers(0, size - 6))
            w, h = (5, 5) if kind == "square" else (3, 6)
            images[k, y0:y0 + h, x0:x0 + w] = RGB[color]
            objs.append(FakeObject(str(kind), str(color), (x0, y0, x0 + w, y0 + h)))
        scenes.append(FakeScene(tuple(objs), seed * 1000 + k))
    return images, scenes


def test_scenes_to_data_and_one_short_training_run_lowers_the_loss():
    images, scenes = fake_world(64, seed=0)
    tok = C.WordTokenizer.from_texts(C.scene_texts(scenes))
    data = C.scenes_to_data(images, scenes, tok, max_regions=2, max_text_len=8, seed=0)
    assert data.images.shape == (64, 3, 16, 16) and data.region_valid.all()
    assert data.region_boxes.min() >= 0 and data.region_boxes.max() <= 1
    o = scenes[0].objects[0]
    assert data.region_boxes[0, 0].tolist() == pytest.approx([o.box[0] / 16, o.box[1] / 16, o.box[2] / 16, o.box[3] / 16])

    model = C.build_model(small_cfg("prompter", vocab=len(tok)), seed=0)
    batch = data.batch(torch.arange(64))
    with torch.no_grad():
        before = {k: v.item() for k, v in model.losses(batch, 1.0, 0.9).items()}
    assert set(before) == {"clip", "cloc", "grounding", "total"}
    assert before["total"] == pytest.approx(before["clip"] + before["cloc"] + before["grounding"], rel=1e-5)
    history = C.train(model, data, C.TrainConfig(steps=40, batch_size=32, lr=3e-3), seed=0)
    with torch.no_grad():
        after = {k: v.item() for k, v in model.losses(batch, 1.0, 0.9).items()}
    assert len(history) == 40
    assert after["total"] < 0.8 * before["total"]
    assert after["grounding"] < before["grounding"]


def test_training_is_reproducible_and_evaluation_reports_per_item_scores():
    images, scenes = fake_world(48, seed=1)
    tok = C.WordTokenizer.from_texts(C.scene_texts(scenes))
    data = C.scenes_to_data(images, scenes, tok, max_regions=2, max_text_len=8, seed=0)
    runs = []
    for _ in range(2):
        model = C.build_model(small_cfg("prompter", vocab=len(tok)), seed=5)
        runs.append(C.train(model, data, C.TrainConfig(steps=5, batch_size=16), seed=5))
    assert runs[0] == runs[1]
    res = C.evaluate_clip(model, data, tok, kinds=SHAPES, colors=tuple(RGB))
    assert len(res["image_score"]) == 48 and len(res["region_score"]) == 96 and len(res["iou"]) == 96
    for key in ("i2t_r1", "t2i_r5", "r2t_r10", "cls_kind", "cls_color_kind"):
        assert set(np.unique(res[key])) <= {0.0, 1.0}
    assert (res["i2t_r5"] >= res["i2t_r1"]).all()
    clip = C.build_model(small_cfg("none", vocab=len(tok)), seed=5)
    assert "iou" not in C.evaluate_clip(clip, data, tok, kinds=SHAPES, colors=tuple(RGB))


def test_bad_region_head_is_rejected():
    with pytest.raises(ValueError, match="region_head"):
        C.CLIPConfig(vocab_size=10, region_head="roi-align")


# -- experiment helpers -----------------------------------------------------------------------------

def test_split_seeds_are_disjoint_and_reproducible():
    train, test = C.split_seeds(7, 50, 20)
    assert len(train) == 50 and len(test) == 20 and not set(train) & set(test)
    assert C.split_seeds(7, 50, 20) == (train, test) and C.split_seeds(8, 50, 20) != (train, test)


def test_prepare_data_on_the_scene_world():
    from spatialkit import world as S

    tok, train, test, test_scenes = C.prepare_data(0, S.SceneConfig(image_size=32), n_train=12, n_test=6, regions=2)
    assert train.images.shape == (12, 3, 32, 32) and len(test) == 6 and len(test_scenes) == 6
    assert (train.region_valid.sum(1) >= 1).all() and (train.region_valid.sum(1) <= 2).all()
    assert test.captions == [C.global_caption(s) for s in test_scenes]
    ordered = C.prepare_data(0, S.SceneConfig(image_size=32), n_train=12, n_test=6, regions=2,
                             caption_order="left_to_right")[2]
    assert ordered.captions == [s.caption() for s in test_scenes]
    assert C.data_fingerprint(train) == C.data_fingerprint(C.prepare_data(0, S.SceneConfig(image_size=32), n_train=12,
                                                                          n_test=6, regions=2)[1])


def test_summaries_average_seeds_per_item_then_bootstrap():
    scores = {"A": [{"m": np.array([1.0, 0.0, 1.0, 1.0])}, {"m": np.array([1.0, 0.0, 0.0, 1.0])}],
              "B": [{"m": np.array([0.0, 0.0, 1.0, 0.0])}, {"m": np.array([0.0, 0.0, 1.0, 0.0])}]}
    table = C.summarize(scores, ["m", "absent"], seed=0, n_boot=200).set_index("variant")
    assert table.loc["A", "mean"] == pytest.approx(0.625) and table.loc["A", "seed_min"] == pytest.approx(0.5)
    assert table.loc["A", "seed_max"] == pytest.approx(0.75) and table.loc["B", "mean"] == pytest.approx(0.25)
    diff = C.paired_difference(scores, "A", "B", "m", seed=0, n_boot=200)
    assert diff.mean == pytest.approx(0.375) and diff.low <= diff.mean <= diff.high


def test_train_or_load_uses_the_checkpoint_store(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    images, scenes = fake_world(16, seed=2)
    tok = C.WordTokenizer.from_texts(C.scene_texts(scenes))
    data = C.scenes_to_data(images, scenes, tok, max_regions=2, max_text_len=8, seed=0)
    cfg, tc = small_cfg("prompter", vocab=len(tok)), C.TrainConfig(steps=2, batch_size=8)
    first, m1 = C.train_or_load(cfg, data, tc, seed=0)
    assert list(tmp_path.glob("checkpoints/cloc05-*/manifest.json"))
    second, m2 = C.train_or_load(cfg, data, tc, seed=0)
    assert m1["history"] == m2["history"]
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name


def test_global_caption_is_order_free():
    from spatialkit import world as S

    scene = next(s for s in (S.render_scene(k, S.SceneConfig(image_size=32, min_objects=2)) for k in range(50))
                 if len(s.objects) >= 2)
    mirrored = S.Scene(scene.image, tuple(reversed(scene.objects)), scene.instance, scene.background, scene.seed)
    assert C.global_caption(scene) == C.global_caption(mirrored)  # the object order never reaches the text
    assert sorted(C.words(C.global_caption(scene))) == sorted(C.words(scene.caption()))
    assert C.global_caption(scene, "left_to_right") == scene.caption()
    with pytest.raises(ValueError):
        C.global_caption(scene, "random")
