"""`spatialkit run --jobs N`: checkpoint declarations, the training plan, the worker pool and parallel notebooks.

Fast: a fake checkpoint kind (tests/fake_checkpoints.py) and throwaway notebooks; one test trains the real
smoke organism through the pool and checks a notebook-style load finds it without training.
"""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from spatialkit.common.params import NotebookSpec, Param
from spatialkit.suite import catalog, parallel, runner

REPO = Path(__file__).resolve().parents[1]
SPEC = NotebookSpec("tiny", "A throwaway notebook", (Param("n", int, 3, low=1, high=10),))


def notebook(path: Path, code: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("n = 3", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    monkeypatch.setenv("FAKE_CKPT_DIR", str(store))
    monkeypatch.setitem(parallel.KINDS, "fake", "tests.fake_checkpoints")
    return store


def jobs_for(tmp_path, names, code="print(n)"):
    (tmp_path / "notebooks").mkdir(exist_ok=True)
    out = []
    for name in names:
        notebook(tmp_path / "notebooks" / f"{name}.ipynb", code)
        out.append(runner.Job(name, tmp_path / "notebooks" / f"{name}.ipynb", {"n": 3}))
    return out


def test_catalog_declares_the_organisms_the_notebooks_load():
    declare = catalog.CHECKPOINTS["02_semantic_loudness"]
    # zoo presets only, nothing trained inline: the permutation-test organisms, loud, and loud's +Normalize arms
    zoo = {"organisms": ["healthy", "llava", "prior"], "loud": "loud", "loud_norm_arms": ["loud_norm", "loud_norm_text"],
           "threads": 1, "device": "cpu"}
    specs = [s for k, s in declare(zoo) if k == "organism"]
    assert [s["preset"] for s in specs] == ["healthy", "llava", "prior", "loud", "loud_norm", "loud_norm_text"]
    assert all(s["threads"] == 1 and s["overrides"] == {} for s in specs)
    # the earlier preset-family version: base, normed, 3 spatial fractions (0.5 = the preset's: the base's key),
    # 2 more seeds x 2 arms, 2 norm scales
    family = {"seed": 0, "organism": "quick", "steps": 0, "norm_mode": "rmsclip", "spatial_fractions": [0.0, 0.15, 0.5],
              "n_seeds": 3, "norm_scales": [0.1, 0.3, 1.0], "threads": 1, "device": "cpu"}
    specs = [s for k, s in declare(family) if k == "organism"]
    assert len(specs) == 11 and {"target": None, "seed": 0} in [s["overrides"] for s in specs]
    p00 = catalog.get("00_wheres_the_chicken").validate({})
    assert [s["preset"] for _, s in catalog.checkpoints("00_wheres_the_chicken", p00)] == p00.get("organisms", [])
    assert catalog.checkpoints("01_positional_encodings", {}) == []
    warnings = []  # a declaration that no longer fits the parameters declares nothing, with a warning
    assert catalog.checkpoints("06_pin", {"threads": 1}, warn=warnings.append) == [] and "06_pin" in warnings[0]
    for job in runner.plan("smoke"):  # every declaration fits the catalog's current parameters
        for kind, spec in catalog.checkpoints(job.name, job.params, warn=pytest.fail):
            assert kind in parallel.KINDS, (job.name, kind)
            organism = spec["organism"] if kind in ("encoder_swap", "pin") else spec["data"] if kind == "clip" else spec
            assert organism["preset"].startswith("smoke"), (job.name, spec)


def test_trains_declared_checkpoints_first_in_parallel_then_runs_notebooks(tmp_path, fake):
    declared = {"a": [("fake", {"name": "ck1", "seconds": 1.5}), ("fake", {"name": "ck2", "seconds": 1.5})],
                "b": [("fake", {"name": "ck1", "seconds": 1.5})]}  # ck1 twice: trained once
    code = ("import os, pathlib\nstore = pathlib.Path(os.environ['FAKE_CKPT_DIR'])\n"
            "assert (store / 'ck1.done').exists(), 'checkpoint not trained before the notebook'")
    jobs = jobs_for(tmp_path, ["a", "b", "c"], code)
    lines = []
    results = parallel.run(jobs, tmp_path / "out", n_jobs=2, echo=lines.append,
                           checkpoints_of=lambda name, params: declared.get(name, []))
    assert [r.status for r in results] == ["ok", "ok", "ok"], lines
    assert sum(line.startswith("train [") and line.endswith("...") for line in lines) == 2, lines
    assert any("training 2 checkpoint(s)" in line for line in lines)
    runs = [json.loads((fake / f"{n}.done").read_text()) for n in ("ck1", "ck2")]
    assert runs[0]["pid"] != runs[1]["pid"]  # two workers ...
    assert runs[0]["start"] < runs[1]["end"] and runs[1]["start"] < runs[0]["end"]  # ... at the same time
    assert {t["id"] for t in parallel.last_training} == {"ck1", "ck2"}

    again = []  # warm: nothing stale, so nothing is planned or trained and no worker starts
    results = parallel.run(jobs, tmp_path / "out", n_jobs=2, echo=again.append,
                           checkpoints_of=lambda name, params: declared.get(name, []))
    assert [r.status for r in results] == ["cached"] * 3
    assert not any(line.startswith("train") for line in again)


def test_dependencies_train_first_and_stored_checkpoints_are_skipped(tmp_path, fake):
    (fake / "old.done").write_text("{}")
    declared = {"a": [("fake", {"name": "org", "after": ["enc"], "seconds": 0.2}), ("fake", {"name": "old"})]}
    jobs = jobs_for(tmp_path, ["a"])
    lines = []
    parallel.run(jobs, tmp_path / "out", n_jobs=2, echo=lines.append,
                 checkpoints_of=lambda name, params: declared.get(name, []))
    trained = [t["id"] for t in parallel.last_training]
    assert trained == ["enc", "org"], lines  # old was stored already
    enc, org = (json.loads((fake / f"{n}.done").read_text()) for n in ("enc", "org"))
    assert enc["end"] <= org["start"]


def test_failed_training_is_reported_and_the_notebook_still_runs(tmp_path, fake):
    declared = {"a": [("fake", {"name": "bad", "fail": True})]}
    lines = []
    results = parallel.run(jobs_for(tmp_path, ["a"]), tmp_path / "out", n_jobs=1, echo=lines.append,
                           checkpoints_of=lambda name, params: declared.get(name, []))
    assert results[0].status == "ok"
    assert any("FAILED: RuntimeError: fake bad cannot train" in line for line in lines), lines


def test_failing_notebook_is_named_after_the_others_ran(tmp_path, fake):
    jobs = jobs_for(tmp_path, ["a"]) + jobs_for(tmp_path, ["b"], "raise ValueError('nope')")
    lines = []
    with pytest.raises(runner.RunError, match="b: cell 1 .*ValueError: nope"):
        parallel.run(jobs, tmp_path / "out", n_jobs=2, echo=lines.append, checkpoints_of=lambda n, p: [])
    assert (tmp_path / "out" / "a.ipynb").exists()


def test_real_organism_kind_trains_smoke_so_a_notebook_style_load_finds_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path / "cache"))
    spec = {"preset": "smoke", "overrides": {"seed": 3}, "threads": 1, "device": "cpu"}
    same = {"preset": "smoke", "overrides": {"seed": 3, "spatial_fraction": 0.5}, "threads": 1, "device": "cpu"}
    tasks = parallel.call("spatialkit.models.organism.store:checkpoint_tasks", [spec, same])
    assert [t["stage"] for t in tasks] == ["vision", "organism"]  # the default spatial_fraction: one key
    assert tasks[1]["for"] == [0, 1] and tasks[1]["deps"] == [tasks[0]["id"]]
    jobs = jobs_for(tmp_path, ["a"])
    parallel.run(jobs, tmp_path / "out", n_jobs=2, echo=lambda line: None,
                 checkpoints_of=lambda name, params: [("organism", spec)])
    assert [t["status"] for t in parallel.last_training] == ["ok", "ok"]
    code = ("import torch; torch.set_num_threads(1)\n"
            "from spatialkit.models.organism import load_or_train, preset\n"
            "load_or_train(preset('smoke', seed=3), allow_train=False)\nprint('loaded')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "loaded" in done.stdout, done.stderr[-2000:]


def test_cli_jobs_option():
    done = subprocess.run([sys.executable, "-m", "spatialkit", "run", "--jobs", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and "--jobs 0: must be at least 1" in done.stderr
    help_text = subprocess.run([sys.executable, "-m", "spatialkit", "run", "--help"], capture_output=True,
                               text=True).stdout
    assert "--jobs" in help_text and "--no-pretrain" in help_text
