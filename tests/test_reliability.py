"""Reliability with real processes: concurrent and interrupted runs never publish a wrong notebook, the
checkpoint store trains a key once and never loses a good checkpoint, paths resolve against the caller's
directory, and every fault ends in one line and a non-zero exit.

Runs use a miniature repository (SPATIALKIT_ROOT) whose notebooks 00 and 03 are throwaway notebooks
declaring the catalog's parameters, so each run takes seconds. ``concurrency_round`` is also what
benchmarks/bench_reliability.py repeats 20 times.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from spatialkit.suite import catalog, runner

REPO = Path(__file__).resolve().parents[1]
NB00 = "00_wheres_the_chicken"
NB03 = "03_attention_allocation"

# The CLI in a real process; pins the package hash (teammates editing spatialkit/ while a test runs would,
# rightly, change the cache key) and, with PAUSE_FLAG/PAUSE_GO set, pauses after papermill returns.
CHILD = r'''
import os, sys, time, pathlib
from spatialkit.suite import cli, nbimport, runner
runner.package_hash = lambda notebook=None: "pinned"
flag, go = os.environ.get("PAUSE_FLAG"), os.environ.get("PAUSE_GO")
if flag:
    papermill = nbimport.papermill()  # as the runner imports it
    real = papermill.execute_notebook
    def paused(*args, **kwargs):
        out = real(*args, **kwargs)
        pathlib.Path(flag).write_text(str(os.getpid()))
        while not pathlib.Path(go).exists():
            time.sleep(0.05)
        return out
    papermill.execute_notebook = paused
sys.exit(cli.main(sys.argv[1:]))
'''


def _notebook(path: Path, params: str, *cells: str) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# Throwaway"),
                nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                *[nbformat.v4.new_code_cell(c) for c in cells]]
    nbformat.write(nb, path)


def make_root(path: Path) -> Path:
    """A miniature repository: notebooks 00 (n_scenes 66 fails in cell 3, 99 sleeps) and 03 (prints paths)."""
    (path / "notebooks").mkdir(parents=True)
    (path / "book").mkdir()
    _notebook(path / "notebooks" / f"{NB00}.ipynb", "seed = 0\nimage_size = 128\nn_scenes = 200",
              "import os, pathlib, time\nprint(f'n_scenes = {n_scenes}')\n"
              "if os.environ.get('RELIABILITY_MARKER'):\n"
              "    pathlib.Path(os.environ['RELIABILITY_MARKER']).write_text(str(n_scenes))\n"
              "if n_scenes == 99:\n    time.sleep(120)",
              "if n_scenes == 66:\n    raise ValueError(f'asked to fail with n_scenes={n_scenes}')",
              "print(f'done {n_scenes}')")
    params = "\n".join(f"{p.name} = {p.default!r}" for p in catalog.NOTEBOOKS[NB03].params)
    _notebook(path / "notebooks" / f"{NB03}.ipynb", params,
              "import os\nfrom spatialkit.suite.notebook import run_tempdir\n"
              "scratch = run_tempdir('probe-')\n(scratch / 'x.txt').write_text('x')\n"
              "print('MODEL=' + model)\nprint('CACHE=' + os.environ.get('SPATIALKIT_CACHE', ''))\n"
              "print('ROOT=' + os.environ.get('SPATIALKIT_ROOT', ''))\nprint('SCRATCH=' + str(scratch))")
    (path / "child.py").write_text(CHILD)
    return path


@pytest.fixture
def root(tmp_path):
    return make_root(tmp_path / "repo")


def spawn(root: Path, *args: str, cwd: Path | None = None, env: dict | None = None, log: Path | None = None):
    """Start the CLI (``spatialkit ARGS``) on the miniature repository; stdout+stderr into ``log``."""
    full_env = {**os.environ, "SPATIALKIT_ROOT": str(root), "HF_HUB_OFFLINE": "1", **(env or {})}
    out = open(log, "w") if log else subprocess.PIPE
    # Ctrl-C as a terminal delivers it: pytest-xdist's workers ignore SIGINT, and a child inherits an ignored
    # signal (Python then installs no KeyboardInterrupt handler), so restore the default disposition in the child
    proc = subprocess.Popen([sys.executable, str(root / "child.py"), *args], cwd=cwd or root, env=full_env,
                            stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if log:
        out.close()
    return proc


def cli(root: Path, *args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    proc = spawn(root, *args, **kw)
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def wait_for(predicate, timeout: float = 90, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def texts(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))


def published_state(root: Path, n_scenes: int) -> dict:
    """What book/executed holds for notebook 00: which run's copy, complete or not, keyed for ``n_scenes``."""
    out = root / "book" / "executed"
    nb, key = out / f"{NB00}.ipynb", out / f"{NB00}.key"
    text = texts(nb) if nb.exists() else ""
    runs = sorted({int(line.split("= ")[1]) for line in text.splitlines() if line.startswith("n_scenes = ")})
    done = sorted({int(line.split()[1]) for line in text.splitlines() if line.startswith("done ")})
    [job] = runner.plan("smoke", [NB00], {"n_scenes": n_scenes}, root=root)
    fresh = runner.is_fresh(job, out, runner.cache_key(job, "pinned"))
    leftovers = sorted(p.name for p in (out / ".running").iterdir()) if (out / ".running").exists() else []
    return {"runs": runs, "done": done, "key_exists": key.exists(), "fresh": fresh, "leftovers": leftovers}


