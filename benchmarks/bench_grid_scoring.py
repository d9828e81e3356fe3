"""Benchmark: notebook 07's scoring of one cell under every AdaptVis α, three ways, from one run.

    SPATIALKIT_CACHE=<store> .venv/bin/python benchmarks/bench_grid_scoring.py [--preset llava] [--items 900]
        [--repeats 3]

ScalingVis changes only the answer row's attention: the vision encoder's output does not depend on α, and no row
before the answer row attends to it (causal attention), so everything before it is the same for every α.
``spatialkit.analysis.combine.answer_row_scores_per_alpha`` runs one plain prefill per batch and, per other α,
only the answer row again over a copy of its cache (``scaled_answer_logits``). The references: the whole forward
(encoder + LM, ``vlm.logits``) per α, as the function did first, and the whole LM pass per α on visual tokens
encoded once, as it did until 2026-12-01. All three give the same numbers up to the order of float sums
(tests/test_combine.py, tests/test_adaptvis.py); this prints the CPU time (process time, one torch thread) of
each, interleaved over ``--repeats`` rounds, and the ratios of their medians. The organism is loaded from the store
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
    from spatialkit.analysis.interventions.adaptvis import scaling_vis, scaling_vis_generations
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
    def whole_forward_per_alpha():  # the first reference: encoder + LM for every α
        for start in range(0, len(items), args.batch):
            chunk = items[start: start + args.batch]
            batch = vlm.prepare(images[start: start + args.batch], [it.question.text for it in chunk])
            for a in ALPHAS:
                with scaling_vis(vlm, a):
                    vlm.logits(batch)

    @torch.no_grad()
    def lm_pass_per_alpha():  # the second: the images encoded once per batch, the whole LM pass for every α
        for start in range(0, len(items), args.batch):
            chunk = items[start: start + args.batch]
            batch = vlm.prepare(images[start: start + args.batch], [it.question.text for it in chunk])
            visual = vlm.visual_tokens(batch).tokens
            for a in ALPHAS:
                with scaling_vis(vlm, a):
                    vlm.output_embeddings()(vlm.lm_hidden(batch, visual))

    def answer_row_per_alpha():
        combine.answer_row_scores_per_alpha(vlm, images, items, ALPHAS, args.batch)

    ways = {"whole forward per α": whole_forward_per_alpha, "LM pass per α": lm_pass_per_alpha,
            "answer row per α": answer_row_per_alpha}
    times = {name: [] for name in ways}
    for r in range(args.repeats):
        order = list(ways) if r % 2 == 0 else list(reversed(ways))  # interleaved: load spikes hit every way
        for name in order:
            c0 = time.process_time()
            ways[name]()
            times[name].append(time.process_time() - c0)
    print(f"{args.preset}: {len(items)} what-items x {len(ALPHAS)} α, batch {args.batch}, one thread, CPU s "
          f"(median of {args.repeats})")
    for name, ts in times.items():
        print(f"  {name:22s} {statistics.median(ts):7.2f} s   ({', '.join(f'{t:.2f}' for t in ts)})")
    now = statistics.median(times["answer row per α"])
    for name in ("whole forward per α", "LM pass per α"):
        print(f"  answer row per α vs {name}: {statistics.median(times[name]) / now:.2f}x faster")

    # notebook 04's way: greedy generation under every α (scaling_table), one generate per α vs one prefill
    prompts = [it.question.text for it in items]

    @torch.no_grad()
    def generate_per_alpha():
        for start in range(0, len(items), args.batch):
            for a in ALPHAS:
                with scaling_vis(vlm, a):
                    vlm.generate(images[start: start + args.batch], prompts[start: start + args.batch], 3)

    def one_prefill():
        for start in range(0, len(items), args.batch):
            scaling_vis_generations(vlm, images[start: start + args.batch], prompts[start: start + args.batch],
                                    ALPHAS, 3)

    gen = {"generate per α": generate_per_alpha, "one prefill, rerun per α": one_prefill}
    gtimes = {name: [] for name in gen}
    for r in range(args.repeats):
        for name in (list(gen) if r % 2 == 0 else list(reversed(gen))):
            c0 = time.process_time()
            gen[name]()
            gtimes[name].append(time.process_time() - c0)
    print("generation, up to 3 new tokens, same items and α (notebook 04's scaling_table), CPU s")
    for name, ts in gtimes.items():
        print(f"  {name:26s} {statistics.median(ts):7.2f} s   ({', '.join(f'{t:.2f}' for t in ts)})")
    ratio = statistics.median(gtimes["generate per α"]) / statistics.median(gtimes["one prefill, rerun per α"])
    print(f"  one prefill vs generate per α: {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
