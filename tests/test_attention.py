"""spatialkit.analysis.attention: the last-row probe equals eager attention on all five model kinds; summaries."""

import math

import numpy as np
import pytest
import torch

from spatialkit.analysis import attention
from spatialkit.models import hf
from spatialkit.present import plots
from spatialkit.testing import hf_tiny
from spatialkit import world as scenes
from spatialkit.models.organism.model import SYSTEM_PROMPT, TinyVLM
from spatialkit.models.organism import OrganismVLM, preset
from spatialkit.models.organism.data import build_vocab, wherebench
from spatialkit.models.vlm import AttnCall, TokenKind
from tests.kinds import random_images, sharpen

PROMPTS = ["Where is the red square in relation to the blue circle?", "What colour?"]  # different lengths


# --------------------------------------------------------------------------------------------------
# the organism, against an explicit eager reference


@pytest.fixture(scope="module")
def vocab():
    return build_vocab(preset("smoke"))


def organism(vocab, lm_posenc="rope1d", seed=0, qk_std=0.6):
    cfg = preset("smoke", lm_posenc=lm_posenc, lm_layers=2, seed=seed)
    torch.manual_seed(seed)
    model = TinyVLM(cfg.model_config(len(vocab))).eval()
    with torch.no_grad():  # random weights attend almost uniformly; sharpen q/k so the comparison bites
        for block in model.blocks:
            qk = block.attn.qkv.weight[: 2 * cfg.model.lm_dim]
            qk.mul_(qk_std / qk.std())
    return OrganismVLM(model, vocab, cfg)


def organism_inputs(vlm, n=3):
    bench = wherebench(vlm.config)
    items = bench.splits["test"][:n]
    images = np.stack([scenes.render_scene(it.scene_seed, bench.config).image for it in items])
    prompts = ["where is the cup", "what color is the ball in the image ?", "how many objects"][:n]
    return images, prompts


def eager_organism_attention(vlm, batch):
    """Full (B, H, L, L) attention of every LM layer, recomputed from each layer's input with plain matmuls.

    Independent of the attention hook: forward pre-hooks capture the input of each attention module, and
    q/k come from its own qkv projection and positional encoding, softmax over an explicit causal mask.
    """
    model = vlm.model
    inputs = []
    handles = [block.attn.register_forward_pre_hook(lambda m, args, kwargs: inputs.append((m, args)), with_kwargs=True)
               for block in model.blocks]
    try:
        vlm.logits(batch)
    finally:
        for h in handles:
            h.remove()
    out = []
    for attn, (x, pe, positions) in inputs:
        b, length, dim = x.shape
        q, k, _ = attn.qkv(x).view(b, length, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        if positions is not None:
            q, k = pe.rotate(q, k, positions)
        scores = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim)
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        out.append(scores.masked_fill(~causal, float("-inf")).softmax(-1).detach())
    return out


@pytest.mark.parametrize("lm_posenc", ["rope1d", "mrope", "learned"])
@pytest.mark.parametrize("system_prompt", [None, SYSTEM_PROMPT])
def test_organism_probe_equals_eager(vocab, lm_posenc, system_prompt):
    vlm = organism(vocab, lm_posenc)
    images, prompts = organism_inputs(vlm)
    batch = vlm.prepare(images, prompts, system_prompt=system_prompt)  # right padded: rows end at different places
    last = batch.last_index()
    assert len(set(last.tolist())) > 1
    with torch.no_grad():
        base = vlm.logits(batch)
    record = attention.measure(vlm, batch)
    reference = eager_organism_attention(vlm, batch)
    assert record.probs.shape == (vlm.num_layers, 3, vlm.model.cfg.lm_heads, 1, batch.token_kind.shape[1])
    for layer, ref in enumerate(reference):
        rows = ref[torch.arange(3), :, last].unsqueeze(2)  # (B, H, 1, L)
        torch.testing.assert_close(record.probs[layer], rows, atol=1e-5, rtol=0)
        assert float(rows.max()) > 3.0 / int(last.min())  # far from uniform: the check bites
    # the model's own output is untouched by the probe (it stays on fused SDPA)
    with attention.attention_probe(vlm, batch):
        torch.testing.assert_close(vlm.logits(batch), base, atol=0, rtol=0)


def test_organism_several_rows_and_pads(vocab):
    vlm = organism(vocab)
    images, prompts = organism_inputs(vlm)
    batch = vlm.prepare(images, prompts)
    last = batch.last_index()
    rows = torch.stack([last, last - 1, torch.full_like(last, 3)], 1)  # (B, 3)
    record = attention.measure(vlm, batch, rows)
    reference = eager_organism_attention(vlm, batch)
    for layer, ref in enumerate(reference):
        for r in range(3):
            torch.testing.assert_close(record.probs[layer, :, :, r], ref[torch.arange(3), :, rows[:, r]], atol=1e-5, rtol=0)
    # causal: no attention to keys after the row, so never to the right-padding
    pads = batch.token_kind == TokenKind.PAD
    assert float(record.probs[..., 0, :].permute(1, 0, 2, 3)[pads[:, None, None].expand(-1, 2, 4, -1)].abs().max()) == 0.0


