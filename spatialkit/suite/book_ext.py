"""Sphinx extension for the book (enabled in ``_config.yml`` under ``sphinx: extra_extensions``).

Four page fixes, each small:

* A chapter shows the experiment, not the plumbing. Before myst-nb parses an executed notebook
  (``source-read``), papermill's injected ``# Parameters`` cell is folded into the notebook's own
  ``parameters`` cell (one cell, showing the values the run used, with the notebook's default beside each
  changed value) and dropped; the Colab/Binder install cell (``spatialkit.suite.bootstrap``) is removed and
  the ``setup(...)`` cell's input hidden (its output, the environment, stays). The executed file on disk is
  untouched (the page's .ipynb download serves it as run).

* Launch buttons open the notebook a reader can run. The chapters are the executed copies in
  ``book/executed/`` (build output, never committed), so sphinx-book-theme's Binder/Colab links would
  point at a file that does not exist in the repository; they are rewritten to
  ``notebooks/NAME.ipynb``. The ``.ipynb`` download button is left alone: it serves the executed copy
  (with outputs) from the book itself.
* Every script is included once. With Sphinx 7.4, sphinx-thebe and sphinx-togglebutton register their
  inline scripts twice, and the second ``const THEBE_JS_URL`` is a page error on every page.
* The theme gets a valid colour mode (``light``): without one pydata-sphinx-theme logs
  "Got invalid theme mode" as a console error on every page.
"""

from __future__ import annotations

import ast
from pathlib import Path
import json
from typing import Any

from spatialkit.suite.bootstrap import MARKER as BOOTSTRAP_MARKER

EXECUTED_PREFIX = "book/executed/"
SOURCE_PREFIX = "notebooks/"


def source_notebook(pagename: str) -> str | None:
    """'book/executed/00_x' -> 'notebooks/00_x.ipynb'; None for pages that are not executed notebooks."""
    if not pagename.startswith(EXECUTED_PREFIX):
        return None
    return SOURCE_PREFIX + pagename[len(EXECUTED_PREFIX):] + ".ipynb"


def _rewrite(buttons: Any, old: str, new: str, inside_launch: bool = False) -> None:
    """Replace ``old`` by ``new`` in the URLs of the launch dropdown (label 'launch-buttons')."""
    if isinstance(buttons, list):
        for button in buttons:
            _rewrite(button, old, new, inside_launch)
    elif isinstance(buttons, dict):
        inside_launch = inside_launch or buttons.get("label") == "launch-buttons"
        if inside_launch and isinstance(buttons.get("url"), str):
            buttons["url"] = buttons["url"].replace(old, new)
        _rewrite(buttons.get("buttons"), old, new, inside_launch)


# --- one parameters cell ---------------------------------------------------------------------------

PARAMETERS_TAG, INJECTED_TAG = "parameters", "injected-parameters"
SETUP_CALL = "from spatialkit.suite.notebook import setup"


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _assignments(source: str) -> dict[str, ast.expr]:
    """Top-level ``name = value`` (and ``name: type = value``) statements: name -> value node."""
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            found[node.target.id] = node.value
    return found


def _same_value(a: str, b: str) -> bool:
    try:
        return ast.literal_eval(a) == ast.literal_eval(b)
    except (ValueError, SyntaxError, TypeError):
        return a.strip() == b.strip()


PAGE_WIDTH = 100  # code columns that fit the book's page (ruff's line-length for the notebooks)


