"""``spatialkit sweep``: a grid of validated parameter sets, each point in its own folder, cached by the runner's
key, on the local process pool and on a real Dask LocalCluster; failing points, a killed sweep resumed, the
results table and plots over the points.

A throwaway notebook in tmp_path (its own root, like tests/test_runner.py) keeps every run to a kernel start.
The code fingerprint is pinned: teammates editing spatialkit/ meanwhile would (rightly) re-execute points.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from spatialkit.common.params import NotebookSpec, Param, ParameterError
from spatialkit.suite import cli, runner, sweep

REPO = Path(__file__).resolve().parents[1]
PINNED = "pinned"
SPEC = NotebookSpec("tiny", "A throwaway notebook", (
    Param("n", int, 3, low=1, high=10),
    Param("fail", bool, False),
    Param("hold", int, 0, low=0, high=10),
    Param("tags", list, ["a"], item_kind=str),
))

RESULTS_CELL = """\
import json, os
if os.environ.get('SPATIALKIT_RESULTS'):
    claim = {'claim': 'n is positive', 'source': 'test', 'paper': 'n > 0', 'models': {'': {
        'measured': f'n = {n}', 'estimate': {'mean': n, 'low': n - 0.5, 'high': n + 0.5},
        'verdict': 'reproduced', 'outcome': 'reproduced'}}}
    with open(os.environ['SPATIALKIT_RESULTS'], 'w') as f:
        json.dump({'claims': [claim]}, f)
