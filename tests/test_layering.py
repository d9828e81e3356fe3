"""The house's layering (pyproject's [tool.importlinter] contracts) and a CLI that stays light."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("import-linter is missing: `pip install -e .[test]` installs it")
    done = subprocess.run([exe, "--config", str(REPO / "pyproject.toml")], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_cli_imports_no_torch_and_no_model_code():
    code = ("import sys, spatialkit.suite.cli, spatialkit.suite.runner, spatialkit.suite.catalog; "
            "heavy = [m for m in ('torch', 'transformers', 'pandas', 'spatialkit.models', 'spatialkit.analysis', "
            "'spatialkit.world') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"the CLI's import pulls in {out}"


def test_every_subpackage_says_what_lives_there_and_what_it_may_import():
    import importlib

    for name in ("common", "world", "data", "models", "analysis", "present", "suite", "testing"):
        doc = importlib.import_module(f"spatialkit.{name}").__doc__ or ""
        assert len(doc.split()) >= 15, f"spatialkit.{name} needs a docstring describing its room"
        if name not in ("testing",):
            assert "import" in doc.lower(), f"spatialkit.{name}'s docstring must say what it may import"


def test_imports_inside_functions_are_rare_and_say_why():
    """Imports live at the top of a module; one inside a function is for an optional heavy dependency (or the
    CLI's start-up time, or an import cycle) and carries its one-line reason as a comment."""
    import ast

    missing = []
    for path in sorted((REPO / "spatialkit").rglob("*.py")):
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line, above = lines[node.lineno - 1], lines[node.lineno - 2] if node.lineno > 1 else ""
                    if "#" not in line and not above.strip().startswith("#"):
                        missing.append(f"{path.relative_to(REPO)}:{node.lineno}: {line.strip()}")
    assert not missing, "in-function imports without a reason (move them to the top, or say why):\n" + \
        "\n".join(sorted(set(missing)))
