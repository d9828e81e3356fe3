"""The organism zoo's worlds: on/under and WhatsUp rules, the balanced WhatsUp mirrors, the prior-driven world."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from itertools import islice

import numpy as np
import pytest

from spatialkit import world as S

NEW_PRESETS = ("organism_whatsup_a", "organism_whatsup_b", "organism_prior")
BALANCED = ("organism_whatsup_a", "organism_whatsup_b", "organism_easy")  # blind answerer at chance


def _scene(objects, size=64, config=None) -> S.Scene:
    """A hand-built scene on a plain gray background."""
    config = config or S.SceneConfig(image_size=size, ground=False, depth_scale=0.0)
    image, instance = S.compose(objects, np.full((size, size, 3), 160, np.uint8))
    return S.Scene(image, tuple(objects), instance, "gray", 0, config)


def _obj(kind, x0, y0, w, h, depth=0) -> S.SceneObject:
    return S.SceneObject(kind, "red", (x0, y0, x0 + w, y0 + h), depth)


def _on_by_masks(a: S.SceneObject, b: S.SceneObject, overlap: float, n: int = 64) -> bool:
    """The on rule computed independently, from full masks on the image grid."""
    sc = _scene([a, b], size=n)
    ma, mb = sc.full_mask(0), sc.full_mask(1)
    cols_a, cols_b = ma.any(axis=0), mb.any(axis=0)
    shared = np.flatnonzero(cols_a & cols_b)
    if len(shared) == 0 or len(shared) < overlap * min(cols_a.sum(), cols_b.sum()):
        return False
    gaps = [np.flatnonzero(mb[:, x])[0] - np.flatnonzero(ma[:, x])[-1] for x in shared]
    return min(gaps) == 1


# --- geometry rules on hand-built scenes ------------------------------------------------------------

def test_on_rule_contact_overlap_and_reverse():
    box = _obj("box", 20, 40, 16, 16, depth=1)
    ball = _obj("ball", 20, 24, 16, 16)  # box bottom row 39 sits on the box's top row 40
    assert S.rests_on(ball, box) and not S.rests_on(box, ball)
    assert S.relation_on(ball, box) == "on" and S.relation_on(box, ball) == "under"
    lifted, sunk = _obj("ball", 20, 23, 16, 16), _obj("ball", 20, 25, 16, 16)
    assert not S.rests_on(lifted, box)  # a one-pixel gap: not touching
    assert not S.rests_on(sunk, box)    # overlapping silhouettes: occlusion, not "on"
    assert S.relation_on(lifted, box) is None and S.relation_on(sunk, box) is None
    beside = _obj("ball", 40, 40, 16, 16)
    assert S.relation_on(beside, box) is None and S.relation_2d(beside, box) == "right of"


@pytest.mark.parametrize("kinds", [("ball", "box"), ("cup", "tree"), ("car", "ball"), ("tree", "cup")])
def test_on_rule_matches_an_independent_mask_computation(kinds):
    rng = np.random.default_rng(len(kinds[0]) * 7 + len(kinds[1]))
    bottom = _obj(kinds[1], 22, 38, 18, 18, depth=1)
    seen = Counter()
    for _ in range(150):
        x0, y0 = int(rng.integers(4, 40)), int(rng.integers(18, 24))
        top = _obj(kinds[0], x0, y0, 18, 18)
        for overlap in (0.3, 0.5, 0.8):
            got = S.rests_on(top, bottom, overlap)
            assert got == _on_by_masks(top, bottom, overlap), (kinds, x0, y0, overlap)
            seen[got] += 1
    assert seen[True] > 5 and seen[False] > 5


def test_whatsup_rules_on_hand_built_scenes():
    # A: on / under, left / right, and an untouching above/below pair that is not asked.
    sc = _scene([_obj("ball", 20, 24, 16, 16), _obj("box", 20, 40, 16, 16, 1)])
    assert S.relation_whatsup_a(sc, 0, 1) == "on" and S.relation_whatsup_a(sc, 1, 0) == "under"
    sc = _scene([_obj("ball", 2, 20, 16, 16), _obj("box", 30, 22, 16, 16, 1)])
    assert S.relation_whatsup_a(sc, 0, 1) == "left of" and S.relation_whatsup_a(sc, 1, 0) == "right of"
    sc = _scene([_obj("ball", 20, 2, 16, 16), _obj("box", 20, 30, 16, 16, 1)])
    assert S.relation_2d(*sc.objects) == "above" and S.relation_whatsup_a(sc, 0, 1) is None
    # B: occlusion gives front/behind; apart gives left/right; a left/right pair that also overlaps is not asked.
    sc = _scene([_obj("ball", 16, 18, 16, 16, 0), _obj("box", 18, 10, 16, 16, 1)])
    assert 0.1 <= 1 - sc.visible_fraction(1) <= 0.6
    assert S.relation_whatsup_b(sc, 0, 1) == "in front of" and S.relation_whatsup_b(sc, 1, 0) == "behind"
    sc = _scene([_obj("ball", 2, 20, 16, 16, 0), _obj("box", 30, 22, 16, 16, 1)])
    assert S.relation_whatsup_b(sc, 0, 1) == "left of" and S.relation_whatsup_b(sc, 1, 0) == "right of"
    sc = _scene([_obj("ball", 6, 20, 16, 16, 0), _obj("box", 20, 20, 16, 16, 1)])
    assert S.relation_2d(*sc.objects) == "left of" and (sc.full_mask(0) & sc.full_mask(1)).any()
    assert S.relation_whatsup_b(sc, 0, 1) is None
    # The questions carry the WhatsUp option sets and agree with the rules.
    sc = _scene([_obj("ball", 20, 24, 16, 16), _obj("box", 20, 40, 16, 16, 1)])
    qs = S.make_questions(sc, np.random.default_rng(0), tasks=("on_under", "whatsup_a"))
    got = {(q.task, q.objects): (q.gold, set(q.options)) for q in qs}
    assert got[("on_under", (0, 1))] == ("on", {"on", "under"})
    assert got[("whatsup_a", (1, 0))] == ("under", {"left", "right", "on", "under"})


def test_layouts_produce_their_relations():
    for preset in NEW_PRESETS:
        cfg = S.PRESETS[preset]
        goals = Counter()
        for seed in range(200):
            sc = S.render_scene(seed, cfg)
            assert len(sc.objects) == 2
            i, j = (0, 1) if sc.objects[0].depth == 0 else (1, 0)  # i = A, the first-drawn (nearer) object
            if preset == "organism_whatsup_a":
                rel = S.relation_whatsup_a(sc, i, j)
                assert rel in ("on", "left of", "right of"), seed
                assert S.relation_whatsup_a(sc, j, i) == S.OPPOSITE[rel]
                assert all(sc.visible_fraction(k) == 1.0 for k in range(2))
            elif preset == "organism_whatsup_b":
                rel = S.relation_whatsup_b(sc, i, j)
                assert rel in ("in front of", "left of", "right of"), seed
                assert S.relation_whatsup_b(sc, j, i) == S.OPPOSITE[rel]
            else:
                rel = S.relation_2d(sc.objects[i], sc.objects[j], cfg.margin, cfg.dominance)
                assert rel in S.RELATIONS_2D
            goals[rel in ("left of", "right of")] += 1
        if preset != "organism_prior":
            assert 70 <= goals[True] <= 130, (preset, goals)  # half side by side, half stacked / occluding


def test_new_options_validate_and_gate_tasks():
    with pytest.raises(ValueError, match=r"SceneConfig\.layout"):
        S.SceneConfig(layout="stacked")
    with pytest.raises(ValueError, match=r"SceneConfig\.layout"):
        S.SceneConfig(layout="whatsup_a", min_objects=2, max_objects=3, ground=False)
    with pytest.raises(ValueError, match=r"SceneConfig\.layout"):
        S.SceneConfig(layout="whatsup_b", min_objects=2, max_objects=2, ground=False, occlusion=False)
    with pytest.raises(ValueError, match=r"SceneConfig\.tasks"):
        S.SceneConfig(tasks=("where_three",))
    with pytest.raises(ValueError, match=r"SceneConfig\.prior_relations"):
        S.SceneConfig(prior_relations=(("ball", "on", "cup"),))
    with pytest.raises(ValueError, match=r"SceneConfig\.prior_relations"):
        S.SceneConfig(prior_relations=(("ball", "left of", "cup"), ("cup", "above", "ball")))
    with pytest.raises(ValueError, match=r"SceneConfig\.relation_prior"):
        S.SceneConfig(relation_prior=1.5)
    with pytest.raises(ValueError, match="on_under needs layout='whatsup_a'"):
        S.build_wherebench(n_train=10, config=S.PRESETS["flat"], tasks=("on_under",))
    with pytest.raises(ValueError, match="prior"):
        S.build_wherebench(n_train=10, config=S.PRESETS["organism_whatsup_a"], prior="counter")
    cfg = S.PRESETS["organism_prior"]
    assert S.prior_relation(cfg, "ball", "cup") == "left of" and S.prior_relation(cfg, "cup", "ball") == "right of"
    assert S.prior_relation(S.PRESETS["organism_easy"], "ball", "cup") is None
    # Every pair of the prior world's kinds has a prior, and the four relations are equally common.
    rels = Counter(S.prior_relation(cfg, a, b) for a in cfg.kinds for b in cfg.kinds if a != b)
    assert rels == {r: 5 for r in S.RELATIONS_2D}


# --- determinism and the pre-existing presets ------------------------------------------------------

# Golden digests of the new worlds (as in test_scenes.GOLDEN).
GOLDEN = {('organism_whatsup_a', 1): '9308c7cb05ebdd6f', ('organism_whatsup_a', 3): 'a6d7cd3af9dbd3b7',
          ('organism_whatsup_b', 1): '8951da272fba2953', ('organism_whatsup_b', 3): 'f200e338f15cb750',
          ('organism_prior', 1): '3be250b192f7f57d', ('organism_prior', 3): '79f6310d3e674c77'}


def test_new_worlds_are_deterministic():
    S.sprite_labels.cache_clear()
    got = {(p, seed): S.scene_digest(S.render_scene(seed, S.PRESETS[p]))[:16] for p, seed in GOLDEN}
    assert got == GOLDEN
    for p in NEW_PRESETS:
        cfg = S.PRESETS[p]
        for seed in (3, 4):
            a, b = S.render_scene(seed, cfg), S.render_scene(seed, cfg)
            assert S.scene_digest(a) == S.scene_digest(b)
            qa, qb = (S.make_questions(x, np.random.default_rng(seed)) for x in (a, b))
            assert qa and repr(qa) == repr(qb) and {q.task for q in qa} <= set(cfg.tasks)


def _existing_digest(name: str) -> str:
    """Scenes, questions (default and explicit tasks) and a bench of a pre-existing preset, hashed.
    organism_easy later dropped count from its default tasks and balanced its benches per question text
    (``tasks``, ``balance_text``): with those two fields set back, everything else is as recorded."""
    cfg = S.PRESETS[name]
    if name == "organism_easy":
        assert cfg.tasks == ("presence", "identity", "color", "where_one", "where_two") and cfg.balance_text
        cfg = dataclasses.replace(cfg, tasks=None, balance_text=False)
    h = hashlib.sha256()
    for s in range(60):
        sc = S.render_scene(s, cfg)
        h.update(S.scene_digest(sc).encode())
        h.update(repr(S.make_questions(sc, np.random.default_rng(s))).encode())
        h.update(repr(S.make_questions(sc, np.random.default_rng(s), tasks=S.TASKS)).encode())
    tasks = tuple(t for t in S.TASKS if t != "depth" or cfg.occlusion or cfg.ground)
    b = S.build_wherebench(seed=1, n_train=140, n_val=35, n_test=70, config=cfg, tasks=tasks)
    h.update(repr(b.splits).encode())
    h.update(repr(b.scenes_tried).encode())
    if name == "book":
        b = S.build_wherebench(seed=0, n_train=70, n_val=0, n_test=70)
        h.update(repr(b.splits).encode())
        h.update(repr({k: v.tolist() for k, v in S.prior_baselines(b).items()}).encode())
    return h.hexdigest()[:16]


# Recorded before the zoo's options existed: adding them left every pre-existing world byte-identical.
BEFORE_ZOO = {"organism": "74ebeea2fc0fd52b", "organism_easy": "65e56c4d47d211ab", "book": "c61cb0dd513b1294",
              "flat": "1fc9f147e190cd48"}


def test_pre_existing_presets_are_unchanged():
    assert {name: _existing_digest(name) for name in BEFORE_ZOO} == BEFORE_ZOO
    assert S.TASKS == ("presence", "identity", "color", "count", "where_one", "where_two", "depth")
    assert all(S.PRESETS[name].layout == "free" for name in BEFORE_ZOO)
    assert all(S.PRESETS[name].tasks is None for name in BEFORE_ZOO if name != "organism_easy")


# --- balanced WhatsUp mirrors: a blind answerer sits at chance ----------------------------------------

@pytest.fixture(scope="module", params=BALANCED)
def balanced_bench(request):
    cfg = S.PRESETS[request.param]
    n_test = 400 * len(cfg.tasks)
    return S.build_wherebench(seed=0, n_train=100 * len(cfg.tasks), n_val=0, n_test=n_test, config=cfg)


def test_blind_answerer_is_at_chance_on_every_task(balanced_bench):
    cfg = balanced_bench.config
    assert "count" not in cfg.tasks  # two objects always: count would be answerable blind
    report = S.blind_accuracy(balanced_bench)
    assert set(report) == set(cfg.tasks)
    for task, r in report.items():
        assert r["n"] >= 400, (task, r)
        assert abs(r["accuracy"] - r["chance"]) <= 0.05, (task, r)
    # The guarantee behind it: within every exact question text the labels differ by at most one.
    per_text: dict = {}
    for it in balanced_bench.splits["test"]:
        per_text.setdefault((it.question.task, it.question.text), Counter())[it.question.label()] += 1
    for (task, _), counts in per_text.items():
        labels = S.task_labels(task, cfg)
        assert max(counts.values()) - min(counts.get(l, 0) for l in labels) <= 1


def test_whatsup_items_agree_with_their_scenes(balanced_bench):
    items = balanced_bench.splits["test"][:300]
    scenes = balanced_bench.scenes("test")[:300]
    rule = {"on_under": lambda sc, i, j: S.relation_on(sc.objects[i], sc.objects[j]),
            "whatsup_a": S.relation_whatsup_a, "whatsup_b": S.relation_whatsup_b}
    for it, sc in zip(items, scenes):
        q = it.question
        if q.task in rule:
            assert rule[q.task](sc, *q.objects) == q.relation and q.gold == S.ANSWER_WORD[q.relation]


# --- the prior-driven world ---------------------------------------------------------------------------

def test_prior_world_follows_identity_in_85_to_90_percent_of_train_scenes():
    cfg = S.PRESETS["organism_prior"]
    follows = []
    for seed in islice(S.scene_seeds(0, "train"), 2000):
        a, b = S.render_scene(seed, cfg).objects
        follows.append(S.relation_2d(a, b, cfg.margin, cfg.dominance) == S.prior_relation(cfg, a.kind, b.kind))
    assert 0.85 <= np.mean(follows) <= 0.90


@pytest.fixture(scope="module")
def prior_benches():
    cfg = S.PRESETS["organism_prior"]
    n = 400 * len(cfg.tasks)
    return {prior: S.build_wherebench(seed=0, n_train=n // 2, n_val=0, n_test=n, config=cfg, prior=prior)
            for prior in (None, "consistent", "counter")}


def test_blind_answerer_reads_off_the_prior(prior_benches):
    natural = S.blind_accuracy(prior_benches[None])
    assert natural["where_two"]["n"] >= 400 and 0.85 <= natural["where_two"]["accuracy"] <= 0.90
    for task in ("presence", "identity", "color"):  # the prior is about where, not what
        assert abs(natural[task]["accuracy"] - natural[task]["chance"]) <= 0.05, (task, natural[task])
    assert S.blind_accuracy(prior_benches["consistent"])["where_two"]["accuracy"] == 1.0
    assert S.blind_accuracy(prior_benches["counter"])["where_two"]["accuracy"] <= 0.02


def test_counter_prior_items_are_balanced(prior_benches):
    for prior in ("consistent", "counter"):
        bench = prior_benches[prior]
        items = [(it, sc) for it, sc in zip(bench.splits["test"], bench.scenes("test"))
                 if it.question.task == "where_two"]
        assert len(items) >= 400 and bench.prior == prior
        assert all(S.prior_status(sc, it.question) == prior for it, sc in items)
        labels = Counter(it.question.label() for it, _ in items)
        gold = Counter(it.question.answer for it, _ in items)
        assert set(labels) == set(S.RELATIONS_2D) and max(labels.values()) - min(labels.values()) <= 1
        assert set(gold) == {0, 1, 2, 3} and max(gold.values()) - min(gold.values()) <= 1
    # The train split is the world as drawn (the prior holds), whatever the held-out filter.
    train = prior_benches["counter"].splits["train"]
    assert repr(train) == repr(prior_benches[None].splits["train"])
