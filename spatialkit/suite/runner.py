"""Execute the suite's notebooks with papermill, with a cache that skips up-to-date executions.

The pipeline, in order:

1. ``plan`` turns a profile (``profiles.yml``), an ``--only`` selection and ``-p`` overrides into
   validated parameters per notebook. It imports neither torch nor papermill, so a bad value is
   reported in well under a second.
2. ``execute`` runs one notebook into ``book/executed/NAME.ipynb``; the cache key (notebook source,
   parameters, package version and sources) is written beside it, atomically, only after success.
   A failing notebook's partial copy goes to ``book/executed/failed/`` and never into the book.
3. ``run`` does both for every selected notebook and prints one progress line per notebook.

Concurrency and interruption: ``execute`` holds ``book/executed/.locks/NAME.lock`` (flock) from the
freshness check to the key write, so two runs of one notebook never interleave (the second waits, or with
``wait=False`` fails with one line). Each run executes into its own folder ``.running/NAME.XXXX/`` (the
notebook, plus ``tmp/`` exported to the kernel as ``$SPATIALKIT_RUN_TMP``), removed when the run ends
however it ends; a killed run's folder is removed by the next run of that notebook. Only the run's own
file is ever moved into place, and the key is removed before and written after that move.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

import spatialkit
from spatialkit.common.results import RESULTS_ENV  # one name for the runner, setup() and claims tables
from spatialkit.suite import catalog, nbimport, zygote
from spatialkit.common.locks import LockBusy, file_lock
from spatialkit.common.params import NotebookSpec, Param, ParameterError

PACKAGE_DIR = Path(spatialkit.__file__).resolve().parent
PROFILES_FILE = PACKAGE_DIR / "suite" / "profiles.yml"
PROFILES = ("quick", "full", "smoke")  # quick = the notebooks' own defaults (CPU)
KERNEL = "python3"
# ipykernel only picks its inline (PNG) backend when MPLBACKEND is unset; a caller's MPLBACKEND=Agg
# (tests, CI) would otherwise leave every executed notebook without figures.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# papermill waits 60 s for a kernel to start by default; on a loaded 2-core machine (the test suite's two workers,
# each starting kernels while others import torch) a start took longer once and failed a notebook that was fine
KERNEL_START_TIMEOUT = 600
# Starting a kernel, jupyter_client picks free TCP ports and hands them to the kernel, which binds them a moment
# later; a kernel started meanwhile by another process (parallel runs, the test suite's workers) can take one
# first, and the new kernel dies before it answers ("Address already in use"). Nothing has run yet then, so the
# run starts again with fresh ports, up to this many times in all.
KERNEL_START_ATTEMPTS = 3
RUN_TMP_ENV = "SPATIALKIT_RUN_TMP"  # the kernel's scratch folder (spatialkit.suite.notebook.run_tempdir)
PATH_ENV = ("SPATIALKIT_ROOT", "SPATIALKIT_CACHE")  # made absolute (caller's cwd) before a kernel starts
# "org/name" on the Hugging Face hub (a value that is no existing path is taken as one when it looks like it)
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


class RunError(RuntimeError):
    """A notebook failed. ``str(err)`` names the notebook and the failing cell."""


def default_root() -> Path:
    """The repository root: $SPATIALKIT_ROOT (relative: to the current directory), else the folder above the
    (editable) package, else cwd."""
    if os.environ.get("SPATIALKIT_ROOT"):
        return Path(os.environ["SPATIALKIT_ROOT"]).expanduser().resolve()
    above = PACKAGE_DIR.parent
    if (above / "notebooks").is_dir():
        return above
    return Path.cwd()


# --- planning: profiles + overrides -> validated parameters (no heavy imports) --------------------

def parse_value(text: str) -> Any:
    """A ``-p`` value, read as a YAML scalar or list: ``5`` -> 5, ``[1, 2]`` -> [1, 2], ``abc`` -> 'abc'."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not valid YAML: keep the raw string; the parameter's type check decides


