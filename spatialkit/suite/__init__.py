"""The notebook suite's machinery: the catalog of notebooks and their parameters, profiles, the papermill
runner, the book build (and its Sphinx extension), classroom assignments and the ``spatialkit`` CLI.

Imports no model or analysis code at module level (the CLI must answer in well under a second); nothing
else in the package imports the suite. A new notebook is registered in ``suite/catalog.py``.
"""
