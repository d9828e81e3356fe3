"""Notebook 05's towers as checkpoints of the worker pool (kinds "clip" and "encoder_swap",
spatialkit.models.tower_store): the catalog declares exactly what notebook 05 trains, notebook 07's "cloc" cells
load the same checkpoints 05 trains, and the pool trains a swapped organism after its encoder."""

import json
from pathlib import Path

import pytest

from spatialkit.analysis import combine
from spatialkit.common import checkpoints
from spatialkit.common.params import ParameterError
from spatialkit.models import clip as C
from spatialkit.models import tower_store
from spatialkit.models.organism import preset
from spatialkit.models.organism import store as organism_store
from spatialkit.suite import catalog, parallel, runner

REPO = Path(__file__).resolve().parents[1]


def planned_ids(declared) -> set[str]:
    """The store folders (checkpoint ids) of every task behind the declared (kind, spec) checkpoints."""
    by_kind: dict[str, list] = {}
    for kind, spec in declared:
        by_kind.setdefault(kind, []).append(spec)
    plan = {"organism": organism_store.checkpoint_tasks, "clip": tower_store.clip_checkpoint_tasks,
            "encoder_swap": tower_store.swap_checkpoint_tasks}
    return {t["id"] for kind, specs in by_kind.items() for t in plan[kind](specs)}


def test_catalog_variants_are_the_models():
    assert catalog.CLIP_VARIANTS == C.VARIANTS
    assert parallel.kind_function("clip", "build_checkpoint") == "spatialkit.models.tower_store:clip_build_checkpoint"
    assert parallel.kind_function("organism", "checkpoint_tasks") == "spatialkit.models.organism.store:checkpoint_tasks"


@pytest.mark.parametrize("zoo", ["zoo", "smoke"])
def test_cloc_cells_load_notebook_05s_checkpoints(zoo):
    p07 = catalog.get("07_putting_it_together").validate({"zoo": zoo, "cells": list(catalog.GRID_CELLS),
                                                          "cloc_budget": "notebook05"})
    p05 = catalog.tower_recipe(zoo)
    declared_05 = {json.dumps(s, sort_keys=True) for k, s in catalog.checkpoints("05_clip_vs_cloc", p05)}
    llava = catalog.grid_cell_checkpoint(p07, "llava+cloc")
    assert llava[0] == "encoder_swap" and json.dumps(llava[1], sort_keys=True) in declared_05  # shared with 05
    for cell in catalog.GRID_CELLS:
        kind, spec = catalog.grid_cell_checkpoint(p07, cell)
        assert (kind == "encoder_swap") == combine.is_tower_cell(cell)
        if kind != "encoder_swap":
            continue
        organism, over = combine.cell_overrides(cell, p07["posenc_2d"])
        name = combine.preset_name(organism, zoo)
        # the organism is the cell's (with 05's stage-2 steps), the tower 05's CLOC on the organism's own world
        cfg = preset(spec["organism"]["preset"], **spec["organism"]["overrides"])
        expected = preset(name, seed=0, **over)
        if p05["swap_steps"]:
            expected = expected.replace(steps=p05["swap_steps"])
        assert cfg.to_dict() == expected.to_dict()
        assert spec["encoder"]["model"]["region_head"] == "prompter" and spec["encoder"]["data"]["preset"] == name
    equal = catalog.get("07_putting_it_together").validate({"zoo": zoo})  # the default
    for cell in ("llava+cloc", "prior+cloc"):  # the plain cell's schedule on 05's tower
        kind, spec = catalog.grid_cell_checkpoint(equal, cell)
        organism, over = combine.cell_overrides(cell, equal["posenc_2d"])
        cfg = preset(spec["organism"]["preset"], **spec["organism"]["overrides"])
        assert kind == "encoder_swap"
        assert cfg.to_dict() == preset(combine.preset_name(organism, zoo), seed=0, **over).to_dict()
        assert spec["encoder"] == catalog.grid_cell_checkpoint(p07, cell)[1]["encoder"]  # the same tower
    # 05's defaults run the preset's schedule too: llava+cloc at seed 0 is 05's own checkpoint (trained once);
    # prior+cloc (05 trains llava only), a seed 05 does not train and a plain cell are not
    assert not p05["swap_steps"]
    assert catalog.trained_by_notebook05(equal, "llava+cloc")
    assert not catalog.trained_by_notebook05(equal, "prior+cloc")
    assert not catalog.trained_by_notebook05({**equal, "seed": p05["seed"] + p05["n_seeds"]}, "llava+cloc")
    assert not catalog.trained_by_notebook05(equal, "llava")
    with pytest.raises(ParameterError, match="cloc_budget"):
        catalog.get("07_putting_it_together").validate({"cloc_budget": "half"})
    for bad in ("llava+local+cloc", "loud+cloc"):
        with pytest.raises(ValueError):
            combine.parse_cell(bad)
    assert "llava+local+cloc" not in catalog.GRID_CELLS and "loud+cloc" not in catalog.GRID_CELLS