def load_profiles(path: Path = PROFILES_FILE, notebooks: Mapping[str, NotebookSpec] | None = None) -> dict:
    """Read the profiles file and check every notebook and parameter in it against the catalog."""
    notebooks = catalog.NOTEBOOKS if notebooks is None else notebooks
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ParameterError(f"{path}: expected a mapping with keys {', '.join(PROFILES)}")
    unknown = set(data) - set(PROFILES)
    if unknown:
        raise ParameterError(f"{path}: unknown profile(s) {sorted(unknown)}; allowed: {', '.join(PROFILES)}")
    profiles = {}
    for profile in PROFILES:
        entries = data.get(profile) or {}
        if not isinstance(entries, dict):
            raise ParameterError(f"{path}: profile '{profile}' must map notebook names to parameters")
        checked = {}
        for name, overrides in entries.items():
            if name not in notebooks:
                raise ParameterError(f"{path}: profile '{profile}' names unknown notebook '{name}'; "
                                     f"known: {', '.join(notebooks)}")
            checked[name] = notebooks[name].validate(overrides or {}, partial=True)
        profiles[profile] = checked
    return profiles


@dataclass
class Job:
    """One notebook to execute, with its fully validated parameters."""

    name: str
    path: Path
    params: dict[str, Any]


def plan(
    profile: str = "quick",
    only: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    root: Path | None = None,
    notebooks: Mapping[str, NotebookSpec] | None = None,
    profiles_file: Path = PROFILES_FILE,
    warn: Callable[[str], None] | None = None,
) -> list[Job]:
    """Validate everything and return the jobs, in catalog order. Raises ParameterError (one line).

    Path parameters (``Param.path``) come back absolute, resolved against the current directory, and are
    checked here, before any kernel starts. Nothing to run is an error: a missing root, an ``--only``
    notebook whose file is missing, or no notebook file at all; without ``--only``, a catalog notebook whose
    file is not written yet is skipped with a warning.
    """
    notebooks = catalog.NOTEBOOKS if notebooks is None else notebooks
    root = default_root() if root is None else Path(root)
    if profile not in PROFILES:
        raise ParameterError(f"--profile '{profile}' is invalid; allowed: {', '.join(PROFILES)}")
    for name in only or ():
        if name not in notebooks:
            raise ParameterError(f"--only: unknown notebook '{name}'; known: {', '.join(notebooks)}")
    selected = [n for n in notebooks if not only or n in only]
    overrides = dict(overrides or {})
    declared = {p.name for n in selected for p in notebooks[n].params}
    for key in overrides:
        if key not in declared:
            raise ParameterError(f"-p {key} {overrides[key]!r}: unknown parameter '{key}' for notebook(s) "
                                 f"{', '.join(selected)}; allowed names: {', '.join(sorted(declared))}")
    profile_values = load_profiles(profiles_file, notebooks)[profile]
    validated = {}
    for name in selected:  # every selected notebook is validated, file or not, before any warning
        spec = notebooks[name]
        values = dict(profile_values.get(name, {}))
        values.update({k: v for k, v in overrides.items() if any(p.name == k for p in spec.params)})
        validated[name] = spec.validate(values)
        catalog.check_params(name, validated[name])  # across parameters, e.g. 07's grid: before any training
    if not (root / "notebooks").is_dir():
        where = f"SPATIALKIT_ROOT={os.environ['SPATIALKIT_ROOT']}" if os.environ.get("SPATIALKIT_ROOT") else "root"
        raise ParameterError(f"{where}: {root / 'notebooks'} is not a folder; nothing to run (point "
                             "SPATIALKIT_ROOT at the repository, or unset it)")
    for name in only or ():
        if not (root / "notebooks" / f"{name}.ipynb").exists():
            raise ParameterError(f"--only {name}: {root / 'notebooks' / f'{name}.ipynb'} does not exist")
    cwd = Path.cwd()
    for name, params in validated.items():
        for p in notebooks[name].params:
            if p.path and p.name in params:
                params[p.name] = resolve_path_param(p, params[p.name], name, cwd)
    jobs, skipped = [], []
    for name, params in validated.items():
        path = root / "notebooks" / f"{name}.ipynb"
        if not path.exists():
            skipped.append(name)
            continue
        jobs.append(Job(name, path, params))
    if not jobs:
        raise ParameterError(f"nothing to run: no notebook of {', '.join(selected)} exists in {root / 'notebooks'}")
    for name in skipped:
        (warn or _warn)(f"skipping {name}: notebooks/{name}.ipynb does not exist yet")
    return jobs


