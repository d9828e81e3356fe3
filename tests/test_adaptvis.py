"""ScalingVis / AdaptVis: the fused fast path equals the official-style eager reference on all five model kinds."""

import math

import numpy as np
import pytest
import torch

from spatialkit.testing import hf_tiny
from spatialkit import world as scenes
from spatialkit.analysis.interventions import adapt_vis, scaling_vis
from spatialkit.analysis.interventions import adaptvis as av
from spatialkit.models.organism.model import TinyVLM
from spatialkit.models.organism import OrganismVLM, preset
from spatialkit.models.organism.data import build_vocab, wherebench
from spatialkit.models.vlm import AttnCall, TokenKind

ALPHAS = (0.5, 2.0)
TOL = 1e-5


# --------------------------------------------------------------------------------------------------
# models: random weights attend uniformly, so sharpen q/k (the scaling has a visible effect)


@pytest.fixture(scope="module")
def vocab():
    return build_vocab(preset("smoke"))


def organism(vocab, lm_posenc="rope1d", seed=0):
    cfg = preset("smoke", lm_posenc=lm_posenc, lm_layers=2, seed=seed)
    torch.manual_seed(seed)
    model = TinyVLM(cfg.model_config(len(vocab))).eval()
    with torch.no_grad():
        for block in model.blocks:
            qk = block.attn.qkv.weight[: 2 * cfg.model.lm_dim]
            qk.mul_(0.6 / qk.std())
    return OrganismVLM(model, vocab, cfg)


def organism_inputs(vlm, n=6):
    bench = wherebench(vlm.config)
    items = bench.splits["test"][:n]
    images = np.stack([scenes.render_scene(it.scene_seed, bench.config).image for it in items])
    prompts = [it.question.text for it in items]
    prompts[1] = "where is the cup"  # a shorter prompt: right padding, rows end at different places
    return images, prompts


def hf_model(family, seed=0):
    vlm = hf_tiny.tiny_vlm(family, seed=seed)
    with torch.no_grad():
        for name, p in vlm.model.named_parameters():
            if "language_model" in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(6.0)
    return vlm


def hf_inputs(family, n=4):
    h, w = hf_tiny.image_size(family)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    prompts = ["Where is the red square in relation to the blue circle?", "What colour?", "Where is the cup?",
               "Is the dog left of the chair? Answer with one word."][:n]
    return images, prompts


KINDS = ["organism-rope1d", "organism-mrope", "organism-learned", *hf_tiny.FAMILIES]


@pytest.fixture(params=KINDS)
def model_and_inputs(request, vocab):
    kind = request.param
    if kind.startswith("organism"):
        vlm = organism(vocab, kind.split("-")[1])
        return vlm, organism_inputs(vlm)
    return hf_model(kind), hf_inputs(kind)


def tokens(gens):
    return [g.token_ids for g in gens]


# --------------------------------------------------------------------------------------------------
# equivalence with the reference


def test_scaling_vis_logits_and_tokens_equal_reference(model_and_inputs):
    vlm, (images, prompts) = model_and_inputs
    batch = vlm.prepare(images, prompts)
    real = batch.token_kind != TokenKind.PAD  # pad rows are garbage in both, and nobody reads them
    base = vlm.logits(batch)
    for alpha in ALPHAS:
        with scaling_vis(vlm, alpha):
            fast = vlm.logits(batch)
        with av.reference_scaling_vis(vlm, alpha):
            ref = vlm.logits(batch)
        assert (fast - ref)[real].abs().max() <= TOL
        last = batch.last_index()
        effect = (fast - base)[torch.arange(len(prompts)), last].abs().max()
        assert effect > 1e-3, f"alpha={alpha} did not change the last row's logits ({effect})"
        # only the last prompt row (and nothing before it) changes: rows before never see it
        before = real.clone()
        before[torch.arange(len(prompts)), last] = False
        assert (fast - base)[before].abs().max() <= TOL
        with scaling_vis(vlm, alpha):
            fast_gen = vlm.generate(images, prompts, max_new_tokens=5)
        with av.reference_scaling_vis(vlm, alpha):
            ref_gen = vlm.generate(images, prompts, max_new_tokens=5)
        assert tokens(fast_gen) == tokens(ref_gen)
        assert [g.first_token_prob for g in fast_gen] == pytest.approx([g.first_token_prob for g in ref_gen], abs=TOL)
    assert torch.equal(vlm.logits(batch), base)  # hooks gone


