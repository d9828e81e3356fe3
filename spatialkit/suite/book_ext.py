"""Sphinx extension for the book (enabled in ``_config.yml`` under ``sphinx: extra_extensions``).

Three page fixes, each small:

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

from typing import Any

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


def setup(app):
    app.connect("config-inited", set_default_mode)
    # sphinx-book-theme builds the launch buttons at priority 501; run after it
    app.connect("html-page-context", point_launch_buttons_at_sources, priority=600)
    app.connect("html-page-context", drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