print('n =', n, 'tags =', tags)"""


def tiny_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("n = 3\nfail = False\nhold = 0\ntags = ['a']", metadata={"tags": ["parameters"]}),
        # hold: the point n == hold waits while notebooks/hold.flag exists (the kill test's window)
        nbformat.v4.new_code_cell("import os, time\nwhile n == hold and os.path.exists('hold.flag'):\n"
                                  "    time.sleep(0.1)"),
        nbformat.v4.new_code_cell(RESULTS_CELL),
        nbformat.v4.new_code_cell("if fail:\n    raise ValueError(f'asked to fail with n={n}')"),
    ]
    nbformat.write(nb, path)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "notebooks").mkdir()
    tiny_notebook(tmp_path / "notebooks" / "tiny.ipynb")
    (tmp_path / "profiles.yml").write_text("quick: {}\nsmoke:\n  tiny:\n    n: 2\n")
    return tmp_path


def plan(root, axes, fixed=None, points=None, **kw):
    kw.setdefault("name", "s")
    return sweep.plan_sweep("tiny", axes, fixed, points, root=root, notebooks={"tiny": SPEC},
                            profiles_file=root / "profiles.yml", out=root / "runs", **kw)


def run(plan_, **kw):
    kw.setdefault("workers", 2)
    return sweep.run_sweep(plan_, pkg_hash=PINNED, progress=False, echo=lambda _: None, **kw)


def printed(path):
    nb = json.loads(Path(path).read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


# --- planning and validation (no kernel) ---------------------------------------------------------

def test_grid_is_the_cartesian_product_each_point_validated_with_its_own_folder(root):
    s = plan(root, {"n": [2, "3"], "fail": [False, True]}, {"tags": ["x", "y"]}, profile="smoke")
    assert [p.varied for p in s.points] == [{"n": 2, "fail": False}, {"n": 2, "fail": True},
                                            {"n": 3, "fail": False}, {"n": 3, "fail": True}]
    assert all(p.job.params["tags"] == ["x", "y"] for p in s.points)  # the fixed list value, not an axis
    folders = [p.folder for p in s.points]
    assert len(set(folders)) == 4 and all(f.parent == root / "runs" / "s" / "tiny" for f in folders)
    assert all(len(f.name) == 10 for f in folders)
    assert [p.label() for p in s.points][1] == "n=2, fail=True"
    # the same parameter set (here n=2 from the smoke profile and from the grid) is one point
    assert len(plan(root, {"n": [2, 2]}).points) == 1


@pytest.mark.parametrize("axes, fixed, match", [
    ({"n": [2, 11]}, None, r"^sweep point 2/2 \(n=11\): tiny: parameter 'n' = 11 is invalid; allowed: int in \[1, 10\]$"),
    ({"n": [2]}, {"fail": "maybe"}, r"^sweep point 1/1 \(n=2\): tiny: parameter 'fail' = 'maybe' is invalid"),
    ({"epochs": [1, 2]}, None, r"^sweep: unknown parameter 'epochs' for notebook tiny; allowed names: fail, hold, n, tags$"),
    ({"n": []}, None, r"^sweep: -p n \[\]: no values to sweep over$"),
    ({"tags": [["a"], [1.5]]}, None, r"^sweep point 2/2 \(tags=\[1.5\]\): tiny: parameter 'tags'"),
])
def test_every_point_is_validated_before_anything_runs(root, axes, fixed, match):
    with pytest.raises(ParameterError, match=match):
        plan(root, axes, fixed)
    assert not (root / "runs").exists()


def test_cli_values_list_axes_and_list_parameters_lists_of_lists():
    axes, fixed = sweep.split_cli([("n", "[1, 2]"), ("fail", "true"), ("tags", "[a, b]"), ("hold", "[0]"),
                                   ("tags", "[[a], [a, b]]")], SPEC)
    assert axes == {"n": [1, 2], "hold": [0], "tags": [["a"], ["a", "b"]]} and fixed == {"fail": True}
    axes, fixed = sweep.split_cli([("tags", "[a, b]")], SPEC)
    assert axes == {} and fixed == {"tags": ["a", "b"]}  # a flat list for a list parameter: one value


def test_sweep_file_grid_params_points(root, tmp_path):
    f = tmp_path / "grid.yml"
    f.write_text("notebook: tiny\nprofile: smoke\ngrid:\n  n: [4, 5]\nparams:\n  fail: false\n"
                 "points:\n  - {tags: [a]}\n  - {tags: [a, b]}\n")
    spec = sweep.read_sweep_file(f)
    assert spec["name"] == "grid"
    s = plan(root, spec["grid"], spec["params"], spec["points"], name=spec["name"])
    assert [p.varied for p in s.points] == [{"tags": ["a"], "n": 4}, {"tags": ["a"], "n": 5},
                                            {"tags": ["a", "b"], "n": 4}, {"tags": ["a", "b"], "n": 5}]
    f.write_text("grid:\n  n: 3\n")
    with pytest.raises(ParameterError, match=r"grid 'n' = 3 must be a list of values \(a fixed value goes under"):
        sweep.read_sweep_file(f)
    f.write_text("notebook: tiny\ngird: {}\n")
    with pytest.raises(ParameterError, match=r"unknown key\(s\) \['gird'\]"):
        sweep.read_sweep_file(f)


def test_cli_sweep_dry_run_and_one_line_errors(tmp_path, capsys):
    args = ["sweep", "00_wheres_the_chicken", "-p", "seed", "[0, 1]", "-p", "organisms", "[[smoke], [smoke, smoke_loud]]",
            "--profile", "smoke", "--out", str(tmp_path), "--dry-run"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[1].endswith("seed=0, organisms=[smoke, smoke_loud]")
    assert f"{tmp_path}/seed-organisms/00_wheres_the_chicken/" in lines[0]
    assert cli.main(["sweep", "00_wheres_the_chicken", "-p", "seed", "[0, -1]", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spatialkit: error: sweep point 2/2 (seed=-1): 00_wheres_the_chicken: parameter 'seed' = -1 "
                          "is invalid") and "\n" not in err


def test_the_sweep_module_stays_light():
    code = ("import sys, spatialkit.suite.sweep; print([m for m in ('torch', 'dask', 'distributed', 'matplotlib', "
            "'papermill', 'spatialkit.models') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


# --- running ------------------------------------------------------------------------------------

def test_local_sweep_each_point_own_folder_then_cached_then_table_and_plots(root, capsys):
    s = plan(root, {"n": [2, 3]}, profile="smoke")
    results = run(s)
    assert [r.status for r in results] == ["ok", "ok"]
    for p, n in zip(s.points, (2, 3)):
        assert f"n = {n} tags = ['a']" in printed(p.folder / "tiny.ipynb")
        assert json.loads((p.folder / "params.json").read_text())["grid"] == {"n": n}
        assert json.loads((p.folder / "status.json").read_text())["status"] == "ok"
        assert (p.folder / "tiny.results.json").is_file() and (p.folder / "tiny.key").is_file()
    assert json.loads((s.folder / "sweep.json").read_text())["axes"] == {"n": [2, 3]}
    mtime = (s.points[0].folder / "tiny.ipynb").stat().st_mtime_ns
    again = run(plan(root, {"n": [2, 3]}, profile="smoke"))
    assert [r.status for r in again] == ["cached", "cached"]
    assert (s.points[0].folder / "tiny.ipynb").stat().st_mtime_ns == mtime

    capsys.readouterr()
    assert cli.main(["results", str(s.folder), "--format", "csv", "--plot", str(root / "plots")]) == 0
    out = capsys.readouterr()
    head, *rows = out.out.splitlines()
    assert head == "notebook,point,n,status,claim,model,outcome,measured"
    assert sorted(r.split(",")[2] for r in rows) == ["2", "3"] and all(",ok,n is positive," in r for r in rows)
    [png] = (root / "plots").glob("*.png")
    assert png.name == "tiny__n_is_positive.png" and png.read_bytes()[:4] == b"\x89PNG"
    table = json.loads(sweep_results(s.folder, "json"))
    assert table["counts"] == {"outcome": {"reproduced": 2, "contradicted": 0, "inconclusive": 0, "not testable": 0}}


def sweep_results(folder, fmt):
    from spatialkit.suite import scorecard

    return scorecard.render(sweep.results_table([folder]), fmt)


def test_a_failing_point_is_recorded_and_the_others_finish(root):
    s = plan(root, {"fail": [False, True]}, {"n": 4})
    ok, failed = run(s)
    assert ok.status == "ok" and failed.status == "failed"
    assert failed.error.startswith("tiny: cell 3 (id ") and failed.error.endswith("ValueError: asked to fail with n=4")
    assert json.loads((failed.point.folder / "status.json").read_text())["error"] == failed.error
    assert (failed.point.folder / "failed" / "tiny.ipynb").is_file()
    assert not (failed.point.folder / "tiny.ipynb").exists()
    text = sweep_results(s.folder, "table")
    assert "error" in text.splitlines()[0]
    [row] = [r for r in sweep.results_table([s.folder]).rows if r["status"] == "failed"]
    assert row["fail"] == "True" and row["error"] == failed.error and row["claim"] == "—"


def test_a_killed_sweep_resumes_where_it_stopped(root):
    flag = root / "notebooks" / "hold.flag"
    flag.write_text("hold")
    script = ("import sys; from pathlib import Path; from spatialkit.suite import sweep; "
              "from tests.test_sweep import plan, PINNED; r = Path(sys.argv[1]); "
              "sweep.run_sweep(plan(r, {'n': [2, 3, 4]}, {'hold': 4}), workers=1, pkg_hash=PINNED, progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(root)], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    s = plan(root, {"n": [2, 3, 4]}, {"hold": 4})
    first, second, held = s.points
    try:
        deadline = time.monotonic() + 90
        while not ((first.folder / "tiny.key").exists() and (second.folder / "tiny.key").exists()
                   and any((held.folder / ".running").glob("tiny.*"))):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the sweep did not reach its third point"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its pool worker, mid-point
        proc.wait()
        flag.unlink()  # the orphaned kernel's cell ends too (and the kernel exits with its parent gone)
    assert not (held.folder / "tiny.key").exists()
    assert sweep.results_table([s.folder]).rows[2]["status"] == "not run"
    results = run(s)
    assert [r.status for r in results] == ["cached", "cached", "ok"]
    assert "n = 4" in printed(held.folder / "tiny.ipynb")
    assert not any((held.folder / ".running").glob("tiny.*"))  # the killed run's folder is gone


def test_dask_local_cluster_runs_the_same_sweep(root):
    pytest.importorskip("distributed", reason="the cluster extra is not installed (pip install 'spatialkit[cluster]')")
    s = plan(root, {"n": [2, 3]}, profile="smoke", name="on-dask")
    results = run(s, executor="dask")
    assert [r.status for r in results] == ["ok", "ok"], [r.error for r in results]
    assert all(r.host for r in results)
    for p, n in zip(s.points, (2, 3)):
        assert f"n = {n}" in printed(p.folder / "tiny.ipynb")
    assert [r.status for r in run(s, executor="dask")] == ["cached", "cached"]  # no cluster needed


def test_a_worker_without_the_shared_folder_ships_the_files_back(root, tmp_path_factory):
    s = plan(root, {"n": [5]})
    [p] = s.points
    p.folder.mkdir(parents=True)
    path = p.job.path
    task = {"notebook": "tiny", "path": str(path), "relpath": "notebooks/tiny.ipynb",
            "notebook_sha": sweep._sha(path), "params": p.job.params, "hash": p.hash, "pkg_hash": PINNED,
            "verify": False, "folder": str(tmp_path_factory.mktemp("elsewhere") / "not-here")}
    outcome = sweep.execute_point(task)
    assert outcome["status"] == "ok" and set(outcome["files"]) == {"tiny.ipynb", "tiny.key", "tiny.results.json"}
    sweep._publish_shipped(p, outcome["files"], "ok")
    assert runner.is_fresh(p.job, p.folder, runner.cache_key(p.job, PINNED))
    # a worker whose checkout differs fails that point with one line, before any kernel
    bad = sweep.execute_point({**task, "notebook_sha": "0" * 64, "path": "/nowhere/tiny.ipynb"})
    assert bad["status"] == "failed" and "missing or differs from the submitter's notebooks/tiny.ipynb" in bad["error"]
    code = sweep.execute_point({**task, "verify": True})
    assert code["status"] == "failed" and "its spatialkit code (fingerprint" in code["error"]


@pytest.mark.slow
def test_real_notebook_point_on_the_smoke_profile(tmp_path):
    s = sweep.plan_sweep("00_wheres_the_chicken", {"seed": [1]}, profile="smoke", out=tmp_path, name="real")
    [r] = sweep.run_sweep(s, workers=1, progress=False, echo=lambda _: None)
    assert r.status == "ok", r.error
    rows = sweep.results_table([s.folder]).rows
    assert rows and all(row["seed"] == "1" and row["status"] == "ok" for row in rows)
    assert all(row["claim"] != "—" for row in rows)
