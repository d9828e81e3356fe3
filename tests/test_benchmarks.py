"""The benchmark scripts' own plumbing (their measurements are benchmarks, not tests): the GPU check's plan and
options, the wheels it carries, the parameters bench_book hands to `spatialkit book`, and bench_step's float32
attention hook."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *args], check=False,
                          capture_output=True,
                          text=True, env={"PY": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=120)


def test_gpu_check_book_plan_is_the_cold_quick_book_on_cuda():
    done = gpu_check("--dry-run", "--book")
    assert done.returncode == 0, done.stderr
    assert "bench_book.py --profile quick --skip-speedup -p device cuda" in done.stdout
    assert "hf_tiny" not in done.stdout  # --book is its own device call: no tiny hub checkpoints


def test_gpu_check_default_plan_and_unknown_option():
    done = gpu_check("--dry-run")
    assert done.returncode == 0, done.stderr
    assert "bench_memory.py --device cuda" in done.stdout and "bench_book.py" not in done.stdout
    bad = gpu_check("--bogus")
    assert bad.returncode == 2 and "unknown option '--bogus'" in bad.stderr


def test_gpu_check_all_plan_runs_the_preflight_first_and_the_book_last_with_the_time_left():
    done = gpu_check("--dry-run", "--all")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    steps = [out.index(s) for s in ("spatialkit run --profile smoke -p device cuda", "hf_tiny",
                                    "bench_memory.py --device cuda", "02_semantic_loudness 03_attention_allocation",
                                    "bench_book.py --profile quick")]
    assert steps == sorted(steps), out  # a device bug stops the call early; the longest part runs last
    assert "--log /tmp/spatialkit-gpu-logs/book_stream.log" in out  # streamed: a stopped build still reports
    # TOTAL_S 560, 15 s kept for the archive, and what the dry run spent by `date +%s` (0 s, or 1-2 s when it
    # straddles a second boundary on a loaded machine)
    book_limit = re.search(r"timeout (\d+) \S+ benchmarks/bench_book.py", out)
    assert book_limit and 543 <= int(book_limit.group(1)) <= 545, out
    both = gpu_check("--dry-run", "--all", "--book")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_gpu_check_all_can_time_only_the_book_on_the_machines_cores():
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--all"], check=False,
                          capture_output=True, text=True, timeout=120,
                          env={"PY": sys.executable, "PATH": "/usr/bin:/bin", "SKIP_VLM": "1", "BOOK_DEVICE": "cpu"})
    assert done.returncode == 0, done.stderr
    assert "hf_tiny" not in done.stdout and "bench_memory" not in done.stdout
    assert "--profile smoke -p device cuda" in done.stdout  # the preflight still checks the GPU path
    assert "bench_book.py --profile quick --skip-speedup --run-only --scenes 50 -p device cpu" in done.stdout


def test_gpu_check_with_an_empty_wheel_folder_says_what_to_run(tmp_path):
    import shutil

    shutil.copytree(REPO / "benchmarks", tmp_path / "benchmarks")
    (tmp_path / ".whl").mkdir()
    done = subprocess.run(["bash", str(tmp_path / "benchmarks" / "gpu_check.sh")], check=False, capture_output=True,
                          text=True, env={"PY": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 2 and "run 'bash benchmarks/gpu_wheels.sh' first" in done.stderr, done.stderr


def test_gpu_wheels_lists_the_kernel_stack_and_nothing_the_gpu_image_has():
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_wheels.sh"), "--list"], check=False,
                          capture_output=True, text=True, env={"PY": sys.executable, "PATH": "/usr/bin:/bin"},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    names = {line.split("==")[0] for line in done.stdout.split()}
    assert {"papermill", "ipykernel", "nbclient", "jupyter-client", "pyzmq"} <= names, names
    image = {line.strip().lower().replace("_", "-") for line in
             (REPO / "benchmarks" / "gpu_image_packages.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    assert {"torch", "transformers", "pandas", "seaborn"} <= image
    assert names & image == {"transformers"}, names & image  # carried on purpose: the image's is older


def test_bench_book_hands_its_parameters_to_spatialkit_book(monkeypatch, tmp_path):
    bench_book = load_benchmark("bench_book")
    seen = []

    def fake_run(cmd, **kwargs):
        seen.append(cmd)
        return SimpleNamespace(returncode=0, stdout="[1/1] 00_wheres_the_chicken ok in 1.5s\n", stderr="")

    monkeypatch.setattr(bench_book.subprocess, "run", fake_run)
    out = bench_book.timed_book(tmp_path, tmp_path / "cache", "quick", 16, verbose=False,
                                params=[("device", "cuda"), ("seed", "1")])
    assert seen[0][-8:] == ["--jobs", "16", "-p", "device", "cuda", "-p", "seed", "1"]
    assert seen[0][seen[0].index("--profile") + 1] == "quick"
    assert out["notebooks"] == {"00_wheres_the_chicken": 1.5}
    bench_book.timed_book(tmp_path, tmp_path / "cache", "quick", None, verbose=False, verb="run")
    assert seen[1][2:5] == ["spatialkit", "run", "--profile"]  # --run-only: no HTML build


def test_bench_book_log_streams_the_build_and_still_returns_its_output(tmp_path):
    bench_book = load_benchmark("bench_book")
    log = tmp_path / "stream.log"
    script = "import sys; print('train [1/1] x ok in 1.0s (CPU 1.0s)'); print('oops', file=sys.stderr)"
    done = bench_book.run_streamed([sys.executable, "-c", script], dict(PATH="/usr/bin:/bin"), log)
    assert done.returncode == 0 and done.stdout == "train [1/1] x ok in 1.0s (CPU 1.0s)\n"
    text = log.read_text()
    assert "] train [1/1] x ok in 1.0s" in text and "oops" in text  # stdout timestamped, stderr kept


def test_bench_step_float32_attention_matches_plain_sdpa_and_keeps_the_dtype():
    from spatialkit.models.vlm import AttnCall

    bench_step = load_benchmark("bench_step")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8, generator=gen) for _ in range(3))
    mask = torch.ones(7, 7, dtype=torch.bool).tril().expand(2, 1, 7, 7)
    call = AttnCall(layer=0, query=q.bfloat16(), key=k.bfloat16(), value=v.bfloat16(), mask=mask, scale=0.5,
                    is_causal=False)
    out = bench_step.float32_attention(call)
    assert out.dtype == torch.bfloat16
    expected = F.scaled_dot_product_attention(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(),
                                              attn_mask=mask, scale=0.5)
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("script", ["bench_step", "bench_book", "bench_plan", "bench_finer_grid",
                                    "bench_kernel_start"])
def test_benchmark_help_runs(script):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py"), "--help"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr


def test_training_by_notebook_sums_each_notebooks_tasks_from_a_log(tmp_path, monkeypatch):
    bench = load_benchmark("training_by_notebook")
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path / "empty-store"))
    tasks, needs = bench.plan("smoke", {})
    assert tasks and set(needs) >= {"00_wheres_the_chicken", "07_putting_it_together"}
    log = "\n".join(["[1/8] 00_wheres_the_chicken ..."]
                    + [f"train [{k + 1}/{len(tasks)}] {t['label']} ok in 9.9s (CPU {k + 1}.0s)"
                       for k, t in enumerate(tasks)])
    cpu = bench.task_cpu(log)
    assert len(cpu) == len(tasks) and sum(cpu.values()) == len(tasks) * (len(tasks) + 1) / 2
    rows = bench.table(tasks, needs, cpu)
    assert [r["notebook"] for r in rows] == list(needs)
    label = {t["id"]: t["label"] for t in tasks}
    for r in rows:  # what a notebook waits for: its tasks' CPU, dependencies (stage-1 encoders) included
        assert r["waits_for_s"] == sum(cpu[label[i]] for i in needs[r["notebook"]])
        assert 0 <= r["own_s"] <= r["waits_for_s"]
    everything = set().union(*map(set, needs.values()))
    assert rows[-1]["book_so_far_s"] == sum(cpu[label[i]] for i in everything)
    assert [r["book_so_far_s"] for r in rows] == sorted(r["book_so_far_s"] for r in rows)
    text = bench.report(rows, cores=2, bar_minutes=12)
    assert text.splitlines()[1].split()[:2] == [rows[0]["notebook"], str(rows[0]["tasks"])]
    assert text.endswith("holds at most 1440 CPU s, training and notebooks together")
    with pytest.raises(SystemExit, match="no CPU time"):
        bench.table(tasks, needs, dict(list(cpu.items())[1:]))


def test_training_by_notebook_refuses_a_missing_log_and_a_bar_of_no_cores(tmp_path, capsys):
    bench = load_benchmark("training_by_notebook")
    log = tmp_path / "cold.log"
    log.write_text("")
    for argv, says in (([str(tmp_path / "nowhere.log")], "is not a file"), ([str(log), "--cores", "0"], "--cores")):
        with pytest.raises(SystemExit) as stop:
            bench.main(argv)
        assert stop.value.code == 2 and says in capsys.readouterr().err