def fold_parameters(parameters: str, injected: str) -> str:
    """The ``parameters`` cell's source with the values of papermill's ``injected`` cell written in.

    Each assignment keeps its place and its comment; a changed value gets ``default: OLD`` appended to the
    line's comment (or as a new comment). Injected names the cell does not assign are appended at the end.
    A cell that does not parse is returned unchanged (then the book shows the injected values below it).
    """
    try:
        own, new = _assignments(parameters), _assignments(injected)
    except SyntaxError:
        return parameters
    lines = parameters.splitlines(keepends=True)

    def offset(lineno: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        line = lines[lineno - 1]
        return sum(len(x) for x in lines[: lineno - 1]) + len(line.encode()[:col].decode(errors="ignore"))

    edits = []
    for name, node in own.items():
        if name not in new:
            continue
        old_text = ast.get_source_segment(parameters, node) or ""
        new_text = ast.get_source_segment(injected, new[name]) or ""
        if _same_value(old_text, new_text):
            continue
        edits.append((offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset),
                      new_text, old_text))
    text = parameters
    for start, end, new_text, old_text in sorted(edits, reverse=True):
        line_end = text.find("\n", end)
        line_end = len(text) if line_end < 0 else line_end
        rest = text[end:line_end]
        default = " ".join(old_text.split())
        note = (f"; default: {default}" if "#" in rest else f"  # default: {default}") if len(default) <= 40 else ""
        line_start = text.rfind("\n", 0, start) + 1
        shown = text[line_start:start] + new_text + rest.rstrip() + note
        if len(shown) > PAGE_WIDTH:  # the page's width: keep the value and the default, drop the long comment
            rest = ""
            note = f"  # default: {default}" if len(default) <= 40 else ""
            if len(text[line_start:start] + new_text + note) > PAGE_WIDTH:
                note = ""
        text = text[:start] + new_text + rest.rstrip() + note + text[line_end:]
    extra = [f"{name} = {ast.get_source_segment(injected, node)}" for name, node in new.items() if name not in own]
    if extra:
        text = text.rstrip("\n") + "\n" + "\n".join(extra)
    return text


def _tags(cell: dict) -> list:
    return cell.setdefault("metadata", {}).setdefault("tags", [])


def present_notebook(nb: dict) -> dict:
    """The notebook as the book shows it: papermill's injected parameters folded into the parameters cell
    (and dropped), the Colab/Binder install cell removed, the setup cell's input hidden."""
    cells = nb.get("cells", [])
    params = next((c for c in cells if PARAMETERS_TAG in c.get("metadata", {}).get("tags", [])), None)
    injected = [c for c in cells if INJECTED_TAG in c.get("metadata", {}).get("tags", [])]
    if params is not None and injected:
        params["source"] = fold_parameters(_source(params), _source(injected[0]))
        nb["cells"] = cells = [c for c in cells if c is not injected[0]]
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = _source(cell)
        if BOOTSTRAP_MARKER in source:
            tags = _tags(cell)
            if "remove-cell" not in tags:
                tags.append("remove-cell")
        elif SETUP_CALL in source:
            tags = _tags(cell)
            if "hide-input" not in tags:
                tags.append("hide-input")
    return nb


def present_executed_notebooks(app, docname: str, source: list) -> None:
    """``source-read``: rewrite an executed chapter's JSON before myst-nb parses it."""
    if not docname.startswith(EXECUTED_PREFIX) or not source or not source[0].lstrip().startswith("{"):
        return
    try:
        nb = json.loads(source[0])
    except ValueError:
        return  # myst-nb reports it
    source[0] = json.dumps(present_notebook(nb), ensure_ascii=False)


def point_launch_buttons_at_sources(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    new = source_notebook(pagename)
    if new is not None and "header_buttons" in context:
        _rewrite(context["header_buttons"], pagename + ".ipynb", new)


def _script_key(script: Any) -> tuple:
    # the two registrations differ only in filename None vs '' (inline scripts): same script
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script) or ""
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def drop_duplicate_scripts(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def set_default_mode(app, config) -> None:
    # pydata-sphinx-theme reads the mode from the template context, not from html_theme_options
    context = dict(config.html_context or {})
    if not context.get("default_mode"):
        context["default_mode"] = "light"
    config.html_context = context


STATIC = Path(__file__).resolve().parent / "static"  # spatialkit.css: the page width the code is formatted for


def add_static(app, config) -> None:
    config.html_static_path = [*config.html_static_path, str(STATIC)]


def setup(app):
    app.connect("config-inited", set_default_mode)
    app.connect("config-inited", add_static)
    app.add_css_file("spatialkit.css")
    app.connect("source-read", present_executed_notebooks)
    # sphinx-book-theme builds the launch buttons at priority 501; run after it
    app.connect("html-page-context", point_launch_buttons_at_sources, priority=600)
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