def test_cloc_budget_equal_keeps_the_plain_cells_schedule_where_notebook05_shortens_its_swap(monkeypatch):
    recipe = catalog.tower_recipe("zoo")
    monkeypatch.setattr(catalog, "tower_recipe", lambda zoo: {**recipe, "swap_steps": 1000})
    spec07 = catalog.get("07_putting_it_together")
    equal, short = spec07.validate({}), spec07.validate({"cloc_budget": "notebook05"})
    plain = preset("llava", seed=0).optim.steps
    for cell in ("llava+cloc", "prior+cloc"):
        steps = {name: preset(s["organism"]["preset"], **s["organism"]["overrides"]).optim.steps
                 for name, (_, s) in {"equal": catalog.grid_cell_checkpoint(equal, cell),
                                      "short": catalog.grid_cell_checkpoint(short, cell)}.items()}
        assert steps == {"equal": plain, "short": 1000}, (cell, steps)
    assert plain != 1000
    assert catalog.trained_by_notebook05(short, "llava+cloc") and not catalog.trained_by_notebook05(equal, "llava+cloc")


def test_swap_tasks_come_after_their_encoder_and_plan_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    p05 = catalog.tower_recipe("smoke")
    declared = catalog.checkpoints("05_clip_vs_cloc", p05)
    swaps = [s for k, s in declared if k == "encoder_swap"]
    clips = [s for k, s in declared if k == "clip"]
    tasks = tower_store.swap_checkpoint_tasks(swaps)
    encoders = {t["id"] for t in tower_store.clip_checkpoint_tasks(clips)}
    swap_tasks = [t for t in tasks if t["kind"] == "encoder_swap"]
    assert len(swap_tasks) == len(swaps) == 2 * p05["n_seeds"]
    assert all(len(t["deps"]) == 1 and t["deps"][0] in encoders for t in swap_tasks)
    assert {t["id"] for t in tasks if t["kind"] == "clip"} <= encoders
    assert not any(t["done"] for t in tasks)


@pytest.mark.slow
def test_notebook_05_trains_exactly_what_the_catalog_declares(tmp_path, monkeypatch):
    """Notebook 05 run in the smoke profile, alone (no pre-training), in an empty store: the checkpoints it
    trains are exactly the declared ones (so with ``--jobs`` the pool trains them all and the notebook none)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SPATIALKIT_CACHE", str(cache))
    [job] = runner.plan("smoke", ["05_clip_vs_cloc"], root=REPO)
    expected = planned_ids(catalog.checkpoints(job.name, job.params, warn=pytest.fail))
    assert any(i.startswith("swap-") for i in expected) and any(i.startswith("cloc05-") for i in expected)
    result = runner.execute(job, tmp_path / "out")
    assert result.status == "ok", result.error
    trained = {f.name for f in (cache / "checkpoints").iterdir() if (f / checkpoints.MANIFEST).exists()}
    assert trained == expected


@pytest.mark.parametrize("zoo", ["zoo", "smoke"])
def test_noise_runs_are_notebook_05s_seeds_and_include_the_llava_cloc_cell(zoo):
    spec07 = catalog.get("07_putting_it_together")
    p07 = spec07.validate({"zoo": zoo, "noise_seeds": 3})
    p05 = {**catalog.tower_recipe(zoo), "n_seeds": 3}
    runs = catalog.noise_checkpoints(p07)
    assert [(t, s) for t, s, _ in runs] == [(t, s) for t in ("CLIP", "CLOC") for s in (0, 1, 2)]
    # the LLaVA recipe on 05's towers: at 05's recipe with three seeds, exactly 05's six swaps
    declared_05 = [c for c in catalog.checkpoints("05_clip_vs_cloc", p05) if c[0] == "encoder_swap"]
    assert sorted(json.dumps(c, sort_keys=True) for _, _, c in runs) == sorted(
        json.dumps(c, sort_keys=True) for c in declared_05)
    for tower, s, (kind, spec) in runs:
        assert kind == "encoder_swap" and spec["encoder"]["seed"] == s
        assert spec["encoder"]["model"]["region_head"] == catalog.CLIP_VARIANTS[tower]
        assert spec["organism"]["overrides"]["seed"] == s
    # the CLOC run of 07's seed is the grid's llava+cloc cell; 07 declares every run, and none when skipped
    assert runs[3][2] == catalog.grid_cell_checkpoint(p07, "llava+cloc")
    declared_07 = catalog.checkpoints("07_putting_it_together", p07)
    assert all(c in declared_07 for _, _, c in runs)
    off = spec07.validate({"zoo": zoo, "noise_seeds": 0})
    assert catalog.noise_checkpoints(off) == []
    assert len(catalog.checkpoints("07_putting_it_together", p07)) - len(
        catalog.checkpoints("07_putting_it_together", off)) == len(runs) - 1  # llava+cloc is a cell already
    with pytest.raises(ParameterError, match="noise_seeds"):
        spec07.validate({"noise_seeds": 1})  # one run has no spread


def test_noise_runs_at_the_defaults_train_nothing_notebook_05_does_not():
    p07 = catalog.get("07_putting_it_together").validate({})
    declared_05 = catalog.checkpoints("05_clip_vs_cloc", catalog.tower_recipe("zoo"))
    assert p07["noise_seeds"] == catalog.tower_recipe("zoo")["n_seeds"] == 3
    assert all(c in declared_05 for _, _, c in catalog.noise_checkpoints(p07))
