"""The organism zoo: presets parse, smoke-sized variants train, the zoo worlds' data pipeline (tasks, vocabulary,
prior-consistent / counter-prior benches), WhatsUp captions. Fast: no full training."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from spatialkit import world
from spatialkit.models.organism import preset, train
from spatialkit.models.organism.benches import items_per_task
from spatialkit.models.organism.model import ANS, UNK
from spatialkit.models.organism.config import PRESET_WHY, PRESETS, SECTIONS
from spatialkit.models.organism.data import (PRIOR_SPLITS, build_pool, build_vocab, prior_benches, scene_config,
                                             tasks_for, wherebench)

ZOO = [n for n in ("healthy", "llava", "loud", "loud_norm", "loud_norm_text", "prior", "whatsup_a", "whatsup_b") if n in PRESETS]


def test_zoo_presets_parse_with_a_why():
    assert {"healthy", "llava", "loud", "prior"} <= set(ZOO)
    for name in ZOO:
        cfg = preset(name)
        assert PRESET_WHY[name].strip(), name
        assert cfg.optim.vision_pretrain_steps > 0 and cfg.optim.vision_lr_scale == 0.0  # two stages, frozen encoder
    assert preset("healthy").to_dict() == preset("quick").to_dict()  # an alias: one checkpoint
    assert preset("llava").optim.vision_pretrain_pool == "mean"
    assert preset("prior").data.scene_preset == "organism_prior"
    assert preset("loud").model.visual_norm == "target"
    from spatialkit.models.organism.train import vision_stage_config

    for name in ("loud_norm", "loud_norm_text"):  # +Normalize on loud: only stage 2 differs, stage 1 is shared
        assert preset(name).model.visual_norm == "rmsclip"
        assert vision_stage_config(preset(name)) == vision_stage_config(preset("loud"))
        assert _zoo_diff(name).keys() - _zoo_diff("loud").keys() == set()  # differs from loud in the norm only
    # the WhatsUp mirrors share one stage-1 encoder (whatsup_b's world)
    assert preset("whatsup_a").data.scene_preset == "organism_whatsup_a"  # its VQA stage: its own world
    assert vision_stage_config(preset("whatsup_a")) == vision_stage_config(preset("whatsup_b"))


def test_every_zoo_member_has_a_reader_facing_description():
    from spatialkit.present.zoo import about

    smoke = [n for n in PRESETS if n == "smoke" or n.startswith("smoke_")]
    for name in ZOO + smoke:
        text = about(name)
        assert len(text) > 40 and "--" not in text and "organism_" not in text, name  # prose, not a config note
    assert about("smoke_llava").endswith(about("llava")) and about("no such organism") == ""


def _zoo_diff(name: str) -> dict:
    """The dotted fields in which zoo preset ``name`` differs from ``quick`` (what makes it that organism)."""
    a, b = preset(name), preset("quick")
    return {f"{s}.{f.name}": getattr(getattr(a, s), f.name) for s in SECTIONS
            for f in dataclasses.fields(SECTIONS[s]) if getattr(getattr(a, s), f.name) != getattr(getattr(b, s), f.name)}


@pytest.mark.parametrize("name", ZOO)
def test_smoke_sized_zoo_organism_trains(name):
    short = {"steps": 3, "eval_every": 3, "vision_pretrain_steps": 2}  # the preset's own budget is not the point
    mechanism = {k: v for k, v in _zoo_diff(name).items() if k.split(".")[-1] not in short}
    cfg = preset("smoke").replace(**mechanism, **short)
    model, vocab, metrics = train(cfg, progress=False)
    assert np.isfinite(metrics["final_loss"]) and metrics["steps_run"] == 3
    assert metrics["history"] and "where" in metrics["history"][-1]


def test_existing_worlds_keep_their_tasks():
    sc = scene_config(preset("smoke"))
    assert sc.tasks is None
    assert tasks_for(sc) == tuple(t for t in world.TASKS if t != "depth")
    # organism_easy (default, quick and the zoo) asks no count question: two objects always answer it blind
    for name in ("default", "quick"):
        assert tasks_for(scene_config(preset(name))) == ("presence", "identity", "color", "where_one", "where_two")


@pytest.mark.parametrize("scene_preset, task, words", [
    ("organism_whatsup_a", "whatsup_a", ("on", "under", "of", "or", ",")),
    ("organism_whatsup_b", "whatsup_b", ("in", "front", "behind", "of", "or", ",")),
])
def test_whatsup_worlds_data_pipeline(scene_preset, task, words):
    cfg = preset("smoke", scene_preset=scene_preset, n_train_scenes=40, n_val=28, n_test=28)
    sc = scene_config(cfg)
    assert tasks_for(sc) == sc.tasks and task in tasks_for(sc) and "count" not in tasks_for(sc)
    vocab = build_vocab(cfg)
    assert all(w in vocab.words for w in words)
    pool = build_pool(cfg, vocab)
    assert not (pool.tails == vocab[UNK]).any()  # every word of every question is in the vocabulary
    prompts = {vocab.decode(t[: list(t).index(vocab[ANS])].tolist(), stop_at_eos=False) for t in pool.tails}
    assert any(" or " in p and " of" in p for p in prompts)
    bench = wherebench(cfg)
    assert task in {it.question.task for it in bench.splits["test"]}


def test_prior_world_benches_measure_consistent_and_counter_items():
    cfg = preset("smoke", scene_preset="organism_prior", n_val=20, n_test=40)
    benches = prior_benches(cfg, n_train=200)
    assert set(benches) == {"natural", *PRIOR_SPLITS}
    for p in PRIOR_SPLITS:
        bench = benches[p]
        items = [(s, it.question) for s, it in zip(bench.scenes("test"), bench.splits["test"])]
        status = [world.prior_status(s, q) for s, q in items if q.task == "where_two"]
        assert status and set(status) == {p}
    blind = world.blind_accuracy(benches["natural"], "test")["where_two"]
    assert blind["accuracy"] > blind["chance"] + 0.2  # the prior is readable from the text alone
    counter = world.blind_accuracy(benches["counter"], "test")["where_two"]
    assert counter["accuracy"] < counter["chance"]
    assert wherebench(preset("smoke")).prior is None
    assert set(prior_benches(preset("smoke", n_val=10, n_test=10))) == {"natural"}


def test_whatsup_captions_for_the_new_tasks():
    from spatialkit.data.whatsup import caption_for

    for scene_preset, task in (("organism_whatsup_a", "on_under"), ("organism_whatsup_a", "whatsup_a"),
                               ("organism_whatsup_b", "whatsup_b")):
        sc = world.PRESETS[scene_preset]
        found = False
        for seed in range(40):
            scene = world.render_scene(seed, sc)
            for q in world.make_questions(scene, np.random.default_rng(seed), tasks=(task,)):
                caps = [caption_for(scene, q, o) for o in q.options]
                assert len(set(caps)) == len(caps) and all(c.startswith("the ") for c in caps)
                found = True
        assert found, task


@pytest.mark.parametrize("name", ["smoke", "smoke_llava_b", "smoke_prior"])
def test_items_per_task_gives_each_task_of_the_world_that_many_test_items(name):
    cfg = preset(name)
    sized = items_per_task(cfg, 7)
    tasks = tasks_for(scene_config(cfg))
    assert sized.data.n_test == 7 * len(tasks)
    assert dataclasses.replace(sized.data, n_test=cfg.data.n_test) == cfg.data and sized.model == cfg.model
    counts = collections.Counter(item.question.task for item in wherebench(sized).splits["test"])
    assert counts == dict.fromkeys(tasks, 7)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="per_task"):
            items_per_task(cfg, bad)
