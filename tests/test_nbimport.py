"""spatialkit.suite.nbimport: nbformat/papermill without jsonschema's IRI grammars, notebooks still validated."""

import subprocess
import sys
import textwrap


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_papermill_imports_without_the_grammars_and_notebooks_still_validate():
    out = _python("""
        import sys
        from spatialkit.suite import nbimport
        papermill = nbimport.papermill()
        nbformat = nbimport.nbformat()
        import jsonschema._format as formats
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
        nbformat.validate(nb)  # a good notebook passes
        del nb.cells[0]["source"]
        try:
            nbformat.validate(nb)
        except nbformat.ValidationError:
            print("bad notebook refused")
        print(sys.modules["rfc3987_syntax"] is None, "iri" in formats.draft7_format_checker.checkers,
              "uri" in formats.draft7_format_checker.checkers)
    """)
    assert out.splitlines() == ["bad notebook refused", "True False True"], out


def test_a_process_that_imported_jsonschema_first_keeps_its_checkers():
    out = _python("""
        import sys
        import jsonschema
        from spatialkit.suite import nbimport
        nbimport.skip_iri_grammars()
        print("rfc3987_syntax" in sys.modules and sys.modules["rfc3987_syntax"] is None)
    """)
    assert out == "False"
