"""Import nbformat and papermill without compiling jsonschema's IRI grammars.

jsonschema registers its ``iri`` / ``iri-reference`` format checkers by importing ``rfc3987_syntax`` whenever
that package is installed (jupyter-events' ``jsonschema[format-nongpl]`` brings it), and that import compiles
38 Lark grammars: about 1.2 s of CPU in every process that imports nbformat or papermill (``import papermill``
1.5 s -> 0.3 s CPU on the 2-core machine of docs/performance.md). A run imports papermill in every worker,
the test suite in dozens of processes. Notebook schemas use no IRI format and nbformat validates without a
format checker, so spatialkit's processes that read, write or execute notebooks skip those two checkers.
"""

from __future__ import annotations

import sys

SKIPPED = "rfc3987_syntax"


def skip_iri_grammars() -> None:
    """Make ``import rfc3987_syntax`` fail fast (jsonschema then leaves the two IRI checkers out).

    Only while jsonschema is not imported yet (afterwards the grammars are compiled and nothing is saved) and
    the package itself is not: a process that already uses it keeps it."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault(SKIPPED, None)


def nbformat():
    """The ``nbformat`` module, imported after :func:`skip_iri_grammars`."""
    skip_iri_grammars()
    import nbformat as module  # heavy (jsonschema): imported only where notebooks are read or written

    return module


def papermill():
    """The ``papermill`` module, imported after :func:`skip_iri_grammars`."""
    skip_iri_grammars()
    import papermill as module  # heavy (nbclient, nbformat, jsonschema): imported only when something runs

    return module
