"""The one ``VLM`` interface: no model-family branch outside the adapters, and prefill/decode are generation.

Only ``spatialkit/models/hf/`` and ``spatialkit/models/organism/adapter.py`` may know model families (and
``spatialkit/testing/``, which builds a tiny HF model per family). Everything else — interventions, probes,
evaluations — goes through the interface, so it runs unchanged on every kind. The scan reads the AST, so
docstrings and messages that name a family are fine; a comparison with a family name, a test of ``.family``,
a call of transformers' private ``_prepare_position_ids_for_generation`` or a private attribute of a ``vlm``
is not.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import spatialkit
from spatialkit.models.vlm import TokenKind

ROOT = Path(spatialkit.__file__).parent
# the adapters; answer_row.py is the organism adapter's scoring that the trainer must not import (the checkpoint
# keys hold the trainer's code), so it cannot live in adapter.py
ALLOWED = ("models/hf/", "models/organism/adapter.py", "models/organism/answer_row.py", "testing/")
FAMILIES = {"organism", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava"}


def _is_vlm(node: ast.AST) -> bool:
    """``vlm``, ``self.vlm``, ``hf_vlm``, ...: a name that says it holds a VLM."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name == "vlm" or name.endswith("_vlm")


def _names_family(node: ast.AST) -> bool:
    """A model-family string constant, or ``vlm.family`` (``question.family`` is WhereBench's what/where)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in FAMILIES:
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_family(e) for e in node.elts)
    return isinstance(node, ast.Attribute) and node.attr == "family" and _is_vlm(node.value)


def violations(source: str, filename: str = "<src>") -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Compare) and any(_names_family(n) for n in [node.left, *node.comparators]):
            found.append(f"{where}: compares a model family")
        elif isinstance(node, ast.Attribute):
            if node.attr == "_prepare_position_ids_for_generation":
                found.append(f"{where}: calls transformers' private _prepare_position_ids_for_generation")
            elif node.attr.startswith("_") and not node.attr.startswith("__") and _is_vlm(node.value):
                found.append(f"{where}: reads the private vlm.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and any(_names_family(a) for a in node.args):
            found.append(f"{where}: looks a model family up")
    return found


def test_scanner_catches_what_it_should_and_not_docs():
    bad = '''
if vlm.family == "organism":
    pass
x = "llava" != kind
y = self.vlm._visual(p)
z = model._prepare_position_ids_for_generation(ids, {})
w = vlm.family in ("qwen2_vl", "qwen3_vl")
'''
    assert len(violations(bad)) == 5
    fine = '''
"""A docstring that names organism, llava and qwen2_vl, and vlm.family."""
raise ValueError(f"{vlm.name}: llava scoring takes no system prompt")
kind = "organism"
if question.family == "where":
    pass
'''
    assert violations(fine) == []


def test_no_family_branch_outside_the_adapters():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(ALLOWED):
            continue
        found += violations(path.read_text(), rel)
    assert found == [], "model-family knowledge outside the adapters:\n" + "\n".join(found)


# -- prefill / decode on every kind ----------------------------------------------------------------
KINDS = ("organism", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava")


@pytest.fixture(scope="module", params=KINDS)
def case(request):
    from tests.kinds import tiny_case

    kind, vlm, batch = tiny_case(request.param)
    rng = np.random.default_rng(0)
    if kind == "organism":
        size = vlm.model.cfg.image_size
        images = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
        prompts = ["where is the chick ?", "what color is the cup ?", "where is the cup ?"]
    else:
        from spatialkit.testing import hf_tiny

        h, w = hf_tiny.image_size(kind, grid=(2, 3))
        images = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
        prompts = ["where is the red cup", "what colour is the dog", "where"]
    return vlm, images, prompts


def test_decode_of_prefill_is_generate_for_lists_and_stacked_arrays(case):
    vlm, images, prompts = case
    plain = vlm.generate(list(images), prompts, max_new_tokens=4)
    for imgs in (images, list(images)):
        prefill = vlm.prefill(imgs, prompts)
        assert prefill.first_logits.shape[0] == len(prompts)
        gens = vlm.decode(prefill, 4)
        assert [g.token_ids for g in gens] == [g.token_ids for g in plain]
        assert [g.first_token_prob for g in gens] == pytest.approx([g.first_token_prob for g in plain], abs=1e-5)
        with pytest.raises(ValueError, match="already decoded"):
            vlm.decode(prefill, 4)
    one = vlm.decode(vlm.prefill(images, prompts), 1)
    assert [g.token_ids for g in one] == [g.token_ids[:1] for g in plain]
    # rerunning the last prompt position alone over the cache changes nothing without an intervention
    rerun = vlm.decode(vlm.prefill(images, prompts), 4, rerun_last=True)
    assert [g.token_ids for g in rerun] == [g.token_ids for g in plain]


def test_decode_hands_each_group_its_items(case):
    vlm, images, prompts = case
    seen: list[list[int]] = []

    def fn_for(items):
        seen.append(items)
        return lambda call: call.sdpa()

    vlm.decode(vlm.prefill(images, prompts), 2, attention_fn_for=fn_for)
    assert sorted(i for items in seen for i in items) == list(range(len(prompts)))


def test_score_options_takes_ragged_option_lists_and_stacked_images(case):
    vlm, images, prompts = case
    options = [["left", "right"], ["red", "blue", "green"], ["left", "right", "above", "below"]]
    scores = vlm.score_options(images, prompts, options)
    assert scores.shape == (3, 4)
    assert torch.isinf(scores[0, 2:]).all() and torch.isinf(scores[1, 3:]).all() and torch.isfinite(scores[2]).all()
    for b in range(3):  # each prompt alone gives its own scores
        alone = vlm.score_options(list(images[b: b + 1]), prompts[b: b + 1], options[b: b + 1])
        torch.testing.assert_close(scores[b, : len(options[b])], alone[0], atol=1e-4, rtol=1e-4)


def test_model_parts_and_lm_hidden(case):
    vlm, images, prompts = case
    assert len(vlm.lm_layers) == vlm.num_layers
    batch = vlm.prepare(images, prompts)
    assert vlm.input_embeddings().weight.shape[0] == vlm.output_embeddings().weight.shape[0]
    hidden = vlm.lm_hidden(batch)
    logits = vlm.logits(batch)
    real = batch.attention_mask
    via_hidden = hidden @ vlm.output_embeddings().weight.T
    torch.testing.assert_close(via_hidden[real].float(), logits[real].float(), atol=1e-4, rtol=1e-4)
    # given visual tokens replace the image's, and gradients reach them
    visual = vlm.visual_tokens(batch).tokens.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        vlm.lm_hidden(batch, visual)[real].sum().backward()
    assert visual.grad is not None and visual.grad.abs().sum() > 0
    last = batch.inputs["input_ids"][torch.arange(3), batch.last_index()].tolist()  # plain text tokens
    suffixes = [[last[0]], [last[1], last[0]], [last[2]]]
    appended = vlm.append_tokens(batch, suffixes)
    for b, suffix in enumerate(suffixes):  # each row: its prompt, then its suffix (TEXT), whatever the padding
        before = batch.inputs["input_ids"][b][batch.attention_mask[b]].tolist()
        after = appended.inputs["input_ids"][b][appended.attention_mask[b]].tolist()
        assert after == before + suffix
        assert int(appended.token_kind[b, appended.last_index()[b]]) == int(TokenKind.TEXT)


def test_rerun_step_sits_at_the_last_prompt_position_even_after_another_prefill(case):
    """The rerun step's post-rotary query equals the full prefill's at the last prompt position (so its position
    id is right), also when another prefill ran in between (Qwen keeps M-RoPE state on the model)."""
    vlm, images, prompts = case
    images, prompts, other_image = images[[0, 2]], [prompts[0], prompts[2]], images[1:2]  # lengths differ: padding
    if vlm.family != "organism":  # another grid: Qwen's M-RoPE offset (kept on the model) differs
        from spatialkit.testing import hf_tiny

        other_image = np.zeros((1, *hf_tiny.image_size(vlm.family, grid=(4, 4)), 3), np.uint8)
    batch = vlm.prepare(images, prompts)
    full = {}

    def grab(call):
        if call.layer == 0:
            full["q"] = call.query
        return call.sdpa()

    with vlm.attention_hook(grab):  # the prefill's own positions (generate's: LLaVA's logits() differ with padding)
        first = vlm.prefill(images, prompts)
    expected = full["q"][torch.arange(2), :, batch.last_index()]  # (2, H, D)
    vlm.decode(vlm.prefill(other_image, [" ".join([prompts[0]] * 4)]), 2)  # a much longer prompt, alone
    rerun: dict[int, torch.Tensor] = {}

    def record_for(items):
        def record(call):  # max_new_tokens=1: every call is the rerun step
            if call.layer == 0:
                rerun.update({i: call.query[j, :, -1] for j, i in enumerate(items)})
            return call.sdpa()
        return record

    vlm.decode(first, 1, attention_fn_for=record_for, rerun_last=True)
    torch.testing.assert_close(torch.stack([rerun[0], rerun[1]]), expected, atol=1e-5, rtol=1e-4)
