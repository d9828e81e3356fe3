"""The organism zoo: train (or load) each zoo organism and print one table of held-out accuracies and train times.

    SPATIALKIT_CACHE=/path/to/store .venv/bin/python benchmarks/bench_zoo.py [--only llava prior] [--threads 1]
        [--markdown] [--no-train]

Per organism (presets.yml; ``why:`` says which of the blog's failure mechanisms it has): what (presence,
identity, colour; count where the world asks it), where_one, where_two on a WhereBench test split of its world as
drawn with 400 items per task; on a world
with prior relations (``organism_prior``) also where_two on prior-consistent and on counter-prior items
(``wherebench(cfg, prior=...)``), and the blind answerer's where_two accuracy (``spatialkit.world.blind_accuracy``,
question text only, learned on a 2000-item train split: the prior's strength; ~chance on balanced worlds) and
the family on which the blind answerer is farthest from chance (the balance bar: within 5 points).

Organisms come from the checkpoint store (``load_or_train``; stage-1 encoders are shared between organisms that
differ only in stage 2). When one is trained here its wall and CPU time (``time.process_time``, the honest
estimate on a loaded machine), torch threads and load average are recorded in ``zoo_times.json`` next to the
store, keyed by preset and weights digest, so a later run that loads it still reports how long it took.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ITEMS_PER_TASK = 400
ZOO = ("healthy", "llava", "loud", "loud_norm", "loud_norm_text", "prior", "whatsup_a", "whatsup_b", "llava_a",
       "llava_b", "whatsup_a_partial")


def times_file() -> Path:
    from spatialkit.common import checkpoints

    return Path(checkpoints.cache_dir()) / "zoo_times.json"


def measure(name: str, threads: int, allow_train: bool, times: dict) -> dict:
    from spatialkit import world
    from spatialkit.models.organism import accuracy_by_task, evaluate, load_or_train, preset
    from spatialkit.models.organism.benches import items_per_task
    from spatialkit.models.organism.data import prior_benches

    cfg = preset(name)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        vlm = load_or_train(cfg, allow_train=allow_train, progress=False)
    finally:
        torch.set_num_threads(old)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    key = f"{name}:{vlm.metrics['state_sha256']}"
    timing = vlm.metrics["timing"]
    if wall > 0.5 * timing["total_s"]:  # trained in this process (a load takes well under a second)
        times[key] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "threads": threads,
                      "stage1_s": round(timing["vision_pretrain_s"], 1), "steps_run": vlm.metrics["steps_run"],
                      "load_before": round(load0, 1), "load_after": round(os.getloadavg()[0], 1),
                      "cores": os.cpu_count()}
    row = {"organism": name, **times.get(key, {"wall_s": round(timing["total_s"], 1), "cpu_s": None}),
           "steps_run": vlm.metrics["steps_run"]}
    # 400 test items per task of the world (the preset's own n_test is smaller, for the notebooks' speed), so every
    # accuracy and the blind answerer's check rest on >= 400 items per question family
    benches = prior_benches(items_per_task(cfg, ITEMS_PER_TASK), n_train=2000)
    with torch.inference_mode():
        df = evaluate(vlm, benches["natural"], "test")
        acc = accuracy_by_task(df).set_index("task")["accuracy"]
        row["what"] = float(df[df.family == "what"]["correct"].mean())
        for task in ("where_one", "where_two", "on_under", "whatsup_a", "depth", "whatsup_b"):
            if task in acc.index:
                row[task] = float(acc[task])
        for p in ("consistent", "counter"):
            if p in benches:
                d = evaluate(vlm, benches[p], "test")
                row[f"where_two_{p}"] = float(d[d.task == "where_two"]["correct"].mean())
    blind = world.blind_accuracy(benches["natural"], "test")
    row["blind_where_two"] = blind["where_two"]["accuracy"] if "where_two" in blind else None
    # the balance bar: the blind answerer's largest distance from chance over the families scored (where_two is
    # excluded on a prior world, whose where_two is unbalanced on purpose: there it is the prior's strength)
    balanced = {t: r for t, r in blind.items() if not (t == "where_two" and "counter" in benches)}
    worst = max(balanced, key=lambda t: abs(balanced[t]["accuracy"] - balanced[t]["chance"]))
    row["blind_worst"] = f"{worst} {balanced[worst]['accuracy'] - balanced[worst]['chance']:+.3f}"
    row["n_per_task"] = min(r["n"] for r in blind.values())
    row["per_task"] = {k: round(float(v), 3) for k, v in acc.items()}
    return row


def fmt(v, digits=3) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def table(rows: list[dict], markdown: bool) -> str:
    cols = [("organism", "organism"), ("what", "what"), ("where_one", "where_one"), ("where_two", "where_two"),
            ("where_two_consistent", "where_two prior-consistent"), ("where_two_counter", "where_two counter-prior"),
            ("blind_where_two", "blind where_two"), ("blind_worst", "blind, farthest from chance"),
            ("n_per_task", "test items per task"), ("wall_s", "train wall s"), ("cpu_s", "train CPU s"),
            ("stage1_s", "of which stage 1 wall s"), ("threads", "threads"), ("mirror", "WhatsUp-mirror tasks")]
    rows = [{**r, "mirror": ", ".join(f"{t} {r[t]:.3f}" for t in ("on_under", "whatsup_a", "depth", "whatsup_b")
                                      if r.get(t) is not None) or None} for r in rows]
    lines = []
    head = [c[1] for c in cols]
    body = [[fmt(r.get(k), 1 if k.endswith("_s") else 3) for k, _ in cols] for r in rows]
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" for _ in head) + "|")
        lines += ["| " + " | ".join(b) + " |" for b in body]
    else:
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)))
        lines += ["  ".join(x.ljust(w) for x, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def main() -> None:
    from spatialkit.models.organism.config import PRESETS, PRESET_WHY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help=f"zoo organisms (default: those of {ZOO} in presets.yml)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads while training (default 1)")
    ap.add_argument("--no-train", action="store_true", help="load from the checkpoint store only")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown (the README's)")
    ap.add_argument("--json", default=None, help="merge the rows (by organism) into this JSON file")
    ap.add_argument("--table", default=None, help="print the table of the rows saved in this JSON file, measure nothing")
    args = ap.parse_args()
    if args.threads < 1:  # torch would stop with a traceback
        ap.error(f"--threads must be >= 1, got {args.threads}")

    names = args.only or [n for n in ZOO if n in PRESETS]
    if args.table:
        saved = {r["organism"]: r for r in json.loads(Path(args.table).read_text())}
        names = [n for n in (args.only or [*ZOO, *saved]) if n in saved]
        names = list(dict.fromkeys(names))
        rows = [saved[n] for n in names]
    else:
        path = times_file()
        times = json.loads(path.read_text()) if path.exists() else {}
        rows = []
        for name in names:
            row = measure(name, args.threads, not args.no_train, times)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(times, indent=1))
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.json:
                out = Path(args.json)
                saved = {r["organism"]: r for r in json.loads(out.read_text())} if out.exists() else {}
                saved[name] = {**row, "load_now": round(os.getloadavg()[0], 1)}
                out.write_text(json.dumps(list(saved.values()), indent=1))
    print(f"\nload average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; train times as recorded when trained "
          f"({times_file()})\n")
    for name in names:
        print(f"  {name}: {PRESET_WHY.get(name, '')}")
    print()
    print(table(rows, args.markdown))


if __name__ == "__main__":
    main()
