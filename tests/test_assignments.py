"""Assignments: student versions (nbgrader preprocessors) and the autograder.

Small synthetic notebooks keep this fast (one kernel start per graded notebook); the real
notebook check at the end is marked slow.
"""

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from spatialkit.suite import assignments as A
from spatialkit.suite import cli
from spatialkit.common.params import ParameterError

REPO = Path(__file__).resolve().parents[1]

ADD_SOLUTION = "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION"
ADD_TESTS = ("# points: 2\nassert add(1, 2) == 3\n"
             "### BEGIN HIDDEN TESTS\nassert add(-1, 1) == 0\n### END HIDDEN TESTS")
WORD_SOLUTION = "### BEGIN SOLUTION\nword = 'chicken'\n### END SOLUTION\nprint(word)"
WORD_TESTS = "# points: 1\nassert word.startswith('chick')\n### BEGIN HIDDEN TESTS\nassert len(word) == 7\n### END HIDDEN TESTS"


def code(source, *tags, cell_id=None):
    cell = new_code_cell(source, metadata={"tags": list(tags)} if tags else {})
    if cell_id:
        cell.id = cell_id
    return cell


def make_notebook(add_solution=ADD_SOLUTION, word_solution=WORD_SOLUTION):
    """Two exercises (2 + 1 points), ids fixed so expectations can name them."""
    nb = new_notebook(cells=[
        new_markdown_cell("# A tiny assignment"),
        code("offset = 0", "parameters", cell_id="params"),
        code("import math", cell_id="setup"),
        code(add_solution, "solution", cell_id="add-sol"),
        code(ADD_TESTS, "tests", cell_id="add-tests"),
        code(word_solution, "solution", cell_id="word-sol"),
        code(WORD_TESTS, "tests", cell_id="word-tests"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"secret": 1}}}
    return nb


def write(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


@pytest.fixture
def source(tmp_path):
    return write(make_notebook(), tmp_path / "src" / "hw.ipynb")


def student_of(source, tmp_path):
    [path] = A.build([source], tmp_path / "release", echo=lambda _: None)
    return path


def by_id(report):
    return {t.grade_id: t for t in report.tests}


# --- student version -----------------------------------------------------------------------------

def test_student_version_strips_solutions_hidden_tests_outputs_and_widget_state(source, tmp_path):
    nb = nbformat.read(source, as_version=4)
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="3\n")]
    write(nb, source)
    student = nbformat.read(student_of(source, tmp_path), as_version=4)
    text = "\n".join(c.source for c in student.cells)
    assert "return a + b" not in text and "'chicken'" not in text          # solutions gone
    assert "add(-1, 1)" not in text and "len(word)" not in text            # hidden tests gone
    assert "HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text
    assert student.cells[3].source == "def add(a, b):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert student.cells[5].source == "# YOUR CODE HERE\nraise NotImplementedError()\nprint(word)"
    assert "assert add(1, 2) == 3" in student.cells[4].source                # visible tests stay
    assert all(c.get("outputs", []) == [] for c in student.cells if c.cell_type == "code")
    assert "widgets" not in student.metadata
    tests = student.cells[4].metadata
    assert tests["nbgrader"]["points"] == 2 and tests["nbgrader"]["grade_id"] == "tests-add-tests"
    assert tests["editable"] is False and tests["deletable"] is False       # nbgrader LockCells
    assert student.cells[3].metadata["nbgrader"]["solution"] is True
    assert "checksum" in student.cells[3].metadata["nbgrader"]               # nbgrader ComputeChecksums
    assert nbformat.read(source, as_version=4).cells[3].source == ADD_SOLUTION  # source untouched


def test_build_skips_notebooks_without_exercises(tmp_path):
    plain = write(new_notebook(cells=[code("x = 1")]), tmp_path / "plain.ipynb")
    said = []
    assert A.build([plain], tmp_path / "release", echo=said.append) == []
    assert "no cells tagged" in said[0]


