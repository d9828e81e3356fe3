"""``spatialkit run --jobs N``: train the checkpoints the notebooks load, once each, in parallel, then execute the
notebooks in parallel, in one pool of N worker processes (default: one per core).

1. Which notebooks will execute: those whose cached copy is stale (all with ``--force``).
2. What they load: ``catalog.checkpoints(name, params)`` lists (kind, spec) pairs of plain data, e.g.
   ("organism", {"preset": "quick", "overrides": {"seed": 1}, "threads": 1, "device": "cpu"}).
3. A worker plans them: the kind's module (``KINDS``; model code, which the suite may not import, so it is
   named by a dotted string and imported in the worker) returns its training tasks, one per distinct checkpoint
   key, with their dependencies (an organism's stage-1 vision encoder first, a swapped-tower organism's CLIP /
   CLOC encoder first, a PIN insert its frozen organism first) and whether each is stored already. Kinds:
   "organism" (the zoo), "clip" (notebook 05's tiny CLIP / CLOC encoders), "encoder_swap" (the LLaVA recipe on
   one of them; notebooks 05 and 07), "pin" (notebook 06's positional inserts on its organisms).
4. One scheduler runs the missing tasks and the notebooks as a graph: a task starts once its dependencies
   finished, a notebook once its checkpoints did; training goes first when both are ready (it is on the
   critical path), notebooks that load nothing fill the gaps. Each worker trains with the thread count the
   notebook will use (it is in the checkpoint key) and under the store's per-key lock, so a notebook, or another
   ``spatialkit run``, asking for the same checkpoint waits for it and loads it. Each notebook executes through
   ``runner.execute`` in a worker (one kernel per job; its own environment and file descriptors).

A training task that fails is reported and skipped: its notebook then trains the checkpoint itself (and reports
the failure as its own if it fails again).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from spatialkit.suite import catalog, runner, zygote

# kind -> the module (model layer) that plans and builds it: checkpoint_tasks(specs) -> [task], build_checkpoint(task);
# "module:prefix" names a module serving several kinds: prefix_checkpoint_tasks, prefix_build_checkpoint
KINDS: dict[str, str] = {"organism": "spatialkit.models.organism.store",
                         "clip": "spatialkit.models.tower_store:clip",  # notebook 05's CLIP / CLOC encoders
                         "encoder_swap": "spatialkit.models.tower_store:swap",  # the LLaVA recipe on them
                         "pin": "spatialkit.analysis.interventions.pin_store"}  # notebook 06's inserts


def kind_function(kind: str, function: str) -> str:
    """``module:function`` of ``function`` ("checkpoint_tasks" or "build_checkpoint") for checkpoints of ``kind``."""
    module, _, prefix = KINDS[kind].partition(":")
    return f"{module}:{prefix}_{function}" if prefix else f"{module}:{function}"


def default_jobs() -> int:
    """One per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def call(target: str, *args):
    """Run ``module:function(*args)`` (in a worker process): the suite names model code, never imports it."""
    module, _, name = target.partition(":")
    with _task():
        return getattr(importlib.import_module(module), name)(*args)


def _worker_init(parent: int) -> None:
    signal.signal(signal.SIGINT, _interrupted)
    # A worker must not outlive its run: killed with it (even SIGKILL), it gets a SIGINT from the kernel and stops
    # its task as on Ctrl-C (a notebook waiting for a lock must not run after its CLI is gone). Linux only.
    zygote.signal_when_parent_dies(signal.SIGINT)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    # The signal alone does not end the worker: an idle one ignores it, and a busy one, its task stopped, goes
    # back to waiting on the pool's call queue, whose pipe its sibling workers keep open -- forever, as an
    # orphan (seen after `kill -9` of a run). So a watcher ends the process once the parent is gone and the
    # task (if any) has cleaned up.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()