@pytest.mark.parametrize("kind", ["organism-rope1d", "qwen2_vl", "llava"])
def test_rows_and_key_factor_are_computed_once_per_pass_and_follow_the_batch(vocab, kind, monkeypatch):
    """The last prompt rows and the image-key factor are the same in every layer of a pass: computed once per
    pass (they were half of ScalingVis's overhead over plain attention), and computed again for another batch of
    the same shape under the same hook, whose answers still equal the reference."""
    if kind.startswith("organism"):
        vlm = organism(vocab, kind.split("-")[1])
        images, prompts = organism_inputs(vlm)
    else:
        vlm = hf_model(kind)
        images, prompts = hf_inputs(kind)
    batches = [vlm.prepare(images, prompts), vlm.prepare(images[::-1], prompts[::-1])]  # same shapes, other rows
    assert batches[0].token_kind.shape == batches[1].token_kind.shape
    assert not torch.equal(batches[0].token_kind, batches[1].token_kind)
    computed = []
    real_rows = av.last_prompt_rows
    monkeypatch.setattr(av, "last_prompt_rows", lambda call: computed.append(call.layer) or real_rows(call))
    with scaling_vis(vlm, 2.0) as hook:
        fast = [vlm.logits(batch) for batch in batches]
    assert hook.scaled_calls == 2 * vlm.num_layers > 2
    assert len(computed) == 2, computed  # once per pass, in its first layer
    monkeypatch.undo()
    for batch, got in zip(batches, fast):
        with av.reference_scaling_vis(vlm, 2.0):
            ref = vlm.logits(batch)
        real = batch.token_kind != TokenKind.PAD
        assert (got - ref)[real].abs().max() <= TOL


def test_every_alpha_from_one_prefill_equals_scaling_vis_per_alpha(model_and_inputs):
    vlm, (images, prompts) = model_and_inputs
    prefill = vlm.prefill(images, prompts)
    swept = av.scaling_vis_generations(vlm, images, prompts, (1.0, *ALPHAS), max_new_tokens=5)
    assert tokens(swept[1.0]) == tokens(vlm.generate(images, prompts, max_new_tokens=5))
    for alpha in ALPHAS:
        with scaling_vis(vlm, alpha):
            whole = vlm.prefill(images, prompts).first_logits  # the whole prompt run scaled
            gens = vlm.generate(images, prompts, max_new_tokens=5)
        rerun = av.scaled_answer_logits(vlm, prefill, alpha)
        assert rerun.shape == whole.shape and (rerun - whole).abs().max() <= TOL
        assert (rerun - prefill.first_logits).abs().max() > 1e-3  # α moved the answer row
        assert tokens(swept[alpha]) == tokens(gens)
        assert [g.first_token_prob for g in swept[alpha]] == pytest.approx([g.first_token_prob for g in gens],
                                                                           abs=TOL)
    # α = 1 reruns the row unscaled; the prefill itself was never decoded, so it still decodes to the plain answers
    assert (av.scaled_answer_logits(vlm, prefill, 1.0) - prefill.first_logits).abs().max() <= TOL
    assert tokens(vlm.decode(prefill, 5)) == tokens(swept[1.0])
    with pytest.raises(ValueError, match="already decoded"):
        av.fork_prefill(prefill)
    with pytest.raises(ValueError, match="alpha"):
        av.scaled_answer_logits(vlm, vlm.prefill(images, prompts), -1.0)
    with pytest.raises(ValueError, match="'alphas' is empty"):
        av.scaling_vis_generations(vlm, images, prompts, ())


def sharpen_head(vlm, std):
    """Random weights answer with ~1/V confidence; a sharper LM head (weights of this std) spreads the
    confidences over [0, 1]."""
    with torch.no_grad():
        weight = vlm.model.lm_head.weight
        weight.mul_(std / weight.std())


