"""Readers' paths: the Colab/Binder install cell, the Binder configuration, the book's one parameters cell,
and code that fits the page."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spatialkit.suite import book_ext, bootstrap

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

# Runs `code` in a fresh interpreter where `import spatialkit` fails (a meta-path finder refuses it, as in a
# Colab runtime without the package) and subprocess.check_call only prints the command it was given.
HIDDEN = textwrap.dedent("""
    import importlib.abc, json, subprocess, sys

    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "spatialkit" or name.startswith("spatialkit."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
    subprocess.check_call = lambda command, *a, **k: print("PIP " + json.dumps(command))
""")


def run_hidden(code: str, hide: bool = True) -> str:
    program = (HIDDEN if hide else "import json, subprocess\n"
               "subprocess.check_call = lambda command, *a, **k: print('PIP ' + json.dumps(command))\n") + code
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd="/", timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def pip_calls(stdout: str) -> list[list[str]]:
    return [json.loads(line[4:]) for line in stdout.splitlines() if line.startswith("PIP ")]


def test_install_cell_installs_the_books_repository_when_spatialkit_is_missing():
    url, branch = bootstrap.read_repository(REPO / "_config.yml")
    cell = bootstrap.snippet()
    [command] = pip_calls(run_hidden(cell))
    assert command[1:] == ["-m", "pip", "install", "-q", f"spatialkit @ git+{url}@{branch}"]
    assert "[test]" not in command[-1]
    assert len([line for line in cell.splitlines() if line]) == 6 and max(map(len, cell.splitlines())) <= 100
    assert bootstrap.MARKER in cell.splitlines()[0]


def test_install_cell_is_a_no_op_where_spatialkit_is_installed():
    assert pip_calls(run_hidden(bootstrap.snippet(), hide=False)) == []


def test_ensure_function_matches_the_cell():
    """The module itself, loaded by path (it is stdlib only), with spatialkit hidden."""
    code = (f"import runpy; m = runpy.run_path({str(REPO / 'spatialkit/suite/bootstrap.py')!r}); "
            f"print('RET', m['ensure']())")
    out = run_hidden(code)
    [command] = pip_calls(out)
    url, branch = bootstrap.read_repository(REPO / "_config.yml")
    assert command[-1] == f"spatialkit @ git+{url}@{branch}"
    assert "RET None" not in out
    assert bootstrap.ensure(run=lambda c: pytest.fail("must not install")) is None  # importable here


def test_repository_is_read_from_the_book_config(tmp_path):
    config = tmp_path / "_config.yml"
    config.write_text("title: x\nrepository:\n  # comment\n  url: https://github.com/someone/fork/  # here\n"
                      "  branch: v0.2\nhtml:\n  url: nope\n")
    assert bootstrap.read_repository(config) == ("https://github.com/someone/fork", "v0.2")
    assert bootstrap.requirement(*bootstrap.read_repository(config)) == \
        "spatialkit @ git+https://github.com/someone/fork@v0.2"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_install_cell_when_present_is_the_current_one(path):
    """Once a notebook has the install cell, it must be the one generated from _config.yml (so a new
    repository URL or branch reaches every notebook: `python -m spatialkit.suite.bootstrap` prints it)."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    found = [c for c in cells if bootstrap.MARKER in "".join(c["source"])]
    if not found:
        pytest.skip(f"{path.name} has no install cell yet")
    assert "".join(found[0]["source"]).strip() == bootstrap.snippet()
    assert cells.index(found[0]) == 0, "the install cell must be the first code cell"


def test_binder_installs_cpu_torch_and_spatialkit_without_test_extras():
    requirements = (REPO / "binder" / "requirements.txt").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in requirements
    assert "torchvision" not in requirements.replace("Never add torchvision", "")
    post = (REPO / "binder" / "postBuild").read_text()
    assert "pip install --no-cache-dir ." in post and "[test]" not in post
    assert (REPO / "binder" / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    pip_lines = [line.strip() for line in (REPO / "environment.yml").read_text().splitlines()
                 if not line.lstrip().startswith("#")]
    assert "- -e ." in pip_lines and "- -e .[test]" not in pip_lines


# --- the book shows one parameters cell -----------------------------------------------------------

def test_injected_values_are_folded_into_the_parameters_cell():
    own = 'seed = 0  # every random thing\nmodel = "tiny"\nsizes = [1,\n         2]\nsteps = 10\n'
    injected = '# Parameters\nseed = 0\nmodel = "Qwen/Qwen2-VL-2B-Instruct"\nsizes = [3]\nsteps = 10\nextra = 1\n'
    assert book_ext.fold_parameters(own, injected) == (
        'seed = 0  # every random thing\nmodel = "Qwen/Qwen2-VL-2B-Instruct"  # default: "tiny"\n'
        "sizes = [3]  # default: [1, 2]\nsteps = 10\nextra = 1")
    assert book_ext.fold_parameters("not python (", injected) == "not python ("


def test_executed_notebook_is_presented_with_one_parameters_cell_and_no_plumbing():
    def cell(source, *tags):
        return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)}, "outputs": []}

    nb = {"cells": [cell(bootstrap.snippet()), cell("n = 3  # items", "parameters"),
                    cell("# Parameters\nn = 2\n", "injected-parameters"),
                    cell('from spatialkit.suite.notebook import setup\nP = setup("x", globals())'), cell("print(n)")]}
    source = [json.dumps(nb)]
    book_ext.present_executed_notebooks(None, "book/executed/x", source)
    cells = json.loads(source[0])["cells"]
    assert [c["metadata"]["tags"] for c in cells] == [["remove-cell"], ["parameters"], ["hide-input"], []]
    assert cells[1]["source"] == "n = 2  # items; default: 3"
    untouched = [json.dumps(nb)]
    book_ext.present_executed_notebooks(None, "book/intro", untouched)  # other pages: as they are
    assert untouched == [json.dumps(nb)]


# --- code fits the page ---------------------------------------------------------------------------

LINE_LENGTH = 100  # [tool.ruff] line-length in pyproject.toml


def test_ruff_is_configured_for_the_page_width():
    import tomllib

    ruff = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["ruff"]
    assert ruff["line-length"] == LINE_LENGTH


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_code_line_fits_the_page(path):
    long = []
    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        for number, line in enumerate("".join(cell["source"]).splitlines(), 1):
            if len(line) > LINE_LENGTH:
                long.append(f"cell {index} line {number}: {len(line)} characters")
    assert not long, f"{path.name}: code wider than {LINE_LENGTH} characters (`ruff format {path}`): " + "; ".join(long)