def _exit_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """In a worker: return only by ending the process, once ``parent`` is gone and no task is running."""
    while os.getppid() == parent:
        time.sleep(poll_s)
    while _busy:  # the task got its SIGINT (PR_SET_PDEATHSIG) and is cleaning up (or, without it, finishing)
        time.sleep(0.1)
    os._exit(1)


_busy = False  # in a worker: running a task (an idle worker waits for the parent's shutdown instead)


def _interrupted(signum, frame):
    """A worker's first SIGINT raises KeyboardInterrupt in its task (the notebook run or training stops and
    cleans up); further ones, and any while idle, are ignored, so the parent forwarding a Ctrl-C the terminal
    delivered too cannot cut the cleanup short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _busy:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _task():
    global _busy
    _busy = True
    try:
        yield
    finally:
        _busy = False


def _execute(job: runner.Job, out_dir: Path, force: bool, wait_lock: bool) -> runner.Result:
    """A worker's notebook: ``runner.execute`` with its messages printed (they reach the terminal)."""
    with _task():
        return runner.execute(job, out_dir, force=force, wait=wait_lock, echo=lambda line: print(line, flush=True))


@dataclass
class Node:
    """A unit of the schedule: a training task (kind "train") or a notebook (kind "notebook")."""

    id: str
    kind: str
    label: str
    deps: set[str] = field(default_factory=set)
    payload: object = None
    order: int = 0


def stale_jobs(jobs: Sequence[runner.Job], out_dir: Path, force: bool) -> list[runner.Job]:
    """The jobs whose executed copy is missing or out of date (every job with ``force``)."""
    return [j for j in jobs if force or not runner.is_fresh(j, Path(out_dir), runner.cache_key(j))]


def plan_training(executor, jobs: Sequence[runner.Job], checkpoints_of: Callable[[str, dict], list],
                  echo: Callable[[str], None]) -> tuple[list[dict], dict[str, list[str]]]:
    """(tasks still to train, {notebook: [task ids it waits for]}) for ``jobs``, planned in a worker."""
    specs: dict[str, list] = {}
    wanted: dict[str, list[tuple[str, int]]] = {}
    for job in jobs:
        for kind, spec in _declared(checkpoints_of, job, echo):
            if kind not in KINDS:
                echo(f"  note: {job.name} declares a checkpoint of unknown kind '{kind}'; it trains it itself")
                continue
            ident = json.dumps(spec, sort_keys=True)
            known = [json.dumps(s, sort_keys=True) for s in specs.setdefault(kind, [])]
            if ident not in known:
                specs[kind].append(spec)
                known.append(ident)
            wanted.setdefault(job.name, []).append((kind, known.index(ident)))
    planned = {kind: executor.submit(call, kind_function(kind, "checkpoint_tasks"), kind_specs)
               for kind, kind_specs in specs.items()}
    tasks, by_spec, seen = [], {}, set()
    for kind, future in planned.items():
        for task in future.result():
            task = {"kind": kind, **task}  # a task may name its own kind (a swapped organism's encoder: "clip")
            if task["id"] not in seen:  # planned by two kinds (an encoder declared and a swap's dependency): once
                seen.add(task["id"])
                tasks.append(task)
            for index in task.get("for", []):
                by_spec[kind, index] = task["id"]
    ids = {t["id"] for t in tasks if not t["done"]}
    needs = {name: sorted({by_spec[w] for w in pairs if by_spec.get(w) in ids}) for name, pairs in wanted.items()}
    return [t for t in tasks if not t["done"]], needs


def _declared(checkpoints_of, job: runner.Job, echo) -> list:
    """``checkpoints_of(name, params[, warn=])`` for one job; a declaration that raises declares nothing."""
    import inspect  # lazy: the CLI starts without it

    try:
        if "warn" in inspect.signature(checkpoints_of).parameters:
            return checkpoints_of(job.name, job.params, warn=lambda line: echo(f"  note: {line}"))
        return checkpoints_of(job.name, job.params)
    except Exception as err:  # noqa: BLE001 -- the notebook then trains what it loads itself
        echo(f"  note: {job.name}: its checkpoint declaration failed ({type(err).__name__}: {err})")
        return []