def test_probe_only_records_prefill_and_restores_on_error(vocab):
    vlm = organism(vocab)
    images, prompts = organism_inputs(vlm, 1)
    batch = vlm.prepare(images, prompts)
    reference = attention.measure(vlm, batch)
    with attention.attention_probe(vlm, batch) as probe:
        vlm.generate(images, prompts, max_new_tokens=3)  # prefill + decode steps: only the prefill is recorded
    torch.testing.assert_close(probe.record().probs, reference.probs, atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="boom"):
        with attention.attention_probe(vlm, batch):
            raise RuntimeError("boom")
    assert vlm._attention_fns == []  # hook removed, also after an error
    with attention.attention_probe(vlm, batch) as probe:
        pass
    with pytest.raises(RuntimeError, match="no prefill call"):
        probe.record()


def test_bad_rows_are_rejected_before_any_work(vocab):
    vlm = organism(vocab)
    images, prompts = organism_inputs(vlm, 2)
    batch = vlm.prepare(images, prompts)
    length = batch.token_kind.shape[1]
    for bad in (torch.tensor([0]), torch.tensor([0, length]), torch.tensor([-1, 0]), torch.tensor([0.5, 1.0]),
                torch.tensor([length - 1, length - 1])):  # the last one is a pad position of the shorter prompt
        with pytest.raises(ValueError, match="parameter 'rows'.*allowed"):
            attention.measure(vlm, batch, bad)
    assert vlm._attention_fns == []


# --------------------------------------------------------------------------------------------------
# the four HF families, against eager output_attentions (left-padded batches)