@pytest.mark.parametrize("bad, message", [
    ("assert True", "must start with a line '# points: N'"),
    ("# points: 0\nassert True", "N > 0"),
])
def test_malformed_tests_cell_is_named(tmp_path, bad, message):
    nb = make_notebook()
    nb.cells[4].source = bad
    path = write(nb, tmp_path / "bad.ipynb")
    with pytest.raises(A.AssignmentError, match=rf"bad: cell 4: .*{message}"):
        A.build([path], tmp_path / "release")


def test_unclosed_solution_marker_is_an_assignment_error(tmp_path):
    path = write(make_notebook(add_solution="### BEGIN SOLUTION\nx = 1"), tmp_path / "open.ipynb")
    with pytest.raises(A.AssignmentError, match="open: .*end solution"):
        A.build([path], tmp_path / "release")


# --- grading -------------------------------------------------------------------------------------

def test_instructor_solution_scores_full_marks(source, tmp_path):
    report = A.grade(source, source, timeout=30, report_dir=tmp_path / "reports")
    assert (report.score, report.max_score) == (3, 3), report.summary()
    assert all(t.status == "passed" for t in report.tests)
    saved = json.loads((tmp_path / "reports" / "hw.grade.json").read_text())
    assert saved["score"] == 3 and [t["grade_id"] for t in saved["tests"]] == ["tests-add-tests", "tests-word-tests"]
    assert "3 / 3 points" in (tmp_path / "reports" / "hw.grade.txt").read_text()
    assert (tmp_path / "reports" / "hw.graded.ipynb").exists()


def test_generated_student_notebook_scores_zero_without_crashing(source, tmp_path):
    report = A.grade(student_of(source, tmp_path), source, timeout=30, report_dir=tmp_path / "reports")
    assert (report.score, report.max_score) == (0, 3), report.summary()
    assert {t.status for t in report.tests} == {"failed"}
    assert "NotImplementedError" in by_id(report)["tests-add-tests"].message  # the stub raised
    assert "NameError" in by_id(report)["tests-word-tests"].message           # word never assigned
    assert any("solution-word-sol: NotImplementedError" in p for p in report.problems)


def test_hidden_tests_are_put_back_for_grading(source, tmp_path):
    # passes the visible check add(1, 2) == 3 but not the hidden add(-1, 1) == 0
    student = nbformat.read(student_of(source, tmp_path), as_version=4)
    student.cells[3].source = "def add(a, b):\n    return abs(a) + b"
    student.cells[5].source = "word = 'chicken'"
    submission = write(student, tmp_path / "sub" / "hw.ipynb")
    report = A.grade(submission, source, timeout=30)
    assert by_id(report)["tests-add-tests"].status == "failed"
    assert by_id(report)["tests-word-tests"].status == "passed"
    assert report.score == 1


def test_edited_or_deleted_test_cells_do_not_help(source, tmp_path):
    student = A.student_version(make_notebook(add_solution="def add(a, b):\n    return 0"))
    student.cells[4].source = "# points: 2\npass"                     # test "fixed" by the student
    del student.cells[6]                                                 # second test deleted
    report = A.grade(write(student, tmp_path / "sub" / "hw.ipynb"), source, timeout=30)
    assert by_id(report)["tests-add-tests"].status == "failed"         # original test ran again
    assert by_id(report)["tests-word-tests"].status == "missing"
    assert report.score == 0 and report.max_score == 3


def test_raising_submission_is_reported(source, tmp_path):
    broken = make_notebook(word_solution="raise ValueError('no idea')")
    report = A.grade(write(broken, tmp_path / "sub" / "hw.ipynb"), source, timeout=30)
    assert by_id(report)["tests-add-tests"].status == "passed"
    assert by_id(report)["tests-word-tests"].status == "failed"
    assert any("ValueError: no idea" in p for p in report.problems)
    assert report.score == 2


def test_looping_submission_times_out_per_cell_and_later_cells_still_count(source, tmp_path):
    looping = make_notebook(add_solution="while True:\n    pass")
    report = A.grade(write(looping, tmp_path / "sub" / "hw.ipynb"), source, timeout=3)
    assert by_id(report)["tests-add-tests"].status == "failed"
    assert any("CellTimeoutError" in p or "KeyboardInterrupt" in p for p in report.problems), report.problems
    assert by_id(report)["tests-word-tests"].status == "passed"         # the kernel survived the loop
    assert report.score == 1


