"""Prompter cost: query-only attention with per-image K/V (spatialkit.models.clip.Prompter) vs running the
whole single-head encoder layer on [prompt; patches] for every region and reading position 0.

Both compute the same region embeddings (tests/test_contrastive.py checks equality). Prints the speed
ratio measured in one run; wall-clock numbers on a shared machine are noisy, the ratio less so.

    .venv/bin/python benchmarks/bench_prompter.py [--regions 192] [--images 64] [--repeats 20]
"""

import argparse
import time

import torch

from spatialkit.models.clip import Prompter


def full_layer(prompter, prompt, patches, owner):
    return prompter.ln(prompter.layer(torch.cat([prompt[:, None], patches[owner]], dim=1))[:, 0])


def timed(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--regions", type=int, default=192)
    ap.add_argument("--patches", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    prompter = Prompter(args.width)
    patches = torch.randn(args.images, args.patches, args.width, requires_grad=True)
    prompt = torch.randn(args.regions, args.width, requires_grad=True)
    owner = torch.randint(0, args.images, (args.regions,))
    assert torch.allclose(prompter(prompt, patches, owner), full_layer(prompter, prompt, patches, owner), atol=1e-5)

    def step(fn):
        return lambda: fn(prompter, prompt, patches, owner).sum().backward()

    fast = timed(step(lambda p, *a: p(*a)), args.repeats)
    slow = timed(step(full_layer), args.repeats)
    print(f"forward+backward, {args.regions} regions on {args.images} images x {args.patches} patches, width {args.width}, "
          f"{args.threads} thread(s)")
    print(f"  full layer per region : {1000 * slow:8.2f} ms")
    print(f"  query-only, shared K/V: {1000 * fast:8.2f} ms")
    print(f"  speed-up ratio        : {slow / fast:8.2f}x")


if __name__ == "__main__":
    main()
