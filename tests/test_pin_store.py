"""Notebook 06's PIN inserts as checkpoints of the worker pool (kind "pin", spatialkit.analysis.interventions.
pin_store): the catalog declares every variant the notebook trains on each organism, a pin task waits for its
organism, and what the pool stores is what the notebook's own ``load_or_train_pin`` call loads (the same key)."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from spatialkit.analysis.interventions import pin as pinlib
from spatialkit.analysis.interventions import pin_store
from spatialkit.common import checkpoints
from spatialkit.models.organism import load_or_train, preset, scene_config
from spatialkit.models.organism import store as organism_store
from spatialkit.models.organism.model import state_dict_sha256
from spatialkit.suite import catalog, parallel, runner

REPO = Path(__file__).resolve().parents[1]
BASE = ("n_train_scenes", "steps", "batch_size", "lr", "hidden", "table_dim", "seed")


def smoke_params() -> dict:
    [job] = runner.plan("smoke", ["06_pin"], root=REPO)
    return job.params


def tiny_spec(**config) -> dict:
    """A pin spec on the smoke organism with a PinConfig small enough to train in a second."""
    cfg = {"n_train_scenes": 10, "steps": 3, "batch_size": 4, "lr": 0.01, "hidden": 8, "table_dim": 16, "seed": 0,
           **config}
    return {"organism": {"preset": "smoke", "overrides": {"seed": 0}}, "variant": "tiny", "config": cfg,
            "n_bins_from": "smoke", "threads": 1, "device": "cpu"}


def test_catalog_declares_every_variant_on_both_organisms():
    p = smoke_params()
    declared = catalog.checkpoints("06_pin", p, warn=pytest.fail)
    pins = [s for k, s in declared if k == "pin"]
    assert len(pins) == 2 * len(catalog.PIN_VARIANTS) == 6
    assert [k for k, _ in declared].count("organism") == 2  # the organisms are declared too
    for name in (p["organism"], p["control"]):
        mine = [s for s in pins if s["organism"] == {"preset": name, "overrides": {"seed": p["seed"]}}]
        flags = {s["variant"]: {k: v for k, v in s["config"].items() if k not in BASE} for s in mine}
        assert flags == catalog.PIN_VARIANTS
        for s in mine:  # the notebook's base settings, its failing organism's bin count, its runtime
            assert {k: s["config"][k] for k in BASE} == {k: p[k] for k in BASE}
            assert s["n_bins_from"] == p["organism"] and s["threads"] == p["threads"] and s["device"] == p["device"]
            pinlib.PinConfig(**s["config"])  # valid
    fields = {f.name for f in dataclasses.fields(pinlib.PinConfig)}
    assert all(set(flags) <= fields for flags in catalog.PIN_VARIANTS.values())
    assert parallel.kind_function("pin", "build_checkpoint") == ("spatialkit.analysis.interventions.pin_store:"
                                                                 "build_checkpoint")
    # the declared configs are catalog.pin_configs(p), and the notebook builds its VARIANTS from that function
    assert {s["variant"]: s["config"] for s in pins if s["organism"]["preset"] == p["organism"]} == catalog.pin_configs(p)
    nb = json.loads((REPO / "notebooks" / "06_pin.ipynb").read_text())
    source = {c["id"]: "".join(c["source"]) for c in nb["cells"]}
    assert "pin_configs(vars(P)).items()" in source["d70ce884"] and "import pin_configs" in source["bbb58fee"]


def test_pin_tasks_wait_for_their_organism(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    pins = [s for k, s in catalog.checkpoints("06_pin", smoke_params(), warn=pytest.fail) if k == "pin"]
    tasks = pin_store.checkpoint_tasks(pins)
    pin_tasks = [t for t in tasks if t["kind"] == "pin"]
    assert [t["for"] for t in pin_tasks] == [[i] for i in range(len(pins))]
    assert len({t["id"] for t in pin_tasks}) == 6 and all(t["id"].startswith("pin-spec-") for t in pin_tasks)
    assert not any(t["done"] for t in tasks)
    for task in pin_tasks:  # the organism's task, exactly as the organism store plans it
        [org] = [t for t in organism_store.checkpoint_tasks([pin_store.organism_spec(task["spec"])])
                 if t["stage"] == "organism"]
        assert task["deps"] == [org["id"]]
    organisms = {t["id"]: t for t in tasks if t["kind"] == "organism"}  # emitted too, so the pool can order them
    assert {d for t in pin_tasks for d in t["deps"]} <= set(organisms)
    assert all(t["for"] == [] for t in organisms.values())


def test_built_insert_is_the_one_the_notebook_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    specs = [tiny_spec(), tiny_spec(use_insert=False)]
    tasks = pin_store.checkpoint_tasks(specs)
    built: set[str] = set()
    for task in tasks:  # listed in dependency order: build them as the pool would
        assert set(task["deps"]) <= built, (task["label"], task["deps"])
        if task["kind"] == "organism":
            organism_store.build_checkpoint(task)
        else:
            info = pin_store.build_checkpoint(task)
            assert info["id"] == task["id"] and info["wall_s"] > 0
        built.add(task["id"])
    assert all(t["done"] for t in pin_store.checkpoint_tasks(specs))
    stored = [f for f in (tmp_path / "checkpoints").iterdir() if f.name.startswith(f"{pinlib.STORE_KIND}-")]
    assert len(stored) == 2
    # the notebook's way: its organism, its location set (the failing organism's bin count), its call
    vlm = load_or_train(preset("smoke", seed=0), device="cpu")
    sha = state_dict_sha256(vlm.model)
    for spec in specs:
        cfg = pinlib.PinConfig(**spec["config"])
        data = pinlib.location_set(scene_config(vlm.config),
                                   pinlib.split_seeds(vlm.config.bench_seed, "train", cfg.n_train_scenes),
                                   len(load_or_train(preset(spec["n_bins_from"], seed=0)).location_token_ids()))
        pin, metrics = pinlib.load_or_train_pin(vlm, cfg, data=data, model_sha256=sha, allow_train=False)
        assert (pin.insert is None) == (not cfg.use_insert) and len(metrics["history"]) >= 1
        assert (pinlib.pin_folder(vlm, cfg, data, model_sha256=sha) / checkpoints.MANIFEST).exists()


def test_load_insert_is_the_pools_insert_and_07s_pin_cell_is_06s(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    spec = tiny_spec()
    with pytest.raises(checkpoints.CheckpointError):  # nothing stored, training not allowed: a clear error
        pin_store.load_insert(spec, allow_train=False)
    for task in pin_store.checkpoint_tasks([spec]):
        (organism_store if task["kind"] == "organism" else pin_store).build_checkpoint(task)
    vlm, pin, metrics = pin_store.load_insert(spec, allow_train=False)  # the stored one: no training here
    assert vlm.config.to_dict() == preset("smoke", seed=0).to_dict() and len(metrics["history"]) >= 1
    # a pin cell answers with the insert on its visual tokens; leaving the context gives the model back whole
    from spatialkit.analysis import combine  # here: only this test scores a grid cell

    sets = combine.item_sets(vlm.config, n_items=24, n_tune=12)
    plain = combine.score_cell(vlm, sets, (1.0, 2.0), batch_size=16)
    with pin.applied(vlm):
        inserted = combine.score_cell(vlm, sets, (1.0, 2.0), batch_size=16)
    again = combine.score_cell(vlm, sets, (1.0, 2.0), batch_size=16)
    assert plain.scores.keys() == inserted.scores.keys()
    assert any(not np.array_equal(plain.scores[k], inserted.scores[k]) for k in plain.scores)
    assert all(np.array_equal(plain.scores[k], again.scores[k]) for k in plain.scores)
    # notebook 07's pin cells load notebook 06's main insert, at 06's recipe for the zoo and 07's seed
    for zoo in ("zoo", "smoke"):
        p07 = catalog.get("07_putting_it_together").validate({"zoo": zoo})
        assert "llava+pin" in p07["cells"] and catalog.trained_by_notebook06(p07, "llava+pin")
        kind, pin07 = catalog.grid_cell_checkpoint(p07, "llava+pin")
        assert kind == "pin" and pin07["variant"] == next(iter(catalog.PIN_VARIANTS))
        assert pin07["organism"]["preset"] == catalog.zoo_preset("llava", zoo)
        assert (kind, pin07) in catalog.checkpoints("07_putting_it_together", p07)
        # another seed is 07's own insert (06 trains seed 0 at its defaults); another organism's too
        other = catalog.get("07_putting_it_together").validate({"zoo": zoo, "seed": 1})
        assert not catalog.trained_by_notebook06(other, "llava+pin")
        assert catalog.grid_cell_checkpoint(other, "llava+pin")[1]["config"]["seed"] == 1
        assert not catalog.trained_by_notebook06(p07, "prior+pin") and not catalog.trained_by_notebook06(p07, "llava")


@pytest.mark.slow
def test_notebook_06_trains_no_insert_after_the_pool(tmp_path, monkeypatch):
    """``spatialkit run --jobs 2`` on notebook 06 (smoke) in an empty store: the pool trains the organisms and the
    six inserts, the notebook then loads them (no seventh insert in the store: the keys agree) and passes."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPATIALKIT_CACHE", str(cache))
    [job] = runner.plan("smoke", ["06_pin"], root=REPO)
    lines: list[str] = []
    [result] = parallel.run([job], tmp_path / "out", n_jobs=2, force=True, echo=lines.append)
    assert result.status == "ok", result.error
    trained = [t for t in parallel.last_training if t["status"] == "ok"]
    assert sum(t["id"].startswith("pin-spec-") for t in trained) == 6, lines
    assert len([t for t in parallel.last_training if t["status"] != "ok"]) == 0, lines
    stored = [f for f in (cache / "checkpoints").iterdir() if f.name.startswith(f"{pinlib.STORE_KIND}-")]
    assert len(stored) == 6, [f.name for f in stored]
    pins = [s for k, s in catalog.checkpoints(job.name, job.params) if k == "pin"]
    assert all(t["done"] for t in pin_store.checkpoint_tasks(pins))