def run(
    jobs: Sequence[runner.Job],
    out_dir: Path,
    *,
    n_jobs: int | None = None,
    force: bool = False,
    wait_lock: bool = True,
    echo: Callable[[str], None] = print,
    checkpoints_of: Callable[[str, dict], list] = catalog.checkpoints,
    pretrain: bool = True,
) -> list[runner.Result]:
    """Train what the stale notebooks load, then execute them, ``n_jobs`` at a time (default: cores).

    Same contract as ``runner.run``: one progress line per start and end, a summary line, RunError naming
    every failed notebook after the others ran. Also echoes each training task's start and end (wall and CPU
    seconds). Returns the notebooks' results in ``jobs`` order; the training tasks' times are left in
    ``last_training`` (benchmarks read them). ``pretrain=False``: notebooks only (each trains what it loads).
    """
    if not jobs:
        raise runner.RunError("nothing to run: no notebook selected")
    out_dir = Path(out_dir)
    n_jobs = n_jobs or default_jobs()
    stale = stale_jobs(jobs, out_dir, force)
    results: dict[str, runner.Result] = {j.name: runner.Result(j.name, "cached", 0.0, output=out_dir / f"{j.name}.ipynb")
                                         for j in jobs if j not in stale}
    last_training.clear()
    start = time.perf_counter()
    if not stale:  # nothing to execute: no worker, no torch (the warm rebuild stays a few seconds)
        for i, job in enumerate(jobs, 1):
            echo(f"[{i}/{len(jobs)}] {job.name} up to date, skipped")
        return _summary(jobs, results, echo)
    number = {job.name: i for i, job in enumerate(jobs, 1)}
    # fork: the workers start from this light process (no torch, no threads yet; they import the model code
    # they are handed) with its environment, and never re-run the caller's __main__ script as spawn would
    context = multiprocessing.get_context("fork")
    # The notebooks' kernels fork from a zygote that imports torch & co. once (spatialkit/suite/zygote.py; one with
    # transformers too for notebooks run on a Hugging Face model), unless the caller gave one; started before the
    # workers so that they inherit its address.
    own_zygotes = [z for hf in sorted({runner.runs_hf(job.params) for job in stale}) if not zygote.address(hf)
                   for z in [zygote.start(hf=hf)] if z is not None]
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    executor = ProcessPoolExecutor(max_workers=n_jobs, mp_context=context, initializer=_worker_init,
                                   initargs=(os.getpid(),))
    try:
        tasks, needs = plan_training(executor, stale, checkpoints_of, echo) if pretrain else ([], {})
        if tasks:
            echo(f"training {len(tasks)} checkpoint(s) the notebooks load, {n_jobs} worker(s): "
                 + ", ".join(t["label"] for t in tasks))
        nodes: dict[str, Node] = {}
        for k, task in enumerate(tasks):
            nodes[task["id"]] = Node(task["id"], "train", task["label"], set(task.get("deps", [])) & {t["id"] for t in tasks},
                                     task, order=k)
        for job in stale:
            nodes[f"notebook:{job.name}"] = Node(f"notebook:{job.name}", "notebook", job.name,
                                                 set(needs.get(job.name, [])), job, order=number[job.name])
        _schedule(executor, nodes, out_dir, force, wait_lock, echo, number, len(jobs), results)
    except KeyboardInterrupt:  # interrupt the workers too (a terminal's Ctrl-C reached them already: once is kept)
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError):
                os.kill(process.pid, signal.SIGINT)
        executor.shutdown(wait=True, cancel_futures=True)  # each worker's run cleans up, publishing nothing
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        for own in own_zygotes:
            own.close()
    for i, job in enumerate(jobs, 1):
        if job not in stale:
            echo(f"[{i}/{len(jobs)}] {job.name} up to date, skipped")
    echo(f"wall time {time.perf_counter() - start:.1f}s with {n_jobs} job(s)")
    return _summary(jobs, results, echo)


