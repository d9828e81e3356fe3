"""Overhead of the shuffle hook on one forward pass: ratio (with hook / without), measured in one run.

    .venv/bin/python benchmarks/bench_shuffle_hook.py [--repeats 30] [--threads 1]

Target: ratio <= 1.05. The two variants are timed interleaved (A B B A per round) and the ratio is the median
of the per-round ratios, so load from other processes on a shared machine hits both alike. Models: an (untrained) default-size model
organism batch of 16, and tiny Hugging Face Qwen2-VL / LLaVA models with a long visual sequence.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from spatialkit.interventions import shuffle_visual_tokens


def organism_case():
    from spatialkit.models import ModelConfig, TinyVLM, Vocab
    from spatialkit.organism import OrganismVLM

    vocab = Vocab.build([])
    torch.manual_seed(0)
    vlm = OrganismVLM(TinyVLM(ModelConfig(vocab_size=len(vocab))), vocab)
    images = np.random.default_rng(0).integers(0, 256, (16, 48, 48, 3), dtype=np.uint8)
    return "organism (16 x 36 visual tokens)", vlm, vlm.prepare(images, ["where is the ?"] * 16)


def hf_case(family: str, grid: tuple[int, int], llava_grid: int = 4):
    from spatialkit import hf_tiny

    vlm = hf_tiny.tiny_vlm(family, seed=0, llava_grid=llava_grid)
    h, w = hf_tiny.image_size(family, grid=grid, llava_grid=llava_grid)
    images = list(np.random.default_rng(0).integers(0, 256, (2, h, w, 3), dtype=np.uint8))
    batch = vlm.prepare(images, ["where is the red cup"] * 2)
    n = int(batch.image_mask.sum()) // 2
    return f"{family} (2 x {n} visual tokens)", vlm, batch


def time_pair(vlm, batch, repeats: int) -> tuple[float, float, float]:
    """Median ms without / with the hook, and the median of per-round ratios (ABBA order per round)."""
    plain, hooked, ratios = [], [], []

    def run(hook: bool) -> float:
        if hook:
            with shuffle_visual_tokens(vlm, fraction=1.0, seed=0):
                t = time.perf_counter()
                vlm.logits(batch)
                return time.perf_counter() - t
        t = time.perf_counter()
        vlm.logits(batch)
        return time.perf_counter() - t

    for _ in range(3):  # warm-up
        run(False), run(True)
    for _ in range(repeats):
        a1, b1, b2, a2 = run(False), run(True), run(True), run(False)
        plain += [a1, a2]
        hooked += [b1, b2]
        ratios.append((b1 + b2) / (a1 + a2))
    return statistics.median(plain), statistics.median(hooked), statistics.median(ratios)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [organism_case(), hf_case("qwen2_vl", (16, 16)), hf_case("llava", (0, 0), llava_grid=16)]
    worst = 0.0
    print(f"{'model':40s} {'no hook ms':>11s} {'hook ms':>9s} {'ratio':>7s}")
    for name, vlm, batch in cases:
        plain, hooked, ratio = time_pair(vlm, batch, args.repeats)
        worst = max(worst, ratio)
        print(f"{name:40s} {1e3 * plain:11.2f} {1e3 * hooked:9.2f} {ratio:7.3f}")
    print(f"worst ratio {worst:.3f} (target <= 1.05): {'OK' if worst <= 1.05 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
