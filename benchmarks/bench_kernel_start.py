"""Benchmark: a notebook kernel's start, fresh or forked from a zygote (spatialkit/suite/zygote.py).

    .venv/bin/python benchmarks/bench_kernel_start.py [--repeats 5] [--hf]

Starts kernels one after another, alternating a fresh one (``python -m ipykernel_launcher``, as jupyter_client
starts it) and one forked from a zygote, and in each runs the first thing every notebook does: import torch,
pandas, scipy.stats, matplotlib.pyplot and seaborn (``--hf``: transformers' modelling code too, what a notebook run
on a Hugging Face model imports). Per kernel it records the wall time from the start request to the end of that
cell, and the kernel process's own CPU time by then (``/proc/self/stat``: a forked kernel's count starts at its
fork, so what the zygote imported once is not in it). Prints the medians of both arms, their ratio, and the
zygote's own start (its imports, paid once per run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from spatialkit.suite import runner, zygote

IMPORTS = "import torch, pandas, scipy.stats, matplotlib.pyplot, seaborn"
IMPORTS_HF = IMPORTS + "\nimport transformers.modeling_utils, transformers.masking_utils"
CPU = ("import os, json\nticks = os.sysconf('SC_CLK_TCK')\nfields = open('/proc/self/stat').read().rsplit(')', 1)[1]"
       ".split()\nprint(json.dumps({'cpu_s': (int(fields[11]) + int(fields[12])) / ticks}))")


async def one_kernel(manager_class, code: str) -> dict:
    """Start a kernel, run ``code`` and the CPU probe, shut it down: {"wall_s", "cpu_s", "forked"}."""
    start = time.perf_counter()
    km = manager_class(kernel_name=runner.KERNEL)
    with runner.kernel_environment(runner.INLINE_BACKEND):
        await km.start_kernel()
    forked = isinstance(km.provisioner.process, zygote.ForkedKernel)
    client = km.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=120)
        reply = await client.execute_interactive(code + "\n" + CPU, timeout=120, output_hook=_collect)
        wall = time.perf_counter() - start
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        client.stop_channels()
        await km.shutdown_kernel(now=True)
    return {"wall_s": wall, "cpu_s": _collected.pop()["cpu_s"], "forked": forked}


_collected: list[dict] = []


def _collect(msg) -> None:
    if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
        _collected.append(json.loads(msg["content"]["text"].strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="kernels per arm (default 5)")
    ap.add_argument("--hf", action="store_true", help="also import transformers (a notebook run on an HF model)")
    args = ap.parse_args()
    if not zygote.enabled():
        raise SystemExit("kernels are forked on Linux only (os.pidfd_open); nothing to compare here")
    from jupyter_client import AsyncKernelManager  # lazy: after the argument check

    for variable in zygote.ADDRESS_ENV.values():
        os.environ.pop(variable, None)
    code = IMPORTS_HF if args.hf else IMPORTS
    t0 = time.perf_counter()
    started = zygote.start(hf=args.hf)
    try:
        forked_class = zygote.kernel_manager_class(args.hf)
        arms: dict[str, list[dict]] = {"fresh": [], "forked": []}
        warm = asyncio.run(one_kernel(forked_class, "pass"))  # waits for the zygote's imports
        zygote_s = time.perf_counter() - t0
        assert warm["forked"], "the zygote did not fork a kernel"
        for i in range(args.repeats):
            for arm, manager in (("fresh", AsyncKernelManager), ("forked", forked_class)):
                arms[arm].append(asyncio.run(one_kernel(manager, code)))
                print(f"  {arm:6s} #{i + 1}: {arms[arm][-1]['wall_s']:.2f} s wall, "
                      f"kernel CPU {arms[arm][-1]['cpu_s']:.2f} s", flush=True)
        assert all(r["forked"] for r in arms["forked"]) and not any(r["forked"] for r in arms["fresh"])
    finally:
        started.close()
    med = {arm: {k: statistics.median(r[k] for r in rows) for k in ("wall_s", "cpu_s")} for arm, rows in arms.items()}
    print(f"\nkernel start + `{code.splitlines()[0]}`{' + transformers' if args.hf else ''}, "
          f"median of {args.repeats}:")
    for arm in ("fresh", "forked"):
        print(f"  {arm:6s}: {med[arm]['wall_s']:.2f} s wall, kernel CPU {med[arm]['cpu_s']:.2f} s")
    print(f"  fresh / forked: {med['fresh']['wall_s'] / med['forked']['wall_s']:.1f}x wall, "
          f"{med['fresh']['cpu_s'] / max(med['forked']['cpu_s'], 1e-3):.1f}x kernel CPU")
    print(f"  the zygote's start until its first kernel answered (once per run): {zygote_s:.2f} s wall")


if __name__ == "__main__":
    main()
