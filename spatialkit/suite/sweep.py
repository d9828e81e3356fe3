"""``spatialkit sweep``: one notebook over a grid of parameter sets, each point executed into its own folder.

    spatialkit sweep 04_adaptvis -p organism '[smoke, smoke_loud]' -p seed '[0, 1]' --profile smoke
    spatialkit sweep --file sweep.yml                      # the same, written down (see read_sweep_file)
    spatialkit sweep ... --executor dask --scheduler tcp://HOST:8786   # on a Dask cluster (the cluster extra)
    spatialkit results runs/SWEEP [--plot DIR]             # one table (grid parameters as columns), plots

The pipeline, in order:

1. :func:`plan_sweep` turns axes (``-p NAME VALUES``, a sweep file's ``grid:``) into the cartesian grid and
   validates every point with ``runner.plan`` before anything runs; a bad value is one line naming the point
   and the parameter. Each point's folder is ``runs/SWEEP/NOTEBOOK/<hash>/``, the hash being the notebook's
   name and the point's full validated parameters (:func:`point_hash`).
2. :func:`run_sweep` writes ``params.json`` into each point's folder, skips the points whose executed copy is
   fresh (the runner's own cache key: notebook source + parameters + code fingerprint), and hands the others to
   an executor: ``local`` (a process pool, one worker per core, or per GPU for a notebook on cuda) or ``dask``
   (Dask distributed: a LocalCluster started here, or the scheduler at ``--scheduler`` /
   ``$DASK_SCHEDULER_ADDRESS``, e.g. one that dask-jobqueue started on SLURM). A worker runs
   :func:`execute_point`, i.e. ``runner.execute`` into the point's folder, under the runner's per-notebook lock.
3. Faults: a failing point leaves ``status.json`` (its one-line error) and the runner's ``failed/`` copy, and the
   others go on; a killed sweep re-run executes exactly the points without a fresh key (finished ones are cached,
   a half-run point's ``.running/`` leftovers are removed by the runner), and a failed point is retried.

Workers on other machines need only the repository (the same commit: the notebook's bytes and the code
fingerprint are checked, a mismatch fails that point with one line) and the data paths (path parameters are
resolved to absolute paths on the submitting machine). When a worker cannot see the point's folder (no shared
file system) it executes into a temporary folder and sends the files back; the submitter publishes them.

List-valued parameters (e.g. 00's ``organisms``): an axis of a list parameter is a list of lists
(``-p organisms '[[smoke], [smoke, smoke_loud]]'``: two points); a flat list is one fixed value. A scalar
parameter's list is an axis, its scalar a fixed value. A sweep file says it unambiguously: ``grid:`` holds only
axes (each a list of values), ``params:`` only fixed values, ``points:`` explicit parameter sets.

This module imports no model code; matplotlib is imported inside :func:`plot` only, Dask inside the dask executor.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from spatialkit.common.locks import file_lock
from spatialkit.common.params import NotebookSpec, ParameterError
from spatialkit.suite import catalog, runner

EXECUTORS = ("local", "dask")
PARAMS_FILE = "params.json"  # a point's notebook, hash, grid values and full parameters (written before it runs)
STATUS_FILE = "status.json"  # a point's last outcome: ok | cached | failed, with the error and seconds
MANIFEST = "sweep.json"  # runs/SWEEP/sweep.json: the last invocation's notebook, axes and points
FILE_KEYS = ("notebook", "name", "profile", "grid", "params", "points")
CLUSTER_EXTRA = "pip install 'spatialkit[cluster]'"


def default_out(root: Path | None = None) -> Path:
    """``runs/`` in the repository root (beside book/)."""
    return (runner.default_root() if root is None else Path(root)) / "runs"


# --- planning: axes -> validated points ------------------------------------------------------------

@dataclass
class Point:
    """One parameter set of the grid, validated."""

    index: int  # from 1, in grid order
    varied: dict[str, Any]  # the point's values of the swept parameters (validated)
    job: runner.Job
    hash: str
    folder: Path

    def label(self) -> str:
        return describe(self.varied) or self.hash


@dataclass
class Sweep:
    name: str
    notebook: str
    profile: str
    folder: Path  # runs/SWEEP
    axes: dict[str, list]  # name -> values, as given
    fixed: dict[str, Any]
    points: list[Point] = field(default_factory=list)


def describe(values: Mapping[str, Any]) -> str:
    """'organism=smoke, seed=1' (lists in YAML's flow style)."""
    def text(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=10_000).strip().removesuffix("...").strip() \
            if isinstance(v, (list, dict)) else str(v)
    return ", ".join(f"{k}={text(v)}" for k, v in values.items())


def point_hash(notebook: str, params: Mapping[str, Any]) -> str:
    """10 hex digits naming a notebook and its full validated parameters: the point's folder name."""
    blob = json.dumps({"notebook": notebook, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def split_cli(pairs: Sequence[Sequence[str]], spec: NotebookSpec) -> tuple[dict[str, list], dict[str, Any]]:
    """``-p NAME VALUE`` pairs (VALUE read as YAML) into (axes, fixed values).

    A list given to a scalar parameter is an axis; to a list parameter, an axis only when every item is itself a
    list (``[[a], [a, b]]``), else one fixed value. A parameter given twice: the last one counts.
    """
    axes: dict[str, list] = {}
    fixed: dict[str, Any] = {}
    kinds = {p.name: p.kind for p in spec.params}
    for name, text in pairs:
        value = runner.parse_value(text)
        axes.pop(name, None)
        fixed.pop(name, None)
        if isinstance(value, list) and (kinds.get(name) is not list or (value and all(
                isinstance(v, list) for v in value))):
            axes[name] = value
        else:
            fixed[name] = value
    return axes, fixed


def read_sweep_file(path: Path | str) -> dict[str, Any]:
    """A sweep file (YAML)::

        notebook: 04_adaptvis        # optional when given on the command line
        name: organisms-x-seeds      # optional: the sweep's folder under runs/ (default: the file's stem)
        profile: smoke               # optional (default: quick)
        grid:                        # axes: each a list of values (a list parameter: a list of lists)
          organism: [smoke, smoke_loud]
          seed: [0, 1]
        params:                      # fixed values, one each
          n_items: 60
        points:                      # optional explicit parameter sets, each crossed with the grid
          - {alphas: [0.5, 2.0]}
          - {alphas: [1.0]}
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ParameterError(f"--file {path}: cannot read it ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ParameterError(f"--file {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ParameterError(f"--file {path}: expected a mapping with keys {', '.join(FILE_KEYS)}")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise ParameterError(f"--file {path}: unknown key(s) {unknown}; allowed: {', '.join(FILE_KEYS)}")
    for key in ("grid", "params"):
        if not isinstance(data.get(key) or {}, dict):
            raise ParameterError(f"--file {path}: '{key}' must map parameter names to values")
    for name, values in (data.get("grid") or {}).items():
        if not isinstance(values, list):
            raise ParameterError(f"--file {path}: grid '{name}' = {values!r} must be a list of values "
                                 "(a fixed value goes under params:)")
    points = data.get("points")
    if points is not None and not (isinstance(points, list) and all(isinstance(p, dict) for p in points)):
        raise ParameterError(f"--file {path}: 'points' must be a list of parameter mappings")
    data.setdefault("name", path.stem)
    return data


def grid(axes: Mapping[str, Sequence], points: Sequence[Mapping[str, Any]] | None = None) -> list[dict]:
    """The cartesian product of ``axes`` (first axis slowest), each crossed with every explicit point."""
    combos = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    return [{**p, **c} for p in (points or [{}]) for c in combos]


def plan_sweep(
    notebook: str,
    axes: Mapping[str, Sequence],
    fixed: Mapping[str, Any] | None = None,
    points: Sequence[Mapping[str, Any]] | None = None,
    *,
    profile: str = "quick",
    name: str | None = None,
    out: Path | None = None,
    root: Path | None = None,
    notebooks: Mapping[str, NotebookSpec] | None = None,
    profiles_file: Path = runner.PROFILES_FILE,
) -> Sweep:
    """Validate every point (``runner.plan`` each) before anything runs. Raises ParameterError (one line)."""
    notebooks = catalog.NOTEBOOKS if notebooks is None else notebooks
    if notebook not in notebooks:
        raise ParameterError(f"sweep: unknown notebook '{notebook}'; known: {', '.join(notebooks)}")
    spec = notebooks[notebook]
    axes, fixed = {k: list(v) for k, v in axes.items()}, dict(fixed or {})
    declared = [p.name for p in spec.params]
    for key in [*axes, *fixed, *(k for p in points or () for k in p)]:
        if key not in declared:
            raise ParameterError(f"sweep: unknown parameter '{key}' for notebook {notebook}; allowed names: "
                                 f"{', '.join(sorted(declared))}")
    for key, values in axes.items():
        if not values:
            raise ParameterError(f"sweep: -p {key} []: no values to sweep over")
    combos = grid(axes, points)
    name = name or "-".join([*axes, *({k for p in points or () for k in p} - set(axes))]) or "sweep"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*", name):
        raise ParameterError(f"--name {name!r}: use letters, digits and . _ + = - (it is a folder name)")
    folder = (default_out(root) if out is None else Path(out)) / name
    planned: list[Point] = []
    seen: set[str] = set()
    for i, combo in enumerate(combos, 1):
        try:
            [job] = runner.plan(profile, [notebook], {**fixed, **combo}, root=root, notebooks=notebooks,
                                profiles_file=profiles_file)
        except ParameterError as err:
            raise ParameterError(f"sweep point {i}/{len(combos)} ({describe(combo) or 'fixed values'}): "
                                 f"{err}") from None
        h = point_hash(notebook, job.params)
        if h in seen:
            continue  # two grid values that validate to the same parameters: one point
        seen.add(h)
        varied = {k: job.params[k] for k in combo}
        planned.append(Point(len(planned) + 1, varied, job, h, folder / notebook / h))
    return Sweep(name, notebook, profile, folder, axes, fixed, planned)


# --- running ---------------------------------------------------------------------------------------

@dataclass
class PointResult:
    point: Point
    status: str  # "ok" | "cached" | "failed"
    seconds: float = 0.0
    error: str = ""
    host: str = ""


def _write_json(path: Path, data: Any) -> None:
    runner._write_atomic(path, (json.dumps(data, indent=1, default=str) + "\n").encode())


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def default_workers(points: Sequence[Point]) -> int:
    """One per GPU when a point runs on cuda/auto and GPUs are visible, else one per core."""
    gpus = visible_gpus()
    if gpus and any(p.job.params.get("device") in ("cuda", "auto") for p in points):
        return len(gpus)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """The GPU ids this process may use ($CUDA_VISIBLE_DEVICES, else ``nvidia-smi -L``); no torch import."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    import subprocess  # lazy: the CLI starts without it

    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def run_sweep(
    sweep: Sweep,
    *,
    executor: str = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    gpus_per_point: float = 0,
    force: bool = False,
    pkg_hash: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[PointResult]:
    """Execute the sweep's stale points; returns one result per point, in grid order. Never raises for a failing
    point (its error is in the result, its status.json and the table). ``pkg_hash``: the code fingerprint for
    the cache key (default: computed here, and every worker checks its own checkout gives the same one)."""
    if executor not in EXECUTORS:
        raise ParameterError(f"--executor {executor!r}: one of {', '.join(EXECUTORS)}")
    if workers is not None and workers < 1:
        raise ParameterError(f"--workers {workers}: must be at least 1")
    if not sweep.points:
        raise ParameterError("sweep: no points")
    sweep.folder.mkdir(parents=True, exist_ok=True)
    path = sweep.points[0].job.path
    verify = pkg_hash is None
    pkg_hash = runner.package_hash(path) if pkg_hash is None else pkg_hash
    _write_json(sweep.folder / MANIFEST, {
        "name": sweep.name, "notebook": sweep.notebook, "profile": sweep.profile, "axes": sweep.axes,
        "fixed": sweep.fixed, "points": {p.hash: p.varied for p in sweep.points},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    results: dict[str, PointResult] = {}
    pending: list[Point] = []
    for p in sweep.points:
        p.folder.mkdir(parents=True, exist_ok=True)
        params_file = {"notebook": sweep.notebook, "hash": p.hash, "sweep": sweep.name, "profile": sweep.profile,
                       "grid": p.varied, "params": p.job.params}
        if not (p.folder / PARAMS_FILE).is_file() or json.loads((p.folder / PARAMS_FILE).read_text()) != \
                json.loads(json.dumps(params_file, default=str)):
            _write_json(p.folder / PARAMS_FILE, params_file)
        if not force and runner.is_fresh(p.job, p.folder, runner.cache_key(p.job, pkg_hash)):
            results[p.hash] = PointResult(p, "cached")
            _write_json(p.folder / STATUS_FILE, _status(results[p.hash], previous=p.folder / STATUS_FILE))
        else:
            pending.append(p)
    n = len(sweep.points)
    echo(f"sweep {sweep.name}: {sweep.notebook}, {n} point(s) ({len(results)} up to date), into {sweep.folder}")
    bar = _progress(n, len(results), progress)
    try:
        if pending:
            sha = _sha(path)
            root = path.parent.parent
            tasks = {p.hash: {"notebook": sweep.notebook, "path": str(p.job.path),
                              "relpath": str(p.job.path.relative_to(root)), "notebook_sha": sha,
                              "params": p.job.params, "folder": str(p.folder.resolve()), "hash": p.hash,
                              "pkg_hash": pkg_hash, "verify": verify, "force": force} for p in pending}
            by_hash = {p.hash: p for p in pending}

            def done(h: str, outcome: dict) -> None:
                p = by_hash[h]
                if outcome.get("files") is not None:
                    _publish_shipped(p, outcome["files"], outcome["status"])
                r = PointResult(p, outcome["status"], outcome.get("seconds", 0.0), outcome.get("error", ""),
                                outcome.get("host", ""))
                results[h] = r
                _write_json(p.folder / STATUS_FILE, _status(r))
                if r.status == "failed":
                    _note(bar, echo, f"point {p.index}/{n} ({p.label()}) FAILED: {r.error}")
                _advance(bar, results)

            if executor == "local":
                _run_local(tasks, workers or min(len(pending), default_workers(pending)), done)
            else:
                _run_dask(tasks, workers or min(len(pending), default_workers(pending)), scheduler,
                          gpus_per_point, done)
    finally:
        if bar is not None:
            bar.close()
    ordered = [results[p.hash] for p in sweep.points if p.hash in results]
    counts = {s: sum(r.status == s for r in ordered) for s in ("ok", "cached", "failed")}
    echo(f"sweep {sweep.name}: {n} point(s): {counts['ok']} executed, {counts['cached']} up to date, "
         f"{counts['failed']} failed; table: spatialkit results {sweep.folder}")
    return ordered


def _status(r: PointResult, previous: Path | None = None) -> dict:
    data = {"status": r.status, "error": r.error, "seconds": round(r.seconds, 3), "host": r.host,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if r.status == "cached" and previous is not None and previous.is_file():
        try:  # keep when and where it really ran
            old = json.loads(previous.read_text())
            if old.get("status") in ("ok", "cached"):
                data.update({k: old[k] for k in ("seconds", "host", "finished") if k in old})
        except ValueError:
            pass
    return data


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # lazy: the CLI starts without it

    return tqdm(total=total, initial=initial, unit="point", desc="sweep", file=sys.stderr, dynamic_ncols=True)


def _advance(bar, results: Mapping[str, PointResult]) -> None:
    if bar is None:
        return
    counts = {s: sum(r.status == s for r in results.values()) for s in ("ok", "cached", "failed")}
    bar.set_postfix(counts, refresh=False)
    bar.update(1)


def _note(bar, echo, line: str) -> None:
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        echo(line)


def _failed(message: str) -> dict:
    return {"status": "failed", "error": message, "seconds": 0.0, "host": socket.gethostname(), "files": None}


# --- executors ------------------------------------------------------------------------------------

_GPU_QUEUE = None


def _local_worker_init(gpu_queue) -> None:
    """A local worker: its own GPU (when there are GPUs to hand out); the kernel it starts inherits it."""
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()


def _run_local(tasks: Mapping[str, dict], workers: int, done: Callable[[str, dict], None]) -> None:
    """A process pool on this machine (fork from the light CLI; spawn once torch is loaded, e.g. under pytest)."""
    import multiprocessing  # lazy: the CLI starts without it
    from concurrent.futures import ProcessPoolExecutor, as_completed  # lazy: the CLI starts without it

    method = "fork" if sys.platform == "linux" and "torch" not in sys.modules else "spawn"
    context = multiprocessing.get_context(method)
    gpus = visible_gpus()
    queue = None
    if gpus and workers <= len(gpus) and any(t["params"].get("device") in ("cuda", "auto") for t in tasks.values()):
        queue = context.Queue()
        for g in gpus[:workers]:
            queue.put(g)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_local_worker_init,
                             initargs=(queue,)) as pool:
        futures = {pool.submit(execute_point, task): h for h, task in tasks.items()}
        try:
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except Exception as err:  # a worker died (killed, out of memory): that point only
                    outcome = _failed(f"worker lost: {type(err).__name__}: {err}")
                done(futures[future], outcome)
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def dask_client(scheduler: str | None, workers: int):
    """(client, cluster): the scheduler at ``scheduler`` / $DASK_SCHEDULER_ADDRESS, else a LocalCluster of
    ``workers`` processes with one thread each (cluster is None for an external scheduler)."""
    try:
        from dask.distributed import Client, LocalCluster  # lazy: the CLI starts without it
    except ImportError:
        raise ParameterError(f"--executor dask needs Dask distributed: {CLUSTER_EXTRA}") from None
    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        try:
            return Client(address, timeout="30s"), None
        except OSError as err:
            raise ParameterError(f"--scheduler {address}: cannot connect ({err})") from None
    import logging  # lazy: the CLI starts without it

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _run_dask(tasks: Mapping[str, dict], workers: int, scheduler: str | None, gpus_per_point: float,
              done: Callable[[str, dict], None]) -> None:
    """Dask distributed: one task per point (``resources={'GPU': g}`` with ``--gpus-per-point g``: start the
    workers with ``--resources GPU=1``). A worker that dies takes its point to Dask's retries, then to failed."""
    client, cluster = dask_client(scheduler, workers)
    try:
        from dask.distributed import as_completed  # lazy: the CLI starts without it

        resources = {"GPU": gpus_per_point} if gpus_per_point else None
        futures = {client.submit(execute_point, task, key=f"spatialkit-sweep-{h}-{time.time_ns()}", pure=False,
                                 resources=resources): h for h, task in tasks.items()}
        try:
            for future in as_completed(list(futures)):
                try:
                    outcome = future.result()
                except Exception as err:  # KilledWorker, a lost connection ...
                    outcome = _failed(f"dask: {type(err).__name__}: {err}")
                done(futures[future], outcome)
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --- the worker's side --------------------------------------------------------------------------

_ONE_AT_A_TIME = threading.Lock()  # runner.execute changes os.environ and fds 1/2: one notebook per process


def execute_point(task: Mapping[str, Any]) -> dict:
    """Execute one point (in a worker, here or on another machine). Returns plain data: status, error, seconds,
    host, and ``files`` (relative path -> bytes) when the point's folder is not visible here."""
    host = socket.gethostname()
    try:
        with _ONE_AT_A_TIME:
            return _execute_point(task, host)
    except Exception as err:  # never let one point's surprise stop the sweep
        return _failed(f"{task.get('notebook')}: {type(err).__name__}: {err}")


def _execute_point(task: Mapping[str, Any], host: str) -> dict:
    name = task["notebook"]
    path = Path(task["path"])
    if not (path.is_file() and _sha(path) == task["notebook_sha"]):
        own = runner.default_root() / task["relpath"]  # another machine: its own checkout
        if not (own.is_file() and _sha(own) == task["notebook_sha"]):
            return _failed(f"worker {host}: {own} is missing or differs from the submitter's {task['relpath']}; "
                           "check out the same commit there (or set SPATIALKIT_ROOT to that checkout)")
        path = own
    if task.get("verify") and runner.package_hash(path) != task["pkg_hash"]:
        return _failed(f"worker {host}: its spatialkit code (fingerprint {runner.package_hash(path)}) differs from "
                       f"the submitter's ({task['pkg_hash']}); check out the same commit there")
    job = runner.Job(name, path, dict(task["params"]))
    folder = Path(task["folder"])
    try:
        shared = json.loads((folder / PARAMS_FILE).read_text()).get("hash") == task["hash"]
    except (OSError, ValueError):
        shared = False
    echo = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if shared:
        try:
            r = runner.execute(job, folder, force=task.get("force", False), pkg_hash=task["pkg_hash"], echo=echo)
        except runner.RunError as err:
            return _failed(str(err))
        return {"status": r.status, "error": r.error, "seconds": r.seconds, "host": host, "files": None}
    with tempfile.TemporaryDirectory(prefix=f"spatialkit-sweep-{task['hash']}.") as tmp:
        try:
            r = runner.execute(job, Path(tmp), force=True, pkg_hash=task["pkg_hash"], echo=echo)
        except runner.RunError as err:
            return _failed(str(err))
        files = {str(f.relative_to(tmp)): f.read_bytes() for f in sorted(Path(tmp).rglob("*"))
                 if f.is_file() and not ({".locks", ".running"} & set(f.relative_to(tmp).parts))}
    return {"status": r.status, "error": r.error, "seconds": r.seconds, "host": host, "files": files}


def _publish_shipped(point: Point, files: Mapping[str, bytes], status: str) -> None:
    """Files a worker without our file system sent back, published like runner.execute does: under the
    point's lock, the key removed first and written last; a failure removes the stale copy."""
    name, folder = point.job.name, point.folder
    key = runner.key_path(folder, name)
    with file_lock(runner.lock_path(folder, name)):
        key.unlink(missing_ok=True)
        if status == "failed":
            (folder / f"{name}.ipynb").unlink(missing_ok=True)
            runner.results_path(folder, name).unlink(missing_ok=True)
        for rel, data in files.items():
            if Path(rel) != Path(key.name):
                runner._write_atomic(folder / rel, data)
        if status != "failed" and key.name in files:
            runner._write_atomic(key, files[key.name])


# --- results: one table over the points, one plot per claim --------------------------------------------

def is_sweep_folder(folder: Path | str) -> bool:
    """runs/SWEEP (points at NOTEBOOK/HASH/params.json) or runs/SWEEP/NOTEBOOK (points at HASH/params.json)."""
    folder = Path(folder)
    return folder.is_dir() and (any(folder.glob(f"*/*/{PARAMS_FILE}")) or any(folder.glob(f"*/{PARAMS_FILE}")))


def load_points(folder: Path | str) -> list[dict]:
    """Every point under a sweep folder: params.json + status + results JSON (when it finished)."""
    folder = Path(folder)
    out = []
    for pfile in sorted([*folder.glob(f"*/*/{PARAMS_FILE}"), *folder.glob(f"*/{PARAMS_FILE}")]):
        try:
            params = json.loads(pfile.read_text())
        except (OSError, ValueError):
            continue
        point = pfile.parent
        name = params.get("notebook", point.parent.name)
        try:
            status = json.loads((point / STATUS_FILE).read_text())
        except (OSError, ValueError):
            status = {}
        fresh = (point / f"{name}.ipynb").is_file() and runner.key_path(point, name).is_file()
        state = "ok" if fresh else ("failed" if status.get("status") == "failed" else "not run")
        try:
            results = json.loads(runner.results_path(point, name).read_text()) if fresh else {}
        except (OSError, ValueError):
            results = {}
        out.append({"notebook": name, "hash": params.get("hash", point.name), "folder": str(point),
                    "sweep": params.get("sweep", ""), "grid": params.get("grid") or {},
                    "params": params.get("params") or {}, "status": state,
                    "error": status.get("error", "") if state == "failed" else "",
                    "seconds": status.get("seconds"), "results": results})
    return out


def results_table(folders: Sequence[Path | str]):
    """The scorecard's Table over sweep folders: one row per point and claim and model, the grid parameters as
    columns; a failed point is one row with its error, a point that never finished says 'not run'."""
    from spatialkit.suite.scorecard import ScorecardError, Table  # lazy: the CLI starts without it

    points = []
    for folder in folders:
        found = load_points(folder)
        if not found:
            raise ScorecardError(f"{folder}: no sweep points (runs/SWEEP/NOTEBOOK/HASH/{PARAMS_FILE})")
        points += found
    axes: list[str] = []
    for p in points:
        axes += [k for k in p["grid"] if k not in axes]
    several = len({p["sweep"] for p in points}) > 1
    columns = (["sweep"] if several else []) + ["notebook", "point", *axes, "status", "claim", "model",
                                                "outcome", "measured"]
    if any(p["error"] for p in points):
        columns.append("error")
    rows, details = [], []
    for p in points:
        head = {"sweep": p["sweep"], "notebook": p["notebook"], "point": p["hash"],
                **{k: _cell(p["grid"].get(k, p["params"].get(k, "—"))) for k in axes}, "status": p["status"]}
        claims = [(c, model, m) for c in p["results"].get("claims", []) or []
                  for model, m in (c.get("models") or {}).items()]
        if not claims:
            rows.append({**head, "claim": "—", "model": "—", "outcome": "—", "measured": "—",
                         "error": p["error"] or ""})
            details.append({})
        for c, model, m in claims:
            rows.append({**head, "claim": c.get("claim", ""), "model": model or "—",
                         "outcome": m.get("outcome") or m.get("verdict", ""), "measured": m.get("measured", ""),
                         "error": ""})
            details.append({"estimate": m.get("estimate"), "verdict": m.get("verdict", "")})
    rows = [{c: r.get(c, "") for c in columns} for r in rows]
    return Table(columns, rows, [str(f) for f in folders], details, counted=["outcome"])


def _cell(value: Any) -> str:
    return describe({"": value})[1:] if isinstance(value, (list, dict)) else str(value)


def plot(folders: Sequence[Path | str], out_dir: Path | str) -> list[Path]:
    """One PNG per claim (and notebook) across the sweep's points: each model's estimate (mean, interval) per
    point, or its outcome where the claim has no numeric estimate. Returns the files written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: the CLI starts without it
    from matplotlib.figure import Figure  # lazy: the CLI starts without it

    from spatialkit.suite.scorecard import OUTCOMES  # lazy: the CLI starts without it

    points = [p for f in folders for p in load_points(f)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    claims: dict[tuple[str, str], list] = {}  # (notebook, claim) -> [(point label, model, record)]
    labels: dict[str, list[str]] = {}
    for p in points:
        label = describe(p["grid"]) or p["hash"]
        labels.setdefault(p["notebook"], [])
        if label not in labels[p["notebook"]]:
            labels[p["notebook"]].append(label)
        for c in p["results"].get("claims", []) or []:
            for model, m in (c.get("models") or {}).items():
                claims.setdefault((p["notebook"], c.get("claim", "")), []).append((label, model or "result", m))
    written = []
    for (notebook, claim), entries in claims.items():
        xs = labels[notebook]
        models = list(dict.fromkeys(model for _, model, _ in entries))
        numeric = any(isinstance(m.get("estimate"), dict) and m["estimate"].get("mean") is not None
                      for _, _, m in entries)
        fig = Figure(figsize=(max(5.0, 0.9 * len(xs) + 2.5), 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        width = 0.6 / max(1, len(models))
        for j, model in enumerate(models):
            offset = (j - (len(models) - 1) / 2) * width
            got = [(xs.index(label), m) for label, mod, m in entries if mod == model]
            if numeric:
                got = [(i, m["estimate"]) for i, m in got if isinstance(m.get("estimate"), dict)
                       and m["estimate"].get("mean") is not None]
                x = [i + offset for i, _ in got]
                mean = [e["mean"] for _, e in got]
                low = [e["mean"] - e.get("low", e["mean"]) if e.get("low") is not None else 0 for _, e in got]
                high = [e.get("high", e["mean"]) - e["mean"] if e.get("high") is not None else 0 for _, e in got]
                ax.errorbar(x, mean, yerr=[low, high], fmt="o", capsize=3, label=model)
            else:
                ax.plot([i + offset for i, _ in got],
                        [OUTCOMES.index(m.get("outcome")) if m.get("outcome") in OUTCOMES else len(OUTCOMES)
                         for _, m in got], "o", label=model)
        if not numeric:
            ax.set_yticks(range(len(OUTCOMES) + 1), [*OUTCOMES, "other"])
        else:
            ax.set_ylabel("estimate (mean, interval)")
        ax.set_xlim(-0.5, len(xs) - 0.5)
        ax.set_xticks(range(len(xs)), xs, rotation=30 if len(xs) > 3 else 0, ha="right" if len(xs) > 3 else "center")
        title = f"{notebook}: {claim}"
        ax.set_title(textwrap.fill(title if len(title) <= 240 else title[:239] + "…",
                                   width=int(fig.get_figwidth() * 13)), fontsize=9)
        if len(models) > 1 or models != ["result"]:
            ax.legend(fontsize=7)
        slug = re.sub(r"[^A-Za-z0-9]+", "_", claim).strip("_")[:60] or "claim"
        path = out_dir / f"{notebook}__{slug}.png"
        if path in written:  # two claims sharing their first 60 characters
            path = out_dir / f"{notebook}__{slug}_{len(written)}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written
