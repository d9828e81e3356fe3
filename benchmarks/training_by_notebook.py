"""What each notebook's checkpoints cost to train, from a cold build's log.

    .venv/bin/python benchmarks/training_by_notebook.py LOG [--profile quick] [-p NAME VALUE ...] [--cores 2]
        [--bar-minutes 12]

LOG: the output of a cold ``spatialkit run`` / ``spatialkit book`` (``benchmarks/bench_book.py --log FILE``), whose
lines ``train [i/n] LABEL ok in W s (CPU C s)`` give each training task's CPU time. Which tasks each notebook waits
for is planned the way a run plans it (``spatialkit.suite.parallel.plan_training`` on the same profile and
parameters, against an empty checkpoint store in a temporary folder, so nothing is trained or read). Prints, per
notebook in book order: the tasks it waits for (its checkpoints and the encoders they start from) and their CPU,
the part no other notebook needs, and the training CPU of the book through that notebook; then how many CPU
seconds the cold-build bar holds on ``--cores`` cores (training and notebooks together). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TRAIN_LINE = re.compile(r"^train \[\d+/\d+\] (.*) ok in [\d.]+s \(CPU ([\d.]+)s\)", re.MULTILINE)


def task_cpu(log: str) -> dict[str, float]:
    """{task label: CPU seconds} of every task the log reports trained."""
    return {m.group(1): float(m.group(2)) for m in TRAIN_LINE.finditer(log)}


def plan(profile: str, params: dict) -> tuple[list[dict], dict[str, list[str]]]:
    """(every training task of a cold build, {notebook: ids of the tasks it waits for, dependencies included})."""
    from spatialkit.suite import catalog, parallel, runner

    jobs = runner.plan(profile, overrides=params)
    with ThreadPoolExecutor(1) as executor:
        tasks, needs = parallel.plan_training(executor, jobs, catalog.checkpoints, lambda line: None)
    deps = {t["id"]: set(t.get("deps", [])) for t in tasks}

    def closure(ids) -> list[str]:
        seen, todo = set(), list(ids)
        while todo:
            task = todo.pop()
            if task not in seen:
                seen.add(task)
                todo += deps.get(task, ())
        return sorted(seen)

    return tasks, {job.name: closure(needs.get(job.name, [])) for job in jobs}


def table(tasks: list[dict], needs: dict[str, list[str]], cpu: dict[str, float]) -> list[dict]:
    """One row per notebook (book order): tasks, CPU it waits for, CPU only it needs, the book's CPU so far."""
    label = {t["id"]: t["label"] for t in tasks}
    missing = sorted({label[i] for ids in needs.values() for i in ids if label[i] not in cpu})
    if missing:
        raise SystemExit(f"the log has no CPU time for {len(missing)} planned task(s), e.g. {missing[0]!r}: give the "
                         "log of a cold build with the same profile and parameters")
    owners: dict[str, list[str]] = {}
    for name, ids in needs.items():
        for i in ids:
            owners.setdefault(i, []).append(name)
    rows, so_far = [], set()
    for name, ids in needs.items():
        so_far |= set(ids)
        rows.append({"notebook": name, "tasks": len(ids), "waits_for_s": sum(cpu[label[i]] for i in ids),
                     "own_s": sum(cpu[label[i]] for i in ids if owners[i] == [name]),
                     "book_so_far_s": sum(cpu[label[i]] for i in so_far), "book_tasks": len(so_far)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", type=Path, help="a cold build's output (bench_book.py --log FILE)")
    ap.add_argument("--profile", default="quick", choices=("quick", "full", "smoke"))
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--cores", type=int, default=2, help="cores of the cold-build bar (default 2)")
    ap.add_argument("--bar-minutes", type=float, default=12.0, help="the cold-build bar in minutes (default 12)")
    args = ap.parse_args(argv)
    if not args.log.is_file():
        ap.error(f"LOG {args.log} is not a file (a cold build's output: bench_book.py --log FILE)")
    if args.cores < 1 or not args.bar_minutes > 0:
        ap.error(f"--cores must be >= 1 and --bar-minutes > 0, got {args.cores} and {args.bar_minutes}")
    cpu = task_cpu(args.log.read_text())
    os.environ["SPATIALKIT_CACHE"] = tempfile.mkdtemp(prefix="spatialkit-plan-")  # plan against an empty store
    from spatialkit.suite.runner import parse_value  # after the store is set: planning reads it

    tasks, needs = plan(args.profile, {name: parse_value(value) for name, value in args.param})
    print(f"{len(tasks)} training tasks in a cold {args.profile} build, {len(cpu)} timed in {args.log.name}")
    print(report(table(tasks, needs, cpu), args.cores, args.bar_minutes))


def report(rows: list[dict], cores: int = 2, bar_minutes: float = 12.0) -> str:
    """``table``'s rows as text, and the CPU seconds a ``bar_minutes`` cold build holds on ``cores`` cores."""
    lines = [f"{'notebook':28s} {'tasks':>5s} {'waits for':>10s} {'its own':>9s} {'book so far':>12s}  (CPU s)"]
    lines += [f"{r['notebook']:28s} {r['tasks']:5d} {r['waits_for_s']:10.0f} {r['own_s']:9.0f} "
              f"{r['book_so_far_s']:8.0f} ({r['book_tasks']})" for r in rows]
    lines.append(f"a {bar_minutes:g}-minute cold build on {cores} cores holds at most {bar_minutes * 60 * cores:.0f} "
                 "CPU s, training and notebooks together")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
