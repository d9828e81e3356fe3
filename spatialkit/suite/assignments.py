"""Classroom assignments from the notebooks: student versions and an autograder.

Notebook authors mark exercises with cell tags:

* ``solution``: the body between ``### BEGIN SOLUTION`` / ``### END SOLUTION`` is the answer (a cell
  without the markers is an answer as a whole);
* ``tests``: first line ``# points: N``; checks between ``### BEGIN HIDDEN TESTS`` /
  ``### END HIDDEN TESTS`` are kept from students.

The tags become nbgrader cell metadata (:func:`mark_cells`), and nbgrader's own preprocessors do the
notebook surgery (ClearSolutions, ClearHiddenTests, ClearOutput, LockCells, ComputeChecksums) and the
execution (Execute: per-cell timeout, errors recorded, not raised). nbgrader's course database and
exchange are not used: :func:`grade` matches a submission's test cells to the source notebook by
their ``grade_id``, puts the full tests (hidden ones included) back, executes, and scores each test
cell with ``nbgrader.utils.determine_grade`` (an error or stderr output scores 0).

    spatialkit assignments build [--out release/] [--only NAME ...]
    spatialkit assignments build --course DIR [--profile quick|smoke|full] [--only NAME ...]
    spatialkit assignments grade SUBMISSION|FOLDER ... [--source notebooks/NAME.ipynb] [--timeout 120]
                                 [--profile quick|smoke|full] [-p NAME VALUE ...] [--report-dir DIR]
                                 [--gradebook CSV]

``build --course DIR`` writes an nbgrader course instead (``DIR/source/NAME/NAME.ipynb`` with nbgrader cell
metadata, and ``DIR/nbgrader_config.py``): teachers who use nbgrader's own workflow continue there
(``nbgrader generate_assignment NAME``, ``nbgrader collect``/``autograde``/``formgrader``). ``grade`` takes
many submissions (files, or folders searched for notebooks, e.g. nbgrader's ``submitted/``) and writes one
gradebook CSV (a row per submission, a column per test cell), with a progress bar; each cell has a timeout.

This module imports neither nbgrader nor nbformat at import time: with nbgrader installed, importing
nbformat costs over a second of CPU (jsonschema's format checkers), and the CLI must stay fast.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from spatialkit.common.params import ParameterError
from spatialkit.suite import nbimport, zygote
from spatialkit.suite.runner import runs_hf

SOLUTION_TAG = "solution"
TESTS_TAG = "tests"
POINTS_LINE = re.compile(r"^\s*#\s*points\s*:\s*([0-9]+(?:\.[0-9]*)?)\s*$")
NBGRADER_SCHEMA = 3
DEFAULT_TIMEOUT = 120  # seconds per cell; a quick-profile notebook cell is far below this on 2 cores
KERNEL = "python3"


class AssignmentError(ValueError):
    """A source notebook's exercise cells are malformed (the message names notebook and cell)."""


# --- tags -> nbgrader metadata -------------------------------------------------------------------

def _grade_id(kind: str, cell, index: int) -> str:
    # Cell ids (nbformat >= 4.5) survive cells being inserted above; the index is the fallback.
    return f"{kind}-{cell.get('id') or index}"


def parse_points(cell, where: str) -> float:
    first = cell.source.lstrip("\n").split("\n", 1)[0]
    match = POINTS_LINE.match(first)
    if not match or float(match.group(1)) <= 0:
        raise AssignmentError(f"{where}: a cell tagged '{TESTS_TAG}' must start with a line '# points: N' "
                              f"with N > 0; found {first!r}")
    return float(match.group(1))


def mark_cells(nb, name: str = "notebook"):
    """A copy of ``nb`` whose ``solution``/``tests`` cells carry nbgrader metadata. Cells that already
    have nbgrader metadata (a generated student notebook) keep it."""
    nb = copy.deepcopy(nb)
    for index, cell in enumerate(nb.cells):
        tags = set(cell.metadata.get("tags", []))
        where = f"{name}: cell {index}"
        if "nbgrader" in cell.metadata or not tags & {SOLUTION_TAG, TESTS_TAG}:
            continue
        if cell.cell_type != "code":
            raise AssignmentError(f"{where}: tags '{SOLUTION_TAG}'/'{TESTS_TAG}' are for code cells, not {cell.cell_type}")
        if {SOLUTION_TAG, TESTS_TAG} <= tags:
            raise AssignmentError(f"{where}: a cell is either '{SOLUTION_TAG}' or '{TESTS_TAG}', not both")
        if SOLUTION_TAG in tags:
            meta = {"solution": True, "grade": False, "locked": False, "grade_id": _grade_id("solution", cell, index)}
        else:
            meta = {"solution": False, "grade": True, "locked": True, "points": parse_points(cell, where),
                    "grade_id": _grade_id("tests", cell, index)}
        cell.metadata["nbgrader"] = {**meta, "schema_version": NBGRADER_SCHEMA}
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if "nbgrader" in c.metadata]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise AssignmentError(f"{name}: duplicate exercise cell ids {duplicates}")
    return nb


