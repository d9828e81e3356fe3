"""Parameter declarations, validation messages and the profiles file."""

import pytest

from spatialkit.suite import catalog
from spatialkit.suite import runner
from spatialkit.common.params import NotebookSpec, Param, ParameterError

SPEC = NotebookSpec("nb", "A notebook", (
    Param("seed", int, 0, low=0, high=100),
    Param("lr", float, 0.1, low=0.0, high=1.0),
    Param("device", str, "cpu", choices=("cpu", "cuda")),
    Param("model", str, "tiny", choices=("tiny",), allow_other=True),
    Param("verbose", bool, False),
    Param("layers", list, [1, 2], item_kind=int, low=0, high=31, min_len=1, max_len=4),
))


def test_defaults_validate_and_coerce():
    assert SPEC.validate({}) == SPEC.defaults()
    out = SPEC.validate({"seed": "7", "lr": 1, "verbose": "true", "layers": (3,), "model": "/models/qwen"})
    assert out["seed"] == 7 and out["lr"] == 1.0 and out["verbose"] is True
    assert out["layers"] == [3] and out["model"] == "/models/qwen"


@pytest.mark.parametrize("name, value, allowed", [
    ("seed", -1, "int in [0, 100]"),
    ("seed", "abc", "int in [0, 100]"),
    ("seed", 1.5, "int in [0, 100]"),
    ("seed", True, "int in [0, 100]"),
    ("lr", float("nan"), "float in [0, 1]"),
    ("lr", 2.0, "float in [0, 1]"),
    ("device", "tpu", "one of ['cpu', 'cuda']"),
    ("model", "", "one of ['tiny'] or a Hugging Face model id / local path"),
    ("verbose", "maybe", "bool"),
    ("layers", [40], "a list of int each in [0, 31]"),
    ("layers", [], "with 1..4 items"),
    ("layers", 3, "a list of int"),
])
def test_bad_value_is_one_line_naming_notebook_parameter_value_and_range(name, value, allowed):
    with pytest.raises(ParameterError) as info:
        SPEC.validate({name: value})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("nb: ") and f"'{name}'" in message and repr(value) in message
    assert allowed in message


def test_unknown_parameter_names_the_known_ones():
    with pytest.raises(ParameterError, match=r"nb: unknown parameter 'epochs'; known parameters: seed, lr"):
        SPEC.validate({"epochs": 3})


@pytest.mark.parametrize("text, value", [
    ("5", 5), ("-5", -5), ("0.25", 0.25), ("true", True), ("[1, 2]", [1, 2]), ("abc", "abc"),
    ("/path/to/qwen", "/path/to/qwen"), ("Qwen/Qwen2-VL-2B", "Qwen/Qwen2-VL-2B"), ("[unclosed", "[unclosed"),
])
def test_cli_values_are_yaml_scalars_or_lists(text, value):
    assert runner.parse_value(text) == value


def test_shipped_profiles_file_matches_the_catalog():
    profiles = runner.load_profiles()
    assert set(profiles) == {"quick", "full", "smoke"}
    assert profiles["quick"] == {}, "quick is the notebooks' own defaults: keep it empty"
    for entries in profiles.values():
        for name, overrides in entries.items():
            assert set(overrides) <= {p.name for p in catalog.get(name).params}
    for name, overrides in profiles["full"].items():
        if any(p.name == "device" for p in catalog.get(name).params):
            assert overrides.get("device") == "cuda", f"full profile of {name} must run on the GPU"


def write(tmp_path, text):
    path = tmp_path / "profiles.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, match", [
    ("quick: {}\nfast: {}\n", r"unknown profile\(s\) \['fast'\]"),
    ("smoke:\n  no_such_nb:\n    seed: 1\n", "unknown notebook 'no_such_nb'"),
    ("smoke:\n  nb:\n    epochs: 1\n", "nb: unknown parameter 'epochs'"),
    ("smoke:\n  nb:\n    seed: 1000\n", r"nb: parameter 'seed' = 1000 is invalid; allowed: int in \[0, 100\]"),
    ("- a list\n", "expected a mapping"),
])
def test_bad_profiles_file_is_rejected(tmp_path, text, match):
    with pytest.raises(ParameterError, match=match):
        runner.load_profiles(write(tmp_path, text), {"nb": SPEC})


def test_profile_then_cli_override_precedence(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "nb.ipynb").write_text("{}")
    profiles = write(tmp_path, "smoke:\n  nb:\n    seed: 5\n    lr: 0.5\n")
    kw = dict(root=tmp_path, notebooks={"nb": SPEC}, profiles_file=profiles)
    assert runner.plan("quick", **kw)[0].params == SPEC.defaults()
    smoke = runner.plan("smoke", **kw)[0].params
    assert (smoke["seed"], smoke["lr"]) == (5, 0.5)
    assert runner.plan("smoke", overrides={"seed": 9}, **kw)[0].params["seed"] == 9


def test_parameters_cells_declare_the_catalog_at_its_defaults():
    """Each notebook has one ``parameters`` cell assigning exactly its catalog parameters, each at the catalog's
    default (the quick profile), within the page's 100 columns: ``setup()`` only checks that none is missing."""
    import ast
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for name, spec in catalog.NOTEBOOKS.items():
        path = repo / "notebooks" / f"{name}.ipynb"
        if not path.exists():
            continue
        cells = [c for c in json.loads(path.read_text())["cells"]
                 if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(cells) == 1, f"{name}: {len(cells)} parameters cells"
        source = "".join(cells[0]["source"])
        values = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(source).body
                  if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
        declared = {p.name for p in spec.params}
        assert set(values) == declared, f"{name}: cell-only {set(values) - declared}, missing {declared - set(values)}"
        assert values == spec.defaults(), f"{name}: parameters cell defaults differ from the catalog's"
        assert all(len(line) <= 100 for line in source.splitlines()), f"{name}: parameters line over 100 columns"


def test_notebook_setup_shows_table_cells_in_full(monkeypatch, tmp_path):
    """Claims tables and organism notes are sentences: a notebook's setup stops pandas cutting them at 50
    characters (the book showed "Control. Its vision encoder was first trained ...")."""
    import pandas as pd

    from spatialkit.suite import catalog
    from spatialkit.suite.notebook import setup

    monkeypatch.chdir(tmp_path)
    name = next(iter(catalog.NOTEBOOKS))
    with pd.option_context("display.max_colwidth", 50):
        setup(name, dict(catalog.get(name).defaults()), quiet=True)
        assert pd.get_option("display.max_colwidth") is None
        assert "x" * 80 in pd.DataFrame({"note": ["x" * 80]})._repr_html_()
