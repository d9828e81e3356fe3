"""spatialkit.models.hf adapters on tiny random models of all four families (offline, CPU)."""

import json
import time

import numpy as np
import pytest
import torch

from spatialkit.models import hf
from spatialkit.testing import hf_tiny
from spatialkit.models.vlm import TokenKind, VisualTokens
from tests.kinds import random_images, sharpen

FAMILIES = hf_tiny.FAMILIES
PROMPTS = ["Where is the red square in relation to the blue circle?", "What colour?"]  # different lengths


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def vlm(family):
    vlm = hf_tiny.tiny_vlm(family, seed=0)
    sharpen(vlm.model)
    return vlm


@pytest.fixture(scope="module")
def batch(vlm, family):
    return vlm.prepare(random_images(family), PROMPTS)


def test_prepare_token_kinds_and_grids(vlm, batch, family):
    kinds = batch.token_kind
    assert kinds.shape == batch.inputs["input_ids"].shape
    expected_grid = (4, 4) if family == "llava" else (2, 3)
    assert batch.grids == [expected_grid, expected_grid]
    for row in kinds.tolist():
        # left padding, then SYSTEM scaffolding, then the image, then TEXT; nothing interleaved
        runs = [k for i, k in enumerate(row) if i == 0 or row[i - 1] != k]
        assert runs[-3:] == [TokenKind.SYSTEM, TokenKind.IMAGE, TokenKind.TEXT]
        assert runs[0] in (TokenKind.PAD, TokenKind.SYSTEM) and TokenKind.PAD not in runs[1:]
        assert row.count(TokenKind.IMAGE) == expected_grid[0] * expected_grid[1]
    assert (kinds[0] == TokenKind.PAD).sum() == 0 and (kinds[1] == TokenKind.PAD).sum() > 0  # prompt 2 is shorter
    image_ids = batch.inputs["input_ids"][batch.image_mask]
    assert (image_ids == vlm.image_token_id).all()


def test_logits_shape_and_batch_invariance(vlm, batch, family):
    logits = vlm.logits(batch)
    assert logits.shape[:2] == batch.inputs["input_ids"].shape and torch.isfinite(logits).all()
    # Left padding must not change the last-token prediction of the shorter prompt.
    alone = vlm.logits(vlm.prepare(random_images(family)[1:], PROMPTS[1:]))
    torch.testing.assert_close(logits[1, -1], alone[0, -1], atol=1e-4, rtol=1e-4)


def test_score_options(vlm, family):
    images, options = random_images(family), [["left", "right", "above"], ["red", "blue", "green"]]
    scores = vlm.score_options(images, PROMPTS, options)
    assert scores.shape == (2, 3) and torch.isfinite(scores).all() and (scores < 0).all()
    # One prompt at a time gives the same scores (padding and option alignment are right).
    for b in range(2):
        torch.testing.assert_close(scores[b], vlm.score_options(images[b : b + 1], PROMPTS[b : b + 1], options[b : b + 1])[0], atol=1e-4, rtol=1e-4)
    # A one-token option's score is the log-softmax of the prompt's last-position logits at that token.
    texts = vlm.prompt_texts(PROMPTS[:1])
    token = vlm.option_ids(texts[0], "left")
    if len(token) == 1:
        last = vlm.logits(vlm.prepare(images[:1], PROMPTS[:1]))[0, -1].float().log_softmax(-1)
        torch.testing.assert_close(scores[0, 0], last[token[0]], atol=1e-4, rtol=1e-4)
    # Multi-token options: the score is the sum over tokens, so it equals the chain of single-token steps.
    ids = vlm.option_ids(texts[0], "above")
    prefix = vlm.prepare(images[:1], PROMPTS[:1])
    total = 0.0
    for i, t in enumerate(ids):
        step = vlm._with_suffix(prefix, [ids[:i]])
        total += float(vlm.logits(step)[0, -1].float().log_softmax(-1)[t])
    assert abs(total - float(scores[0, 2])) < 1e-3


def test_generate_greedy(vlm, family):
    images = random_images(family)
    gens = vlm.generate(images, PROMPTS, max_new_tokens=3)
    assert len(gens) == 2
    logits = vlm.logits(vlm.prepare(images, PROMPTS))[:, -1].float()
    for b, gen in enumerate(gens):
        assert 1 <= len(gen.token_ids) <= 3
        assert gen.token_ids[0] == int(logits[b].argmax())  # greedy
        assert abs(gen.first_token_prob - float(logits[b].softmax(-1).max())) < 1e-4
        assert gen.text == vlm.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
    # Batched (left padded) greedy decoding equals one prompt at a time.
    assert vlm.generate(images[1:], PROMPTS[1:], max_new_tokens=3)[0].token_ids == gens[1].token_ids


