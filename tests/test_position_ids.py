"""VLM.position_ids: each checkpoint's own position ids (tiny random models of all four families) and
posenc.check_position_ids, which sets posenc's construction from the same grids beside them."""

import dataclasses

import numpy as np
import pytest
import torch

from spatialkit.models import hf, posenc
from spatialkit.models.vlm import PositionIds, TokenKind
from spatialkit.testing import hf_tiny

FAMILIES = hf_tiny.FAMILIES
PROMPTS = ["Where is the chicken in relation to the cup?", "Where?"]  # the second is shorter: left padding


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    return hf_tiny.tiny_vlm(request.param, seed=0)


def _images(family, grids=((2, 3), (3, 2))):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (*hf_tiny.image_size(family, g), 3), dtype=np.uint8) for g in grids]


def _rotary_inputs_in_forward(vlm, batch):
    """The ids the LM's rotary embedding receives while ``vlm.logits`` runs the whole model."""
    seen = []
    rotary = vlm.model.model.language_model.rotary_emb
    handle = rotary.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((kwargs["position_ids"] if "position_ids" in kwargs else args[1]).clone()),
        with_kwargs=True)
    try:
        vlm.logits(batch)
    finally:
        handle.remove()
    return seen[0].cpu()


def test_ids_are_what_the_lm_uses_in_a_forward(vlm):
    images = _images(vlm.family)
    pos = vlm.position_ids(images, PROMPTS)
    batch = vlm.prepare(images, PROMPTS)
    used = _rotary_inputs_in_forward(vlm, batch)
    n_axes = len(pos.axes)
    assert pos.ids.shape == (n_axes, 2, batch.token_kind.shape[1]) and pos.ids.dtype == torch.long
    assert torch.equal(pos.ids, used.expand(n_axes, 2, -1) if used.ndim == 2 else used)
    assert torch.equal(pos.token_kind, batch.token_kind.cpu()) and pos.grids == batch.grids
    assert pos.axes == (("position",) if vlm.family == "llava" else ("t", "h", "w"))


def test_image_grid_layout(vlm):
    pos = vlm.position_ids(_images(vlm.family), PROMPTS)
    for item in range(2):
        h, w = pos.grids[item]
        grid = pos.image_grid(item)
        assert grid.shape == (len(pos.axes), h, w)
        start = int(grid.reshape(len(pos.axes), -1)[:, 0].min())
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        if len(pos.axes) == 3:  # M-RoPE: t constant, h counts rows, w counts columns, all from the start
            assert torch.equal(grid[0], torch.full((h, w), start))
            assert torch.equal(grid[1], start + rows) and torch.equal(grid[2], start + cols)
        else:  # 1D: raster order, a row below is w positions on
            assert torch.equal(grid[0], start + rows * w + cols)