def concurrency_round(root: Path, variant: str, work: Path, timeout: float = 120) -> dict:
    """The measured reproduction, in one of three variants; returns what was published and how runs ended.

    * ``kill-waiting``: A (-p n_scenes 12) pauses after papermill returns; B (-p n_scenes 13) starts and is
      killed; A goes on. A's complete copy must be published, keyed for 12.
    * ``b-after-a``: as above but B is not killed: it must wait for A, then publish its own copy (13); A
      must not crash.
    * ``kill-paused``: B pauses after papermill returns (its executed copy complete in its own folder) and
      is killed; then A runs. A's copy must be published; B's folder is cleaned up.
    """
    work.mkdir(parents=True, exist_ok=True)
    flag, go = work / "paused", work / "go"
    for f in (flag, go):
        f.unlink(missing_ok=True)
    pause = {"PAUSE_FLAG": str(flag), "PAUSE_GO": str(go)}
    args = ("run", "--profile", "smoke", "--only", NB00, "--force", "-p", "n_scenes")
    a_log, b_log = work / "a.log", work / "b.log"
    if variant == "kill-paused":
        b = spawn(root, *args, "13", env=pause, log=b_log)
        wait_for(flag.exists, timeout, "B to pause")
        b.kill()
        b.wait()
        a = spawn(root, *args, "12", log=a_log)
        rc_a, rc_b, expected = a.wait(timeout), b.returncode, 12
    else:
        a = spawn(root, *args, "12", env=pause, log=a_log)
        wait_for(flag.exists, timeout, "A to pause")
        b = spawn(root, *args, "13", log=b_log)
        wait_for(lambda: "waiting for it to finish" in b_log.read_text(), timeout, "B to wait for A's lock")
        if variant == "kill-waiting":
            b.kill()
            b.wait()
        go.write_text("go")
        rc_a = a.wait(timeout)
        rc_b = b.wait(timeout) if variant == "b-after-a" else b.returncode
        expected = 13 if variant == "b-after-a" else 12
    state = published_state(root, expected)
    crashed = "Traceback" in a_log.read_text() or (variant == "b-after-a" and "Traceback" in b_log.read_text())
    ok = (rc_a == 0 and (variant != "b-after-a" or rc_b == 0) and not crashed and state["runs"] == [expected]
          and state["done"] == [expected] and state["fresh"] and state["leftovers"] == [])
    return {"variant": variant, "ok": ok, "rc_a": rc_a, "rc_b": rc_b, "crashed": crashed, "expected": expected,
            **state, "a_log": a_log.read_text()[-2000:], "b_log": b_log.read_text()[-2000:]}


# --- 1. concurrent runs of one notebook -----------------------------------------------------------

@pytest.mark.parametrize("variant", ["kill-waiting", "b-after-a"])
def test_concurrent_runs_never_publish_another_runs_file(root, tmp_path, variant):
    result = concurrency_round(root, variant, tmp_path / "round")
    assert result["ok"], result
    if variant == "kill-waiting":  # and the next run says "up to date" for A's parameters, truthfully
        proc = cli(root, "run", "--profile", "smoke", "--only", NB00, "-p", "n_scenes", "12")
        assert proc.returncode == 0 and "up to date, skipped" in proc.stdout, proc.stdout + proc.stderr
        # the killed run's pool workers end too (they used to wait forever as orphans on the pool's queue)
        wait_for(lambda: not processes_running(root / "child.py"), 30, "the killed run's workers to exit")