def grade_cells(nb) -> list:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def has_exercises(nb) -> bool:
    return any(set(c.metadata.get("tags", [])) & {SOLUTION_TAG, TESTS_TAG} or "nbgrader" in c.metadata
               for c in nb.cells)


# --- student version -----------------------------------------------------------------------------

def student_version(nb, name: str = "notebook"):
    """Solutions replaced by ``# YOUR CODE HERE`` + ``raise NotImplementedError()``, hidden tests
    removed, outputs and saved widget state cleared, exercise cells locked, checksums recorded."""
    from nbgrader.preprocessors import (ClearHiddenTests, ClearOutput, ClearSolutions, ComputeChecksums,  # lazy: the CLI starts without it
                                        LockCells)

    nb = mark_cells(nb, name)
    # The papermill-injected parameters of an executed copy are not part of the assignment.
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    resources: dict[str, Any] = {}
    try:
        for preprocessor in (ClearSolutions(), ClearHiddenTests(), ClearOutput(), LockCells(), ComputeChecksums()):
            nb, resources = preprocessor.preprocess(nb, resources)
    except RuntimeError as err:  # nbgrader: unmatched/nested BEGIN/END markers, marker outside a tagged cell
        raise AssignmentError(f"{name}: {err}") from None
    for key in ("widgets", "papermill"):
        nb.metadata.pop(key, None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    return nb


def _write_notebook(nb, path: Path) -> None:
    """Atomic write: a half-written release notebook never replaces a good one."""
    nbformat = nbimport.nbformat()  # lazy: the CLI starts without it

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def with_exercises(sources: Sequence[Path], echo):
    """(path, notebook) for each source notebook that has exercise cells; the others are named and skipped."""
    nbformat = nbimport.nbformat()  # lazy: the CLI starts without it

    for source in sources:
        source = Path(source)
        nb = nbformat.read(source, as_version=4)
        if not has_exercises(nb):
            echo(f"skipping {source.name}: no cells tagged '{SOLUTION_TAG}' or '{TESTS_TAG}'")
            continue
        yield source, nb


def build(sources: Sequence[Path], out_dir: Path, *, echo=print) -> list[Path]:
    """Write the student version of every source notebook that has exercises into ``out_dir``."""
    nbformat = nbimport.nbformat()  # lazy: the CLI starts without it

    written = []
    for source, nb in with_exercises(sources, echo):
        student = student_version(nb, source.stem)
        target = Path(out_dir) / source.name
        _write_notebook(student, target)
        points = sum(c.metadata["nbgrader"]["points"] for c in grade_cells(student))
        echo(f"{source.name}: {len(grade_cells(student))} test cell(s), {points:g} point(s) -> {target}")
        written.append(target)
    return written


# --- an nbgrader course --------------------------------------------------------------------------

COURSE_CONFIG = """# nbgrader configuration of the spatialkit course, written by `spatialkit assignments build --course`.
# Run nbgrader from this folder: nbgrader generate_assignment NAME; nbgrader autograde NAME; nbgrader formgrader
c = get_config()  # noqa: F821 (provided by nbgrader)
c.CourseDirectory.course_id = {course_id!r}
c.CourseDirectory.root = __import__("os").path.dirname(__import__("os").path.abspath(__file__))
# the notebooks train small models: allow {timeout} s per cell when autograding (nbgrader's default is 30)
c.Execute.timeout = {timeout}
c.Execute.interrupt_on_timeout = True
c.ClearSolutions.code_stub = {{"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
"""


def with_parameters(nb, values: Mapping[str, Any]):
    """``nb`` with ``values`` written into its ``parameters`` cell (a student sees one cell, as in the book)."""
    from spatialkit.suite.book_ext import fold_parameters  # lazy: the CLI starts without it

    if not values:
        return nb
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        raise AssignmentError("the notebook has no cell tagged 'parameters' to set "
                              f"{', '.join(sorted(values))} in")
    cell.source = fold_parameters(cell.source, "\n".join(f"{k} = {v!r}" for k, v in values.items()))
    return nb


def build_course(sources: Sequence[Path], course_dir: Path, *, course_id: str = "spatialkit",
                 profile: str = "quick", timeout: float = DEFAULT_TIMEOUT, echo=print) -> list[Path]:
    """Write an nbgrader course: ``source/NAME/NAME.ipynb`` (one assignment per notebook with exercises, its
    cells carrying nbgrader metadata, the ``profile``'s parameter values written in) and
    ``nbgrader_config.py``. nbgrader's ``generate_assignment`` makes the student versions from it."""
    nbformat = nbimport.nbformat()  # lazy: the CLI starts without it

    course_dir = Path(course_dir)
    written = []
    for source, nb in with_exercises(sources, echo):
        name = source.stem
        nb = mark_cells(nb, name)
        nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
        nb = with_parameters(nb, resolve_parameters(name, profile, {}))
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        for key in ("widgets", "papermill"):
            nb.metadata.pop(key, None)
        target = course_dir / "source" / name / source.name
        _write_notebook(nb, target)
        points = sum(c.metadata["nbgrader"]["points"] for c in grade_cells(nb))
        echo(f"{source.name}: assignment {name!r}, {len(grade_cells(nb))} test cell(s), {points:g} point(s) "
             f"-> {target}")
        written.append(target)
    if written:
        _write_text(course_dir / "nbgrader_config.py",
                    COURSE_CONFIG.format(course_id=course_id, timeout=int(timeout)))
        echo(f"nbgrader course in {course_dir}: cd {course_dir} && nbgrader generate_assignment "
             f"{written[0].parent.name}")
    return written


# --- grading -------------------------------------------------------------------------------------

@dataclass
class CellScore:
    grade_id: str
    points: float
    max_points: float
    status: str  # "passed" | "partial" | "failed" | "missing" | "not run"
    message: str = ""


@dataclass
class GradeReport:
    submission: str
    source: str
    score: float
    max_score: float
    tests: list[CellScore]
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # errors outside test cells, dead kernel, ...
    graded_notebook: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def summary(self) -> str:
        lines = [f"{Path(self.submission).name}: {self.score:g} / {self.max_score:g} points "
                 f"(source {self.source}, per-cell timeout {self.timeout_s:g} s, {self.seconds:.1f} s)"]
        width = max([len(t.grade_id) for t in self.tests] + [4])
        for t in self.tests:
            lines.append(f"  {t.grade_id:<{width}}  {t.points:>4g}/{t.max_points:<4g} {t.status:<8} {t.message}".rstrip())
        lines += [f"  note: {p}" for p in self.problems]
        return "\n".join(lines)


def _first_error(cell) -> str:
    """Why a cell scored 0 in nbgrader's terms: its first error output, or that it wrote to stderr."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            value = str(out.get("evalue", "")).strip().splitlines()
            return f"{out.get('ename')}: {value[-1] if value else ''}".strip().rstrip(":")
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = str(out.get("text", "")).strip().splitlines()
            return "wrote to stderr" + (f": {text[-1][:200]}" if text else "")
    return ""


def _executed(cell) -> bool:
    return cell.get("execution_count") is not None or bool(cell.get("outputs"))


def merge_tests(submission, source, name: str = "submission"):
    """The submission with every test cell's source replaced by the source notebook's full version
    (hidden tests included), matched by grade_id; returns (notebook, missing grade_ids)."""
    full = {c.metadata["nbgrader"]["grade_id"]: c for c in grade_cells(source)}
    merged = mark_cells(submission, name)
    seen = set()
    for cell in merged.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("grade"):
            continue
        original = full.get(meta.get("grade_id"))
        if original is None:  # a test cell the source does not know: not graded
            meta["grade"] = False
            continue
        seen.add(meta["grade_id"])
        cell.source = original.source
        meta["points"] = original.metadata["nbgrader"]["points"]
    return merged, [gid for gid in full if gid not in seen]


def resolve_parameters(name: str, profile: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Profile values + overrides, validated against the catalog when ``name`` is a catalog notebook."""
    from spatialkit.suite import catalog  # lazy: the CLI starts without it
    from spatialkit.suite import runner  # lazy: the CLI starts without it

    if profile not in runner.PROFILES:
        raise ParameterError(f"--profile '{profile}' is invalid; allowed: {', '.join(runner.PROFILES)}")
    if name not in catalog.NOTEBOOKS:
        return dict(overrides)  # not a catalog notebook: nothing to validate against
    values = dict(runner.load_profiles()[profile].get(name, {}))
    values.update(overrides)
    if profile == "quick" and not overrides:
        return {}  # the notebook's own defaults, exactly as the student ran it
    return catalog.NOTEBOOKS[name].validate(values)


def _execute(nb, cwd: Path, timeout: float, hf: bool = False):
    """Run ``nb`` with nbgrader's Execute (errors and timeouts recorded per cell) in a kernel forked from a zygote
    when there is one (``hf``: a notebook run on a Hugging Face model; spatialkit/suite/zygote.py); a dead kernel
    or a failure to start one is returned as a problem string, never raised."""
    from nbgrader.preprocessors import Execute  # lazy: the CLI starts without it

    from spatialkit.suite.runner import kernel_environment  # lazy: the CLI starts without it

    forked = zygote.kernel_manager_class(hf)
    executor = Execute(timeout=int(timeout), kernel_name=KERNEL, allow_errors=True, interrupt_on_timeout=True,
                       **({"kernel_manager_class": forked} if forked else {}))
    try:
        with kernel_environment("Agg"):  # figures are irrelevant for grading
            nb, _ = executor.preprocess(nb, {"metadata": {"path": str(cwd)}})
        return nb, ""
    except Exception as err:  # DeadKernelError, kernel start failure, ...
        return nb, f"execution stopped: {type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"


def grade(
    submission_path: Path,
    source_path: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    profile: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    report_dir: Path | None = None,
) -> GradeReport:
    """Execute a submission with the full tests and score it. Writes NAME.grade.json, NAME.grade.txt
    and the executed NAME.graded.ipynb into ``report_dir`` (default: beside the submission)."""
    nbformat = nbimport.nbformat()  # lazy: the CLI starts without it
    from nbgrader.utils import determine_grade  # lazy: the CLI starts without it

    submission_path, source_path = Path(submission_path), Path(source_path)
    if not (isinstance(timeout, (int, float)) and 1 <= timeout <= 3600):
        raise ParameterError(f"--timeout {timeout!r}: must be a number of seconds per cell in [1, 3600]")
    for label, path in (("SUBMISSION", submission_path), ("--source", source_path)):
        if not path.is_file():
            raise ParameterError(f"{label} {path}: no such notebook")
    name = source_path.stem
    params = resolve_parameters(name, profile, overrides or {})
    source = mark_cells(nbformat.read(source_path, as_version=4), name)
    if not grade_cells(source):
        raise AssignmentError(f"{source_path}: no cells tagged '{TESTS_TAG}', nothing to grade")
    try:
        submission = nbformat.read(submission_path, as_version=4)
    except Exception as err:  # not JSON, not a notebook: a report, not a crash
        submission, unreadable = None, f"submission is not a readable notebook: {type(err).__name__}: {err}"
    start = time.perf_counter()
    problems: list[str] = []
    every_test = [c.metadata["nbgrader"]["grade_id"] for c in grade_cells(source)]
    if submission is None:
        merged, missing = nbformat.v4.new_notebook(), every_test
        problems.append(unreadable)
    else:
        try:
            merged, missing = merge_tests(submission, source, submission_path.stem)
        except AssignmentError as err:
            merged, missing = nbformat.v4.new_notebook(), every_test
            problems.append(f"submission's exercise cells are malformed: {err}")
        for cell in merged.cells:  # stale outputs must not count: only what runs now
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        if params:
            from papermill.parameterize import parameterize_notebook  # lazy: the CLI starts without it

            merged.metadata.setdefault("papermill", {})  # papermill expects its own metadata slots
            for cell in merged.cells:
                cell.metadata.setdefault("tags", [])
            merged = parameterize_notebook(merged, params, kernel_name=KERNEL, language="python")
        if merged.cells:
            merged, problem = _execute(merged, source_path.parent.resolve(), timeout, hf=runs_hf(params))
            if problem:
                problems.append(problem)

    tests, by_id = [], {c.metadata["nbgrader"]["grade_id"]: c for c in grade_cells(merged)}
    for original in grade_cells(source):
        gid = original.metadata["nbgrader"]["grade_id"]
        max_points = float(original.metadata["nbgrader"]["points"])
        cell = by_id.get(gid)
        if gid in missing or cell is None:
            tests.append(CellScore(gid, 0.0, max_points, "missing", "test cell deleted from the submission"))
            continue
        if not _executed(cell):
            tests.append(CellScore(gid, 0.0, max_points, "not run", "execution stopped before this cell"))
            continue
        earned, _ = determine_grade(cell)
        earned = float(earned or 0.0)
        status = "passed" if earned >= max_points else ("partial" if earned > 0 else "failed")
        tests.append(CellScore(gid, earned, max_points, status, "" if status == "passed" else _first_error(cell)))
    for index, cell in enumerate(merged.cells):  # errors in answers explain failed tests; list them
        if cell.cell_type == "code" and not cell.metadata.get("nbgrader", {}).get("grade"):
            error = _first_error(cell)
            if error and not error.startswith("wrote to stderr"):
                where = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {index}"
                problems.append(f"{where}: {error}")

    report = GradeReport(
        submission=str(submission_path), source=str(source_path),
        score=sum(t.points for t in tests), max_score=sum(t.max_points for t in tests), tests=tests,
        parameters=params, timeout_s=float(timeout), seconds=time.perf_counter() - start, problems=problems,
    )
    out = Path(report_dir) if report_dir is not None else submission_path.parent
    stem = submission_path.name[: -len(".ipynb")] if submission_path.name.endswith(".ipynb") else submission_path.name
    graded = out / f"{stem}.graded.ipynb"
    if submission is not None:
        _write_notebook(merged, graded)
        report.graded_notebook = str(graded)
    _write_text(out / f"{stem}.grade.json", report.to_json() + "\n")
    _write_text(out / f"{stem}.grade.txt", report.summary() + "\n")
    return report


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- many submissions, one gradebook ---------------------------------------------------------------

def find_submissions(paths: Sequence[Path]) -> list[Path]:
    """Notebook files among ``paths``; a folder contributes every notebook below it (graded copies and
    checkpoints excluded), sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb")
                            if not p.name.endswith(".graded.ipynb") and ".ipynb_checkpoints" not in p.parts)
        else:
            found.append(path)
    if not found:
        raise ParameterError(f"no submissions: no notebook in {', '.join(map(str, paths))}")
    return found


def student_id(submission: Path, notebook: str) -> str:
    """Who submitted: ``alice.ipynb`` -> alice; ``alice/NAME.ipynb`` -> alice; nbgrader's
    ``submitted/alice/NAME/NAME.ipynb`` -> alice."""
    submission = Path(submission).resolve()
    if submission.stem != notebook:
        return submission.stem
    parent = submission.parent
    return parent.parent.name if parent.name == notebook else parent.name


def grade_many(
    submissions: Sequence[Path],
    source: Path | None = None,
    *,
    gradebook: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    profile: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    report_dir: Path | None = None,
    progress: bool = True,
    notebooks_dir: Path | None = None,
) -> tuple[list[GradeReport], Path]:
    """Grade every submission (``source``: the instructor notebook, default ``notebooks/<file name>``) and
    write one gradebook CSV: student, notebook, score, max_score, one column per test cell, seconds,
    problems. Reports go into ``report_dir/<student>/`` (default: beside each submission)."""
    import csv  # lazy: the CLI starts without it
    import io  # lazy: the CLI starts without it

    from tqdm.auto import tqdm  # lazy: the CLI starts without it

    paths = find_submissions(submissions)
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else _notebooks_dir()
    plan = []
    for path in paths:  # every source resolved before any kernel starts
        src = Path(source) if source is not None else notebooks_dir / path.name
        if not src.is_file():
            raise ParameterError(f"{path}: no source notebook {src} (name it with --source)")
        plan.append((path, src, student_id(path, src.stem)))
    students = [s for _, _, s in plan]
    if gradebook is None:
        base = Path(report_dir) if report_dir is not None else Path(os.path.commonpath([p.resolve().parent
                                                                                        for p in paths]))
        gradebook = base / "gradebook.csv"
    reports: list[GradeReport] = []
    # several submissions: their kernels fork from one zygote that imports torch & co. once (spatialkit/suite/zygote.py)
    hf = runs_hf(overrides or {})
    own_zygote = zygote.start(hf=hf) if len(plan) > 1 and zygote.address(hf) is None else None
    try:
        bar = tqdm(plan, desc="grading", unit="submission", file=sys.stderr, disable=not progress)
        for path, src, student in bar:
            bar.set_postfix_str(student)
            where = None
            if report_dir is not None:
                where = Path(report_dir) / student if students.count(student) == 1 else \
                    Path(report_dir) / student / str(len(reports))
            report = grade(path, src, timeout=timeout, profile=profile, overrides=overrides, report_dir=where)
            reports.append(report)
            if progress:
                bar.write(f"{student}: {report.score:g} / {report.max_score:g}")
    finally:
        if own_zygote is not None:
            own_zygote.close()
    test_ids: list[str] = []
    for report in reports:
        test_ids += [t.grade_id for t in report.tests if t.grade_id not in test_ids]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["student", "notebook", "score", "max_score", *test_ids, "seconds", "problems", "submission"])
    for (path, src, student), report in zip(plan, reports):
        points = {t.grade_id: t.points for t in report.tests}
        writer.writerow([student, src.stem, f"{report.score:g}", f"{report.max_score:g}",
                         *(f"{points[g]:g}" if g in points else "" for g in test_ids),
                         f"{report.seconds:.1f}", "; ".join(report.problems), str(path)])
    _write_text(Path(gradebook), buf.getvalue())
    return reports, Path(gradebook)


# --- CLI: `spatialkit assignments build|grade` ----------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="write student notebooks (solutions stripped, hidden tests removed)")
    b.add_argument("--out", default="release", type=Path, help="release folder (default: release/)")
    b.add_argument("--only", nargs="+", default=None, metavar="NAME", help="only these notebooks (stems)")
    b.add_argument("--course", type=Path, default=None, metavar="DIR",
                   help="write an nbgrader course instead (DIR/source/NAME/NAME.ipynb, DIR/nbgrader_config.py)")
    b.add_argument("--profile", default="quick",
                   help="with --course: parameter profile written into the notebooks (quick = their defaults)")
    b.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="with --course: seconds per cell when nbgrader autogrades (default: %(default)s)")
    g = sub.add_parser("grade", help="execute submissions with the hidden tests; score reports and one gradebook CSV")
    g.add_argument("submission", type=Path, nargs="+",
                   help="student notebooks (.ipynb), or folders holding them (e.g. nbgrader's submitted/)")
    g.add_argument("--source", type=Path, default=None,
                   help="instructor notebook (default: notebooks/<submission name>.ipynb)")
    g.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per cell (default: %(default)s)")
    g.add_argument("--profile", default="quick", help="parameter profile (quick = the notebook's defaults)")
    g.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="override a notebook parameter (VALUE read as YAML)")
    g.add_argument("--report-dir", type=Path, default=None,
                   help="where reports go, one folder per student (default: beside each submission)")
    g.add_argument("--gradebook", type=Path, default=None,
                   help="the gradebook CSV (default: gradebook.csv in --report-dir, else in the submissions' "
                        "common folder)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _notebooks_dir() -> Path:
    from spatialkit.suite.runner import default_root  # lazy: the CLI starts without it

    return default_root() / "notebooks"


def cmd_assignments(args: argparse.Namespace) -> int:
    try:
        if args.action == "build":
            sources = sorted(_notebooks_dir().glob("*.ipynb"))
            if args.only:
                unknown = sorted(set(args.only) - {p.stem for p in sources})
                if unknown:
                    raise ParameterError(f"--only: unknown notebook(s) {unknown}; known: {', '.join(p.stem for p in sources)}")
                sources = [p for p in sources if p.stem in args.only]
            if args.course is not None:
                written = build_course(sources, args.course, profile=args.profile, timeout=args.timeout)
                print(f"{len(written)} assignment(s) in {args.course / 'source'}")
                return 0
            written = build(sources, args.out)
            print(f"{len(written)} student notebook(s) in {args.out}")
            return 0
        from spatialkit.suite.runner import parse_value  # lazy: the CLI starts without it

        overrides = {k: parse_value(v) for k, v in args.param}
        if not (isinstance(args.timeout, (int, float)) and 1 <= args.timeout <= 3600):
            raise ParameterError(f"--timeout {args.timeout!r}: must be a number of seconds per cell in [1, 3600]")
        reports, gradebook = grade_many(args.submission, args.source, gradebook=args.gradebook,
                                        timeout=args.timeout, profile=args.profile, overrides=overrides,
                                        report_dir=args.report_dir, progress=args.progress)
        for report in reports:
            print(report.summary())
        print(f"gradebook: {gradebook} ({len(reports)} submission(s))")
        return 0
    except AssignmentError as err:
        print(f"spatialkit: error: {err}", file=sys.stderr)
        return 1