def resolve_path_param(param: Param, value: Any, notebook: str, cwd: Path) -> Any:
    """A path parameter's value made absolute against ``cwd`` and checked, or a one-line ParameterError.

    Values among ``param.choices`` pass unchanged. An existing path comes back absolute. ``path="model"``: it
    must be a folder holding config.json, and a value that does not exist and is not written as a path
    ("./x", "/x", "~/x", "a/b/c") but looks like a hub id ("org/name") is kept for the kernel to look up.
    """
    if not isinstance(value, str) or (param.choices is not None and value in param.choices):
        return value
    path = Path(value).expanduser()
    path = path if path.is_absolute() else cwd / path
    head = f"{notebook}: parameter '{param.name}' = {value!r}"
    if path.exists():
        path = path.resolve()
        if param.path == "model":
            if not path.is_dir():
                raise ParameterError(f"{head}: {path} is not a folder")
            if not (path / "config.json").is_file():
                raise ParameterError(f"{head}: folder {path} has no config.json (not a model folder)")
        return str(path)
    hub = param.path == "model"
    written_as_path = value.startswith((".", "/", "~")) or value.count("/") != 1
    if hub and not written_as_path and HUB_ID.fullmatch(value):
        return value
    raise ParameterError(f"{head}: {path} does not exist (relative paths are read from the current directory, "
                         f"{cwd})" + ("; a Hugging Face hub id looks like 'org/name'" if hub else ""))


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --- cache ----------------------------------------------------------------------------------------

def notebook_modules(path: Path) -> list[str]:
    """The spatialkit modules a notebook's code cells import (any cell, any depth)."""
    import ast  # lazy: the CLI starts without it

    names = {"spatialkit.suite.notebook"}
    nb = json.loads(Path(path).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", ""))
        source = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue  # the kernel reports it; the key still covers the notebook's bytes
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names if a.name.split(".")[0] == "spatialkit")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "spatialkit":
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return sorted(names)


def package_hash(notebook: Path | None = None) -> str:
    """The code fingerprint (``spatialkit.common.fingerprint``) of what a notebook imports from spatialkit, or
    of the whole package when no notebook is given: a code change re-executes exactly the notebooks using it.

    profiles.yml is not code: the parameters it sets are in the key already, and a teammate adding an entry
    for one notebook must not invalidate every other notebook's cache.
    """
    from spatialkit.common.fingerprint import fingerprint  # lazy: the CLI starts without it

    if notebook is not None:
        return fingerprint(*notebook_modules(notebook))
    every = [".".join(("spatialkit",) + p.relative_to(PACKAGE_DIR).with_suffix("").parts).removesuffix(".__init__")
             for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts]
    return fingerprint(*every)


