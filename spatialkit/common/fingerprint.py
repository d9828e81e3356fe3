"""One code fingerprint for every cache: a hash of what a module *does*, over its import closure in spatialkit.

    key = fingerprint("spatialkit.models.organism.store")    # 16 hex digits

The closure follows every ``import`` / ``from ... import`` of a spatialkit module found anywhere in its source
(also inside functions), plus the ``__init__`` of every package on the way, read from the files without
importing anything. Each module contributes its syntax tree with docstrings dropped, so editing a comment, a
docstring or the layout keeps every cached model; any change to the code a cached model depends on (e.g. the
attention call in ``models/vlm.py`` that every organism forward pass runs) gives a new key, and a change to an
unrelated module does not.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "spatialkit"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def module_file(name: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The source file of spatialkit module ``name`` (``a.b`` -> a/b.py or a/b/__init__.py), None if absent."""
    parts = name.split(".")[1:]
    base = root.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(name: str, tree: ast.AST, is_package: bool) -> set[str]:
    """spatialkit modules named by the imports of module ``name`` (relative imports resolved)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != PACKAGE:
                continue
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")  # submodules, when they are
    return out


def strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


def closure(*modules: str, root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Every spatialkit module that ``modules`` import, directly or not, with its file (sorted by name)."""
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:
            continue  # a name imported from a module, not a module itself
        seen[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run their __init__
        todo += _parsed(name, *_version(path))[0]
    return dict(sorted(seen.items()))


def _version(path: Path) -> tuple[str, int, int]:
    """(path, modification time, size): one version of a file; an edited file is parsed again."""
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=None)
def _parsed(name: str, path: str, mtime_ns: int, size: int) -> tuple[tuple[str, ...], str]:
    """(the spatialkit modules it imports, its code without docstrings) for one version of module ``name``.

    Parsed once per process and file version: every checkpoint key, notebook key and training task asks for
    fingerprints, and parsing the whole closure again on each call cost ~0.2 s per key."""
    tree = ast.parse(Path(path).read_text())
    imported = tuple(sorted(_imported(name, tree, Path(path).name == "__init__.py")))
    return imported, ast.dump(strip_docstrings(tree))


@functools.lru_cache(maxsize=None)
def _cached(modules: tuple[str, ...], root: Path, stamp: tuple) -> str:
    h = hashlib.sha256()
    for (name, _), version in zip(closure(*modules, root=root).items(), stamp):
        h.update(name.encode() + b"\0" + _parsed(name, *version)[1].encode() + b"\0")
    return h.hexdigest()[:16]


def fingerprint(*modules: str, root: Path = PACKAGE_ROOT) -> str:
    """16 hex digits naming the code of ``modules`` and everything they import inside spatialkit."""
    if not modules:
        raise ValueError("fingerprint() needs at least one module name")
    # the files' versions (modification time, size) key the in-process caches, so an edited file is re-read
    stamp = tuple(_version(p) for p in closure(*modules, root=root).values())
    return _cached(tuple(sorted(modules)), Path(root), stamp)
