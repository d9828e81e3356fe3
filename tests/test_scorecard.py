"""The reproduction scorecard: results JSON from an executed notebook, the book's Scorecard page, and
`spatialkit results` (table, CSV, JSON, two folders compared).

One tiny notebook goes through the real runner (one kernel start); everything else reads JSON files.
"""

import json
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from spatialkit.suite import book, cli, runner, scorecard
from tests.test_runner import plan, root  # noqa: F401  (the miniature repository fixture)

CLAIMS_CELL = """
from spatialkit.present.claims import Claim, Rule, Within, claims_table
claims_table([
    Claim("n is positive", "tiny paper, Tab. 1", "> 0", (n, n - 0.5, n + 0.5), Rule(">", 0.0)),
    Claim("n is small", "tiny paper, Sec. 2", "< 5", {"organism": (n, n - 0.5, n + 0.5), "vlm": (9.0, 8.0, 10.0)},
          Within(0, 5)),
])
"""


def tiny_with_claims(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(3, nbformat.v4.new_code_cell(CLAIMS_CELL))
    nbformat.write(nb, path)


def results_file(name, notebook, claims, parameters=None):
    return {"schema": 1, "notebook": notebook, "parameters": parameters or {"seed": 0},
            "environment": {"spatialkit": "0.1.0"}, "claims": claims}


def claim(text, paper, **verdicts):
    return {"claim": text, "source": "paper", "paper": paper,
            "models": {("" if m == "single" else m): {"measured": f"{m} value", "verdict": v, "outcome": v}
                       for m, v in verdicts.items()}}


@pytest.fixture
def folders(tmp_path):
    """Two result folders: an organism run and a (pretend) real-VLM run of the same chapters."""
    a, b = tmp_path / "organism", tmp_path / "qwen"
    for folder, second in ((a, "inconclusive"), (b, "reproduced")):
        folder.mkdir()
        (folder / "02_semantic_loudness.results.json").write_text(json.dumps(results_file(
            "02", "02_semantic_loudness", [claim("norms differ", "3x", organism="reproduced", healthy="inconclusive"),
                                           claim("normalising helps", "+2.7 pp", organism=second)])))
        (folder / "00_wheres_the_chicken.results.json").write_text(json.dumps(results_file(
            "00", "00_wheres_the_chicken", [claim("blind answers at chance", "25%", single="reproduced")])))
    return a, b


# --- the runner publishes the kernel's results ----------------------------------------------------

def test_executed_notebook_leaves_results_json_beside_it(root, monkeypatch):  # noqa: F811
    monkeypatch.setattr(runner, "package_hash", lambda notebook=None: "pinned")
    tiny_with_claims(root / "notebooks" / "tiny.ipynb")
    out = root / "book" / "executed"
    [result] = runner.run(plan(root, "smoke"), out, echo=lambda _: None)
    assert result.status == "ok"
    data = json.loads((out / "tiny.results.json").read_text())
    assert data["notebook"] == "tiny" and data["parameters"] == {"n": 2, "fail": False}
    assert data["environment"]["spatialkit"]
    assert data["models"] == ["", "organism", "vlm"]
    first, second = data["claims"]
    assert (first["claim"], first["paper"], first["source"]) == ("n is positive", "> 0", "tiny paper, Tab. 1")
    assert first["models"][""]["estimate"] == {"mean": 2.0, "low": 1.5, "high": 2.5, "n": 0}
    assert first["models"][""]["outcome"] == "reproduced"
    assert second["models"]["organism"]["outcome"] == "reproduced"
    assert second["models"]["vlm"]["outcome"] == "contradicted"
    assert second["models"]["vlm"]["measured"] == "9.000 [8.000, 10.000]"
    assert not list((out / ".running").glob("tiny.*")), "the run's folder is removed"

    # a failing run must not leave the old results standing for parameters that fail
    with pytest.raises(runner.RunError):
        runner.run(plan(root, "quick", fail=True), out, echo=lambda _: None)
    assert not (out / "tiny.results.json").exists()


def test_results_recording_is_silent_outside_the_runner(monkeypatch, tmp_path):
    from spatialkit.present import claims as C

    monkeypatch.delenv("SPATIALKIT_RESULTS", raising=False)
    monkeypatch.setattr(C, "_RECORDED", {})  # this process may have rendered other tables before
    assert C.record_claims([C.Claim("c", "s", "1", 1.0, C.Rule(">", 0.0))]) is None
    target = C.record_claims([C.Claim("c", "s", "1", 2.0, C.Rule(">", 0.0))], tmp_path / "r.json")
    rows = json.loads(target.read_text())["claims"]
    assert [r["claim"] for r in rows].count("c") == 1, "a re-run cell replaces its row"
    assert rows[-1]["models"][""]["value"] == 2.0


# --- the book's page ------------------------------------------------------------------------------

def test_scorecard_page_is_generated_and_follows_the_chapters(root, folders):  # noqa: F811
    out = root / "book" / "executed"
    out.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "book" / "bibliography.md", root / "book")
    shutil.copytree(folders[0], out, dirs_exist_ok=True)
    paths = []
    for name in ("00_wheres_the_chicken", "02_semantic_loudness", "05_clip_vs_cloc"):
        nbformat.write(nbformat.v4.new_notebook(), out / f"{name}.ipynb")
        paths.append(out / f"{name}.ipynb")
    info = {"spatialkit": "0.1.0", "commit": "abcdef1234567890", "modified": False, "built_at": "today",
            "install": "spatialkit @ git+https://example.org/x@main"}
    page = book.write_scorecard(paths, root, info)
    assert page == root / "book" / "executed" / "scorecard.md"
    text = page.read_text()
    assert "| Chapter | Claim | Paper (source) | own models / no model | organism | healthy |" in text
    assert "(paper) |" in text  # each paper's number names where it comes from
    assert "- own models / no model: " in text and "`healthy` is the control" in text  # the columns explained
    assert "normalising helps" in text and "**inconclusive** organism value" in text
    assert "(02_semantic_loudness.ipynb)" in text  # links to the chapter
    assert "commit `abcdef123456`" in text and "git+https://example.org/x@main" in text
    assert "No results file for: 05_clip_vs_cloc" in text
    toc = yaml.safe_load(book.write_toc(paths, root, root / "_build" / "_toc.yml").read_text())
    files = [c["file"] for c in toc["chapters"]]
    assert files.index("book/executed/scorecard") == len(paths)  # after every chapter
    assert files[-1] == "book/bibliography"