@pytest.mark.parametrize("family", hf_tiny.FAMILIES)
def test_hf_probe_equals_eager_output_attentions(family, tmp_path):
    hf_tiny.save_tiny(family, tmp_path, seed=1)
    vlm = hf.load(tmp_path)
    eager = hf.model_class(family).from_pretrained(tmp_path, attn_implementation="eager").eval()
    sharpen(vlm.model)
    sharpen(eager)
    batch = vlm.prepare(random_images(family), PROMPTS, system_prompt="You are a careful assistant.")
    assert bool((batch.token_kind[1] == TokenKind.PAD).any())  # the shorter prompt is left padded
    length = batch.token_kind.shape[1]
    first_real = int((batch.token_kind[1] == TokenKind.PAD).sum())
    rows = torch.tensor([[length - 1, length - 2, 5], [length - 1, first_real + 1, length - 3]])
    record = attention.measure(vlm, batch, rows)
    with torch.no_grad():
        out = eager(**batch.inputs, output_attentions=True, use_cache=False)
    assert len(out.attentions) == vlm.num_layers == record.num_layers
    for layer, reference in enumerate(out.attentions):
        expected = torch.stack([reference[b][:, rows[b]] for b in range(2)])  # (B, H, R, L)
        torch.testing.assert_close(record.probs[layer], expected, atol=1e-5, rtol=0)
        assert float(expected.max()) > 3.0 / length
    # pads get nothing
    assert float(record.probs[:, 1, ..., :first_real].abs().max()) == 0.0
    # default rows = the last token of every (left-padded) row
    default = attention.measure(vlm, batch)
    torch.testing.assert_close(default.probs[..., 0, :], record.probs[..., 0, :], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_hf_probe_records_only_prefill_during_generation(family):
    vlm = hf_tiny.tiny_vlm(family, seed=0)
    images = random_images(family)
    batch = vlm.prepare(images, PROMPTS)
    reference = attention.measure(vlm, batch)
    calls = []
    with attention.attention_probe(vlm, batch) as probe:
        with vlm.attention_hook(lambda call: calls.append(call.query.shape[-2]) or probe(call)):
            vlm.generate(images, PROMPTS, max_new_tokens=3)
    assert calls.count(batch.token_kind.shape[1]) == vlm.num_layers and 1 in calls  # decode steps ran too
    torch.testing.assert_close(probe.record().probs, reference.probs, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------
# summaries


def test_kind_shares_and_image_maps_add_up(vocab):
    vlm = organism(vocab)
    images, prompts = organism_inputs(vlm)
    batch = vlm.prepare(images, prompts, system_prompt=SYSTEM_PROMPT)
    record = attention.measure(vlm, batch)
    shares = attention.kind_shares(record)
    assert shares.shape == (vlm.num_layers, 3, 3)
    torch.testing.assert_close(shares.sum(-1), torch.ones(vlm.num_layers, 3), atol=1e-5, rtol=0)
    maps = attention.image_maps(record)
    assert [tuple(m.shape) for m in maps] == [(vlm.num_layers, *vlm.model.grid)] * 3
    for b, m in enumerate(maps):
        torch.testing.assert_close(m.sum((-1, -2)), shares[:, b, 1], atol=1e-6, rtol=0)
    # raster order: the map's cell (i, j) is image token i*w + j
    h, w = vlm.model.grid
    first_image = int((batch.token_kind[0] == TokenKind.IMAGE).nonzero()[0])
    assert float(maps[0][0, 1, 2]) == float(record.mean_probs()[0, 0, first_image + w + 2])
    frame = attention.shares_frame(record, item_offset=10, condition="sys")
    assert len(frame) == vlm.num_layers * 3 and set(frame.item) == {10, 11, 12} and (frame.condition == "sys").all()
    np.testing.assert_allclose(frame[["system", "image", "text"]].sum(axis=1), 1.0, atol=1e-5)
    real_tokens = (batch.token_kind != TokenKind.PAD).sum(1).numpy()
    np.testing.assert_allclose(frame.image_tokens, np.tile(h * w / real_tokens, vlm.num_layers))


def test_cell_coverage_is_exact():
    # a box aligned with cells: coverage 1 inside, 0 outside
    cov = attention.cell_coverage(attention.box_mask([(8, 16, 24, 32)], (48, 48)), (6, 6))
    expected = np.zeros((6, 6))
    expected[2:4, 1:3] = 1.0
    np.testing.assert_allclose(cov, expected)
    # a box covering half a cell in each direction, grid not dividing the image (10 px over 3 cells)
    cov = attention.cell_coverage(attention.box_mask([(0, 0, 5, 5)], (10, 10)), (3, 3))
    cell = 10 / 3
    np.testing.assert_allclose(cov[0, 0], 1.0)
    np.testing.assert_allclose(cov[1, 1], ((5 - cell) / cell) ** 2)
    np.testing.assert_allclose(cov.sum() * cell * cell, 25.0)  # total covered area is the box area
    # union of overlapping boxes counts pixels once; boxes are clipped to the image
    mask = attention.box_mask([(0, 0, 6, 6), (3, 3, 8, 8), (-5, 9, 100, 100)], (10, 10))
    assert mask.sum() == 36 + 25 - 9 + 10


def test_attention_in_box_and_chance_level():
    cov = attention.cell_coverage(attention.box_mask([(0, 0, 24, 48)], (48, 48)), (6, 6))  # left half
    uniform = np.full((2, 6, 6), 0.01)
    np.testing.assert_allclose(attention.attention_in_box(uniform, cov), [0.5, 0.5])  # chance = area share
    left = np.zeros((6, 6))
    left[:, :3] = 1.0
    assert attention.attention_in_box(torch.tensor(left), cov) == pytest.approx(1.0)
    assert attention.attention_in_box(1.0 - left, cov) == pytest.approx(0.0)


def test_gaze_vs_correctness_table(vocab):
    vlm = organism(vocab)
    bench = wherebench(vlm.config)
    gaze = attention.gaze_vs_correctness(vlm, bench, "test", limit=30, batch_size=8)
    where = [it for it in bench.splits["test"][:30] if it.question.family == "where"]
    assert len(gaze) == len(where) * vlm.num_layers
    assert gaze.in_box.between(0, 1).all() and gaze.area.between(0, 1).all()
    # correctness agrees with the organism's own evaluation
    from spatialkit.models.organism import evaluate

    ev = evaluate(vlm, bench, "test", limit=30).set_index("item")
    per_item = gaze.groupby("item").correct.first()
    assert (ev.loc[per_item.index, "correct"] == per_item).all()
    table = attention.gap_by_layer(gaze, seed=0, n_boot=200)
    assert list(table.layer) == list(range(vlm.num_layers))
    assert ((table.n_correct + table.n_wrong) == len(where)).all()


def test_row_probs_grouped_query_heads_match_repeated_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    mask[1, :, :, 0] = False  # a pad at the start of item 1
    call = AttnCall(layer=0, query=q, key=k, value=v, mask=mask, scale=0.3, is_causal=False)
    full = ((q @ k.repeat_interleave(3, 1).transpose(-1, -2)) * 0.3).masked_fill(~mask, float("-inf")).softmax(-1)
    rows = torch.tensor([[4, 2], [3, 4]])
    got = attention.row_probs(call, rows)
    for b in range(2):
        torch.testing.assert_close(got[b], full[b][:, rows[b]], atol=1e-6, rtol=0)
    causal = AttnCall(layer=0, query=q, key=k, value=v, mask=None, scale=0.3, is_causal=True)
    torch.testing.assert_close(attention.row_probs(causal, rows)[0], full[0][:, rows[0]], atol=1e-6, rtol=0)


def test_plot_overlay_draws_map_and_boxes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scene = scenes.chick_and_cup(image_size=48)
    amap = np.arange(36, dtype=float).reshape(6, 6)
    fig, ax = plt.subplots()
    handle = plots.plot_overlay(ax, scene.image, amap, boxes=[o.box for o in scene.objects], title="t")
    assert handle.get_array().shape == (6, 6) and tuple(handle.get_extent()) == (0, 48, 48, 0)
    assert len(ax.patches) == len(scene.objects)
    plt.close(fig)
