"""Smoke run: every catalog notebook that has a file executes under the `smoke` profile.

Runs through the runner's Python API (papermill, the conftest's ``smoke_book`` fixture: every notebook executed
once into a private book root, which tests/test_browser.py then builds and browses), so it exercises exactly what
`spatialkit run --profile smoke` does. Slow, but part of the default run: a notebook that does not execute is a
broken notebook.
"""

from pathlib import Path

import pytest

from spatialkit.suite import book
from spatialkit.suite import catalog
from spatialkit.suite import runner

REPO = Path(__file__).resolve().parents[1]
WITH_FILES = [name for name in catalog.NOTEBOOKS if (REPO / "notebooks" / f"{name}.ipynb").exists()]


@pytest.mark.slow
@pytest.mark.parametrize("name", WITH_FILES)
def test_notebook_smoke_run(name, smoke_book):
    root, results = smoke_book  # every notebook executed once (conftest), shared with tests/test_browser.py
    result = results[name]
    assert result["status"] == "ok", result["error"]
    assert book.error_outputs(runner.executed_dir(root) / f"{name}.ipynb") == []


def test_every_catalog_notebook_has_a_smoke_profile_entry():
    """A notebook without smoke overrides would run its full quick defaults inside the test suite."""
    smoke = runner.load_profiles()["smoke"]
    missing = [name for name in WITH_FILES if name not in smoke and catalog.get(name).params]
    assert missing == [], f"add these notebooks to the smoke: section of spatialkit/suite/profiles.yml: {missing}"


def test_the_book_names_no_internal_documents_or_work_items():
    """Readers have the papers, not our notes: paper numbers cite the paper, second-hand numbers say so."""
    import json
    import re

    internal = re.compile(r"REFERENCE(\.md| ?§)|STYLE\.md|\b[Ii]ssue\b|\b[Pp]rototype\b")
    found = []
    for path in sorted((REPO / "notebooks").glob("*.ipynb")) + sorted((REPO / "book").glob("*.md")):
        cells = json.loads(path.read_text())["cells"] if path.suffix == ".ipynb" else [{"source": path.read_text()}]
        for i, cell in enumerate(cells):
            text = "".join(cell["source"])
            found += [f"{path.name} cell {i}: ...{text[max(0, m.start() - 40): m.end() + 40]!r}..."
                      for m in internal.finditer(text)]
    assert not found, "\n".join(found)


def test_the_package_and_readme_cite_papers_not_internal_notes_or_machine_paths():
    """Docstrings and comments are read too (API docs, the repository): no internal notes, work items or paths
    of the machine the suite was written on."""
    import re

    internal = re.compile(r"REFERENCE(\.md| ?§)|STYLE\.md|/work/|\b[Ii]ssue [0-9]|\b[Pp]rototype\b")
    paths = sorted((REPO / "spatialkit").rglob("*.py")) + sorted((REPO / "spatialkit").rglob("*.yml"))
    paths += [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "benchmarks").glob("*.py"))]
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()[:100]}" for p in paths
             for n, line in enumerate(p.read_text().splitlines(), 1) if internal.search(line)]
    assert not found, "\n".join(found)
