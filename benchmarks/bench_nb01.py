"""Wall time of notebook 01 (positional encodings) under a profile, and of one of its training runs.

    .venv/bin/python benchmarks/bench_nb01.py [--profile quick] [--skip-notebook]

Prints (1) the time of one `probes.train_where` run with the quick defaults (one of the 7 x 3 the notebook
trains), and the projected training time of the whole comparison, and (2) the wall time of the
papermill execution of notebooks/01_positional_encodings.ipynb under the profile, against the 5-minute
quick budget. Wall times on a CPU shared with other jobs are inflated; the load average is printed next
to them, with the CPU seconds used (a load-independent figure: threads=1, so CPU s ~ unloaded wall s).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="quick", choices=("quick", "smoke", "full"))
    ap.add_argument("--skip-notebook", action="store_true", help="only time one training run")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from spatialkit.suite import catalog
    from spatialkit.analysis import where_classifier as probes
    from spatialkit.suite import runner

    spec = catalog.get("01_positional_encodings")
    params = spec.validate(runner.load_profiles()[args.profile].get(spec.name, {}))
    if params["threads"]:
        torch.set_num_threads(params["threads"])
    size = params["grid"] * params["patch_size"]
    data = probes.where_splits(params["seed"], params["n_train"], 16, size, size, jitter=params["patch_size"])
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    probes.train_where(params["encodings"][-1], data["train"], seed=0, steps=params["steps"],
                       batch_size=params["batch_size"], lr=params["lr"], patch_size=params["patch_size"],
                       dim=params["dim"], depth=params["depth"], theta=params["theta"])
    one = time.perf_counter() - t0
    runs = len(params["encodings"]) * params["seeds"]
    print(f"one training run ({params['encodings'][-1]}, {params['steps']} steps): {one:.1f} s; "
          f"x {runs} runs = {one * runs:.0f} s projected  [load average {load:.1f}]")
    if args.skip_notebook:
        return
    overrides = runner.load_profiles()[args.profile].get(spec.name, {})
    cmd = [sys.executable, "-m", "papermill", "-k", "python3", str(ROOT / "notebooks/01_positional_encodings.ipynb"),
           str(Path(tempfile.mkdtemp()) / "out.ipynb")]
    for k, v in overrides.items():
        cmd += ["-y", f"{k}: {v!r}" if not isinstance(v, list) else f"{k}: {v}"]
    load = os.getloadavg()[0]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    # CPU seconds barely depend on how many other jobs share the machine; wall seconds do.
    print(f"notebook 01 under '{args.profile}': {wall:.0f} s wall, {cpu:.0f} s CPU (papermill + kernel); "
          f"quick budget {BUDGET_S:.0f} s -> wall/budget {wall / BUDGET_S:.2f}, CPU/budget {cpu / BUDGET_S:.2f}  "
          f"[load average at start {load:.1f}]")


if __name__ == "__main__":
    main()
