"""Tiny models saved as the hub ships the real ones (sharded bf16 safetensors, chat_template.json,
preprocessor_config.json, tokenizer files; LLaVA also with a Llama SentencePiece tokenizer), loaded by hf.load."""

import json

import pytest
import torch

from spatialkit.models import hf
from spatialkit.testing import hf_tiny
from tests.kinds import random_images

CASES = [(f, "default") for f in hf_tiny.FAMILIES] + [("llava", "sentencepiece")]
PROMPTS = ["Where is the chicken in relation to the cup?", "What?"]
OPTIONS = [["left", "right", "in front of"], ["red", "purple triangle"]]


@pytest.fixture(scope="module", params=CASES, ids=[f"{f}-{t}" for f, t in CASES])
def hub(request, tmp_path_factory):
    family, tokenizer = request.param
    folder = hf_tiny.save_hub_layout(family, tmp_path_factory.mktemp(f"{family}-{tokenizer}"), tokenizer=tokenizer)
    return family, tokenizer, folder


def test_layout_is_the_hubs(hub):
    family, tokenizer, folder = hub
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 2 and not (folder / "model.safetensors").exists()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    config = json.loads((folder / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    for name in ("chat_template.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "chat_template.jinja").exists()
    if tokenizer == "sentencepiece":
        assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
        assert "▁" in json.loads((folder / "tokenizer.json").read_text())["normalizer"]["normalizers"][0]["prepend"]


def test_load_scores_like_the_reference(hub):
    family, _, folder = hub
    vlm = hf.load(folder)  # CPU default: float32 (upcast from the bf16 shards)
    assert vlm.family == family and vlm.dtype == torch.float32
    images = random_images(family)
    scores = vlm.score_options(images, PROMPTS, OPTIONS)
    reference = vlm.score_options_reference(images, PROMPTS, OPTIONS)
    finite = torch.isfinite(reference)
    assert torch.equal(finite, torch.isfinite(scores)) and finite.sum() == 5
    assert ((scores[finite] - reference[finite]).abs() <= 1e-4 * reference[finite].abs()).all()
    if family != "llava":  # the hub's 12.8 MP bound unless load is given one
        assert vlm.processor.image_processor.size["longest_edge"] == 12845056
        bounded = hf.load(folder, max_pixels=hf.DEFAULT_MAX_PIXELS, min_pixels=28 * 28 * 4)
        assert bounded.processor.image_processor.size["longest_edge"] == hf.DEFAULT_MAX_PIXELS
        assert bounded.processor.image_processor.size["shortest_edge"] == 28 * 28 * 4


def test_load_in_bfloat16(hub):
    family, _, folder = hub
    vlm = hf.load(folder, dtype="auto")  # the checkpoint's own dtype
    assert vlm.dtype == torch.bfloat16
    scores = vlm.score_options(random_images(family), PROMPTS, OPTIONS)
    assert torch.isfinite(scores).sum() == 5 and scores.dtype == torch.float32


def test_option_ids_follow_the_assistant_prefix(hub):
    """The option's ids are those it gets inside the whole text: "ASSISTANT:" + " left" → "▁left" on a
    SentencePiece tokenizer (never a lone "▁"), and "left" and " left" are the same answer."""
    family, tokenizer, folder = hub
    vlm = hf.load(folder)
    tok = vlm.tokenizer
    text = vlm.prompt_texts(PROMPTS[:1])[0]
    for option in ("left", "in front of", "purple triangle"):
        ids = vlm.option_ids(text, option)
        assert ids == vlm.option_ids(text, " " + option) and ids
        joined = text + ("" if text[-1].isspace() else " ") + option
        whole = tok(joined, add_special_tokens=False)["input_ids"]
        assert whole == tok(text, add_special_tokens=False)["input_ids"] + ids
        assert tok.decode(ids).strip() == option
    if tokenizer == "sentencepiece":
        assert text.endswith("ASSISTANT:")
        assert tok.convert_ids_to_tokens(vlm.option_ids(text, "left")) == ["▁left"]
        # the pitfall option_ids avoids: the legacy Llama normalizer turns " left" alone into "▁" "▁left"
        assert tok.convert_ids_to_tokens(tok(" left", add_special_tokens=False)["input_ids"]) == ["▁", "▁left"]
        batch = vlm.prepare(random_images(family)[:1], PROMPTS[:1])
        assert batch.inputs["input_ids"][0, 0] == tok.bos_token_id  # BOS as the real LLaVA-1.5 prompt has it
