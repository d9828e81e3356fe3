"""Peak memory of each notebook step on an HF model, measured next to ``spatialkit.models.hf.estimate_memory``.

    .venv/bin/python benchmarks/bench_memory.py                         # tiny Qwen2-VL + LLaVA on the CPU
    .venv/bin/python benchmarks/bench_memory.py --device cuda --model /path/to/hub-layout-folder --batch-size 64
    .venv/bin/python benchmarks/bench_memory.py --reference             # the 7B estimates at the full profile's sizes

Steps: score_options (each image encoded once, prompt once, log-probs at option tokens only), the old
per-option reference (``score_options_reference``), generate (3 tokens), the attention probe
(``analysis.attention.measure``), and a forward under the shuffle and the normalize hooks (``vlm.logits``).
Measured: CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before the step (exact); CPU the
process RSS sampled every 0.5 ms minus the RSS before the step (approximate: glibc reuses freed pages, so small
steps can read 0). The estimate column is the same step's ``MemoryEstimate.running`` (bytes beyond the weights).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from spatialkit.models import hf

MiB = 1024**2


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_of(fn, device: torch.device) -> tuple[int, float]:
    """(peak extra bytes, seconds) of fn()."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, time.perf_counter() - start
    before, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        thread.join()
    return max(0, max(peak[0], _rss()) - before), seconds


def steps(vlm, images, prompts, options):
    from spatialkit.analysis import attention
    from spatialkit.analysis.interventions import normalize_visual_norms, shuffle_visual_tokens

    batch = vlm.prepare(images, prompts)

    def shuffled():
        with shuffle_visual_tokens(vlm, 1.0, 0):
            vlm.logits(batch)

    def normalized():
        with normalize_visual_norms(vlm):
            vlm.logits(batch)

    return {
        "score_options": lambda: vlm.score_options(images, prompts, options),
        "score_options_reference": lambda: vlm.score_options_reference(images, prompts, options),
        "generate": lambda: vlm.generate(images, prompts, max_new_tokens=3),
        "attention_probe": lambda: attention.measure(vlm, batch),
        "shuffle_hook": shuffled,
        "normalize_hook": normalized,
    }, batch


ESTIMATED_AS = {"score_options": "score_options", "score_options_reference": "score_options_reference",
                "generate": "generate", "attention_probe": "forward", "shuffle_hook": "forward", "normalize_hook": "forward"}


def bench(vlm, label: str, batch_size: int, device: torch.device, image_px: int) -> list[dict]:
    rng = np.random.default_rng(0)
    if vlm.family == "llava":
        side = vlm.model.config.vision_config.image_size
        images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(batch_size)]
    else:
        images = [rng.integers(0, 256, (image_px, image_px, 3), dtype=np.uint8) for _ in range(batch_size)]
    prompts = ["Where is the red square in relation to the blue circle?"] * batch_size
    options = [["left", "right", "above", "below"]] * batch_size
    run, batch = steps(vlm, images, prompts, options)
    tokens = int(batch.image_mask[0].sum())
    text = batch.inputs["input_ids"].shape[1] - tokens
    text_opts = vlm.prompt_texts(prompts[:1])[0]
    option_tokens = max(len(vlm.option_ids(text_opts, o)) for o in options[0])
    rows = []
    for name, fn in run.items():
        fn()  # warm-up (lazy inits, allocator pools)
        peak, seconds = peak_of(fn, device)
        est = hf.estimate_memory(vlm, batch_size, image_tokens_per_image=tokens, text_tokens=text,
                                 step=ESTIMATED_AS[name], dtype=str(vlm.dtype).removeprefix("torch."),
                                 option_tokens=option_tokens, max_new_tokens=3, overhead=1.0)
        rows.append(dict(model=label, step=name, batch=batch_size, seq=int(batch.inputs["input_ids"].shape[1]),
                         measured_MiB=peak / MiB, estimate_MiB=est.running / MiB, seconds=seconds))
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'model':<28} {'step':<24} {'batch':>5} {'seq':>5} {'measured MiB':>13} {'estimate MiB':>13} {'s':>7}")
    for r in rows:
        print(f"{r['model']:<28} {r['step']:<24} {r['batch']:>5} {r['seq']:>5} {r['measured_MiB']:>13.1f} "
              f"{r['estimate_MiB']:>13.1f} {r['seconds']:>7.2f}")


# The full profile's HF-model steps: (notebook, step, batch size) at image_size 224.
FULL_PROFILE_STEPS = [
    ("03", "score_options", 256), ("03", "forward", 256),  # gaze_vs_correctness: scoring, attention probe
    ("04", "generate", 256),  # AdaptVis / ScalingVis generation
    ("02", "score_options", 8), ("02", "forward", 256),  # permutation_test (batch_size=8), n_norm_images norms
    ("03", "score_options_reference", 256),  # the old scoring, for comparison
]


def reference_table(image_size: int = 224) -> None:
    print(f"7B estimates at image_size {image_size} (bfloat16, sdpa, 64 text tokens, 4 one-token options; "
          f"hf.estimate_memory on the published configs):")
    print(f"{'model':<24} {'nb':<3} {'step':<24} {'batch':>5} {'total GiB':>10} {'KV':>6} {'act':>6} {'logits':>7} "
          f"{'vision':>7} {'fits at (80 GiB)':>16}")
    for name in hf.PUBLISHED_MODELS:
        config = hf.published_config(name)
        params = hf.parameter_count(config)
        for nb, step, bs in FULL_PROFILE_STEPS:
            est = hf.estimate_memory(config, bs, step=step, image_size=image_size, params=params)
            r = est.as_row()
            fits = hf.largest_batch(80 * hf.memory.GiB, model_config=config, step=step, image_size=image_size,
                                    params=params)
            print(f"{name:<24} {nb:<3} {step:<24} {bs:>5} {r['total_GiB']:>10.1f} {r['kv_GiB']:>6.1f} "
                  f"{r['lm_act_GiB']:>6.1f} {r['logits_GiB']:>7.1f} {r['vision_GiB']:>7.1f} {fits:>16}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="local model folder (repeatable); default: tiny Qwen2-VL and LLaVA")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-px", type=int, default=224, help="Qwen image side in pixels")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reference", action="store_true", help="print the 7B estimate table only")
    args = ap.parse_args()
    if args.reference:
        reference_table(args.image_px)
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    if args.model:
        for path in args.model:
            vlm = hf.load(path, device=device, dtype=args.dtype, max_pixels=hf.DEFAULT_MAX_PIXELS)
            rows += bench(vlm, vlm.name, args.batch_size, device, args.image_px)
    else:
        from spatialkit.testing import hf_tiny

        for family in ("qwen2_vl", "llava"):  # a wider tiny model, so that activations dominate the noise
            model, processor = hf_tiny.build_tiny(family, hidden=256, heads=4, kv_heads=2, layers=2, llava_grid=16)
            vlm = hf.HFVLM(model.to(device), processor, family)
            rows += bench(vlm, f"tiny {family} (d=256)", args.batch_size, device, args.image_px)
    print_rows(rows)


if __name__ == "__main__":
    main()
