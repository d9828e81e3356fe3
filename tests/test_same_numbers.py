"""Same parameters, same numbers: a notebook run twice under the same profile on this CPU gives identical claims
tables, its models trained again from an empty checkpoint store.

The first run is the conftest's ``smoke_book`` (every notebook, the session's store); the second runs the
notebooks below in a private book root with an empty ``SPATIALKIT_CACHE``, so every organism, tower and insert
they load is trained a second time inside the kernel. Each claim's measured text, estimate, value and verdict per
model must be equal (the run's date and environment aside). The notebooks cover the random things a run draws:
organism and CLIP/CLOC training, bench splits, shuffles and bootstraps (00, 02), tower swaps (05), the grid's
training, AdaptVis tuning and item sets (07).
"""

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest

from spatialkit.suite import runner
from tests.conftest import copy_book_sources

RERUN = ("00_wheres_the_chicken", "02_semantic_loudness", "05_clip_vs_cloc", "07_putting_it_together")


def claims_table(path) -> list[tuple]:
    """(claim, model, measured, estimate, value, verdict) of every claim in a results file, in order."""
    results = json.loads(path.read_text())
    return [(c["claim"], model, m.get("measured"), json.dumps(m.get("estimate"), sort_keys=True),
             json.dumps(m.get("value")), m.get("verdict"))
            for c in results["claims"] for model, m in c["models"].items()]


def _execute(job, out):
    result = runner.execute(job, out)
    return result.status, result.error


@pytest.mark.slow
def test_a_second_run_from_an_empty_store_gives_identical_claims(smoke_book, tmp_path, monkeypatch):
    first_root, first = smoke_book
    assert all(first[name]["status"] == "ok" for name in RERUN), {n: first[n] for n in RERUN}
    root = tmp_path / "root"
    root.mkdir()
    copy_book_sources(root)
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path / "empty-store"))  # the kernels inherit it
    out = runner.executed_dir(root)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [job for job in runner.plan("smoke", root=root) if job.name in RERUN]
    assert sorted(job.name for job in jobs) == sorted(RERUN)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        second = {job.name: pool.submit(_execute, job, out) for job in jobs}
        second = {name: future.result() for name, future in second.items()}
    assert all(status == "ok" for status, _ in second.values()), second
    assert any((tmp_path / "empty-store").rglob("*.safetensors")), "the second run trained nothing"
    informative = 0  # rows whose estimate is not all zeros: smoke models learn little, many rows are degenerate
    for name in RERUN:
        a = claims_table(runner.executed_dir(first_root) / f"{name}.results.json")
        b = claims_table(out / f"{name}.results.json")
        assert a, f"{name}: no claims recorded"
        assert a == b, f"{name}: " + "; ".join(f"{x} != {y}" for x, y in zip(a, b) if x != y)[:3000]
        informative += sum(any(json.loads(row[3]).get(k) for k in ("mean", "low", "high"))
                           for row in a if json.loads(row[3]))
    assert informative >= 10, f"only {informative} claim rows carry a non-zero estimate: the check says little"