def cache_key(job: Job, pkg_hash: str | None = None) -> str:
    blob = json.dumps({
        "notebook": hashlib.sha256(job.path.read_bytes()).hexdigest(),
        "params": job.params,
        "spatialkit": spatialkit.__version__,
        "package": pkg_hash or package_hash(job.path),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def key_path(out_dir: Path, name: str) -> Path:
    return out_dir / f"{name}.key"


def is_fresh(job: Job, out_dir: Path, key: str) -> bool:
    kp, nb = key_path(out_dir, job.name), out_dir / f"{job.name}.ipynb"
    return nb.exists() and kp.exists() and kp.read_text().strip() == key


# --- execution ------------------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    status: str  # "ok" | "cached" | "failed"
    seconds: float
    error: str = ""
    output: Path | None = None


PAPERMILL_TAGS = ("injected-parameters", "papermill-error-cell-tag")  # cells papermill adds to the copy


def failing_cell(executed: Path) -> tuple[int, str | None] | None:
    """(index in the source notebook, cell id) of the first failing cell of an executed copy, or None.

    papermill's own ``cell_index`` counts its injected parameters cell, and the kept copy in failed/ also
    holds its two error-marker cells; neither exists in notebooks/NAME.ipynb, so both are skipped here.
    """
    try:
        cells = json.loads(Path(executed).read_text()).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return None
    index = 0
    for cell in cells:
        if any(tag in PAPERMILL_TAGS for tag in cell.get("metadata", {}).get("tags", [])):
            continue
        errored = any(o.get("output_type") == "error" for o in cell.get("outputs", []) or [])
        if errored or cell.get("metadata", {}).get("papermill", {}).get("exception") is True:
            return index, cell.get("id")
        index += 1
    return None


def describe_failure(err: Exception, notebook_name: str, executed: Path | None = None) -> str:
    """'NAME: cell 6 (id 1a2b3c4d) failed: ValueError: bad thing' from papermill's execution error.

    The cell is named as the user finds it in notebooks/NAME.ipynb (index among its cells, from 0, and the
    cell id), read from the ``executed`` copy when given; else papermill's index less its injected cell.
    """
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    found = failing_cell(executed) if executed is not None else None
    cell = getattr(err, "cell_index", None)
    if found is not None:
        where = f"cell {found[0]}" + (f" (id {found[1]})" if found[1] else "")
    elif cell is not None:
        where = f"cell {max(cell - 1, 0)}"
    else:
        where = "execution"
    line = str(evalue).strip().splitlines()[-1] if str(evalue).strip() else ""
    return f"{notebook_name}: {where} failed: {ename}: {line}"


def lock_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / ".locks" / f"{name}.lock"


def execute(job: Job, out_dir: Path, *, force: bool = False, pkg_hash: str | None = None, wait: bool = True,
            echo: Callable[[str], None] = print) -> Result:
    """Execute one notebook into ``out_dir`` unless its cached copy is up to date.

    Holds the notebook's lock (``out_dir/.locks/NAME.lock``) while executing and publishing; another run of
    the same notebook waits (``echo`` says so) or, with ``wait=False``, raises RunError. An unwritable
    ``out_dir`` raises RunError (one line). A KeyboardInterrupt publishes nothing and leaves the previous
    copy and its key as they were.
    """
    out_dir = Path(out_dir)
    key = cache_key(job, pkg_hash)
    final = out_dir / f"{job.name}.ipynb"
    if not force and is_fresh(job, out_dir, key):
        return Result(job.name, "cached", 0.0, output=final)
    lock = lock_path(out_dir, job.name)
    try:
        with file_lock(lock, wait=wait, on_wait=lambda holder: echo(
                f"  {job.name}: another run of it ({holder}) is executing; waiting for it to finish "
                f"(lock {lock}) ...")):
            return _execute_locked(job, out_dir, key, force)
    except LockBusy as busy:
        raise RunError(f"{job.name}: another run of this notebook is in progress ({busy}); "
                       "wait for it, or run without --no-wait to queue behind it") from None
    except OSError as err:  # papermill's own errors are handled inside: this is our writing into out_dir
        raise RunError(f"{job.name}: cannot write into {out_dir}: {err.strerror or err}"
                       f"{f' ({err.filename})' if err.filename else ''}; make the folder writable, or set "
                       "SPATIALKIT_ROOT to a writable checkout") from None


def _papermill(job: Job, running: Path, work: Path) -> None:
    """Execute ``job`` under papermill into ``running``, with a new kernel (forked from a zygote when the run has
    one: spatialkit/suite/zygote.py) whose output goes to the run's kernel.log; start again when the kernel died at
    start on a port taken in between (KERNEL_START_ATTEMPTS)."""
    papermill = nbimport.papermill()  # heavy: imported only when something really runs
    forked = zygote.kernel_manager_class(runs_hf(job.params))  # None: a fresh kernel (no zygote to fork from)

    log = work / "kernel.log"
    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        log_start = log.stat().st_size if log.exists() else 0
        try:
            with kernel_environment(INLINE_BACKEND, run_tmp=work / "tmp"), results_environment(work), \
                    output_to(log):
                papermill.execute_notebook(
                    str(job.path), str(running), parameters=job.params, kernel_name=KERNEL,
                    cwd=str(job.path.parent), progress_bar=False, log_output=False,
                    start_timeout=KERNEL_START_TIMEOUT, **({"kernel_manager_class": forked} if forked else {}),
                )
            return
        except Exception as err:
            if attempt == KERNEL_START_ATTEMPTS or not kernel_port_was_taken(err, log, log_start):
                raise


def runs_hf(params: Mapping[str, Any]) -> bool:
    """Whether a notebook with ``params`` runs a Hugging Face model (``model`` names a folder or hub id, not the
    tiny organism)."""
    return params.get("model", "tiny") not in ("tiny", None, "")


def _execute_locked(job: Job, out_dir: Path, key: str, force: bool) -> Result:
    final = out_dir / f"{job.name}.ipynb"
    if not force and is_fresh(job, out_dir, key):  # a run we waited for produced exactly this
        return Result(job.name, "cached", 0.0, output=final)

    failed_dir = out_dir / "failed"
    running_root = out_dir / ".running"
    running_root.mkdir(parents=True, exist_ok=True)
    for stale in running_root.glob(f"{job.name}.*"):  # we hold the lock: these are from killed runs
        if stale.name.rsplit(".", 1)[0] != job.name:
            continue  # another notebook's (NAME.x)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)  # an older runner's .running/NAME.ipynb
    work = Path(tempfile.mkdtemp(dir=running_root, prefix=f"{job.name}."))  # this run's own, unique folder
    running = work / f"{job.name}.ipynb"
    (work / "tmp").mkdir()
    start = time.perf_counter()
    try:
        try:
            _papermill(job, running, work)
        except Exception as err:  # PapermillExecutionError, dead kernel, missing kernel ...
            seconds = time.perf_counter() - start
            failed_dir.mkdir(parents=True, exist_ok=True)
            kept = failed_dir / f"{job.name}.ipynb"
            if running.exists():
                os.replace(running, kept)
            else:
                kept.unlink(missing_ok=True)  # an older failure's copy would name the wrong cell
            log = failed_dir / f"{job.name}.kernel.log"
            if (work / "kernel.log").stat().st_size:
                os.replace(work / "kernel.log", log)
            else:
                log.unlink(missing_ok=True)
            # A stale good copy must never stand for parameters that fail.
            key_path(out_dir, job.name).unlink(missing_ok=True)
            final.unlink(missing_ok=True)
            results_path(out_dir, job.name).unlink(missing_ok=True)  # results JSON: see publish_results
            return Result(job.name, "failed", seconds, describe_failure(err, job.name, kept if kept.exists() else None),
                          output=kept)
        seconds = time.perf_counter() - start
        # key first: a crash between the two steps leaves a copy without a key, which simply re-executes
        key_path(out_dir, job.name).unlink(missing_ok=True)
        os.replace(running, final)
        publish_results(work, out_dir, job)  # results JSON: see publish_results
        (failed_dir / f"{job.name}.ipynb").unlink(missing_ok=True)
        _write_atomic(key_path(out_dir, job.name), key.encode() + b"\n")
        return Result(job.name, "ok", seconds, output=final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- results JSON (the scorecard's input; spatialkit/suite/scorecard.py reads it) ------------------------
# The kernel writes the run's results (setup(): notebook, parameters, environment; every claims_table(): the
# claims) into $SPATIALKIT_RESULTS, a file in the run's own folder; a successful run publishes it beside the
# notebook as NAME.results.json, under the notebook's lock, after the notebook and before the key. A failed
# run removes the old one (it would stand for parameters that fail).

RESULTS_SUFFIX = ".results.json"


def results_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / f"{name}{RESULTS_SUFFIX}"


@contextlib.contextmanager
def results_environment(work: Path):
    """$SPATIALKIT_RESULTS = ``work/results.json`` meanwhile (restored on exit)."""
    saved = os.environ.get(RESULTS_ENV)
    os.environ[RESULTS_ENV] = str((Path(work) / "results.json").resolve())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(RESULTS_ENV, None)
        else:
            os.environ[RESULTS_ENV] = saved


def publish_results(work: Path, out_dir: Path, job: Job) -> None:
    """Move the run's results file into place (atomic), or remove a previous one when the run wrote none.
    The notebook's name, the parameters papermill injected and the spatialkit version are filled in where the
    kernel did not record them (a notebook that never calls setup())."""
    written, target = Path(work) / "results.json", results_path(out_dir, job.name)
    if not written.is_file():
        target.unlink(missing_ok=True)
        return
    try:
        data = json.loads(written.read_text())
    except ValueError:
        data = None  # published as written; the reader names the file
    if isinstance(data, dict):
        data.setdefault("notebook", job.name)
        data.setdefault("parameters", job.params)
        data.setdefault("environment", {"spatialkit": spatialkit.__version__})
        written.write_text(json.dumps(data, indent=1, default=str))
    os.replace(written, target)


@contextlib.contextmanager
def output_to(log: Path):
    """Send this process's file descriptors 1 and 2 to ``log`` meanwhile, so the kernel it starts inherits
    them: the kernel's own chatter (ipykernel warnings, its tracebacks when interrupted) lands in the run's
    kernel.log (kept as failed/NAME.kernel.log when the run fails), not between the CLI's one-line messages."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def kernel_port_was_taken(err: BaseException, log: Path, log_start: int = 0) -> bool:
    """Whether a run failed because its kernel died at start on a port taken in between (see
    KERNEL_START_ATTEMPTS): the kernel never answered, and what it wrote to ``log`` after byte ``log_start``
    says the address was in use."""
    if "Kernel died before replying to kernel_info" not in str(err) or not log.exists():
        return False
    with open(log, "rb") as handle:
        handle.seek(log_start)
        return b"Address already in use" in handle.read()


@contextlib.contextmanager
def kernel_environment(mplbackend: str, *, run_tmp: Path | None = None):
    """Environment for a kernel started from here, restored on exit (also on error).

    Kernel "python3" must be this environment's (registered by `make` with --sys-prefix), not a same-named
    kernel in the user's ~/.local/share/jupyter, which Jupyter would otherwise prefer; ``mplbackend`` picks
    how figures come out (inline PNG for the book, Agg for grading). Relative $SPATIALKIT_ROOT and
    $SPATIALKIT_CACHE are made absolute against the caller's directory (the kernel runs in notebooks/);
    ``run_tmp`` becomes $SPATIALKIT_RUN_TMP, the run's scratch folder (the caller removes it).
    """
    saved = {k: os.environ.get(k) for k in ("MPLBACKEND", "JUPYTER_PATH", RUN_TMP_ENV, *PATH_ENV)}
    own = str(Path(sys.prefix) / "share" / "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (own, saved["JUPYTER_PATH"]) if p)
    os.environ["MPLBACKEND"] = mplbackend
    for name in PATH_ENV:
        if saved[name]:
            os.environ[name] = os.path.abspath(os.path.expanduser(saved[name]))
    if run_tmp is not None:
        os.environ[RUN_TMP_ENV] = str(Path(run_tmp).resolve())
    else:
        os.environ.pop(RUN_TMP_ENV, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def progress_line(i: int, total: int, name: str, result: "Result") -> str:
    """``[i/total] NAME ok in 3.2s`` / ``up to date, skipped`` / ``FAILED after ... -- error (partial copy)``."""
    if result.status == "failed":
        return (f"[{i}/{total}] {name} FAILED after {result.seconds:.1f}s -- {result.error} "
                f"(partial copy: {result.output})")
    label = "up to date, skipped" if result.status == "cached" else f"ok in {result.seconds:.1f}s"
    return f"[{i}/{total}] {name} {label}"


def run(
    jobs: Sequence[Job],
    out_dir: Path,
    *,
    force: bool = False,
    wait: bool = True,
    echo: Callable[[str], None] = print,
) -> list[Result]:
    """Execute ``jobs`` in order, one progress line each. Raises RunError if any notebook failed
    (after running the others, so one broken notebook does not hide the state of the rest), or if there is
    nothing to run. ``wait=False``: a notebook another process is running is an error, not a wait."""
    if not jobs:
        raise RunError("nothing to run: no notebook selected")
    results = []
    for i, job in enumerate(jobs, 1):
        echo(f"[{i}/{len(jobs)}] {job.name} ...")
        result = execute(job, out_dir, force=force, wait=wait, echo=echo)
        echo(progress_line(i, len(jobs), job.name, result))
        results.append(result)
    failed = [r for r in results if r.status == "failed"]
    counts = {status: sum(r.status == status for r in results) for status in ("ok", "cached", "failed")}
    echo(f"{len(results)} notebook(s): {counts['ok']} executed, {counts['cached']} up to date, "
         f"{counts['failed']} failed, {sum(r.seconds for r in results):.1f}s executing")
    if failed:
        raise RunError("; ".join(r.error for r in failed))
    return results


def executed_dir(root: Path | None = None) -> Path:
    return (default_root() if root is None else Path(root)) / "book" / "executed"
