"""Make a notebook runnable where spatialkit is not installed (Colab, a bare Binder or Jupyter).

The book's Colab/Binder buttons open ``notebooks/NAME.ipynb`` from the repository named in ``_config.yml``
(``repository.url``, branch ``repository.branch``). Its first code cell must install spatialkit *before*
anything imports it, so the cell cannot call this module; it holds the same logic inline::

    try:  # Colab/Binder: installs spatialkit from the book's repository when it is missing
        import spatialkit
    except ModuleNotFoundError:
        import subprocess, sys
        SPEC = "spatialkit @ git+https://github.com/spatialkit/spatialkit@main"
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", SPEC])

:func:`snippet` writes that cell from ``_config.yml`` (``python -m spatialkit.suite.bootstrap`` prints it), and
:func:`ensure` is the same thing as a function, for scripts and for environments where spatialkit is importable
but may be missing (a no-op when ``import spatialkit`` works). The ref installed is the branch the launch buttons
open, so the notebook and the package a reader gets come from the same commit; the built book records the
version and commit it was built from (``_build/html/spatialkit-build.json`` and the Scorecard page).

Standard library only: this module must work with nothing but Python installed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

#: the marker that identifies the cell in a notebook (the book hides the cell: readers of the book need no install)
MARKER = "# Colab/Binder: installs spatialkit from the book's repository when it is missing"
DEFAULT_URL = "https://github.com/spatialkit/spatialkit"  # _config.yml's repository.url (a placeholder, see there)
DEFAULT_REF = "main"


def read_repository(config: Path | str | None = None) -> tuple[str, str]:
    """(url, branch) from ``_config.yml``'s ``repository:`` block (a tiny reader: no PyYAML needed)."""
    path = Path(config) if config is not None else Path(__file__).resolve().parents[2] / "_config.yml"
    url, ref, inside = DEFAULT_URL, DEFAULT_REF, False
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return url, ref
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            inside = line.split("#")[0].strip() == "repository:"
            continue
        match = re.match(r"\s+(url|branch):\s*['\"]?([^'\"#\s]+)", line) if inside else None
        if match:
            url, ref = (match.group(2), ref) if match.group(1) == "url" else (url, match.group(2))
    return url.rstrip("/"), ref


def requirement(url: str = DEFAULT_URL, ref: str = DEFAULT_REF) -> str:
    """The pip requirement: ``spatialkit @ git+URL@REF`` (no test extras)."""
    return f"spatialkit @ git+{url.rstrip('/')}@{ref}"


def pip_command(url: str = DEFAULT_URL, ref: str = DEFAULT_REF) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "-q", requirement(url, ref)]


def ensure(url: str | None = None, ref: str | None = None, *,
           run: Callable[[Sequence[str]], object] = subprocess.check_call) -> list[str] | None:
    """Install spatialkit from ``url@ref`` (default: ``_config.yml``) when ``import spatialkit`` fails; else
    do nothing. Returns the pip command that ran, or None."""
    try:
        import spatialkit  # noqa: F401
        return None
    except ModuleNotFoundError:
        pass
    default_url, default_ref = read_repository()
    command = pip_command(url or default_url, ref or default_ref)
    run(command)
    return command


def snippet(url: str | None = None, ref: str | None = None) -> str:
    """The notebooks' first code cell (every line under 100 characters; already in ``ruff format``'s layout,
    so formatting the notebooks leaves it as generated)."""
    default_url, default_ref = read_repository()
    return "\n".join([
        f"try:  {MARKER}",
        "    import spatialkit",
        "except ModuleNotFoundError:",
        "    import subprocess, sys",
        "",
        f'    SPEC = "{requirement(url or default_url, ref or default_ref)}"',
        '    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", SPEC])',
    ])


if __name__ == "__main__":  # python -m spatialkit.suite.bootstrap: print the cell to paste
    print(snippet())