def test_submission_that_kills_the_kernel_is_reported(source, tmp_path):
    fatal = make_notebook(add_solution="import os\nos._exit(3)")
    report = A.grade(write(fatal, tmp_path / "sub" / "hw.ipynb"), source, timeout=30)
    assert report.score == 0
    assert any("execution stopped" in p for p in report.problems), report.problems
    assert {t.status for t in report.tests} <= {"not run", "failed"}


def test_unreadable_submission_is_reported(source, tmp_path):
    junk = tmp_path / "sub" / "hw.ipynb"
    junk.parent.mkdir()
    junk.write_text("this is not a notebook")
    report = A.grade(junk, source, timeout=30)
    assert report.score == 0 and report.max_score == 3
    assert "not a readable notebook" in report.problems[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"timeout": 0}, r"--timeout 0: must be a number of seconds per cell in \[1, 3600\]"),
    ({"profile": "huge"}, "--profile 'huge' is invalid"),
])
def test_bad_grading_options_fail_before_any_work(source, kwargs, message):
    with pytest.raises(ParameterError, match=message):
        A.grade(source, source, **kwargs)


def test_missing_source_is_named(source, tmp_path):
    with pytest.raises(ParameterError, match="--source .*nope.ipynb: no such notebook"):
        A.grade(source, tmp_path / "nope.ipynb")


def test_cli_build_and_grade(source, tmp_path, capsys):
    release = tmp_path / "release"
    assert cli.main(["assignments", "build", "--out", str(release), "--only", "00_wheres_the_chicken"]) == 0
    assert (release / "00_wheres_the_chicken.ipynb").exists()
    assert cli.main(["assignments", "grade", str(source), "--source", str(source), "--timeout", "30",
                     "--report-dir", str(tmp_path / "r")]) == 0
    assert "3 / 3 points" in capsys.readouterr().out
    assert cli.main(["assignments", "build", "--only", "no_such_notebook"]) == 2


# --- a real notebook -----------------------------------------------------------------------------

REAL = sorted(p for p in (REPO / "notebooks").glob("*.ipynb") if A.has_exercises(nbformat.read(p, as_version=4)))


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.stem)
def test_real_notebook_student_version(path, tmp_path):
    """Every notebook with exercises converts; every tests cell has points; nothing hidden leaks."""
    source = nbformat.read(path, as_version=4)
    student = A.student_version(source, path.stem)
    assert A.grade_cells(student), f"{path.name}: no graded cells"
    text = "\n".join(c.source for c in student.cells)
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert text.count("raise NotImplementedError()") == sum(SOLUTION in c.metadata.get("tags", []) for c in source.cells)


SOLUTION = A.SOLUTION_TAG


@pytest.mark.slow
@pytest.mark.skipif(not REAL, reason="no notebook in notebooks/ has exercises yet")
def test_real_notebook_instructor_full_marks_student_zero(tmp_path):
    path = REAL[0]
    student = student_of(path, tmp_path)
    full = A.grade(path, path, profile="smoke", timeout=120, report_dir=tmp_path / "instructor")
    assert full.score == full.max_score > 0, full.summary()
    zero = A.grade(student, path, profile="smoke", timeout=120, report_dir=tmp_path / "student")
    assert zero.score == 0 and zero.max_score == full.max_score, zero.summary()


# --- an nbgrader course, and many submissions into one gradebook ----------------------------------

def test_course_layout_and_config(source, tmp_path):
    course = tmp_path / "course"
    [written] = A.build_course([source], course, timeout=45, echo=lambda _: None)
    assert written == course / "source" / "hw" / "hw.ipynb"
    nb = nbformat.read(written, as_version=4)
    assert nb.cells[3].source == ADD_SOLUTION                               # the instructor version
    assert nb.cells[4].metadata["nbgrader"] == {"solution": False, "grade": True, "locked": True, "points": 2.0,
                                                "grade_id": "tests-add-tests", "schema_version": 3}
    assert "widgets" not in nb.metadata
    config = (course / "nbgrader_config.py").read_text()
    assert "c.CourseDirectory.course_id = 'spatialkit'" in config and "c.Execute.timeout = 45" in config
    compile(config, "nbgrader_config.py", "exec")


