"""Train the default model organism from scratch and report its held-out WhereBench accuracy and wall time.

    .venv/bin/python benchmarks/bench_organism.py [--preset default] [--threads 1] [--spatial-fraction F]

Prints steps/s, wall time (data + training + evals) and per-task accuracy on the test split with 95%
bootstrap CIs, and checks the organism's learning bars (what >= 95%, two-object where >= 90%, <= 5 min).
Nothing is cached: the point is to time training from scratch. Wall times on a CPU shared with other jobs
are inflated; the script prints the load average next to them. The organism zoo (organisms that fail for the
blog's reasons) has its own table: benchmarks/bench_zoo.py.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", help="organism preset (a presets.yml name: default | quick | smoke | a zoo organism)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--spatial-fraction", type=float, default=None, help="override spatial_fraction (0 = captions/what only)")
    ap.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()

    from spatialkit.models.organism import OrganismVLM, accuracy_by_task, evaluate, preset, wherebench
    from spatialkit.common.stats import bootstrap_ci
    from spatialkit.models.organism import train

    overrides = {k: v for k, v in (("spatial_fraction", args.spatial_fraction), ("steps", args.steps),
                                   ("seed", args.seed)) if v is not None}
    cfg = preset(args.preset, **overrides)
    load_before = os.getloadavg()
    t0, cpu0 = time.perf_counter(), time.process_time()
    model, vocab, metrics = train(cfg, threads=args.threads, progress=True)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    load_after = os.getloadavg()
    train_s = metrics["timing"]["total_s"] - metrics["timing"]["data_s"]

    vlm = OrganismVLM(model, vocab, cfg)
    with torch.inference_mode():
        df = evaluate(vlm, wherebench(cfg), "test")
    table = accuracy_by_task(df)
    print(f"\norganism preset={args.preset} overrides={overrides} threads={torch.get_num_threads() if args.threads is None else args.threads}")
    print(f"steps run {metrics['steps_run']} / {cfg.optim.steps} (early stop: {metrics['stopped_early']}), "
          f"{metrics['steps_run'] / train_s:.2f} steps/s, batch {cfg.optim.batch_size}")
    print(f"CPU time {cpu:.1f} s (process time, all threads; on a loaded machine the honest estimate of the "
          f"time on free cores)")
    print(f"wall time {wall:.1f} s (data {metrics['timing']['data_s']:.1f} s); load average before "
          f"{load_before[0]:.1f}, after {load_after[0]:.1f} on {os.cpu_count()} cores")
    print("val history:")
    for h in metrics["history"]:
        print("  ", {k: round(v, 3) if isinstance(v, float) else v for k, v in h.items()})
    print("\nheld-out WhereBench test split:")
    for _, row in table.iterrows():
        est = bootstrap_ci(df[df.task == row.task]["correct"].to_numpy(float), seed=0)
        print(f"  {row.family:6s} {row.task:10s} acc {est}  (95% bootstrap CI)  n={row.n}")
    fam = df.groupby("family")["correct"].mean()
    where_two = df[df.task == "where_two"]["correct"].mean()
    print(f"\nwhat {fam.get('what', np.nan):.3f} (bar >= 0.95)   where_two {where_two:.3f} (bar >= 0.90)   "
          f"wall {wall:.0f} s (bar <= 300 s on 2 free cores)")


if __name__ == "__main__":
    main()
