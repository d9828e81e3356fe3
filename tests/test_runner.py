"""The papermill runner, its cache, failure reporting, the book build gate, and the CLI.

Runner tests use a throwaway notebook written into tmp_path, so they never depend on the suite's own
notebooks (those are smoke-run in test_notebooks.py).
"""

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from spatialkit.suite import book
from spatialkit.suite import runner
from spatialkit.common.params import NotebookSpec, Param, ParameterError

REPO = Path(__file__).resolve().parents[1]
SPEC = NotebookSpec("tiny", "A throwaway notebook", (
    Param("n", int, 3, low=1, high=10),
    Param("fail", bool, False),
))


def tiny_notebook(path: Path, extra: str = "") -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# Tiny\nA throwaway notebook for the runner tests."),
        nbformat.v4.new_code_cell("n = 3\nfail = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot(range(n))\nplt.show()\nprint('n =', n)"
                                  + extra),
        nbformat.v4.new_code_cell("if fail:\n    raise ValueError(f'asked to fail with n={n}')"),
    ]
    nbformat.write(nb, path)


@pytest.fixture
def root(tmp_path):
    """A miniature repository: one notebook, a profiles file and the book configuration."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "book").mkdir()
    tiny_notebook(tmp_path / "notebooks" / "tiny.ipynb")
    (tmp_path / "profiles.yml").write_text("quick: {}\nsmoke:\n  tiny:\n    n: 2\n")
    shutil.copy(REPO / "_config.yml", tmp_path)
    for name in ("intro.md", "references.bib"):
        shutil.copy(REPO / "book" / name, tmp_path / "book")
    return tmp_path


def plan(root, profile="quick", **overrides):
    return runner.plan(profile, None, overrides, root=root, notebooks={"tiny": SPEC},
                       profiles_file=root / "profiles.yml")


def outputs(path):
    nb = json.loads(Path(path).read_text())
    return [o for c in nb["cells"] for o in c.get("outputs", [])]


def test_run_executes_with_parameters_and_png_figures_then_skips_when_unchanged(root, monkeypatch):
    # Pin the package hash: teammates editing spatialkit/ during the test would (rightly) re-execute.
    monkeypatch.setattr(runner, "package_hash", lambda notebook=None: "pinned")
    out = root / "book" / "executed"
    lines = []
    [first] = runner.run(plan(root, "smoke"), out, echo=lines.append)
    assert first.status == "ok" and (out / "tiny.ipynb").exists() and (out / "tiny.key").exists()
    assert lines[1].startswith("[1/1] tiny ok in ") and lines[1].endswith("s")
    assert lines[2].startswith("1 notebook(s): 1 executed, 0 up to date, 0 failed")
    outs = outputs(out / "tiny.ipynb")
    assert any("image/png" in o.get("data", {}) for o in outs), "figure must be saved as PNG"
    assert any("n = 2" in "".join(o.get("text", "")) for o in outs), "smoke profile value must reach the kernel"

    mtime = (out / "tiny.ipynb").stat().st_mtime_ns
    [second] = runner.run(plan(root, "smoke"), out, echo=lines.append)
    assert second.status == "cached" and lines[-2] == "[1/1] tiny up to date, skipped"
    assert (out / "tiny.ipynb").stat().st_mtime_ns == mtime


def test_cache_key_covers_parameters_source_and_package(root):
    [job] = plan(root)
    key = runner.cache_key(job, "pkg")
    assert runner.cache_key(job, "pkg") == key
    assert runner.cache_key(plan(root, n=4)[0], "pkg") != key
    assert runner.cache_key(job, "other package sources") != key
    tiny_notebook(job.path, extra="\nprint('edited')")
    assert runner.cache_key(job, "pkg") != key
    assert len(runner.package_hash()) == 16 and len(runner.package_hash(job.path)) == 16


def test_changed_parameter_re_executes(root):
    out = root / "book" / "executed"
    runner.run(plan(root), out, echo=lambda _: None)
    [again] = runner.run(plan(root, n=5), out, echo=lambda _: None)
    assert again.status == "ok"
    assert any("n = 5" in "".join(o.get("text", "")) for o in outputs(out / "tiny.ipynb"))


def test_failing_notebook_names_notebook_and_cell_and_keeps_partial_copy_aside(root):
    out = root / "book" / "executed"
    runner.run(plan(root), out, echo=lambda _: None)  # a good copy from an earlier run
    lines = []
    with pytest.raises(runner.RunError) as info:
        runner.run(plan(root, fail=True), out, echo=lines.append)
    message = str(info.value)
    # the cell as the user finds it in notebooks/tiny.ipynb (index 3, its id), not papermill's index 4
    # (which counts the injected parameters cell)
    source_cell = json.loads((root / "notebooks" / "tiny.ipynb").read_text())["cells"][3]
    assert message == f"tiny: cell 3 (id {source_cell['id']}) failed: ValueError: asked to fail with n=3"
    assert "FAILED" in lines[1] and "failed/tiny.ipynb" in lines[1] and "1 failed" in lines[2]
    partial = out / "failed" / "tiny.ipynb"
    assert partial.exists() and any(o["output_type"] == "error" for o in outputs(partial))
    # the stale good copy and its key are gone: the book can never show an outdated result
    assert not (out / "tiny.ipynb").exists() and not (out / "tiny.key").exists()
    assert book.chapters(["tiny"], root) == []


def test_missing_notebook_file_is_skipped_with_a_warning(root):
    specs = {"tiny": SPEC, "later": NotebookSpec("later", "Not written yet", (Param("n", int, 1),))}
    warnings = []
    jobs = runner.plan("quick", None, {}, root=root, notebooks=specs, profiles_file=root / "profiles.yml",
                       warn=warnings.append)
    assert [j.name for j in jobs] == ["tiny"]
    assert warnings == ["skipping later: notebooks/later.ipynb does not exist yet"]


@pytest.mark.parametrize("overrides, only, match", [
    ({"n": 11}, None, r"^tiny: parameter 'n' = 11 is invalid; allowed: int in \[1, 10\]$"),
    ({"n": "abc"}, None, r"^tiny: parameter 'n' = 'abc' is invalid; allowed: int in \[1, 10\]$"),
    ({"epochs": 1}, None, r"^-p epochs 1: unknown parameter 'epochs' for notebook\(s\) tiny; allowed names: fail, n$"),
    ({}, ["nope"], r"^--only: unknown notebook 'nope'; known: tiny$"),
])
def test_plan_rejects_bad_input_before_any_work(root, overrides, only, match):
    with pytest.raises(ParameterError, match=match):
        runner.plan("quick", only, overrides, root=root, notebooks={"tiny": SPEC},
                    profiles_file=root / "profiles.yml")


def test_book_refuses_executed_notebook_with_error_output(root):
    out = root / "book" / "executed"
    out.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("1/0", outputs=[nbformat.v4.new_output(
        "error", ename="ZeroDivisionError", evalue="division by zero", traceback=[])])]
    nbformat.write(nb, out / "tiny.ipynb")
    with pytest.raises(book.BookError, match=r"tiny: cell 0: ZeroDivisionError: division by zero"):
        book.build(["tiny"], root, echo=lambda _: None)
    assert not (root / "_build" / "html").exists(), "jupyter-book must not have run"


def test_a_kernel_gets_minutes_to_start_on_a_loaded_machine(root, monkeypatch):
    """papermill's 60-second default once failed a fine notebook while the suite's workers loaded both cores."""
    import papermill

    seen = {}

    def fake_execute(source, output, **kw):
        seen.update(kw)
        shutil.copy(source, output)

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    [job] = plan(root, "smoke")
    runner.execute(job, root / "book" / "executed")
    assert seen["start_timeout"] == runner.KERNEL_START_TIMEOUT >= 300


@pytest.mark.parametrize("kernel_says, deaths, runs, ok", [
    ("zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:34817')", 1, 2, True),
    ("zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:34817')", 5, 3, False),
    ("Segmentation fault", 1, 1, False),  # any other death at start is reported at once
])
def test_a_kernel_that_lost_its_port_at_start_is_started_again(root, monkeypatch, kernel_says, deaths, runs, ok):
    """Parallel kernel starts race for free TCP ports (a CI run once failed so: the kernel's bind found its port
    taken and it died before answering); nothing ran yet, so the run starts again, at most KERNEL_START_ATTEMPTS
    times."""
    import papermill

    calls = []

    def fake_execute(source, output, **kw):
        calls.append(output)
        if len(calls) <= deaths:  # the kernel's stderr is the run's kernel.log (runner.output_to)
            os.write(2, f"Traceback (most recent call last):\n{kernel_says}\n".encode())
            raise RuntimeError("Kernel died before replying to kernel_info")
        shutil.copy(source, output)

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    [job] = plan(root, "smoke")
    out = root / "book" / "executed"
    result = runner.execute(job, out)
    assert len(calls) == runs and len(set(calls)) == 1  # the same run folder each time
    assert (result.status == "ok") == ok, result.error
    if not ok:
        assert "Kernel died before replying to kernel_info" in result.error
        assert kernel_says in (out / "failed" / "tiny.kernel.log").read_text()


@pytest.mark.slow
def test_book_build_renders_executed_notebook_with_its_figure(root):
    runner.run(plan(root, "smoke"), root / "book" / "executed", echo=lambda _: None)
    html = book.build(["tiny", "not_executed"], root, echo=lambda _: None)
    page = (html / "book" / "executed" / "tiny.html").read_text()
    assert "<img" in page and ".png" in page
    assert (html / "index.html").exists() and (html / "book" / "intro.html").exists()
    toc = (root / "_build" / "_toc.yml").read_text()
    assert "book/executed/tiny" in toc and "not_executed" not in toc


# --- the CLI, as a user runs it -------------------------------------------------------------------

def cli(*args):
    """Run the CLI; return (process, wall seconds, CPU seconds the CLI process used)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "spatialkit", *args], capture_output=True, text=True, cwd=REPO)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, wall, cpu


