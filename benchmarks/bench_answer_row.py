"""Benchmark: WhereBench evaluation of an organism, one LM row per option vs one per item (the answer row).

    SPATIALKIT_CACHE=<store> .venv/bin/python benchmarks/bench_answer_row.py [--presets llava llava_b]
        [--per-task 400] [--repeats 3]

``spatialkit.models.evaluate.evaluate`` scores a K-option question with K LM rows
(``OrganismVLM.score_options``); ``spatialkit.models.organism.answer_row.evaluate`` reads every one-word option at
the item's ``<ans>`` row, with the LM's last block at the read rows only (tests/test_answer_row.py pins the scores
to the first within 1e-5). The notebooks' evaluations (00, 02's permutation tests, 03's gaze vs correctness, 05,
06) run the second, the trainer's validation the first. This prints, from one run and per organism, the CPU time (process time, one torch
thread) of each on the organism's test items (``--per-task`` per task, notebook 00's and 02's split), interleaved
over ``--repeats`` rounds, the ratio of their medians, and how many predicted answers differ. Organisms come
from the store (trained when missing: ``load_or_train``); scenes are rendered before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def main() -> None:
    from spatialkit.models.organism import answer_row
    from spatialkit.models import evaluate as plain
    from spatialkit.models.organism import load_or_train, wherebench
    from spatialkit.models.organism.benches import items_per_task

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["llava", "llava_b"],
                    help="organism presets (llava_b's front/behind options include the two-word 'in front')")
    ap.add_argument("--per-task", type=int, default=400, help="test items per task of the organism's world")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the key of the book's organisms holds one thread
    print(f"{'organism':<10} {'items':>6} {'one row per option':>19} {'answer row':>11} {'ratio':>6} "
          f"{'answers differing':>18}")
    for name in args.presets:
        vlm = load_or_train(name, progress=False)
        bench = wherebench(items_per_task(vlm.config, args.per_task))
        items = bench.splits["test"]
        for it in items:  # rendered once, outside the timing (evaluate caches scenes)
            plain._render(it.scene_seed, bench.config)
        arms = {"one row per option": plain.evaluate, "answer row": answer_row.evaluate}
        times: dict[str, list[float]] = {a: [] for a in arms}
        frames = {}
        for r in range(args.repeats):
            order = list(arms) if r % 2 == 0 else list(reversed(arms))  # interleaved: load spikes hit both
            for arm in order:
                start = time.process_time()
                frames[arm] = arms[arm](vlm, bench, "test")
                times[arm].append(time.process_time() - start)
        old, new = (statistics.median(times[a]) for a in arms)
        differing = int((frames["one row per option"].predicted != frames["answer row"].predicted).sum())
        print(f"{name:<10} {len(items):>6} {old:>18.2f}s {new:>10.2f}s {old / new:>5.2f}x {differing:>18}")


if __name__ == "__main__":
    main()
