"""Does a finer patch grid let the healthy recipe read front/behind? Trains (or loads) it on the WhatsUp-B mirror
at 8-px patches (the zoo's 6x6 grid of a 48-px image) and at 4-px patches (12x12), per seed, and prints each
organism's accuracy per task and the paired difference patch 4 - patch 8 with a bootstrap CI per seed.

    SPATIALKIT_CACHE=/path/to/store .venv/bin/python benchmarks/bench_finer_grid.py [--seeds 0 1]
        [--schedule ceiling|zoo] [--no-train] [--threads 1]

Why: notebook 07's section 8 reads that the 6x6 grid's own patch labels carry front/behind on only part of the
occluding pairs, and that a grid twice as fine carries more. Whether a trained organism then answers front/behind
better is a training question, which this script answers outside the book (it retrains the world's organism at
the finer grid: about 4x the stage-1 cost and 2.2x the stage-2 cost on one CPU thread).

``--schedule ceiling`` (default) is llava_b's same-world ceiling in notebook 07 (`combine.ceiling_config`: the
healthy recipe, a 6000-step schedule with early stop, on the B mirror); ``zoo`` is the `whatsup_b` preset (4000
steps). Only ``model.patch_size`` differs between the two arms of a seed; both score the same test items (400 per
task of the world, drawn as `benchmarks/bench_zoo.py` draws them).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

PATCHES = (8, 4)
TASKS = ("depth", "whatsup_b", "where_two", "where_one")
ITEMS_PER_TASK = 400


def config(schedule: str, patch: int, seed: int):
    from spatialkit.analysis.combine import ceiling_config
    from spatialkit.models.organism import preset

    cfg = ceiling_config("llava_b", seed=seed) if schedule == "ceiling" else preset("whatsup_b", seed=seed)
    return cfg if patch == 8 else cfg.replace(model={"patch_size": patch})


def scored(cfg, allow_train: bool, threads: int):
    """(the organism's per-item results on the test split, its training record)."""
    from spatialkit.models.organism import evaluate, load_or_train
    from spatialkit.models.organism.benches import items_per_task
    from spatialkit.models.organism.data import wherebench

    torch.set_num_threads(threads)
    c0 = time.process_time()
    vlm = load_or_train(cfg, allow_train=allow_train, progress=False)
    cpu = time.process_time() - c0
    bench = wherebench(items_per_task(cfg, ITEMS_PER_TASK))
    with torch.inference_mode():
        df = evaluate(vlm, bench, "test")
    trained_here = cpu > 0.5 * vlm.metrics["timing"]["total_s"]
    return df, {"steps": vlm.metrics["steps_run"], "train_cpu_s": round(cpu, 1) if trained_here else None}


def main() -> None:
    from spatialkit.common.stats import bootstrap_ci

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    ap.add_argument("--schedule", choices=("ceiling", "zoo"), default="ceiling",
                    help="ceiling: notebook 07's llava_b ceiling (6000 steps); zoo: the whatsup_b preset (4000)")
    ap.add_argument("--no-train", action="store_true", help="load from the checkpoint store only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; part of the checkpoint key)")
    args = ap.parse_args()
    if args.threads < 1:  # torch would stop with a traceback
        ap.error(f"--threads must be >= 1, got {args.threads}")

    runs = {}
    for seed in args.seeds:
        for patch in PATCHES:
            df, record = scored(config(args.schedule, patch, seed), not args.no_train, args.threads)
            runs[patch, seed] = df
            acc = df.groupby("task").correct.mean()
            what = df[df.family == "what"].correct.mean()
            tasks = "  ".join(f"{t} {acc[t]:.3f}" for t in TASKS if t in acc.index)
            print(f"patch {patch} seed {seed}: what {what:.3f}  {tasks}  steps {record['steps']}"
                  + (f"  trained here in {record['train_cpu_s']} s CPU" if record["train_cpu_s"] else ""))
    first = runs[PATCHES[0], args.seeds[0]]
    for key, df in runs.items():  # paired differences need the same items in the same order
        if list(df.scene_seed) != list(first.scene_seed) or list(df.question) != list(first.question):
            raise SystemExit(f"patch {key[0]} seed {key[1]} scored other test items than the first run")
    print(f"\npatch {PATCHES[1]} - patch {PATCHES[0]}, paired over the same test items (points, 95% CI):")
    for seed in args.seeds:
        parts = []
        for name, mask in [(t, (first.task == t).to_numpy()) for t in TASKS if (first.task == t).any()] + [
                ("what", (first.family == "what").to_numpy())]:
            diff = (runs[PATCHES[1], seed].correct.to_numpy()[mask].astype(np.float64)
                    - runs[PATCHES[0], seed].correct.to_numpy()[mask].astype(np.float64))
            ci = bootstrap_ci(diff, seed=seed, n_boot=2000)
            parts.append(f"{name} {100 * ci.mean:+.1f} [{100 * ci.low:+.1f}, {100 * ci.high:+.1f}]")
        print(f"  seed {seed}: " + "; ".join(parts))


if __name__ == "__main__":
    from spatialkit.common.checkpoints import CheckpointError
    from spatialkit.common.params import ParameterError

    try:
        main()
    except (ParameterError, CheckpointError) as err:  # a bad --seeds value, or --no-train with a checkpoint missing
        raise SystemExit(f"bench_finer_grid: {err}") from None