@pytest.mark.parametrize("args, expected", [
    (["-p", "n_scenes", "-5"],
     "00_wheres_the_chicken: parameter 'n_scenes' = -5 is invalid; allowed: int in [1, 100000]"),
    (["-p", "n_scenes", "abc"],
     "00_wheres_the_chicken: parameter 'n_scenes' = 'abc' is invalid; allowed: int in [1, 100000]"),
    (["-p", "no_such_param", "1"], "-p no_such_param 1: unknown parameter 'no_such_param' for notebook(s) "),
])
def test_cli_bad_parameter_fails_fast_with_one_line(args, expected):
    proc, wall, cpu = cli("run", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("spatialkit: error: " + expected)
    # The "< 5 s" requirement, checked on the CLI's own CPU time: wall time on a shared, overloaded
    # machine measures the other jobs (seen: 0.1 s CPU, 5.8 s wall at load 13). The sharp check that
    # nothing heavy is imported first is test_cli_imports_no_heavy_modules.
    assert cpu < 5, f"validation used {cpu:.1f}s of CPU ({wall:.1f}s wall)"


def test_cli_imports_no_heavy_modules():
    heavy = ("torch", "papermill", "transformers", "nbformat", "jsonschema", "nbgrader", "numpy")
    code = ("import sys, spatialkit.suite.cli, spatialkit.suite.runner, spatialkit.suite.book; "
            "spatialkit.suite.cli.build_parser(['run', '-p', 'seed', '1']); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_subcommands_are_pluggable():
    from spatialkit.suite import cli

    @cli.command("hello", "say hello", lambda p: p.add_argument("--who", default="world"))
    def hello(args):
        print(f"hello {args.who}")
        return 0

    try:
        assert cli.main(["hello", "--who", "chick"]) == 0
    finally:
        del cli.COMMANDS["hello"]
    assert {"run", "book"} <= set(cli.COMMANDS)