def test_adapt_vis_equals_two_generation_reference(model_and_inputs):
    vlm, (images, prompts) = model_and_inputs
    sharpen_head(vlm, 0.8 if vlm.family == "organism" else 60.0 * float(vlm.model.lm_head.weight.detach().std()))
    plain = vlm.generate(images, prompts, max_new_tokens=5)
    confidence = sorted(math.floor(g.first_token_prob * 100 + 0.5) / 100 for g in plain)
    # a threshold between the confidences, so both branches of the gate are taken
    beta = next((c for c in confidence if c > confidence[0]), None)
    assert beta is not None, f"confidences all equal {confidence}; sharpen the LM head"
    fast = adapt_vis(vlm, 0.5, 2.0, beta).generate(images, prompts, max_new_tokens=5)
    ref = av.reference_adapt_vis(vlm, 0.5, 2.0, beta, images, prompts, max_new_tokens=5)
    assert [g.confidence for g in fast] == [g.confidence for g in ref]
    assert sorted({g.alpha for g in fast}) == [0.5, 2.0]
    assert [g.alpha for g in fast] == [g.alpha for g in ref]
    assert tokens(fast) == tokens(ref)
    assert [g.first_token_prob for g in fast] == pytest.approx([g.first_token_prob for g in ref], abs=TOL)
    assert [g.text for g in fast] == [g.text for g in ref]
    # α1 = α2 = 1 is the baseline greedy generation
    same = adapt_vis(vlm, 1.0, 1.0, beta).generate(images, prompts, max_new_tokens=5)
    assert tokens(same) == tokens(plain)


# --------------------------------------------------------------------------------------------------
# semantics: prefill only, hooks removed, validation


@pytest.mark.parametrize("kind", ["organism", "qwen3_vl"])
def test_only_prefill_is_scaled(vocab, kind):
    vlm = organism(vocab) if kind == "organism" else hf_model(kind)
    images, prompts = organism_inputs(vlm, 2) if kind == "organism" else hf_inputs(kind, 2)
    prompts = [prompts[0]] * 2  # one length: the organism runs a single prefill
    with scaling_vis(vlm, 0.5) as hook:
        gens = vlm.generate(images, prompts, max_new_tokens=4)
    assert max(len(g.token_ids) for g in gens) > 1  # there were decode steps
    assert hook.scaled_calls == vlm.num_layers  # one prefill, every layer; no decode step


def test_redo_step_scales_one_pass_then_disarms():
    torch.manual_seed(0)
    b, h, length, d = 2, 4, 7, 8
    kind = torch.tensor([[1, 2, 2, 2, 3, 3, 3]] * b)
    q, k, v = (torch.randn(b, h, 1, d), torch.randn(b, 2, length, d), torch.randn(b, 2, length, d))
    hook = av.LastRowScaling(torch.tensor([0.5, 3.0]), num_layers=2, armed_passes=1)
    calls = [AttnCall(layer=i, query=q, key=k, value=v, mask=None, scale=d ** -0.5, is_causal=False, token_kind=kind)
             for i in (0, 1, 0)]
    outs = [hook(c) for c in calls]
    assert hook.scaled_calls == 2 and hook.armed_passes == 0
    assert torch.allclose(outs[2], calls[2].sdpa())  # the next pass is a decode step again
    for i, alpha in enumerate((0.5, 3.0)):  # the armed pass: image logits × α, checked by hand
        kk = k[i].repeat_interleave(2, 0)
        logits = (q[i] @ kk.transpose(-1, -2)) * d ** -0.5
        logits[..., 1:4] *= alpha
        expected = logits.softmax(-1) @ v[i].repeat_interleave(2, 0)
        assert torch.allclose(outs[0][i], expected, atol=1e-6)


@pytest.mark.parametrize("mask_kind", ["bool", "additive", "causal"])
def test_scaled_row_matches_eager_with_masks_and_gqa(mask_kind):
    torch.manual_seed(1)
    b, h, hkv, length, d = 2, 4, 2, 9, 8
    kind = torch.tensor([[0, 0, 1, 2, 2, 2, 3, 3, 3], [1, 2, 2, 2, 2, 3, 3, 3, 3]])  # left padding on row 0
    q, k, v = torch.randn(b, h, length, d), torch.randn(b, hkv, length, d), torch.randn(b, hkv, length, d)
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None] & (kind != 0)[:, None, None, :]
    mask = {"bool": allowed, "additive": torch.zeros(b, 1, length, length).masked_fill(~allowed, -1e9),
            "causal": None}[mask_kind]
    call = AttnCall(layer=0, query=q, key=k, value=v, mask=mask, scale=d ** -0.5, is_causal=mask is None,
                    token_kind=kind)
    fast = av.LastRowScaling(1.7)(call)
    ref = av.reference_attention(1.7)(call)
    real = kind != 0
    assert (fast - ref).transpose(1, 2)[real].abs().max() <= 1e-5


