"""Every notebook that takes ``model`` runs on every supported Hugging Face family, from the CLI.

The matrix: each notebook whose catalog spec declares ``model`` (read from the catalog, so a notebook joins
when it gains the parameter) x each hub-layout tiny checkpoint (``spatialkit.testing.hf_tiny.save_hub_layout``:
Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-1.5, and LLaVA with a SentencePiece tokenizer: its ``TOKENIZER_ONLY``
notebooks), in the smoke profile.
One ``spatialkit run --profile smoke --only A --only B ... -p model <folder> --jobs 2`` per checkpoint, in a
private book root; each notebook must execute without an error output, name the HF model in its outputs and
give it a column of its own in its results file (``NAME.results.json``: at least one claim judged on it).
The README's real-VLM section lists, per notebook, what runs on the HF model. The checkpoints have random
weights: what runs is tested, not the verdicts.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from spatialkit.suite import book, catalog, cli

REPO = Path(__file__).resolve().parents[1]
MODEL_NOTEBOOKS = [name for name, spec in catalog.NOTEBOOKS.items()
                   if any(p.name == "model" for p in spec.params) and (REPO / "notebooks" / f"{name}.ipynb").exists()]
CASES = [("qwen2_vl", "default"), ("qwen2_5_vl", "default"), ("qwen3_vl", "default"), ("llava", "default"),
         ("llava", "sentencepiece")]
# The SentencePiece LLaVA differs from the default one in its tokenizer only: it runs the notebooks whose text
# goes through the tokenizer in more ways than option scoring -- generating and decoding (02 captions, 04), the
# location tokens of PIN's box answers (06); the adapter's tokenizer paths themselves (option ids after
# "ASSISTANT:", BOS, location tokens) are unit-tested in tests/test_hf_hub_layout.py and tests/test_pin_hf.py.
# Every model notebook still runs on every family above (keeps `make test` within its 10 minutes).
TOKENIZER_ONLY = ("02_semantic_loudness", "04_adaptvis", "06_pin")
# The organisms' own columns run in the smoke book (tests/test_notebooks.py); here each notebook keeps one control
# and one failing organism (two encodings in 01) beside the HF column, which runs all of its code as before: about
# 6 s of CPU less per family's run of 01-06 (measured on Qwen2-VL: 01 -3.5 s, 03 -1 s, 04 -1 to -2 s).
FEWEST_ORGANISMS = {"organisms": "[smoke]", "failing": "[smoke_llava]", "encodings": "[none, learned]"}


def test_the_cases_cover_every_family():
    from spatialkit.testing import hf_tiny

    assert {family for family, _ in CASES} == set(hf_tiny.FAMILIES)
    assert MODEL_NOTEBOOKS, "no catalog notebook declares 'model'"
    assert set(TOKENIZER_ONLY) <= set(MODEL_NOTEBOOKS), set(TOKENIZER_ONLY) - set(MODEL_NOTEBOOKS)


def test_only_may_be_repeated():
    args = cli.build_parser(["run"]).parse_args(["run", "--only", "a", "--only", "b", "c"])
    assert args.only == ["a", "b", "c"]


@pytest.fixture(scope="session")
def hub_checkpoints(tmp_path_factory):
    """The five hub-layout checkpoints, built once per session: (family, tokenizer) -> folder."""
    from spatialkit.testing import hf_tiny

    base = tmp_path_factory.mktemp("hub")
    return {(family, tok): hf_tiny.save_hub_layout(family, base / f"{family}-{tok}", tokenizer=tok)
            for family, tok in CASES}


@pytest.mark.slow
@pytest.mark.parametrize("family, tokenizer", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_model_notebooks_run_on_the_hub_checkpoint(family, tokenizer, hub_checkpoints, tmp_path):
    folder = hub_checkpoints[family, tokenizer]
    notebooks = MODEL_NOTEBOOKS if tokenizer == "default" else [n for n in MODEL_NOTEBOOKS if n in TOKENIZER_ONLY]
    root = tmp_path / "root"  # a private book root: the executed copies must not land in the real book/
    (root / "notebooks").mkdir(parents=True)
    for name in notebooks:
        shutil.copy(REPO / "notebooks" / f"{name}.ipynb", root / "notebooks")
    only = [arg for name in notebooks for arg in ("--only", name)]
    cmd = [sys.executable, "-m", "spatialkit", "run", "--profile", "smoke", *only, "--force",
           "-p", "model", str(folder), "--jobs", "2",
           *[arg for name, value in FEWEST_ORGANISMS.items() if _declared(name, notebooks)
             for arg in ("-p", name, value)]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SPATIALKIT_ROOT": str(root)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    executed = root / "book" / "executed"
    column = folder.name  # HFVLM.name: the folder's (or hub id's) last part
    for name in notebooks:
        assert (executed / f"{name}.ipynb").is_file(), f"{name} did not execute:\n{done.stdout[-3000:]}"
        assert book.error_outputs(executed / f"{name}.ipynb") == [], name
        results = json.loads((executed / f"{name}.results.json").read_text())
        assert results["parameters"]["model"] == str(folder), name
        assert column in _outputs(executed / f"{name}.ipynb"), f"{name}: its outputs never name '{column}'"
        assert column in results.get("models", []), f"{name}: no '{column}' column in {results.get('models')}"
        on_hf = [c["claim"] for c in results["claims"] if column in c["models"]]
        assert on_hf, f"{name}: no claim judged on the HF model"
        print(f"{family}-{tokenizer} {name}: {len(on_hf)}/{len(results['claims'])} claims on the HF model")


def _declared(param: str, notebooks) -> bool:
    """Whether one of ``notebooks`` takes ``param`` (``-p`` refuses a name none of the run's notebooks takes)."""
    return any(p.name == param for name in notebooks for p in catalog.NOTEBOOKS[name].params)


def _outputs(path: Path) -> str:
    """The text of every output of an executed notebook (streams, text/plain, Markdown)."""
    return "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get(kind, ""))
                   for cell in json.loads(path.read_text())["cells"] for o in cell.get("outputs", [])
                   for kind in ("text/plain", "text/markdown"))