def test_profile_values_are_written_into_the_parameters_cell():
    nb = A.with_parameters(make_notebook(), {"offset": 5})
    assert nb.cells[1].source == "offset = 5  # default: 0"
    with pytest.raises(A.AssignmentError, match="no cell tagged 'parameters'"):
        A.with_parameters(new_notebook(cells=[code("x = 1")]), {"offset": 5})


@pytest.mark.slow  # nbgrader's CLI: two application starts and two kernels, about 30 s
def test_nbgrader_accepts_the_course_and_grades_it(source, tmp_path):
    import os
    import subprocess
    import sys

    course = tmp_path / "course"
    A.build_course([source], course, echo=lambda _: None)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    nbgrader = str(Path(sys.executable).parent / "nbgrader")

    def run(*args):
        done = subprocess.run([nbgrader, *args], cwd=course, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    run("generate_assignment", "hw", "--force")
    release = course / "release" / "hw" / "hw.ipynb"
    assert "raise NotImplementedError()" in release.read_text() and "add(-1, 1)" not in release.read_text()
    # the instructor's version (solutions in) and the untouched student copy
    for student, notebook in (("solution", course / "source" / "hw" / "hw.ipynb"), ("blank", release)):
        (course / "submitted" / student / "hw").mkdir(parents=True)
        (course / "submitted" / student / "hw" / "hw.ipynb").write_bytes(notebook.read_bytes())
    run("autograde", "hw")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        scores = {s: gradebook.find_submission("hw", s).score for s in ("solution", "blank")}
        assert gradebook.find_assignment("hw").max_score == 3
    assert scores == {"solution": 3, "blank": 0}


def test_many_submissions_one_gradebook(source, tmp_path, capsys, monkeypatch):
    from spatialkit.suite import zygote

    for variable in zygote.ADDRESS_ENV.values():  # no session zygote: grading several starts (and ends) its own
        monkeypatch.delenv(variable, raising=False)
    started, real_start = [], zygote.start
    monkeypatch.setattr(zygote, "start", lambda **kw: started.append(real_start(**kw)) or started[-1])
    submitted = tmp_path / "submitted"
    for student, nb in (("alice", make_notebook()), ("bob", A.student_version(make_notebook(), "hw"))):
        write(nb, submitted / student / "hw" / "hw.ipynb")                  # nbgrader's layout
    (submitted / "alice" / "hw" / "hw.graded.ipynb").write_text("{}")     # a graded copy is not a submission
    code_ = cli.main(["assignments", "grade", str(submitted), "--source", str(source), "--timeout", "30",
                      "--report-dir", str(tmp_path / "reports")])
    assert code_ == 0
    captured = capsys.readouterr()
    assert "grading" in captured.err                                        # tqdm's bar
    rows = (tmp_path / "reports" / "gradebook.csv").read_text().splitlines()
    assert rows[0].startswith("student,notebook,score,max_score,tests-add-tests,tests-word-tests,seconds")
    assert rows[1].startswith("alice,hw,3,3,2,1,") and rows[2].startswith("bob,hw,0,3,0,0,")
    assert (tmp_path / "reports" / "alice" / "hw.grade.json").exists()
    assert f"gradebook: {tmp_path / 'reports' / 'gradebook.csv'} (2 submission(s))" in captured.out
    if zygote.enabled():
        assert len(started) == 1 and started[0].process.poll() is not None and not started[0].folder.exists()


def test_student_ids_from_the_usual_layouts(tmp_path):
    assert A.student_id(tmp_path / "alice.ipynb", "hw") == "alice"
    assert A.student_id(tmp_path / "bob" / "hw.ipynb", "hw") == "bob"
    assert A.student_id(tmp_path / "submitted" / "carol" / "hw" / "hw.ipynb", "hw") == "carol"
    with pytest.raises(ParameterError, match="no submissions"):
        A.find_submissions([tmp_path])
