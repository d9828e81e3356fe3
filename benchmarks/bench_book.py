"""Benchmark: cold and warm `spatialkit book`, per notebook and in total, the training time of every checkpoint
and the training each notebook waits for (``training_by_notebook.py``), the speed-up of ``--jobs 2`` over
``--jobs 1``, and scene-generation throughput.

    .venv/bin/python benchmarks/bench_book.py [--profile quick|smoke] [--jobs N] [--speedup-profile smoke]
                                             [--skip-book] [--skip-speedup] [--scenes 300] [-p NAME VALUE ...]
                                             [--run-only] [--log FILE]

Cold = empty execution cache *and* empty checkpoint store (a fresh clone: every model is trained, every
notebook runs under papermill, then the book is built); warm = the same command again with nothing changed
(every notebook skipped, only the book is rebuilt). Each build runs in a temporary copy of the book sources
(SPATIALKIT_ROOT) with its own SPATIALKIT_CACHE, so neither the repository's book/executed nor the user's
checkpoint store is touched. The speed-up is measured in this one run: the same cold build (``--speedup-profile``,
default smoke) with ``--jobs 1`` and with ``--jobs 2``, each from empty caches. CPU time is the build's and
all its processes' (workers, kernels); on a machine shared with other jobs the wall times are inflated, so the
load average is printed beside them. ``-p NAME VALUE`` passes a parameter to the cold and warm builds'
`spatialkit book` (``-p device cuda``: the GPU machine's cold book, trained and executed on the GPU; see
benchmarks/gpu_check.sh --book). ``--run-only`` times `spatialkit run` instead: training and execution without
the HTML build (where jupyter-book is not installed; the HTML build of an executed book takes a few seconds,
the warm rebuild's time). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOK_SOURCES = ("notebooks", "book", "_vendor", "_config.yml", "_toc.yml")  # what `spatialkit book` reads
NOTEBOOK_LINE = re.compile(r"^\[\d+/\d+\] (\S+) (ok in ([\d.]+)s|up to date, skipped)")
TRAIN_LINE = re.compile(r"^train \[\d+/\d+\] (.*) ok in ([\d.]+)s \(CPU ([\d.]+)s\)")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def copy_sources(root: Path) -> None:
    for rel in BOOK_SOURCES:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("executed", ".ipynb_checkpoints"))
        elif src.exists():
            shutil.copy(src, dst)


def run_streamed(cmd: list[str], env: dict, log: Path) -> subprocess.CompletedProcess:
    """``cmd`` with its stdout collected *and* appended to ``log`` line by line as it runs (stderr goes to the log
    only): a build stopped by a time limit still leaves what it trained and ran, with times."""
    with open(log, "a", buffering=1) as sink:
        sink.write(f"$ {' '.join(cmd)}\n")
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=sink, text=True, bufsize=1) as proc:
            lines = []
            for text in proc.stdout:
                lines.append(text)
                sink.write(f"[{time.strftime('%H:%M:%S')}] {text}")
        return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), f"(stderr: see {log})")


def timed_book(root: Path, cache: Path, profile: str, jobs: int | None, verbose: bool = True,
               params: list[tuple[str, str]] = (), verb: str = "book", log: Path | None = None) -> dict:
    """One `spatialkit book` (or ``verb`` "run") in ``root``: wall, CPU, load, per-notebook seconds,
    per-checkpoint training times. ``params``: (NAME, VALUE) pairs passed as ``-p NAME VALUE``; ``log``: a file
    the build's output is streamed into as it runs."""
    env = dict(os.environ, SPATIALKIT_ROOT=str(root), SPATIALKIT_CACHE=str(cache), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "spatialkit", verb, "--profile", profile] + (["--jobs", str(jobs)] if jobs else [])
    cmd += [arg for name, value in params for arg in ("-p", name, value)]
    load0, cpu0, start = os.getloadavg()[0], children_cpu(), time.perf_counter()
    if log:
        proc = run_streamed(cmd, env, log)
    else:
        proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu0
    if proc.returncode != 0:  # the training and notebook lines first: what it measured before failing
        lines = [ln for ln in proc.stdout.splitlines() if TRAIN_LINE.match(ln) or NOTEBOOK_LINE.match(ln)]
        sys.exit("\n".join(lines) + f"\n{' '.join(cmd)} failed after {wall:.0f} s wall, {cpu:.0f} s CPU:\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    notebooks, training = {}, []
    for line in proc.stdout.splitlines():
        if m := NOTEBOOK_LINE.match(line):
            notebooks[m.group(1)] = float(m.group(3)) if m.group(3) else 0.0
        elif m := TRAIN_LINE.match(line):
            training.append((m.group(1), float(m.group(2)), float(m.group(3))))
    out = {"wall": wall, "cpu": cpu, "load": (load0, os.getloadavg()[0]), "notebooks": notebooks,
           "training": training}
    if verbose:
        for name, seconds in notebooks.items():
            print(f"    {name:28s} {seconds:8.1f} s" + ("  (cached)" if not seconds else ""))
        for label, w, c in training:
            print(f"    train {label[:70]:70s} {w:7.1f} s wall, {c:7.1f} s CPU")
    return out


def by_notebook(profile: str, params, cpu: dict[str, float]) -> None:
    """Print the training CPU each notebook waited for in this cold build (benchmarks/training_by_notebook.py)."""
    path = REPO / "benchmarks" / "training_by_notebook.py"
    spec = importlib.util.spec_from_file_location("training_by_notebook", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = os.environ.get("SPATIALKIT_CACHE")
    with tempfile.TemporaryDirectory(prefix="spatialkit-plan-") as empty:
        os.environ["SPATIALKIT_CACHE"] = empty  # planned against an empty store: every task, as the cold build had
        try:
            from spatialkit.suite.runner import parse_value  # here: the benchmark's builds run in subprocesses

            tasks, needs = module.plan(profile, {name: parse_value(value) for name, value in params})
            print("  training each notebook waited for:\n    "
                  + module.report(module.table(tasks, needs, cpu)).replace("\n", "\n    "))
        except SystemExit as gap:  # the build trained fewer tasks than a cold one (a store that was not empty)
            print(f"  training per notebook: not computed ({gap})")
        except Exception as err:  # noqa: BLE001 -- never lose the warm build's measurement to the table
            print(f"  training per notebook: not computed ({type(err).__name__}: {err})")
        finally:
            if before is None:
                os.environ.pop("SPATIALKIT_CACHE", None)
            else:
                os.environ["SPATIALKIT_CACHE"] = before


def line(label: str, r: dict) -> str:
    return (f"  {label:26s} {r['wall']:8.1f} s wall, {r['cpu']:8.1f} s CPU (load average {r['load'][0]:.1f} -> "
            f"{r['load'][1]:.1f})")


def bench_book(profile: str, jobs: int | None, keep_cache: Path | None = None,
               keep_executed: Path | None = None, params: list[tuple[str, str]] = (), verb: str = "book",
               log: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="spatialkit-bench-") as tmp:
        root, cache = Path(tmp) / "root", keep_cache or Path(tmp) / "cache"
        if keep_cache and keep_cache.exists() and not keep_cache.is_dir():
            raise SystemExit(f"bench_book: --keep-cache {keep_cache} is not a folder")
        if keep_cache and keep_cache.exists() and any(keep_cache.iterdir()):
            raise SystemExit(f"bench_book: --keep-cache {keep_cache} is not empty (a cold build needs an empty store)")
        copy_sources(root)
        n = len(list((root / "notebooks").glob("*.ipynb")))
        extra = "".join(f" -p {name} {value}" for name, value in params)
        print(f"spatialkit {verb} --profile {profile} --jobs {jobs or 'cores'}{extra} ({n} notebook file(s), "
              "empty caches)")
        cold = timed_book(root, cache, profile, jobs, params=params, verb=verb, log=log)
        print(line("cold (fresh clone):", cold))
        train_wall = sum(w for _, w, _ in cold["training"])
        train_cpu = sum(c for _, _, c in cold["training"])
        print(f"  training: {len(cold['training'])} checkpoint(s), {train_wall:.1f} s of worker wall time, "
              f"{train_cpu:.1f} s CPU; notebooks: {sum(cold['notebooks'].values()):.1f} s of kernel wall time")
        by_notebook(profile, params, {label: c for label, _, c in cold["training"]})
        warm = timed_book(root, cache, profile, jobs, verbose=False, params=params, verb=verb, log=log)
        print(line("warm (nothing changed):", warm))
        print(f"  warm / cold:               {warm['wall'] / cold['wall']:8.3f}")
        if keep_executed:  # the cold build's executed notebooks and results files, to read what this run found
            shutil.copytree(root / "book" / "executed", keep_executed, dirs_exist_ok=True)
            print(f"  executed notebooks copied to {keep_executed}")


def bench_speedup(profile: str) -> None:
    print(f"speed-up of --jobs 2 over --jobs 1: spatialkit book --profile {profile}, each from empty caches")
    runs = {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory(prefix="spatialkit-bench-") as tmp:
            root, cache = Path(tmp) / "root", Path(tmp) / "cache"
            copy_sources(root)
            runs[jobs] = timed_book(root, cache, profile, jobs, verbose=False)
            print(line(f"--jobs {jobs}:", runs[jobs]))
    print(f"  speed-up (wall, jobs 1 / jobs 2): {runs[1]['wall'] / runs[2]['wall']:.2f}x "
          f"(CPU {runs[1]['cpu']:.0f} s vs {runs[2]['cpu']:.0f} s)")


def bench_scenes(n: int) -> None:
    try:
        from spatialkit.world import SceneConfig, render_scene
    except ImportError as err:
        print(f"scene generation: not measured ({err})")
        return
    print(f"scene generation (spatialkit.world.render_scene, {n} scenes per size, 1 process)")
    for size in (64, 128, 256):
        config = SceneConfig(image_size=size)
        render_scene(0, config)  # warm-up (imports, palettes)
        start = time.perf_counter()
        for seed in range(n):
            render_scene(seed, config)
        seconds = time.perf_counter() - start
        print(f"  {size:4d} px: {n / seconds:8.1f} scenes/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=("quick", "smoke", "full"))
    parser.add_argument("--jobs", type=int, default=None, help="--jobs of the cold/warm builds (default: cores)")
    parser.add_argument("--speedup-profile", default="smoke", choices=("quick", "smoke", "full"))
    parser.add_argument("--scenes", type=int, default=300, help="scenes rendered per image size")
    parser.add_argument("--skip-book", action="store_true")
    parser.add_argument("--skip-speedup", action="store_true")
    parser.add_argument("--keep-cache", type=Path, default=None,
                        help="an empty folder to use as the cold build's checkpoint store, kept afterwards (e.g. for "
                             "benchmarks/bench_zoo.py --no-train on the organisms the book trained)")
    parser.add_argument("--keep-executed", type=Path, default=None,
                        help="copy the cold build's executed notebooks (and their results files) into this folder")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a parameter for the cold and warm builds' `spatialkit book` (e.g. -p device cuda)")
    parser.add_argument("--run-only", action="store_true",
                        help="time `spatialkit run` (train + execute) instead of `spatialkit book` (no HTML build)")
    parser.add_argument("--log", type=Path, default=None,
                        help="append the cold and warm builds' output to this file as they run (timestamped)")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU(s), python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} (shared machines inflate every wall time; CPU times do not)")
    if not args.skip_book:
        bench_book(args.profile, args.jobs, args.keep_cache.resolve() if args.keep_cache else None,
                   args.keep_executed.resolve() if args.keep_executed else None, [tuple(p) for p in args.param],
                   "run" if args.run_only else "book", args.log.resolve() if args.log else None)
    if not args.skip_speedup:
        bench_speedup(args.speedup_profile)
    bench_scenes(args.scenes)


if __name__ == "__main__":
    main()