def test_hooks_removed_after_exceptions(vocab, monkeypatch):
    vlm = organism(vocab)
    images, prompts = organism_inputs(vlm, 3)
    batch = vlm.prepare(images, prompts)
    base = vlm.logits(batch)
    with pytest.raises(RuntimeError, match="boom"):
        with scaling_vis(vlm, 3.0):
            vlm.logits(batch)
            raise RuntimeError("boom")
    assert torch.equal(vlm.logits(batch), base)
    hf_vlm = hf_model("qwen2_vl")
    hf_images, hf_prompts = hf_inputs("qwen2_vl", 2)
    hf_batch = hf_vlm.prepare(hf_images, hf_prompts)
    hf_base = hf_vlm.logits(hf_batch)

    def fail(*args):
        raise ValueError("inside the redo step")

    monkeypatch.setattr(av, "scaled_last_rows", fail)
    with pytest.raises(ValueError, match="redo step"):  # fails inside the hook, within generate()
        adapt_vis(hf_vlm, 0.5, 2.0, 0.5).generate(hf_images, hf_prompts, 3)
    # the α sweep's rerun fails inside decode: the unembedding's forward hook and the attention hook are gone, and
    # the prefill it was given is still whole (a copy was decoded)
    prefill = hf_vlm.prefill(hf_images, hf_prompts)
    with pytest.raises(ValueError, match="redo step"):
        av.scaled_answer_logits(hf_vlm, prefill, 2.0)
    monkeypatch.undo()
    assert not hf_vlm.output_embeddings()._forward_hooks
    assert torch.equal(hf_vlm.logits(hf_batch), hf_base)
    assert hf_vlm.lm_config._attn_implementation == "sdpa"
    assert tokens(hf_vlm.decode(prefill, 3)) == tokens(hf_vlm.generate(hf_images, hf_prompts, 3))


class Untouchable:
    family = "organism"

    def __getattr__(self, name):
        raise AssertionError(f"validation must happen before any work (touched vlm.{name})")


@pytest.mark.parametrize("args, name", [
    ((-0.1, 1.0, 0.5), "alpha1"), ((0.5, -2, 0.5), "alpha2"), ((0.5, 1.5, 1.2), "beta"), ((0.5, 1.5, -0.01), "beta"),
    ((float("nan"), 1.5, 0.5), "alpha1"), ((0.5, float("inf"), 0.5), "alpha2"), ((True, 1.0, 0.5), "alpha1"),
    ((0.5, 1.5, "0.3"), "beta"),
])
def test_bad_hyper_parameters_fail_before_any_work(args, name):
    with pytest.raises(ValueError, match=rf"parameter '{name}'.*allowed"):
        adapt_vis(Untouchable(), *args)


def test_bad_alpha_for_scaling_vis_fails_before_any_work():
    with pytest.raises(ValueError, match=r"parameter 'alpha'.*\[0, 100\]"):
        with scaling_vis(Untouchable(), -1.0):
            pass
    with pytest.raises(ValueError, match="max_new_tokens"):
        adapt_vis(Untouchable(), 0.5, 1.5, 0.3).generate([], [], max_new_tokens=0)


def test_gate_rule():
    assert av.gate(0.39, 0.5, 1.5, 0.4) == 0.5
    assert av.gate(0.4, 0.5, 1.5, 0.4) == 1.5  # C < β takes α1; C = β takes α2 (as the official code)


def test_measure_scaled_matches_probe_and_eager(vocab):
    from spatialkit.analysis import attention

    vlm = organism(vocab)
    images, prompts = organism_inputs(vlm, 3)
    batch = vlm.prepare(images, prompts)
    plain = attention.measure(vlm, batch)
    same = av.measure_scaled(vlm, batch, 1.0)
    assert torch.allclose(plain.probs, same.probs, atol=1e-6)
    scaled = av.measure_scaled(vlm, batch, 2.0)
    # layer 0's last row by hand: image logits doubled
    records = {}

    def grab(call):
        if call.layer == 0 and call.query.shape[-2] > 1:
            records["call"] = call
        return call.sdpa()

    with vlm.attention_hook(grab):
        vlm.logits(batch)
    call = records["call"]
    b = 0
    row = int(batch.last_index()[b])
    logits = torch.einsum("hd,hkd->hk", call.query[b, :, row], call.key[b]) * call.scale  # (H, Lk)
    logits[:, batch.token_kind[b] == TokenKind.IMAGE] *= 2.0
    logits[:, row + 1:] = float("-inf")
    assert torch.allclose(scaled.probs[0, b, :, 0], logits.softmax(-1), atol=1e-5)
    assert not torch.allclose(scaled.probs, plain.probs, atol=1e-3)
