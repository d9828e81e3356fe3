"""One code fingerprint for every cache (organisms, CLIP/CLOC, PIN inserts, executed notebooks)."""

import shutil
from pathlib import Path

import pytest

import spatialkit
from spatialkit.common.fingerprint import closure, fingerprint, strip_docstrings

ORGANISM = "spatialkit.models.organism.store"


@pytest.fixture
def package_copy(tmp_path):
    """A private copy of the package, so files can be touched without disturbing the real one."""
    root = tmp_path / "spatialkit"
    shutil.copytree(Path(spatialkit.__file__).parent, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def touch_code(path: Path, line: str = "_FINGERPRINT_TEST = 1\n") -> None:
    path.write_text(path.read_text() + "\n" + line)


def test_organism_closure_holds_what_a_forward_pass_runs():
    names = set(closure(ORGANISM))
    # vlm.py's AttnCall.sdpa runs in every organism forward pass; posenc and the scene world shape the data
    for needed in ("spatialkit.models.vlm", "spatialkit.models.posenc", "spatialkit.models.organism.model",
                   "spatialkit.models.organism.train", "spatialkit.world.scene", "spatialkit"):
        assert needed in names
    for unrelated in ("spatialkit.models.clip", "spatialkit.suite.runner", "spatialkit.analysis.attention",
                      "spatialkit.models.hf.adapter"):
        assert unrelated not in names


def test_touching_a_module_in_the_closure_changes_the_key_and_an_unrelated_one_does_not(package_copy):
    before = fingerprint(ORGANISM, root=package_copy)
    assert len(before) == 16 and before == fingerprint(ORGANISM, root=package_copy)
    touch_code(package_copy / "models" / "clip.py")  # not imported by the organism
    touch_code(package_copy / "suite" / "runner.py")
    assert fingerprint(ORGANISM, root=package_copy) == before
    for rel in ("models/vlm.py", "models/posenc.py", "world/wherebench.py", "common/checkpoints.py"):
        touch_code(package_copy / rel, f"_TOUCHED_{rel.replace('/', '_').replace('.', '_')} = 2\n")
        after = fingerprint(ORGANISM, root=package_copy)
        assert after != before, rel
        before = after


def test_comments_and_docstrings_do_not_change_the_key_but_code_does(package_copy):
    path = package_copy / "models" / "vlm.py"
    before = fingerprint(ORGANISM, root=package_copy)
    text = path.read_text()
    path.write_text(text.replace('"""The one ``VLM`` interface', '"""Reworded: the one ``VLM`` interface', 1)
                    + "\n# a new comment\n")
    assert fingerprint(ORGANISM, root=package_copy) == before
    path.write_text(text.replace("return F.scaled_dot_product_attention(", "return 1 * F.scaled_dot_product_attention(", 1))
    assert fingerprint(ORGANISM, root=package_copy) != before


def test_docstring_stripping():
    import ast

    def code(src):
        return ast.dump(strip_docstrings(ast.parse(src)))

    original = 'def f(x):\n    """doc"""\n    return x + 1  # one\n'
    reworded = 'def f(x):\n    """other doc"""\n\n    # a comment\n    return x + 1\n'
    assert code(original) == code(reworded) != code("def f(x):\n    return x + 2\n")


def test_every_cache_uses_the_one_fingerprint():
    from spatialkit.analysis.interventions.pin import pin_code_version
    from spatialkit.models import clip
    from spatialkit.models.organism import code_version

    assert code_version() == fingerprint(ORGANISM)
    assert clip.code_version() == fingerprint("spatialkit.models.clip")
    assert pin_code_version() == fingerprint("spatialkit.analysis.interventions.pin")
    with pytest.raises(ValueError):
        fingerprint()


def test_each_file_version_is_parsed_once_per_process(package_copy, monkeypatch):
    """Every checkpoint and notebook key asks for fingerprints; parsing the closure again on each call made a
    run's planning take seconds. A second key over unchanged files parses nothing; an edited file alone is
    parsed again, and the key still follows it."""
    import ast

    parsed = []
    real_parse = ast.parse
    monkeypatch.setattr(ast, "parse", lambda source, *a, **kw: parsed.append(source) or real_parse(source, *a, **kw))
    first = fingerprint(ORGANISM, root=package_copy)
    assert len(parsed) == len(closure(ORGANISM, root=package_copy))  # each module of the closure, once
    parsed.clear()
    assert fingerprint(ORGANISM, root=package_copy) == first
    assert fingerprint("spatialkit.models.organism.train", root=package_copy)  # inside the same closure
    assert parsed == []
    touch_code(package_copy / "models" / "vlm.py")
    assert fingerprint(ORGANISM, root=package_copy) != first
    assert len(parsed) == 1 and "_FINGERPRINT_TEST = 1" in parsed[0]
