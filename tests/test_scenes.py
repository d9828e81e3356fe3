"""The scene world: determinism, ground truth, relations, questions, WhereBench balance, WhatsUp files."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from spatialkit import world as S
from spatialkit.data import whatsup


def _question_digest(questions) -> str:
    return hashlib.sha256(repr(questions).encode()).hexdigest()


# --- determinism -------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(S.PRESETS))
def test_same_seed_gives_byte_identical_scene_and_questions(preset):
    cfg = S.PRESETS[preset]
    for seed in (0, 1, 12345):
        a, b = S.render_scene(seed, cfg), S.render_scene(seed, cfg)
        assert S.scene_digest(a) == S.scene_digest(b)
        qa = S.make_questions(a, np.random.default_rng(seed))
        qb = S.make_questions(b, np.random.default_rng(seed))
        assert qa and _question_digest(qa) == _question_digest(qb)


def test_different_seeds_differ():
    digests = {S.scene_digest(S.render_scene(seed)) for seed in range(50)}
    assert len(digests) == 50


# Golden digests (pixels + instance map + ground truth), recorded on the development machine. A
# mismatch on another machine means rendering is not platform-independent; a deliberate change to
# sprites, layout or backgrounds must update them (and say so in the commit).
GOLDEN = {("book", 0): "57d2ab4abd1327da", ("book", 99): "7ef8d0bbc9fb2040",
          ("organism", 0): "b92836d1b8318f87", ("organism", 99): "5635d6c859edae34",
          ("flat", 0): "3769a42b07a62645", ("flat", 99): "1dab24d44baf5c83"}


def test_golden_digests_are_machine_independent():
    S.sprite_labels.cache_clear()  # no dependence on what earlier tests cached
    got = {(p, seed): S.scene_digest(S.render_scene(seed, S.PRESETS[p]))[:16] for p, seed in GOLDEN}
    assert got == GOLDEN
    assert S.scene_digest(S.chick_and_cup(128))[:16] == "d56445308234c899"


def test_render_batch_matches_render_scene():
    cfg = S.PRESETS["organism"]
    images, scenes = S.render_batch([3, 4, 5], cfg)
    assert images.shape == (3, 48, 48, 3) and images.dtype == np.uint8
    for img, sc, seed in zip(images, scenes, (3, 4, 5)):
        assert np.array_equal(img, S.render_scene(seed, cfg).image) and sc.seed == seed


# --- ground truth ------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(S.PRESETS))
def test_masks_instance_map_and_occlusion_agree_with_depth(preset):
    cfg = S.PRESETS[preset]
    for seed in range(150):
        sc = S.render_scene(seed, cfg)
        n = cfg.image_size
        assert cfg.min_objects <= len(sc.objects) <= cfg.max_objects
        assert sorted(o.depth for o in sc.objects) == list(range(len(sc.objects)))
        union = np.zeros((n, n), dtype=bool)
        for i, o in enumerate(sc.objects):
            x0, y0, x1, y1 = o.box
            assert 0 <= x0 < x1 <= n and 0 <= y0 < y1 <= n
            vis, full = sc.mask(i), sc.full_mask(i)
            assert not (vis & union).any()  # each pixel belongs to at most one object
            union |= vis
            assert not (vis & ~full).any()  # visible pixels lie inside the object's own shape
            assert vis.sum() >= cfg.min_visible * full.sum() - 1e-9
            # Every hidden pixel is covered by a nearer object: occlusion follows depth.
            hidden = full & ~vis
            owners = sc.instance[hidden] - 1
            assert all(sc.objects[k].depth < o.depth for k in np.unique(owners))
        assert np.array_equal(union, sc.instance > 0)
        if not cfg.occlusion:
            assert all(sc.visible_fraction(i) == 1.0 for i in range(len(sc.objects)))


def test_unique_kinds_and_config_fields_respected():
    cfg = S.SceneConfig(kinds=("cup", "ball", "tree"), colors=("red", "blue"), max_objects=3)
    for seed in range(60):
        sc = S.render_scene(seed, cfg)
        kinds = [o.kind for o in sc.objects]
        assert len(set(kinds)) == len(kinds) and set(kinds) <= {"cup", "ball", "tree"}
        assert {o.color for o in sc.objects} <= {"red", "blue"}


def test_relation_2d_follows_the_margin_rule_on_boxes():
    seen = Counter()
    for seed in range(300):
        sc = S.render_scene(seed, S.PRESETS["flat"])
        cfg = sc.config
        for i, a in enumerate(sc.objects):
            for j, b in enumerate(sc.objects):
                if i == j:
                    continue
                rel = S.relation_2d(a, b, cfg.margin, cfg.dominance)
                (ax, ay), (bx, by) = a.center, b.center
                dx, dy, s = ax - bx, ay - by, (a.size + b.size) / 2
                seen[rel] += 1
                if rel == "left of":
                    assert dx <= -cfg.margin * s and abs(dx) >= cfg.dominance * abs(dy)
                elif rel == "right of":
                    assert dx >= cfg.margin * s and abs(dx) >= cfg.dominance * abs(dy)
                elif rel == "above":
                    assert dy <= -cfg.margin * s and abs(dy) >= cfg.dominance * abs(dx)
                elif rel == "below":
                    assert dy >= cfg.margin * s and abs(dy) >= cfg.dominance * abs(dx)
                else:  # ambiguous: neither axis passes the rule
                    assert not (abs(dx) >= cfg.margin * s and abs(dx) >= cfg.dominance * abs(dy))
                    assert not (abs(dy) >= cfg.margin * s and abs(dy) >= cfg.dominance * abs(dx))
                # Antisymmetric: B's relation to A is the opposite one.
                back = S.relation_2d(b, a, cfg.margin, cfg.dominance)
                assert back == (S.OPPOSITE[rel] if rel else None)
    assert all(seen[r] > 20 for r in S.RELATIONS_2D) and seen[None] > 0


def test_where_questions_agree_with_geometry():
    for seed in range(200):
        sc = S.render_scene(seed, S.PRESETS["book"])
        for q in S.make_questions(sc, np.random.default_rng(seed), families=("where",)):
            assert q.family == "where" and q.gold == S.ANSWER_WORD[q.relation]
            if q.task == "where_two":
                a, b = (sc.objects[k] for k in q.objects)
                assert S.relation_2d(a, b, sc.config.margin, sc.config.dominance) == q.relation
                (ax, ay), (bx, by) = a.center, b.center
                assert {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[q.relation]
            elif q.task == "depth":
                a, b = (sc.objects[k] for k in q.objects)
                assert (a.depth < b.depth) == (q.relation == "in front of")
            else:
                (cx, cy), n = sc.objects[q.objects[0]].center, sc.image.shape[0]
                assert {"left": cx < n / 2, "right": cx > n / 2, "top": cy < n / 2, "bottom": cy > n / 2}[q.relation]


def test_what_questions_are_correct():
    for seed in range(100):
        sc = S.render_scene(seed, S.PRESETS["book"])
        kinds = {S.NAMES[o.kind] for o in sc.objects}
        for q in S.make_questions(sc, np.random.default_rng(seed), families=("what",)):
            assert len(set(q.options)) == len(q.options) and 0 <= q.answer < len(q.options)
            if q.task == "presence":
                kind = q.text.split(" ", 3)[3].rsplit(" in the image?", 1)[0]
                assert (kind in kinds) == (q.gold == "yes")
            elif q.task == "identity":
                assert q.gold in kinds and not (set(q.options) - {q.gold}) & kinds
            elif q.task == "color":
                assert q.gold == sc.objects[q.objects[0]].color
            elif q.task == "count":
                assert q.gold == str(len(sc.objects))


def test_chick_and_cup_is_the_blog_scene():
    sc = S.chick_and_cup(128)
    by_acc = {o.accessory: i for i, o in enumerate(sc.objects)}
    ribbon, bonnet, cup = by_acc["purple ribbon"], by_acc["blue bonnet"], by_acc[None]
    assert S.relation_depth(sc, ribbon, cup) == "in front of"
    assert S.relation_depth(sc, bonnet, cup) == "behind"
    assert 0.3 < sc.visible_fraction(bonnet) < 1.0  # partly hidden by the cup
    assert sc.ref(ribbon) == "chick with the purple ribbon" and sc.ref(cup) == "cup"
    assert sc.region_caption(bonnet) == "a yellow chick with a blue bonnet"


# --- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("image_size", 8), ("image_size", 64.0), ("min_objects", 0), ("max_objects", 20),
    ("kinds", ("chick", "dragon")), ("colors", ()), ("distractors", -1), ("occlusion", "yes"),
    ("backgrounds", ("mars",)), ("min_size", 0.0), ("max_size", 0.01), ("margin", -1.0),
    ("dominance", 0.5), ("accessory_prob", 2.0),
])
def test_bad_config_raises_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"SceneConfig\.{field}' = .* allowed"):
        S.SceneConfig(**{field: value})


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="seed"):
        S.render_scene(-1)
    with pytest.raises(ValueError, match="n_val"):
        S.build_wherebench(n_val=-5)
    with pytest.raises(ValueError, match="tasks"):
        S.build_wherebench(tasks=("where_three",))


# --- WhereBench ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bench():
    return S.build_wherebench(seed=0, n_train=280, n_val=70, n_test=140, config=S.PRESETS["book"])


def test_wherebench_splits_are_disjoint_and_deterministic(bench):
    seeds = {split: {it.scene_seed for it in items} for split, items in bench.splits.items()}
    assert [len(bench.splits[s]) for s in S.SPLITS] == [280, 70, 140]
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"] and not seeds["val"] & seeds["test"]
    again = S.build_wherebench(seed=0, n_train=280, n_val=70, n_test=140, config=S.PRESETS["book"])
    assert _question_digest(again.splits) == _question_digest(bench.splits)
    other = S.build_wherebench(seed=1, n_train=280, n_val=70, n_test=140, config=S.PRESETS["book"])
    assert _question_digest(other.splits) != _question_digest(bench.splits)


def test_wherebench_answers_are_balanced(bench):
    for split, items in bench.splits.items():
        tasks = Counter(it.question.task for it in items)
        assert max(tasks.values()) - min(tasks.values()) <= 1 and set(tasks) == set(S.TASKS)
        for task in S.TASKS:
            qs = [it.question for it in items if it.question.task == task]
            labels = Counter(q.label() for q in qs)
            assert max(labels.values()) - min(labels.values()) <= 1, (split, task, labels)
            n_opt = len(qs[0].options)
            gold = Counter(q.answer for q in qs)
            # Gold index cycles within each label stratum: at most one extra per stratum.
            assert max(gold.values()) - min(gold.values()) <= len(labels), (split, task, gold)
            assert set(gold) == set(range(n_opt)) or len(qs) < n_opt * len(labels)


def test_wherebench_items_match_their_scenes(bench):
    scenes = bench.scenes("val")
    for it, sc in zip(bench.splits["val"], scenes):
        q = it.question
        assert sc.seed == it.scene_seed
        fresh = S.make_questions(sc, np.random.default_rng(0), tasks=(q.task,))
        if q.task in ("where_two", "depth", "where_one"):
            assert any(f.objects == q.objects and f.relation == q.relation for f in fresh)


def test_wherebench_stats(bench):
    df = bench.stats()
    assert set(df.columns) >= {"split", "task", "label", "answer_index", "count"}
    assert df["count"].sum() == 280 + 70 + 140
    test_counts = df[df.split == "test"].groupby("task")["count"].sum()
    assert test_counts.sum() == 140 and test_counts.min() == 20


def test_organism_preset_fills_a_2d_bench_quickly():
    b = S.build_wherebench(seed=3, n_train=80, n_val=0, n_test=0, config=S.PRESETS["organism"],
                           tasks=("where_two", "color"))
    labels = Counter(it.question.label() for it in b.splits["train"] if it.question.task == "where_two")
    assert labels == {r: 10 for r in S.RELATIONS_2D}


# --- WhatsUp -------------------------------------------------------------------------------------

def test_whatsup_round_trip_is_exact(bench, tmp_path):
    items = bench.splits["test"][:40]
    scenes = bench.scenes("test")[:40]
    path = whatsup.to_whatsup(items, scenes, tmp_path)
    back = whatsup.from_whatsup(path)
    assert [w.item() for w in back] == items
    for w, it, sc in zip(back, items, scenes):
        assert w.answer == 0 and w.caption_options[0] == whatsup.caption_for(sc, it.question, it.question.gold)
        assert len(set(w.caption_options)) == len(w.caption_options) == len(it.question.options)
        assert np.array_equal(whatsup.load_image(w.image_path), sc.image)
    # A corrupted file is caught by the checksums.
    png = next((tmp_path / "images").iterdir())
    png.write_bytes(png.read_bytes()[:-3] + b"xyz")
    with pytest.raises(ValueError, match="sha256"):
        whatsup.from_whatsup(path)


def test_from_whatsup_reads_original_formats(tmp_path):
    import json

    (tmp_path / "a.json").write_text(json.dumps([
        {"image_path": "data/controlled_images/beer-bottle_on_armchair.jpeg",
         "caption_options": ["A beer bottle on a armchair", "A beer bottle under a armchair",
                             "A beer bottle to the left of a armchair", "A beer bottle to the right of a armchair"]}]))
    # COCO-QA rows carry an image id: the file name tells COCO (val2017/{id:012d}.jpg) from VG (vg_images/{id}.jpg)
    (tmp_path / "coco_qa_two_obj.json").write_text(json.dumps([[397133, "A man to the left of a dog",
                                                                "A man to the right of a dog"]]))
    a = whatsup.from_whatsup(tmp_path / "a.json", image_root="/data/whatsup")
    assert a[0].image_path == "/data/whatsup/data/controlled_images/beer-bottle_on_armchair.jpeg"
    assert a[0].caption_options[0] == "A beer bottle on a armchair" and a[0].answer == 0 and a[0].question is None
    b = whatsup.from_whatsup(tmp_path / "coco_qa_two_obj.json")
    assert b[0].caption_options == ("A man to the left of a dog", "A man to the right of a dog")
    assert b[0].image_path == str(tmp_path / "val2017" / "000000397133.jpg")


def test_blind_baselines_sit_at_chance_on_a_balanced_bench(bench):
    base = S.prior_baselines(bench, "test")
    chance = base["chance"].mean()
    assert 0.3 < chance < 0.45  # mix of 2- and 4-option tasks
    # Every answer text and every gold index is balanced per task, so no blind answerer beats chance.
    assert abs(base["first option"].mean() - chance) < 0.03
    assert abs(base["train prior"].mean() - chance) < 0.05


def test_object_table_matches_scenes():
    scenes = [S.render_scene(s, S.PRESETS["book"]) for s in range(20)]
    df = S.object_table(scenes)
    assert len(df) == sum(len(sc.objects) for sc in scenes)
    assert df["visible_fraction"].between(S.PRESETS["book"].min_visible - 1e-9, 1.0).all()


def test_impossible_task_for_config_fails_before_any_work():
    with pytest.raises(ValueError, match="depth needs occlusion=True or ground=True"):
        S.build_wherebench(n_train=10, config=S.PRESETS["organism"], tasks=("where_two", "depth"))
    with pytest.raises(ValueError, match="identity needs"):
        S.build_wherebench(n_train=10, config=S.SceneConfig(kinds=("cup", "ball", "tree")), tasks=("identity",))