def processes_running(script: Path) -> list[int]:
    """Pids of live processes whose command line runs ``script`` (Linux /proc; [] elsewhere)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            args = (proc / "cmdline").read_bytes().split(b"\0")
            state = next((line for line in (proc / "status").read_text().splitlines() if line.startswith("State:")), "")
            if str(script).encode() in args and "zombie" not in state:
                pids.append(int(proc.name))
    return pids


def test_no_wait_refuses_with_one_line_while_another_run_holds_the_notebook(root, tmp_path):
    flag, go = tmp_path / "paused", tmp_path / "go"
    a = spawn(root, "run", "--profile", "smoke", "--only", NB00, env={"PAUSE_FLAG": str(flag), "PAUSE_GO": str(go)},
              log=tmp_path / "a.log")
    try:
        wait_for(flag.exists, what="A to pause")
        proc = cli(root, "run", "--profile", "smoke", "--only", NB00, "-p", "n_scenes", "13", "--no-wait")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"spatialkit: error: {NB00}: another run of this notebook is in progress (pid ")
    finally:
        go.write_text("go")
        assert a.wait(120) == 0


# --- 2. the checkpoint store ---------------------------------------------------------------------

CKPT_CHILD = r'''
import json, os, pathlib, sys, time
import torch
from spatialkit.common import checkpoints
root, start, log, loops = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
def train():
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(1.5)
    return {"w": torch.arange(6.0)}, {"trained_by": os.getpid()}
while not start.exists():
    time.sleep(0.02)
seen = set()
for _ in range(loops):
    state, metrics, folder = checkpoints.load_or_train("fake", {"a": 1}, "v1", train, root=root, log=lambda m: None)
    assert torch.equal(state["w"], torch.arange(6.0)), state
    seen.add(metrics["trained_by"])
print(json.dumps(sorted(seen)))
'''


def _ckpt_processes(tmp_path: Path, n: int, loops: int) -> tuple[list[list[int]], list[str]]:
    script, start, log = tmp_path / "ckpt_child.py", tmp_path / "start", tmp_path / "trained.log"
    script.write_text(CKPT_CHILD)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "store"), str(start), str(log), str(loops)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    time.sleep(0.5)
    start.write_text("go")  # all start asking at once (torch is imported by then, or nearly)
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return [json.loads(o[0]) for o in outs], log.read_text().split() if log.exists() else []


def test_three_processes_asking_for_one_key_train_it_once(tmp_path):
    seen, trainers = _ckpt_processes(tmp_path, 3, loops=1)
    assert len(trainers) == 1, f"trained {len(trainers)} times"
    assert seen == [[int(trainers[0])]] * 3  # the other two waited, then loaded the trainer's checkpoint


def test_loaders_racing_a_retrain_never_delete_a_good_checkpoint_nor_train_twice(tmp_path):
    import torch

    from spatialkit.common import checkpoints

    store = tmp_path / "store"
    _, _, folder = checkpoints.load_or_train("fake", {"a": 1}, "v1", lambda: ({"w": torch.arange(6.0)}, {"trained_by": 0}),
                                             root=store, log=lambda m: None)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # corrupt: someone must retrain while others load
    seen, trainers = _ckpt_processes(tmp_path, 3, loops=30)
    assert len(trainers) == 1, f"retrained {len(trainers)} times"
    assert all(s == [int(trainers[0])] for s in seen), seen  # nobody ever loaded a half-written checkpoint
    assert checkpoints.load(folder, {"a": 1}, checkpoints.config_key({"a": 1}, "v1")) is not None


@pytest.mark.parametrize("manifest", ['{"files": null, "key": "K"}', '[]', '{"key": "K"}', 'not json {',
                                      '{"files": {"model.safetensors": 5}, "key": "K"}', '{"files": "x", "key": "K"}',
                                      'null'])
def test_malformed_manifest_is_corrupt_and_retrained_or_one_line_error(tmp_path, manifest):
    import torch

    from spatialkit.common import checkpoints
    from spatialkit.common.checkpoints import CheckpointError

    def train():
        return {"w": torch.ones(2)}, {}

    _, _, folder = checkpoints.load_or_train("fake", {"a": 1}, "v1", train, root=tmp_path, log=lambda m: None)
    key = checkpoints.config_key({"a": 1}, "v1")
    (folder / "manifest.json").write_text(manifest.replace("K", key))
    with pytest.raises(CheckpointError, match="corrupt") as info:
        checkpoints.load_or_train("fake", {"a": 1}, "v1", train, root=tmp_path, allow_train=False)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and f"delete {folder} or allow training" in message
    logged = []
    state, _, _ = checkpoints.load_or_train("fake", {"a": 1}, "v1", train, root=tmp_path, log=logged.append)
    assert torch.equal(state["w"], torch.ones(2)) and "retraining" in logged[0]
    assert checkpoints.load(folder, {"a": 1}, key) is not None


def test_unwritable_store_is_one_line(tmp_path):
    import torch

    from spatialkit.common import checkpoints
    from spatialkit.common.checkpoints import CheckpointError

    (tmp_path / "checkpoints").write_text("a file where the store's folder should be")
    with pytest.raises(CheckpointError, match=r"^checkpoint store .* is not writable \(.*\); set SPATIALKIT_CACHE"):
        checkpoints.load_or_train("fake", {"a": 1}, "v1", lambda: ({"w": torch.ones(2)}, {}), root=tmp_path)


def test_organism_key_holds_torch_thread_count():
    import torch

    from spatialkit.models.organism import preset, store

    cfg, before = preset("smoke"), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = store.checkpoint_folder(cfg)
        torch.set_num_threads(2)
        two = store.checkpoint_folder(cfg)
    finally:
        torch.set_num_threads(before)
    assert one != two and store.checkpoint_config(cfg)["runtime"]["torch"] == torch.__version__


ORGANISM_CHILD = r'''
import os, pathlib, sys, time
from spatialkit.models.organism import store, preset
real = store.train
def counted(*args, **kwargs):
    with open(sys.argv[2], "a") as f:
        f.write(f"{os.getpid()}\n")
    return real(*args, **kwargs)
store.train = counted
start = pathlib.Path(sys.argv[1])
while not start.exists():
    time.sleep(0.02)
print(store.load_or_train(preset("smoke"), progress=False).metrics["state_sha256"])
'''


def test_organism_smoke_trained_once_by_three_processes(tmp_path):
    script, start, log = tmp_path / "organism_child.py", tmp_path / "start", tmp_path / "trained.log"
    script.write_text(ORGANISM_CHILD)
    env = {**os.environ, "SPATIALKIT_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, str(script), str(start), str(log)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    time.sleep(1.0)
    start.write_text("go")
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert len(log.read_text().split()) == 1
    assert len({o[0].strip().splitlines()[-1] for o in outs}) == 1  # the same weights for all three


# --- 3. paths resolve against the caller's directory, checked before any kernel ------------------------

def test_relative_model_cache_and_root_resolve_against_the_callers_directory(root, tmp_path):
    work = tmp_path / "work"
    (work / "my_model").mkdir(parents=True)
    (work / "my_model" / "config.json").write_text("{}")
    rel_root = os.path.relpath(root, work)
    proc = cli(root, "run", "--profile", "smoke", "--only", NB03, "-p", "model", "./my_model", cwd=work,
               env={"SPATIALKIT_ROOT": rel_root, "SPATIALKIT_CACHE": "cache"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = dict(line.split("=", 1) for line in texts(root / "book" / "executed" / f"{NB03}.ipynb").splitlines()
                   if "=" in line)
    assert printed["MODEL"] == str((work / "my_model").resolve())
    assert printed["CACHE"] == str(work / "cache") and printed["ROOT"] == str(root)
    scratch = Path(printed["SCRATCH"])
    assert scratch.is_relative_to(root / "book" / "executed" / ".running") and not scratch.exists()
    assert not (root / "notebooks" / "cache").exists()


@pytest.mark.parametrize("value, match", [
    ("./nope", r"parameter 'model' = './nope': .*/work/nope does not exist \(relative paths are read from the "
               r"current directory"),
    ("a_file", r"parameter 'model' = 'a_file': .*/work/a_file is not a folder"),
    ("empty", r"parameter 'model' = 'empty': folder .*/work/empty has no config.json \(not a model folder\)"),
])
def test_bad_model_path_fails_before_any_kernel(root, tmp_path, value, match):
    work = tmp_path / "work"
    (work / "empty").mkdir(parents=True)
    (work / "a_file").write_text("")
    proc = cli(root, "run", "--profile", "smoke", "--only", NB03, "-p", "model", value, cwd=work)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    import re
    assert re.search(match, lines[0]), lines[0]
    assert not (root / "book" / "executed").exists(), "no kernel may have started"


def test_hub_ids_and_choices_pass_path_resolution_unchanged(tmp_path):
    from spatialkit.common.params import Param, ParameterError

    model = catalog.MODEL
    assert runner.resolve_path_param(model, "tiny", "nb", tmp_path) == "tiny"
    assert runner.resolve_path_param(model, "Qwen/Qwen2-VL-2B-Instruct", "nb", tmp_path) == "Qwen/Qwen2-VL-2B-Instruct"
    data = Param("data", str, "", choices=("",), allow_other=True, path=True)  # a plain path: never a hub id
    (tmp_path / "whatsup" / "data").mkdir(parents=True)
    assert runner.resolve_path_param(data, "", "nb", tmp_path) == ""
    assert runner.resolve_path_param(data, "whatsup/data", "nb", tmp_path) == str((tmp_path / "whatsup" / "data").resolve())
    with pytest.raises(ParameterError, match=r"^nb: parameter 'data' = 'org/name': .*/org/name does not exist \(rel"):
        runner.resolve_path_param(data, "org/name", "nb", tmp_path)


# --- 4. nothing to run is an error ---------------------------------------------------------------

@pytest.mark.parametrize("case", ["root-missing", "only-missing", "no-notebooks"])
def test_nothing_to_run_exits_non_zero_with_one_line(root, case):
    env, only = {}, [NB00]
    if case == "root-missing":
        env = {"SPATIALKIT_ROOT": "/nonexistent"}
    elif case == "only-missing":
        only = [NB03, NB00]
        (root / "notebooks" / f"{NB03}.ipynb").unlink()
    else:
        only = []
        for nb in (root / "notebooks").iterdir():
            nb.unlink()
    proc = cli(root, "run", "--profile", "smoke", *(["--only", *only] if only else []), env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
    expected = {"root-missing": "SPATIALKIT_ROOT=/nonexistent: /nonexistent/notebooks is not a folder",
                "only-missing": f"--only {NB03}: ", "no-notebooks": "nothing to run: "}[case]
    assert lines[0].startswith("spatialkit: error: " + expected), lines[0]
    assert "0 notebook(s)" not in proc.stdout


# --- 5. the failing cell, as the user finds it --------------------------------------------------------

def test_failing_cell_is_named_by_its_source_index_and_id(root):
    proc = cli(root, "run", "--profile", "smoke", "--only", NB00, "-p", "n_scenes", "66")
    source = json.loads((root / "notebooks" / f"{NB00}.ipynb").read_text())["cells"]
    assert "raise ValueError" in "".join(source[3]["source"])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0] == (f"spatialkit: error: {NB00}: cell 3 (id {source[3]['id']}) failed: "
                        "ValueError: asked to fail with n_scenes=66")
    failed = json.loads((root / "book" / "executed" / "failed" / f"{NB00}.ipynb").read_text())["cells"]
    [errored] = [c for c in failed if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert errored["id"] == source[3]["id"]


# --- 6. one line, not a traceback ------------------------------------------------------------------

def test_sigint_is_one_line_and_publishes_nothing(root, tmp_path):
    marker = tmp_path / "started"
    proc = spawn(root, "run", "--profile", "smoke", "--only", NB00, "-p", "n_scenes", "99",
                 env={"RELIABILITY_MARKER": str(marker)})
    wait_for(marker.exists, what="the notebook to start")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=180)  # the kernel's shutdown is slow on a loaded machine
    lines = stderr.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1, stderr
    assert lines[0].startswith("spatialkit: interrupted; nothing was published")
    out = root / "book" / "executed"
    assert not (out / f"{NB00}.ipynb").exists() and not (out / f"{NB00}.key").exists()
    assert list((out / ".running").iterdir()) == []


def test_unwritable_output_folder_is_one_line(root):
    out = root / "book" / "executed"
    out.mkdir(parents=True)
    if os.geteuid() == 0:  # root ignores permission bits: a file where the lock folder goes fails the same way
        (out / ".locks").write_text("")
    else:
        out.chmod(0o555)
    try:
        proc = cli(root, "run", "--profile", "smoke", "--only", NB00)
    finally:
        out.chmod(0o755)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"spatialkit: error: {NB00}: cannot write into {out}: ")
    assert "make the folder writable" in lines[0]
