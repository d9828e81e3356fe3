"""Benchmark: notebook 07's scoring of one cell under every AdaptVis α, images encoded once vs once per α.

    SPATIALKIT_CACHE=<store> .venv/bin/python benchmarks/bench_grid_scoring.py [--preset llava] [--items 900]
        [--repeats 3]

``spatialkit.analysis.combine.answer_row_scores_per_alpha`` runs the plain forward once per batch and each other α
(ScalingVis on the answer row) as one more LM pass on the *same* visual tokens: ScalingVis changes only the LM's
attention, so the vision encoder's output does not depend on α. The reference re-runs the whole forward
(``vlm.logits``: encoder + LM) for every α, as the function did before. Both give the same numbers
(tests/test_combine.py); this prints, from one run, the CPU time (process time, one torch thread) of each,
interleaved over ``--repeats`` rounds, and the ratio of their medians. The organism is loaded from the store
(trained when missing: ``load_or_train``); its test what-items of notebook 07's world are scored under notebook
07's six α (1, 0.5, 0.8, 1.5, 2, 3).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ALPHAS = (1.0, 0.5, 0.8, 1.5, 2.0, 3.0)  # notebook 07's defaults: 1 plus alpha1s and alpha2s


def main() -> None:
    from spatialkit.analysis import combine
    from spatialkit.analysis.interventions.adaptvis import scaling_vis
    from spatialkit.models.organism import load_or_train

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="llava", help="organism preset (07's failing organisms: llava, ...)")
    ap.add_argument("--items", type=int, default=900, help="07's n_items: test items of the world")
    ap.add_argument("--batch", type=int, default=256, help="prompts per forward pass (07's batch_size)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # the key of the book's organisms holds one thread
    vlm = load_or_train(args.preset, progress=False)
    sets = combine.item_sets(vlm.config, args.items, 20)
    items, images = sets.items["test"]["what"], sets.images["test"]["what"]

    @torch.no_grad()
    def once_per_alpha():  # the reference: the whole forward (encoder + LM) for every α
        for start in range(0, len(items), args.batch):
            chunk = items[start: start + args.batch]
            batch = vlm.prepare(images[start: start + args.batch], [it.question.text for it in chunk])
            for a in ALPHAS:
                with scaling_vis(vlm, a):
                    vlm.logits(batch)

    def encoded_once():
        combine.answer_row_scores_per_alpha(vlm, images, items, ALPHAS, args.batch)

    times = {"whole forward per α": [], "images encoded once": []}
    for r in range(args.repeats):
        order = list(times) if r % 2 == 0 else list(reversed(times))  # interleaved: load spikes hit both
        for name in order:
            c0 = time.process_time()
            (once_per_alpha if name.startswith("whole") else encoded_once)()
            times[name].append(time.process_time() - c0)
    print(f"{args.preset}: {len(items)} what-items x {len(ALPHAS)} α, batch {args.batch}, one thread, CPU s "
          f"(median of {args.repeats})")
    for name, ts in times.items():
        print(f"  {name:22s} {statistics.median(ts):7.2f} s   ({', '.join(f'{t:.2f}' for t in ts)})")
    ratio = statistics.median(times["whole forward per α"]) / statistics.median(times["images encoded once"])
    print(f"  speed-up of encoding once: {ratio:.2f}x")


if __name__ == "__main__":
    main()