last_training: list[dict] = []  # the latest run's training tasks: {"id", "label", "status", "wall_s", "cpu_s"}


def _priority(node: Node, dependents: dict[str, int]):
    # training before notebooks; among trainings, what most nodes wait for first (an encoder, then the organism
    # several notebooks share); notebooks in book order
    return (node.kind != "train", -dependents.get(node.id, 0), node.order)


def _schedule(executor, nodes: dict[str, Node], out_dir: Path, force: bool, wait_lock: bool,
              echo: Callable[[str], None], number: dict[str, int], total: int,
              results: dict[str, runner.Result]) -> None:
    dependents: dict[str, int] = {}
    for node in nodes.values():
        for dep in node.deps:
            dependents[dep] = dependents.get(dep, 0) + 1
    pending, finished = dict(nodes), set()
    running: dict[Future, tuple[Node, float]] = {}
    n_train = sum(n.kind == "train" for n in nodes.values())
    started_train = 0
    slots = executor._max_workers
    while pending or running:
        ready = sorted((n for n in pending.values() if n.deps <= finished), key=lambda n: _priority(n, dependents))
        for node in ready[: max(0, slots - len(running))]:
            del pending[node.id]
            if node.kind == "train":
                started_train += 1
                node.label = f"train [{started_train}/{n_train}] {node.label}"
                echo(f"{node.label} ...")
                future = executor.submit(call, kind_function(node.payload["kind"], "build_checkpoint"), node.payload)
            else:
                echo(f"[{number[node.label]}/{total}] {node.label} ...")
                future = executor.submit(_execute, node.payload, out_dir, force, wait_lock)
            running[future] = (node, time.perf_counter())
        if not running:  # only possible with a dependency cycle or a dependency outside the graph
            raise runner.RunError(f"cannot schedule: {', '.join(pending)} wait for {sorted(set().union(*(n.deps for n in pending.values())) - finished)}")
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            node, t0 = running.pop(future)
            finished.add(node.id)
            if node.kind == "train":
                try:
                    info = future.result()
                    last_training.append({"id": node.id, "label": node.label, "status": "ok", **info})
                    echo(f"{node.label} ok in {info['wall_s']:.1f}s (CPU {info['cpu_s']:.1f}s)")
                except Exception as err:  # the notebook trains it itself and reports what goes wrong then
                    line = str(err).strip().splitlines()[-1] if str(err).strip() else ""
                    last_training.append({"id": node.id, "label": node.label, "status": "failed",
                                          "wall_s": time.perf_counter() - t0, "cpu_s": None, "error": line})
                    echo(f"{node.label} FAILED: {type(err).__name__}: {line} (the notebook will try itself)")
                continue
            i = number[node.label]
            try:
                result = future.result()
            except runner.RunError as err:  # lock busy with --no-wait, unwritable folder
                result = runner.Result(node.label, "failed", time.perf_counter() - t0, str(err))
            except Exception as err:  # a worker died (killed, out of memory)
                result = runner.Result(node.label, "failed", time.perf_counter() - t0,
                                       f"{node.label}: worker failed: {type(err).__name__}: {err}")
            results[node.label] = result
            echo(runner.progress_line(i, total, node.label, result))


def _summary(jobs: Sequence[runner.Job], results: dict[str, runner.Result], echo) -> list[runner.Result]:
    ordered = [results[j.name] for j in jobs]
    counts = {status: sum(r.status == status for r in ordered) for status in ("ok", "cached", "failed")}
    echo(f"{len(ordered)} notebook(s): {counts['ok']} executed, {counts['cached']} up to date, "
         f"{counts['failed']} failed, {sum(r.seconds for r in ordered):.1f}s executing")
    failed = [r for r in ordered if r.status == "failed"]
    if failed:
        raise runner.RunError("; ".join(r.error for r in failed))
    return ordered
