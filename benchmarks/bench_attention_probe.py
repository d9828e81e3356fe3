"""Benchmark: the last-row attention probe vs eager ``output_attentions`` on a tiny HF model.

    .venv/bin/python benchmarks/bench_attention_probe.py [--family qwen2_vl] [--lengths 1024 2048 4096]

Prints, per sequence length, from one run:

* peak tensor memory of one forward pass, three ways: stock fused SDPA (no hook), SDPA + the probe
  (``spatialkit.analysis.attention.measure``), and eager attention with ``output_attentions=True``; and the ratio
  eager / probe (goal: >= 50x at 4k tokens);
* forward wall time with the probe / without it (goal: <= 1.1x): the ratio of medians and the ratio of
  minima of interleaved repeats (on a shared machine the minimum is the least disturbed run).

How memory is measured: a ``TorchDispatchMode`` sees every aten op's outputs; it adds each new tensor
storage's bytes to a running total when it appears and subtracts them when the storage is freed (a
weakref finalizer on the storage object, which PyTorch keeps alive exactly as long as the storage). The
peak of that total, minus what was alive before the forward, is the peak tensor memory of the forward
(weights and inputs excluded, they exist before). Scratch buffers a C++ kernel allocates internally
(e.g. the flash-attention CPU kernel's per-thread blocks) are not tensors handed back to Python and are
not counted; they are O(block size), not O(L^2). The sequence is mostly text (one small image) so the
vision tower, which is the same in all three runs, does not blur the LM attention's memory.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import weakref

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from spatialkit.analysis import attention  # noqa: E402
from spatialkit.testing import hf_tiny


class PeakTensorMemory(TorchDispatchMode):
    """Peak bytes of tensor storages created inside the ``with`` block and alive at the same time."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _freed(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._freed, key)
        return out


def batch_of_length(vlm, family: str, target: int):
    """A one-image batch whose LM sequence is about ``target`` tokens (mostly prompt text)."""
    h, w = hf_tiny.image_size(family, (2, 2), llava_grid=4)
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    words = hf_tiny.CORPUS_WORDS
    n = target
    for _ in range(6):  # the tokenizer merges some words: correct the word count until the length fits
        prompt = " ".join(words[i % len(words)] for i in range(n))
        batch = vlm.prepare([image], [prompt])
        length = batch.token_kind.shape[1]
        if abs(length - target) <= 2:
            break
        n += target - length
    return batch


def forward_sdpa(vlm, batch):
    return vlm.logits(batch)


def forward_probe(vlm, batch):
    return attention.measure(vlm, batch)


def forward_eager(eager, batch):
    with torch.no_grad():
        return eager(**batch.inputs, output_attentions=True, use_cache=False)


def peak_bytes(fn) -> int:
    with PeakTensorMemory() as tracker:
        result = fn()
    del result
    return tracker.peak


def wall_times(fns: dict, repeats: int) -> dict:
    """Wall times per function; repeats interleaved so load spikes from other jobs hit all of them alike."""
    times = {name: [] for name in fns}
    for i in range(repeats):
        order = list(fns.items()) if i % 2 == 0 else list(reversed(fns.items()))  # no slot is always first
        for name, fn in order:
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="qwen2_vl", choices=hf_tiny.FAMILIES)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9, help="timing repeats at the longest length (more at shorter)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vlm = hf_tiny.tiny_vlm(args.family, seed=0, layers=args.layers)
    eager = copy.deepcopy(vlm.model)
    eager.set_attn_implementation("eager")
    cfg = vlm.lm_config
    print(f"tiny {args.family}: {args.layers} LM layers, {cfg.num_attention_heads} heads "
          f"({cfg.num_key_value_heads} kv), hidden {cfg.hidden_size}; torch threads {args.threads}; "
          f"times are wall-clock on a shared machine (inflated by other jobs' load)")
    header = (f"{'L':>6} {'sdpa MiB':>9} {'probe MiB':>10} {'eager MiB':>10} {'eager/probe':>12} "
              f"{'L^2 attn MiB':>13} {'probe ms':>9} {'sdpa ms':>8} {'probe/sdpa':>11} {'(min/min)':>10} {'eager ms':>9}")
    print(header, flush=True)
    mib = 2**20
    for target in args.lengths:
        batch = batch_of_length(vlm, args.family, target)
        length = batch.token_kind.shape[1]
        fns = {"sdpa": lambda: forward_sdpa(vlm, batch), "probe": lambda: forward_probe(vlm, batch),
               "eager": lambda: forward_eager(eager, batch)}
        record = fns["probe"]()  # warm-up, and the probe's own output must be the row it claims to be
        assert record.probs.shape[-1] == length
        peaks = {name: peak_bytes(fn) for name, fn in fns.items()}
        # what output_attentions must hold at the end: every layer's (B, H, L, L) float32 matrix
        attn_bytes = args.layers * cfg.num_attention_heads * length * length * 4
        repeats = max(args.repeats, args.repeats * max(args.lengths) // length)  # short runs are cheap: more of them
        times = wall_times({"sdpa": fns["sdpa"], "probe": fns["probe"]}, repeats)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        eager_time = statistics.median(wall_times({"eager": fns["eager"]}, max(1, args.repeats // 3))["eager"])
        print(f"{length:>6} {peaks['sdpa'] / mib:>9.1f} {peaks['probe'] / mib:>10.1f} {peaks['eager'] / mib:>10.1f} "
              f"{peaks['eager'] / peaks['probe']:>11.1f}x {attn_bytes / mib:>13.1f} {1e3 * med['probe']:>9.1f} "
              f"{1e3 * med['sdpa']:>8.1f} {med['probe'] / med['sdpa']:>10.3f}x "
              f"{min(times['probe']) / min(times['sdpa']):>9.3f}x {1e3 * eager_time:>9.1f}", flush=True)
    print("goals: eager/probe >= 50x at 4k tokens; probe/sdpa <= 1.1x")


if __name__ == "__main__":
    main()
