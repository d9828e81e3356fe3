"""Benchmark: one stage-2 training step of an organism in float32 and in bfloat16, measured in one run.

    .venv/bin/python benchmarks/bench_step.py [--preset healthy] [--threads 1] [--steps 40]

Why: the cold book is training-bound (README, "Performance"), so the one lever left per step is arithmetic
precision. This times the trainer's packed stage-2 step (frozen encoder: projector + LM forward, backward,
AdamW) on real batches of the preset's world, four ways:

- float32 with the LM's last block at every position (how the organisms trained until the ``only`` change);
- float32, the last block at the answer positions only (``TinyVLM.hidden(only=...)``: the loss reads nothing
  else; the same forward bit for bit, tests/test_train.py), as the organisms train now;
- ``torch.autocast("cpu", bfloat16)`` around the LM;
- the same autocast with every attention call run in float32 (an ``attention_fn`` hook casts q/k/v up and
  the output back), since CPU flash attention's bfloat16 backward is the slow kernel here;

plus the two kernels behind the difference: a (tokens x d) @ (d x 4d) matmul and the masked flash attention
(forward + backward), in float32 and bfloat16. Ratios are to the first variant in the same run. A benchmark, not a
test: the organisms still train in float32 (bfloat16 changes every trained weight).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F


def packed_batches(cfg, n: int):
    """``n`` packed stage-2 batches of ``cfg``'s world, drawn like the trainer draws them."""
    from spatialkit.models.organism.data import (
        assemble_packed,
        build_pool,
        build_vocab,
        sample_batch,
    )

    vocab = build_vocab(cfg)
    pool = build_pool(cfg, vocab)
    rng = np.random.default_rng(cfg.seed)
    n_img = cfg.model.grid[0] * cfg.model.grid[1]
    batches = []
    for _ in range(n):
        idx = sample_batch(cfg, pool, rng)
        with_system = bool(rng.random() < cfg.data.system_prompt_fraction)
        images, which = np.unique(pool.image_index[idx], return_inverse=True)
        groups = [idx[np.flatnonzero(which == u)] for u in range(len(images))]
        batches.append((images, assemble_packed(vocab, n_img, groups, pool.tails, pool.targets, with_system)))
    return vocab, pool, batches


def float32_attention(call):
    """An attention hook: the call's SDPA in float32 whatever the autocast dtype, output cast back."""
    with torch.autocast("cpu", enabled=False):
        q, k, v = call.query, call.expand_kv(call.key), call.expand_kv(call.value)
        out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=call.mask,
                                             scale=call.scale)
    return out.to(q.dtype)


def time_steps(model, features, batches, dtype, attention_fn, only: bool, warmup: int = 5) -> float:
    """Mean seconds per stage-2 step (projector + LM forward, backward, clip, AdamW) over ``batches``."""
    from spatialkit.models.organism.train import packed_hidden

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98))

    def step(images, packed):
        ids, kind, tgt, pos, mask = packed
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            tokens = model.projector(features[torch.from_numpy(images)])
            has_target = tgt != -100
            if only:  # the trainer's forward
                hidden = packed_hidden(model, tokens, ids, kind, pos, mask, attention_fn, only=has_target)
            else:
                hidden = packed_hidden(model, tokens, ids, kind, pos, mask, attention_fn)[has_target]
        loss = F.cross_entropy(model.lm_head(hidden.float()), tgt[has_target])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for images, packed in batches[:warmup]:
        step(images, packed)
    start = time.perf_counter()
    for images, packed in batches:
        step(images, packed)
    return (time.perf_counter() - start) / len(batches)


def seconds_per_call(fn, repeats: int) -> float:
    for _ in range(10):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def kernel_times(tokens: int, dim: int, heads: int, length: int, rows: int, repeats: int = 200) -> dict:
    """Seconds per matmul (tokens x dim @ dim x 4 dim) and per masked flash attention forward + backward,
    per dtype."""
    out = {}
    mask = torch.ones(length, length, dtype=torch.bool).tril().expand(rows, 1, length, length)
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(tokens, dim, dtype=dtype), torch.randn(dim, 4 * dim, dtype=dtype)
        q, k, v = (torch.randn(rows, heads, length, dim // heads, dtype=dtype, requires_grad=True) for _ in range(3))
        out["matmul", dtype] = seconds_per_call(lambda a=a, b=b: a @ b, repeats)
        out["attention", dtype] = seconds_per_call(
            lambda q=q, k=k, v=v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward(), repeats)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="healthy", help="organism preset whose world and sizes to use")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the book trains with 1)")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per variant (after 5 warm-up steps)")
    args = ap.parse_args()
    if args.steps < 1 or args.threads < 1:
        ap.error("--steps and --threads must be at least 1")
    torch.set_num_threads(args.threads)

    from spatialkit.models.organism import preset
    from spatialkit.models.organism.model import TinyVLM, to_pixels

    cfg = preset(args.preset)
    vocab, pool, batches = packed_batches(cfg, args.steps + 5)
    torch.manual_seed(cfg.seed)
    model = TinyVLM(cfg.model_config(len(vocab)))
    model.vision.requires_grad_(False)  # stage 2: the encoder is frozen and its outputs computed once
    with torch.no_grad():
        features = torch.cat([model.vision(to_pixels(pool.images[i: i + 256])) for i in range(0, len(pool.images), 256)])
    rows = np.mean([packed[0].shape[0] for _, packed in batches])
    length = np.mean([packed[0].shape[1] for _, packed in batches])
    print(f"preset {args.preset}: {rows:.1f} packed rows x {length:.1f} tokens per step, lm_dim {cfg.model.lm_dim}, "
          f"{cfg.model.lm_layers} layers, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")

    state = {k: v.clone() for k, v in model.state_dict().items()}
    variants = (("float32, last block everywhere", torch.float32, None, False),
                ("float32, last block at targets (trained)", torch.float32, None, True),
                ("bfloat16 autocast", torch.bfloat16, None, True),
                ("bfloat16 autocast, float32 attention", torch.bfloat16, float32_attention, True))
    base = None
    for name, dtype, attention_fn, only in variants:
        model.load_state_dict(state)  # every variant starts from the same weights
        seconds = time_steps(model, features, batches[: args.steps + 5], dtype, attention_fn, only)
        base = base or seconds
        print(f"  step, {name:<42} {seconds * 1e3:6.2f} ms   x{base / seconds:.2f} vs the first")

    kernels = kernel_times(int(rows * length), cfg.model.lm_dim, cfg.model.lm_heads, int(length), round(rows))
    for name in ("matmul", "attention"):
        f32, bf16 = kernels[name, torch.float32], kernels[name, torch.bfloat16]
        print(f"  kernel {name:<10} float32 {f32 * 1e3:6.3f} ms, bfloat16 {bf16 * 1e3:6.3f} ms   "
              f"float32 / bfloat16 time x{f32 / bf16:.2f} ({'bfloat16 faster' if bf16 < f32 else 'bfloat16 slower'})")


if __name__ == "__main__":
    main()