def test_save_load_round_trip(family, tmp_path):
    hf_tiny.save_tiny(family, tmp_path, seed=3)
    loaded = hf.load(tmp_path)
    fresh = hf_tiny.tiny_vlm(family, seed=3)
    assert loaded.family == family and loaded.num_layers == fresh.num_layers
    images = random_images(family)
    a, b = loaded.prepare(images, PROMPTS), fresh.prepare(images, PROMPTS)
    assert torch.equal(a.inputs["input_ids"], b.inputs["input_ids"]) and torch.equal(a.token_kind, b.token_kind)
    assert torch.equal(loaded.logits(a), fresh.logits(b))


def _lm_inputs(vlm, batch):
    """What the LM actually receives: its inputs_embeds (and Qwen3-VL deepstack embeds)."""
    seen = {}

    def pre(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().clone()
        seen["deepstack"] = [d.detach().clone() for d in (kwargs.get("deepstack_visual_embeds") or [])]

    handle = vlm.model.model.language_model.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        logits = vlm.logits(batch)
    finally:
        handle.remove()
    return logits, seen


def test_visual_hook_sees_exactly_what_the_lm_receives(vlm, batch, family):
    base_logits, base = _lm_inputs(vlm, batch)
    tokens = vlm.visual_tokens(batch)
    assert tokens.grids == batch.grids and tokens.tokens.shape[0] == int(batch.image_mask.sum())
    torch.testing.assert_close(base["embeds"][batch.image_mask], tokens.tokens.to(base["embeds"].dtype), atol=0, rtol=0)
    if family == "qwen3_vl":
        assert len(tokens.extras) == len(base["deepstack"]) == 2
        for extra, used in zip(tokens.extras, base["deepstack"]):
            assert torch.equal(extra, used)
    else:
        assert tokens.extras == []

    # Identity hook: bit-identical logits.
    with vlm.visual_hook(lambda v: v):
        assert torch.equal(vlm.logits(batch), base_logits)

    # Permute within each image; the LM must receive exactly the permuted tokens (and extras).
    gen = torch.Generator().manual_seed(0)

    def permute(v: VisualTokens) -> VisualTokens:
        order = torch.cat([o + torch.randperm(h * w, generator=gen) for o, (h, w) in zip(v.offsets(), v.grids)])
        permute.order = order
        return v.replace(tokens=v.tokens[order], extras=[e[order] for e in v.extras])

    with vlm.visual_hook(permute):
        logits, seen = _lm_inputs(vlm, batch)
    assert torch.equal(seen["embeds"][batch.image_mask], tokens.tokens[permute.order])
    assert torch.equal(seen["embeds"][~batch.image_mask], base["embeds"][~batch.image_mask])  # text untouched
    for extra, used in zip(tokens.extras, seen["deepstack"]):
        assert torch.equal(used, extra[permute.order])
    assert not torch.allclose(logits, base_logits)

    # Zeroing the tokens changes the logits; the LM receives zeros at image positions.
    with vlm.visual_hook(lambda v: v.replace(tokens=torch.zeros_like(v.tokens))):
        zero_logits, seen = _lm_inputs(vlm, batch)
        assert torch.equal(vlm.visual_tokens(batch).tokens, torch.zeros_like(tokens.tokens))
    assert (seen["embeds"][batch.image_mask] == 0).all()
    assert (zero_logits - base_logits).abs().max() > 1e-3

    if family == "qwen3_vl":  # DeepStack features are really used by the LM
        with vlm.visual_hook(lambda v: v.replace(extras=[torch.zeros_like(e) for e in v.extras])):
            no_deepstack = vlm.logits(batch)
        assert (no_deepstack - base_logits).abs().max() > 1e-4


def test_visual_hook_rejects_shape_changes(vlm, batch):
    with vlm.visual_hook(lambda v: v.replace(tokens=v.tokens[:-1])):
        with pytest.raises(ValueError, match="keep the shapes"):
            vlm.logits(batch)


def test_attention_hook_default_equals_stock_sdpa(vlm, batch):
    base = vlm.logits(batch)
    calls = []

    def fn(call):
        calls.append((call.layer, call.query.shape, call.key.shape, call.is_causal, call.mask is None))
        assert torch.equal(call.token_kind, batch.token_kind)
        return call.sdpa()

    with vlm.attention_hook(fn):
        hooked = vlm.logits(batch)
    assert [c[0] for c in calls] == list(range(vlm.num_layers))  # every LM layer, vision tower untouched
    assert all(not causal and not no_mask for _, _, _, causal, no_mask in calls)  # left padded: explicit mask
    assert (hooked - base).abs().max() <= 1e-5

    # A row without padding gets no explicit mask, is_causal=True; still equal.
    single = vlm.prepare([np.zeros((*hf_tiny.image_size(vlm.family), 3), np.uint8)], PROMPTS[:1])
    causal_flags = []
    with vlm.attention_hook(lambda call: causal_flags.append((call.is_causal, call.mask is None)) or call.sdpa()):
        hooked = vlm.logits(single)
    assert (hooked - vlm.logits(single)).abs().max() <= 1e-5
    assert causal_flags == [(True, True)] * vlm.num_layers


def test_attention_hook_changes_logits_when_fn_does(vlm, batch):
    base = vlm.logits(batch)

    def scale_image_keys(call):  # ScalingVis-like: sharpen image-key logits of every row
        image = (call.token_kind == TokenKind.IMAGE)[:, None, :, None].to(call.key.dtype)
        return call.sdpa(key=call.key * (1 + 3 * image))

    with vlm.attention_hook(scale_image_keys):
        scaled = vlm.logits(batch)
    assert (scaled - base).abs().max() > 1e-3


def test_last_row_probs_equal_eager_attentions(family, tmp_path):
    hf_tiny.save_tiny(family, tmp_path, seed=1)
    vlm = hf.load(tmp_path)
    eager = hf.model_class(family).from_pretrained(tmp_path, attn_implementation="eager").eval()
    sharpen(vlm.model)
    sharpen(eager)
    batch = vlm.prepare(random_images(family), PROMPTS)  # two prompts of different lengths: left padded
    probs = {}
    with vlm.attention_hook(lambda call: probs.__setitem__(call.layer, call.probs()) or call.sdpa()):
        logits = vlm.logits(batch)
    with torch.no_grad():
        out = eager(**batch.inputs, output_attentions=True, use_cache=False)
    assert len(out.attentions) == vlm.num_layers == len(probs)
    for layer, reference in enumerate(out.attentions):
        last = reference[:, :, -1:]
        torch.testing.assert_close(probs[layer], last, atol=1e-5, rtol=0)
        assert float(last.max()) > 3.0 / last.shape[-1]  # sharpened: far from uniform, so the check bites
        assert float(last[1, :, 0, ~batch.attention_mask[1]].abs().max()) == 0.0  # pads get nothing
    real = batch.attention_mask  # pad query rows are fully masked: eager and SDPA legitimately differ there
    torch.testing.assert_close(logits[real], out.logits[real], atol=1e-4, rtol=1e-4)


def test_attention_hook_during_generation(vlm, family):
    images = random_images(family)
    seen = []
    with vlm.attention_hook(lambda call: seen.append((call.layer, call.query.shape[-2], call.key.shape[-2], call.token_kind)) or call.sdpa()):
        hooked = vlm.generate(images, PROMPTS, max_new_tokens=3)
    plain = vlm.generate(images, PROMPTS, max_new_tokens=3)
    assert [g.token_ids for g in hooked] == [g.token_ids for g in plain]
    prompt_len = vlm.prepare(images, PROMPTS).inputs["input_ids"].shape[1]
    prefill = [s for s in seen if s[1] == prompt_len]
    decode = [s for s in seen if s[1] == 1]
    assert len(prefill) == vlm.num_layers and len(decode) >= vlm.num_layers
    for _, _, keys, kinds in decode:  # generated tokens count as TEXT keys
        assert kinds.shape[1] == keys and (kinds[:, prompt_len:] == TokenKind.TEXT).all()


def _is_restored(vlm):
    return (
        vlm.lm_config._attn_implementation == "sdpa"
        and not any(hasattr(layer.self_attn, "_spatialkit_hook") for layer in vlm.lm_layers)
        and not vlm._visual_module._forward_hooks
    )


def test_hooks_restore_on_exit_and_on_error(vlm, batch):
    base = vlm.logits(batch)
    with vlm.attention_hook(lambda call: call.sdpa() * 0), vlm.visual_hook(lambda v: v.replace(tokens=v.tokens * 0)):
        assert vlm.lm_config._attn_implementation == hf.ATTN_NAME
        vlm.logits(batch)
    assert _is_restored(vlm) and torch.equal(vlm.logits(batch), base)
    for hook in (vlm.attention_hook(lambda call: call.sdpa() * 0), vlm.visual_hook(lambda v: v.replace(tokens=v.tokens * 0))):
        with pytest.raises(RuntimeError, match="boom"):
            with hook:
                raise RuntimeError("boom")
        assert _is_restored(vlm)

    def failing(call):
        raise RuntimeError("inside the forward")

    with pytest.raises(RuntimeError, match="inside the forward"):
        with vlm.attention_hook(failing):
            vlm.logits(batch)
    assert _is_restored(vlm) and vlm._running_kinds is None and torch.equal(vlm.logits(batch), base)


def test_text_embeddings(vlm, batch):
    embeds = vlm.text_embeddings(batch)
    assert embeds.shape == (int(batch.text_mask.sum()), vlm.model.config.text_config.hidden_size)


def test_bad_inputs_rejected(vlm, family):
    with pytest.raises(ValueError, match="same length"):
        vlm.prepare(random_images(family), PROMPTS[:1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        vlm.generate(random_images(family), PROMPTS, max_new_tokens=0)


# -- loading errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nonexistent-org/nonexistent-vlm-7b", "/nonexistent/folder/of/weights", "./relative/missing"])
def test_missing_weights_error_is_fast_and_clear(name):
    start = time.perf_counter()
    with pytest.raises(hf.WeightsNotFoundError) as err:
        hf.load(name)
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    assert name.strip("./") in message and "hf download" in message and "local folder" in message


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(hf.WeightsNotFoundError, match="no config.json or no weights"):
        hf.load(tmp_path)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(hf.UnsupportedModelError, match="Unsupported architecture: model_type 'bert'"):
        hf.load(tmp_path)


def test_load_from_hf_cache(monkeypatch, tmp_path):
    """An id resolves through the local HF cache layout (models--org--name/snapshots/<rev>, refs/main)."""
    import huggingface_hub.constants

    repo = tmp_path / "models--tiny-org--tiny-qwen2-vl"
    hf_tiny.save_tiny("qwen2_vl", repo / "snapshots" / "abc123", seed=2)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    loaded = hf.load("tiny-org/tiny-qwen2-vl")
    assert loaded.family == "qwen2_vl"
    with pytest.raises(hf.WeightsNotFoundError, match="tiny-org/other-model"):
        hf.load("tiny-org/other-model")


def test_bad_load_arguments_fail_first():
    with pytest.raises(ValueError, match="dtype must be None or one of"):
        hf.load("nonexistent-org/nonexistent-vlm-7b", dtype="float8")
    with pytest.raises(ValueError, match="device must be"):
        hf.load("nonexistent-org/nonexistent-vlm-7b", device="gpu!")
    with pytest.raises(ValueError, match="family must be one of"):
        hf_tiny.build_tiny("paligemma")


@pytest.mark.parametrize("family", FAMILIES)
def test_bigger_grids_for_long_sequences(family):
    """Benchmarks need long sequences: Qwen takes bigger images, LLaVA a bigger configured grid."""
    vlm = hf_tiny.tiny_vlm(family, llava_grid=8)
    grid = (8, 8) if family == "llava" else (6, 10)
    h, w = hf_tiny.image_size(family, grid, llava_grid=8)
    batch = vlm.prepare([np.zeros((h, w, 3), np.uint8)], ["Where?"])
    assert batch.grids == [grid] and int(batch.image_mask.sum()) == grid[0] * grid[1]
    assert vlm.visual_tokens(batch).tokens.shape[0] == grid[0] * grid[1]


def test_qwen_grids_are_raster_order_of_mrope_positions(vlm, batch, family):
    """Visual token r of an (h', w') grid sits at M-RoPE (t, h, w) = (s, s + r // w', s + r % w')."""
    if family == "llava":
        pytest.skip("LLaVA uses plain 1D RoPE")
    inputs = batch.inputs
    positions, _ = vlm.model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    for b, (gh, gw) in enumerate(batch.grids):
        pos = positions[:, b, batch.image_mask[b]]  # (3, N)
        start = int(pos[0, 0])
        r = torch.arange(gh * gw)
        assert torch.equal(pos[0].cpu(), torch.full_like(r, start))
        assert torch.equal(pos[1].cpu(), start + r // gw) and torch.equal(pos[2].cpu(), start + r % gw)


def test_system_prompt_is_system_kind(vlm, family):
    batch = vlm.prepare(random_images(family, 1), PROMPTS[:1], system_prompt="Answer with one word.")
    ids = batch.inputs["input_ids"][0]
    system_text = vlm.tokenizer.decode(ids[batch.token_kind[0] == TokenKind.SYSTEM])
    text_text = vlm.tokenizer.decode(ids[batch.token_kind[0] == TokenKind.TEXT])
    assert "Answer with one word." in system_text and "helpful assistant" not in system_text
    assert PROMPTS[0] in text_text and "Answer with one word." not in text_text


# -- option scoring that fits, parameters against the loaded model, load arguments ---------------------------
RAGGED_PROMPTS = ["Where is the red square in relation to the blue circle?", "What colour?", "Which?"]
RAGGED_OPTIONS = [["left", "right", "above", "in front of"], ["red", "blue"], ["behind", "purple triangle", "x"]]


def test_score_options_equals_reference_and_encodes_each_image_once(vlm, family):
    images = random_images(family, n=3)
    calls = []
    handle = vlm._visual_module.register_forward_hook(lambda m, a, out: calls.append(1))
    try:
        scores = vlm.score_options(images, RAGGED_PROMPTS, RAGGED_OPTIONS)
    finally:
        handle.remove()
    assert len(calls) == 1  # one vision-tower pass for the whole batch (not one per option)
    reference = vlm.score_options_reference(images, RAGGED_PROMPTS, RAGGED_OPTIONS)
    assert scores.shape == (3, 4) and torch.isinf(scores[1, 2:]).all() and torch.isinf(scores[2, 3])
    finite = torch.isfinite(reference)
    assert torch.equal(finite, torch.isfinite(scores))
    assert ((scores[finite] - reference[finite]).abs() <= 1e-4 * reference[finite].abs()).all()
    lengths = [len(vlm.option_ids(vlm.prompt_texts([p])[0], o)) for p, opts in zip(RAGGED_PROMPTS, RAGGED_OPTIONS)
               for o in opts]
    assert max(lengths) > 1 and min(lengths) == 1  # both paths (prompt's last logits, cached continuation) ran


def test_score_options_single_token_options_keep_no_cache(vlm, family):
    images = random_images(family)
    out = vlm.score_options(images, PROMPTS[:2], [["left", "right"], ["red"]])
    torch.testing.assert_close(out, vlm.score_options_reference(images, PROMPTS[:2], [["left", "right"], ["red"]]),
                               atol=1e-4, rtol=1e-4)


def test_token_logprobs_equals_log_softmax():
    logits = torch.randn(5, 7, 11)
    rows, targets = torch.tensor([0, 3, 3, 34]), torch.tensor([1, 0, 10, 5])
    flat = logits.reshape(35, 11)
    expected = flat.log_softmax(-1)[rows, targets]
    torch.testing.assert_close(hf.token_logprobs(flat, rows, targets, chunk=2), expected)


def test_check_layer_names_the_loaded_model(vlm):
    from spatialkit.common.params import ParameterError

    assert vlm.check_layer(-1) == -1 and vlm.check_layer(vlm.num_layers - 1) == vlm.num_layers - 1
    with pytest.raises(ParameterError, match=rf"parameter 'layer' = 40 is invalid; allowed: int in \[-1, "
                                             rf"{vlm.num_layers - 1}\] \(.+ has {vlm.num_layers} LM layers\)"):
        vlm.check_layer(40)
    with pytest.raises(ParameterError, match=r"03_attention_allocation: parameter 'layer' = 5"):
        hf.check_against(vlm, layer=5, notebook="03_attention_allocation")


def test_loaded_model_name_and_check_against(tmp_path):
    from spatialkit.common.params import ParameterError

    hf_tiny.save_tiny("qwen2_vl", tmp_path / "Qwen2-VL-7B-Instruct")
    vlm = hf.load(tmp_path / "Qwen2-VL-7B-Instruct")
    with pytest.raises(ParameterError, match=r"\(Qwen2-VL-7B-Instruct has 2 LM layers\)"):
        vlm.check_layer(2)
    ok = hf.check_against(vlm, layer=1, batch_size=8, image_size=224, steps=("score_options", "generate", "forward"),
                          free_bytes=1 << 40)
    assert ok["layer"] == 1 and ok["image_tokens"] == 64 and len(ok["estimates"]) == 3
    need = ok["estimates"][0].running
    with pytest.raises(ParameterError, match=r"parameter 'batch_size' = 8 is invalid for Qwen2-VL-7B-Instruct on cpu: "
                                             r"score_options needs .* GiB are free; largest that fits: [1-7]$"):
        hf.check_against(vlm, batch_size=8, image_size=224, free_bytes=need // 2)


def test_load_arguments_attn_and_pixels(tmp_path):
    with pytest.raises(ValueError, match=r"parameter 'attn_implementation' = 'flash' is invalid; allowed: one of"):
        hf.load("nonexistent-org/nonexistent-vlm-7b", attn_implementation="flash")
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ValueError, match="needs the flash_attn package, which is not installed"):
            hf.load("nonexistent-org/nonexistent-vlm-7b", attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match=r"parameter 'min_pixels' = 5000 is invalid; allowed: at most max_pixels = 4000"):
        hf.load("nonexistent-org/nonexistent-vlm-7b", min_pixels=5000, max_pixels=4000)
    hf_tiny.save_tiny("qwen2_vl", tmp_path)
    image = [np.zeros((280, 280, 3), np.uint8)]
    full = hf.load(tmp_path).prepare(image, ["Where?"])
    small = hf.load(tmp_path, max_pixels=112 * 112, attn_implementation="eager").prepare(image, ["Where?"])
    assert full.grids == [(10, 10)] and small.grids == [(4, 4)]  # 28 px per token; 112 x 112 px at most
    assert hf.image_tokens(hf.load(tmp_path).model.config, 280, max_pixels=112 * 112) == (16, 64)


def test_memory_estimate_components():
    from transformers import AutoConfig  # noqa: F401

    model, _ = hf_tiny.build_tiny("llava")
    config = model.config
    assert hf.parameter_count(config) == sum(p.numel() for p in model.parameters())
    new = hf.estimate_memory(config, 64, step="score_options", dtype="float32")
    old = hf.estimate_memory(config, 64, step="score_options_reference", dtype="float32")
    assert new.total < old.total and new.kv_cache == 0 and new.image_tokens == 16  # LLaVA: the config's fixed grid
    assert hf.estimate_memory(config, 64, step="score_options", option_tokens=3).kv_cache > 0
    assert hf.estimate_memory(config, 128, step="generate").running > hf.estimate_memory(config, 64, step="generate").running
    kwargs = dict(model_config=config, step="forward", dtype="float32")
    free = hf.estimate_memory(batch_size=50, **kwargs).total
    best = hf.largest_batch(free, **kwargs)
    assert 50 <= best < 52 and hf.estimate_memory(batch_size=best + 1, **kwargs).total > free
    with pytest.raises(ValueError, match="step must be one of"):
        hf.estimate_memory(config, 4, step="train")


def test_load_for_reads_a_notebooks_parameters(tmp_path):
    from types import SimpleNamespace

    from spatialkit.suite import catalog

    assert catalog.MAX_PIXELS.default == hf.DEFAULT_MAX_PIXELS
    assert [p.name for p in catalog.HF_MODEL_PARAMS] == ["dtype", "attn_implementation", "min_pixels", "max_pixels"]
    assert set(catalog.DTYPE.choices) == set(hf.DTYPES) and tuple(catalog.ATTN_IMPLEMENTATION.choices) == hf.ATTN_IMPLEMENTATIONS
    hf_tiny.save_tiny("qwen2_vl", tmp_path)
    bare = hf.load_for(SimpleNamespace(model=str(tmp_path), device="cpu"))  # a notebook without the new parameters
    assert bare.dtype == torch.float32 and bare.processor.image_processor.size["longest_edge"] == hf.DEFAULT_MAX_PIXELS
    full = hf.load_for(SimpleNamespace(model=str(tmp_path), device="cpu", dtype="bfloat16", attn_implementation="eager",
                                       min_pixels=3136, max_pixels=200_000))
    assert full.dtype == torch.bfloat16 and full.processor.image_processor.size["longest_edge"] == 200_000
    assert full.lm_config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="at most max_pixels"):
        hf.load_for(SimpleNamespace(model=str(tmp_path), min_pixels=300_000, max_pixels=200_000))
