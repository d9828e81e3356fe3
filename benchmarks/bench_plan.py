"""Benchmark: what a run's planning costs, with code fingerprints parsed once per file version and without.

    .venv/bin/python benchmarks/bench_plan.py [--profile quick] [--repeats 2]

`spatialkit run` / `book` first plans the checkpoints the notebooks load: every declared checkpoint's store key
holds a code fingerprint (`spatialkit.common.fingerprint`), ≈100 of them for the quick book, and the warm check
keys every notebook the same way. Each fingerprint covers a module's import closure inside spatialkit. This
prints, from one run and in one process, the planning time (every kind's `checkpoint_tasks`, as the run's
planning worker calls them; an empty checkpoint store, so nothing is loaded) and the warm check's keys
(`runner.cache_key` of every notebook):

* parsed once: the package as it is (each file version parsed once per process, then reused);
* parsed on every call: the same code with that per-file cache bypassed, so every fingerprint parses its whole
  closure again, as before the cache existed;

and their ratio. Imports are paid in a warm-up pass first, so the arms time the planning itself.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# always an empty store of its own (a filled one would load stored weights while planning), removed at exit
_EMPTY_STORE = tempfile.mkdtemp(prefix="bench-plan-cache-")
atexit.register(shutil.rmtree, _EMPTY_STORE, ignore_errors=True)
os.environ["SPATIALKIT_CACHE"] = _EMPTY_STORE

from spatialkit.common import fingerprint as fp
from spatialkit.suite import catalog, parallel, runner


def plan_once(jobs) -> int:
    """Every kind's checkpoint tasks for ``jobs`` and every notebook's cache key; returns the task count."""
    specs: dict[str, list] = {}
    for job in jobs:
        for kind, spec in parallel._declared(catalog.checkpoints, job, print):
            specs.setdefault(kind, []).append(spec)
    n_tasks = sum(len(parallel.call(parallel.kind_function(kind, "checkpoint_tasks"), kind_specs))
                  for kind, kind_specs in specs.items())
    for job in jobs:
        runner.cache_key(job)
    return n_tasks


def timed(jobs, repeats: int, parse_every_call: bool) -> tuple[list[float], int]:
    cached_parse = fp._parsed
    seconds = []
    try:
        if parse_every_call:
            fp._parsed = cached_parse.__wrapped__  # the undecorated function: parses on every call
        for _ in range(repeats):
            cached_parse.cache_clear()  # the first pass of either arm parses every file
            fp._cached.cache_clear()
            start = time.process_time()
            n_tasks = plan_once(jobs)
            seconds.append(time.process_time() - start)
    finally:
        fp._parsed = cached_parse
    return seconds, n_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick", help="parameter profile whose notebooks are planned")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    jobs = runner.plan(args.profile)
    n_tasks = plan_once(jobs)  # warm-up: imports, scene worlds
    print(f"profile {args.profile}: {len(jobs)} notebook(s), {n_tasks} checkpoint task(s) planned, "
          f"{len(fp.closure('spatialkit.models.organism.store'))} modules in an organism key's closure; "
          f"CPU seconds per planning pass, median of {args.repeats}")
    once, _ = timed(jobs, args.repeats, parse_every_call=False)
    every, _ = timed(jobs, args.repeats, parse_every_call=True)
    med_once, med_every = statistics.median(once), statistics.median(every)
    print(f"  parsed once per file version   {med_once:7.2f} s")
    print(f"  parsed on every call           {med_every:7.2f} s")
    print(f"  ratio (every call / once)      {med_every / med_once:7.1f}x")


if __name__ == "__main__":
    main()
