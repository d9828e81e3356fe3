"""Benchmark: the concurrent-publication reproduction, repeated; counts wrong/partial publications and crashes.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_reliability.py [--rounds 20]

Each round (tests/test_reliability.py's ``concurrency_round``, real processes on a throwaway notebook) is one
of three variants, in turn: A (-p n_scenes 12) pauses after papermill returns, B (-p n_scenes 13) starts and
is killed while it waits for A's lock (the measured bug: A used to publish B's partial copy under A's key);
B waits for A, then publishes its own copy (A used to crash with FileNotFoundError); B pauses with its copy
executed and is killed, then A runs. A round is wrong when book/executed/ holds anything but the expected
run's complete copy with the key for its parameters, a run crashed, or a run folder is left behind.
Prints one line per round and a summary; exits 1 if any round was wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_reliability import concurrency_round, make_root  # noqa: E402

VARIANTS = ("kill-waiting", "b-after-a", "kill-paused")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    wrong = crashes = 0
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        root = make_root(Path(tmp) / "repo")
        start = time.perf_counter()
        for i in range(args.rounds):
            variant = VARIANTS[i % len(VARIANTS)]
            t = time.perf_counter()
            r = concurrency_round(root, variant, Path(tmp) / f"round{i}")
            wrong += not r["ok"]
            crashes += r["crashed"]
            print(f"round {i + 1:2d} {variant:12s} {'ok   ' if r['ok'] else 'WRONG'} published={r['runs']} "
                  f"complete={r['done']} fresh={r['fresh']} rc_a={r['rc_a']} rc_b={r['rc_b']} "
                  f"leftovers={r['leftovers']} {time.perf_counter() - t:.1f}s", flush=True)
            if not r["ok"]:
                print("  A:", r["a_log"][-800:], "\n  B:", r["b_log"][-800:])
        print(f"{args.rounds} rounds in {time.perf_counter() - start:.0f}s: {wrong} wrong/partial publication(s), "
              f"{crashes} crash(es)")
    return 1 if wrong or crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
