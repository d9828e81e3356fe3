"""Benchmark: cold and warm `spatialkit book`, and scene-generation throughput.

    .venv/bin/python benchmarks/bench_book.py [--profile quick|smoke] [--scenes 300]

Cold = empty execution cache (every notebook runs under papermill, then the book is built); warm =
the same command again with nothing changed (every notebook skipped, only the book is rebuilt). Both
run in a temporary copy of the book sources (SPATIALKIT_ROOT), so the repository's own book/executed
cache is left alone. Prints the measured times and the warm/cold ratio from this one run; this is a
benchmark, not a test: numbers depend on the machine and on its load.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOOK_SOURCES = ("notebooks", "book", "_vendor", "_config.yml", "_toc.yml")  # what `spatialkit book` reads


def timed_book(root: Path, profile: str) -> float:
    env = dict(os.environ, SPATIALKIT_ROOT=str(root), HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "spatialkit", "book", "--profile", profile], env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"spatialkit book failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    ran = [line for line in proc.stdout.splitlines() if line.startswith("[") and "..." not in line]
    for line in ran:
        print(f"    {line}")
    return seconds


def bench_book(profile: str) -> None:
    with tempfile.TemporaryDirectory(prefix="spatialkit-bench-") as tmp:
        root = Path(tmp)
        for rel in BOOK_SOURCES:
            src, dst = REPO / rel, root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("executed", ".ipynb_checkpoints"))
            elif src.exists():
                shutil.copy(src, dst)
        n = len(list((root / "notebooks").glob("*.ipynb")))
        print(f"spatialkit book --profile {profile} ({n} notebook file(s))")
        cold = timed_book(root, profile)
        print(f"  cold (empty cache):       {cold:8.1f} s")
        warm = timed_book(root, profile)
        print(f"  warm (nothing changed):   {warm:8.1f} s")
        print(f"  warm / cold:              {warm / cold:8.3f}")


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
    parser.add_argument("--scenes", type=int, default=300, help="scenes rendered per image size")
    parser.add_argument("--skip-book", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPU(s), python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} (shared machines inflate every number)")
    if not args.skip_book:
        bench_book(args.profile)
    bench_scenes(args.scenes)


if __name__ == "__main__":
    main()