def test_rope_facts_come_from_the_model(vlm):
    pos = vlm.position_ids(_images(vlm.family), PROMPTS)
    rope, config = pos.rope, vlm.lm_config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert rope["head_dim"] == head_dim and rope["axis_of_frequency"].shape == (head_dim // 2,)
    assert rope["theta"] == config.rope_parameters["rope_theta"]
    assert rope["cos"].shape == (2, pos.ids.shape[-1], head_dim) == rope["sin"].shape
    if len(pos.axes) == 3:
        assert rope["section"] == tuple(config.rope_parameters["mrope_section"])
        assert rope["interleaved"] == (vlm.family == "qwen3_vl")
        want = posenc.mrope_axis_of_frequency(rope["section"], rope["interleaved"])
        assert torch.equal(rope["axis_of_frequency"], want)  # the probe reads the model's own layout
        assert pos.vision["spatial_merge_size"] == 2
        assert [(h // 2, w // 2) for h, w in pos.vision["patch_grids"]] == pos.grids
    else:
        assert rope["section"] is None and (rope["axis_of_frequency"] == 0).all()
        side = pos.grids[0][0]
        ape = pos.vision["ape_ids"][0]
        assert torch.equal(ape, 1 + torch.arange(side * side).reshape(side, side))  # CLIP: row 0 is CLS
        assert pos.vision["ape_table"].shape[0] == side * side + 1
    summary = pos.summary()
    assert summary["position ids from"] == pos.source and summary["LM image-token grid (h, w)"]


def test_check_agrees_for_one_prompt(vlm):
    pos = vlm.position_ids(_images(vlm.family)[:1], PROMPTS[:1])
    check = posenc.check_position_ids(pos)
    assert check.equal.all(), check.to_string()
    names = list(check.component)
    assert [f"image tokens: {a}" for a in pos.axes] == names[: len(pos.axes)]
    assert "rotary cos/sin at these ids" in names and any(n.startswith("frequencies per axis") for n in names)
    assert any(n.startswith("vision tower table row") for n in names) == (vlm.family == "llava")


def test_check_with_left_padding(vlm):
    """Qwen's get_rope_index skips padding like posenc; LLaVA's Llama numbers the padded sequence from its first
    column (a plain forward passes no position ids), so its padded row differs from the running index."""
    pos = vlm.position_ids(_images(vlm.family), PROMPTS)
    assert (pos.token_kind[1] == TokenKind.PAD).any()
    check = posenc.check_position_ids(pos).set_index("component")
    if vlm.family == "llava":
        assert not check.loc["image tokens: position", "equal"] and not check.loc["text tokens: position", "equal"]
        assert check.loc["rotary cos/sin at these ids", "equal"]  # at the model's own ids: same construction
    else:
        assert check.equal.all(), check.to_string()


def test_check_reports_what_differs(vlm):
    pos = vlm.position_ids(_images(vlm.family)[:1], PROMPTS[:1])
    if len(pos.axes) == 3:  # h and w swapped; the other layout of the frequencies
        swapped = dataclasses.replace(pos, ids=pos.ids[[0, 2, 1]])
        check = posenc.check_position_ids(swapped).set_index("component")
        assert not check.loc["image tokens: h", "equal"] and not check.loc["image tokens: w", "equal"]
        assert check.loc["image tokens: t", "equal"] and check.loc["text tokens: t = h = w", "equal"]
        other = dataclasses.replace(pos, rope={**pos.rope, "interleaved": not pos.rope["interleaved"]})
        check = posenc.check_position_ids(other).set_index("component")
        assert not check.loc["frequencies per axis (t/h/w)", "equal"]
        assert not check.loc["rotary cos/sin at these ids", "equal"]
    else:  # positions shifted by one; another theta
        shifted = dataclasses.replace(pos, ids=pos.ids + 1)
        check = posenc.check_position_ids(shifted).set_index("component")
        assert not check.loc["image tokens: position", "equal"]
        assert "16 of 16 ids differ" in check.loc["image tokens: position", "detail"]
        other = dataclasses.replace(pos, rope={**pos.rope, "theta": 2 * pos.rope["theta"]})
        assert not posenc.check_position_ids(other).set_index("component").loc["rotary cos/sin at these ids", "equal"]


def test_rope_index_1d():
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    assert posenc.rope_index_1d(mask).tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_hub_layout_checkpoint_in_bfloat16(family, tmp_path):
    """A checkpoint loaded as the hub ships it (bf16 shards), in its own dtype: same ids, same rotary."""
    vlm = hf.load(hf_tiny.save_hub_layout(family, tmp_path / family), dtype="auto")
    assert vlm.dtype == torch.bfloat16
    pos = vlm.position_ids(_images(family)[:1], PROMPTS[:1])
    assert isinstance(pos, PositionIds) and posenc.check_position_ids(pos).equal.all()


def test_grid_steps(vlm):
    pos = vlm.position_ids(_images(vlm.family)[:1], PROMPTS[:1])
    down, right = pos.grid_steps(0)
    if len(pos.axes) == 3:
        assert (down, right) == ([0, 1, 0], [0, 0, 1])
    else:
        assert (down, right) == ([pos.grids[0][1]], [1])