def test_verdicts_near_their_threshold_are_recorded_and_marked_on_the_page(tmp_path):
    from spatialkit.present import claims as C

    rule = C.Rule(">", 0.0, min_effect=0.03)
    est = lambda m, lo, hi: (m, lo, hi)  # noqa: E731
    c = C.Claim("fix helps", "paper", "+3 pp",
                {"edge": est(-0.01, -0.02, 0.004), "clear": est(0.10, 0.08, 0.12), "gated": est(0, -0.001, 0.001)},
                rule, controls={"gated": [C.Control("room", False, "no room")]})
    models = C.claim_record(c)["models"]
    assert models["edge"]["edge_distance"] == pytest.approx(0.004)  # 0.4 points from contradicted
    assert models["clear"]["edge_distance"] == pytest.approx(0.05)
    assert models["gated"]["edge_distance"] is None  # not judged: no threshold to be near
    assert C.claim_record(C.Claim("w", "s", "p", 0.5, C.Within(0.4, 0.6)))["models"][""]["edge_distance"] is None
    rows = [C.claim_record(c), claim("older record", "1", organism="reproduced")]  # no edge_distance field
    (tmp_path / "02_semantic_loudness.results.json").write_text(json.dumps(
        results_file("02", "02_semantic_loudness", rows)))
    page = scorecard.markdown(tmp_path, ["02_semantic_loudness"])
    assert "**inconclusive**† -0.010 [-0.020, 0.004]" in page  # only the near one is marked
    assert "**reproduced** 0.100 [0.080, 0.120]" in page and "**not testable** " in page
    assert "- edge: 1 inconclusive (1 †)" in page and "- clear: 1 reproduced" in page
    assert "† The verdict's CI ends within 1 point of the threshold" in page
    rows[0]["models"]["edge"]["edge_distance"] = 0.02  # nothing near: no mark, no footnote
    (tmp_path / "02_semantic_loudness.results.json").write_text(json.dumps(
        results_file("02", "02_semantic_loudness", rows)))
    assert "†" not in scorecard.markdown(tmp_path, ["02_semantic_loudness"])


def test_build_info_names_version_commit_and_install_spec():
    info = scorecard.build_info(Path(__file__).resolve().parents[1])
    assert info["spatialkit"] and info["install"].startswith("spatialkit @ git+https://")
    assert info["install"].endswith("@" + info["branch"])


# --- `spatialkit results` -------------------------------------------------------------------------

def test_results_table_csv_json(folders, capsys):
    a, _ = folders
    assert cli.main(["results", str(a)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["chapter", "claim", "paper's", "number", "verdict", "verdict:", "organism",
                                "verdict:", "healthy"]
    assert table[2].startswith("00_wheres_the_chicken") and "reproduced" in table[2]  # catalog order
    assert any(line.startswith("verdict: organism: reproduced 1") for line in table)

    assert cli.main(["results", "--format", "csv", str(a)]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "chapter,claim,paper's number,verdict,verdict: organism,verdict: healthy"
    assert rows[2] == "02_semantic_loudness,norms differ,3x,—,reproduced,inconclusive"

    assert cli.main(["results", "--format", "json", str(a)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["columns"][:3] == ["chapter", "claim", "paper's number"]
    assert data["counts"]["verdict: organism"]["inconclusive"] == 1
    assert data["rows"][2]["details"]["verdict: organism"]["measured"] == "organism value"


def test_results_compares_two_folders(folders, capsys):
    assert cli.main(["results", "--format", "csv", *map(str, folders)]) == 0
    rows = [r.split(",") for r in capsys.readouterr().out.splitlines()]
    header = rows[0]
    assert header[-1] == "agree"
    assert "organism | verdict: organism" in header and "qwen | verdict: organism" in header
    by_claim = {r[1]: dict(zip(header, r)) for r in rows[1:]}
    assert by_claim["normalising helps"]["agree"] == "no"
    assert by_claim["normalising helps"]["organism | verdict: organism"] == "inconclusive"
    assert by_claim["normalising helps"]["qwen | verdict: organism"] == "reproduced"
    assert by_claim["norms differ"]["agree"] == "yes"


def test_results_without_results_files_is_one_line(tmp_path, capsys):
    assert cli.main(["results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no *.results.json files" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow  # one kernel and a Jupyter Book build
def test_built_book_has_one_parameters_cell_and_the_scorecard(root, monkeypatch):  # noqa: F811
    monkeypatch.setattr(runner, "package_hash", lambda notebook=None: "pinned")
    shutil.copy(Path(__file__).resolve().parents[1] / "book" / "bibliography.md", root / "book")
    tiny_with_claims(root / "notebooks" / "tiny.ipynb")
    runner.run(plan(root, "smoke"), root / "book" / "executed", echo=lambda _: None)
    html = book.build(["tiny"], root, echo=lambda _: None)
    page = (html / "book" / "executed" / "tiny.html").read_text()
    assert "# Parameters" not in page, "papermill's injected cell is folded into the parameters cell"
    assert "default: 3" in page  # n = 2 (smoke) shown in the notebook's own parameters cell
    card = (html / "book" / "executed" / "scorecard.html").read_text()
    assert "n is positive" in card and "contradicted" in card and "tiny.html" in card
    assert "scorecard.html" in (html / "book" / "executed" / "tiny.html").read_text()  # next page in the TOC
    info = json.loads((html / "spatialkit-build.json").read_text())
    assert info["spatialkit"] and "install" in info
