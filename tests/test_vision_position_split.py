"""The content/position split inside the vision tower (``VLM.vision_position_hook`` and
``shuffle_visual_tokens(move="content"|"position")`` without a position code), on the four tiny HF families.

Position only: the LM receives other visual tokens at fraction 1 and bit-identical ones for the identity; CLIP's
version equals recomputing with the position-embedding rows permuted. Content: for the towers that see
positions only through the moved signal (CLIP, Qwen2-VL, Qwen3-VL) it equals the image with its patches (Qwen:
merge windows) rearranged before the tower. The model is restored after the context, also on error.

The organism (smoke and smoke_loud: sincos2d and learned codes added in its ViT): position only equals the ViT
recomputed with its position rows permuted; content only equals the stem's output permuted (conv stem) and, with
a linear stem, the patch-rearranged image, for every vision position encoding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from spatialkit.analysis.interventions import shuffle_visual_tokens
from spatialkit.analysis.interventions.norms import hidden_states
from spatialkit.analysis.interventions.shuffle import batch_index
from tests.kinds import tiny_case

HF_KINDS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava")


def _sharpen_tower(vlm, factor: float = 4.0) -> None:
    """Scale the vision tower's attention projections so random-weight attention is far from uniform (the
    rotary ids then matter well above float noise)."""
    tower = vlm.model.model.vision_tower if hasattr(vlm.model.model, "vision_tower") else vlm.model.model.visual
    with torch.no_grad():
        for name, module in tower.named_modules():
            if name.endswith(("attn.qkv", "self_attn.q_proj", "self_attn.k_proj")):
                module.weight.mul_(factor)


@pytest.fixture(scope="module", params=HF_KINDS)
def case(request):
    kind, vlm, batch = tiny_case(request.param)
    _sharpen_tower(vlm)
    return kind, vlm, batch


def _lm_visual_input(vlm, batch) -> torch.Tensor:
    """The visual tokens the LM really receives (its input at the image positions)."""
    return hidden_states(vlm, batch)[0][batch.image_mask]


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _state(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _check_position_only_moves_and_identity_is_bit_identical(vlm, batch) -> None:
    """Position-only at fraction 1 changes the LM's visual input; fraction 0, an identity index, and content at
    fraction 0 leave it bit-identical."""
    base = _lm_visual_input(vlm, batch)
    with shuffle_visual_tokens(vlm, 1.0, seed=0, move="position", record=True) as rec:
        moved = _lm_visual_input(vlm, batch)
    assert len(rec.calls) == 1 and torch.equal(rec.calls[0], batch_index(batch.grids, 1.0, 0))
    assert (moved - base).abs().max() > 1e-4, "moving the tower's position signal left the LM input unchanged"
    with shuffle_visual_tokens(vlm, 0.0, seed=0, move="position"):
        assert torch.equal(_lm_visual_input(vlm, batch), base)
    with vlm.vision_position_hook(lambda grids: torch.arange(sum(h * w for h, w in grids))):
        assert torch.equal(_lm_visual_input(vlm, batch), base)
    with shuffle_visual_tokens(vlm, 0.0, seed=0, move="content"):
        assert torch.equal(_lm_visual_input(vlm, batch), base)


def test_position_only_moves_the_tokens_and_identity_is_bit_identical(case):
    _, vlm, batch = case
    _check_position_only_moves_and_identity_is_bit_identical(vlm, batch)


def _rearranged(kind: str, vlm, batch, index: torch.Tensor):
    """The batch with each image's pixels rearranged so that LM slot s shows what slot ``index[s]`` showed."""
    pixels = batch.inputs["pixel_values"]
    if kind == "llava":  # (B, 3, H, W): CLIP patches of patch_size px, slot s = patch s
        p = vlm.model.config.vision_config.patch_size
        b, c, h, w = pixels.shape
        n = (h // p) * (w // p)
        patches = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b * n, c, p, p)
        patches = patches[index].reshape(b, h // p, w // p, c, p, p).permute(0, 3, 1, 4, 2, 5)
        new = patches.reshape(b, c, h, w)
    else:  # Qwen: (patches, features) in merge-window order: slot s owns rows 4s ... 4s+3
        units = vlm.model.config.vision_config.spatial_merge_size ** 2
        new = pixels[(index[:, None] * units + torch.arange(units)).reshape(-1)]
    return dataclasses.replace(batch, inputs={**batch.inputs, "pixel_values": new})


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen3_vl", "llava"])
def test_content_only_is_the_rearranged_image(kind):
    """Towers that see positions only through the moved signal: "content" = the patches rearranged before the
    tower (LM positions unchanged); "all" is not (there the tower encoded each patch at its true place)."""
    _, vlm, batch = tiny_case(kind)
    _sharpen_tower(vlm)
    index = batch_index(batch.grids, 1.0, 5)
    want = vlm.visual_tokens(_rearranged(kind, vlm, batch, index)).tokens
    with shuffle_visual_tokens(vlm, 1.0, seed=5, move="content"):
        got = _lm_visual_input(vlm, batch)
    assert torch.allclose(got, want.to(got.dtype), atol=1e-5), (got - want).abs().max()
    with shuffle_visual_tokens(vlm, 1.0, seed=5):
        full = _lm_visual_input(vlm, batch)
    assert (full - want).abs().max() > 1e-4


def test_clip_position_only_equals_permuted_position_rows():
    _, vlm, batch = tiny_case("llava")
    table = vlm._clip_embeddings().position_embedding.weight
    n = table.shape[0] - 1
    index = batch_index(batch.grids, 1.0, 3)[:n]  # every image has the same grid, so the same permutation
    with shuffle_visual_tokens(vlm, 1.0, seed=3, move="position"):
        got = vlm.visual_tokens(batch).tokens
    saved = table.detach().clone()
    try:
        with torch.no_grad():
            table.copy_(saved[torch.cat([torch.zeros(1, dtype=torch.long), 1 + index])])
        want = vlm.visual_tokens(batch).tokens
    finally:
        with torch.no_grad():
            table.copy_(saved)
    assert torch.equal(got, want)


def _check_restored_after_the_split(vlm, batch, move: str, raise_inside: bool, overridden=lambda: True) -> None:
    """Inside the split hooks are on (and ``overridden()``); after it, also after an error inside, the hooks are
    gone (``overridden()`` false), the state dict is equal and the logits are unchanged."""
    base = vlm.logits(batch)  # first: a model's first call may install transformers' own hooks
    state, hooks = _state(vlm.model), _hooks(vlm.model)
    if raise_inside:
        with pytest.raises(RuntimeError, match="boom"), shuffle_visual_tokens(vlm, 1.0, seed=1, move=move):
            vlm.logits(batch)
            raise RuntimeError("boom")
    else:
        with shuffle_visual_tokens(vlm, 1.0, seed=1, move=move):
            assert _hooks(vlm.model) > hooks and overridden()
            vlm.logits(batch)
    assert _hooks(vlm.model) == hooks
    after = vlm.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())
    assert torch.equal(vlm.logits(batch), base)


@pytest.mark.parametrize("move", ["content", "position"])
@pytest.mark.parametrize("raise_inside", [False, True])
def test_model_restored_after_the_split(case, move, raise_inside):
    _, vlm, batch = case
    _check_restored_after_the_split(vlm, batch, move, raise_inside)


def test_a_bad_slot_index_is_refused_and_the_hook_removed(case):
    _, vlm, batch = case
    # one plain forward first: transformers installs hooks of its own on a model's first call (output recording),
    # which are not ours to remove; counted before it, they made this test fail whenever it ran first
    vlm.visual_tokens(batch)
    hooks = _hooks(vlm.model)
    def bad(grids):
        return torch.zeros(sum(h * w for h, w in grids), dtype=torch.long)

    with pytest.raises(ValueError, match="permute each image"), vlm.vision_position_hook(bad):
        vlm.visual_tokens(batch)
    assert _hooks(vlm.model) == hooks


def test_every_hf_family_says_what_it_moves(case):
    _, vlm, _ = case
    assert isinstance(vlm.vision_position_signal, str) and vlm.vision_position_signal


def test_a_model_without_the_tower_hook_needs_a_position_code():
    _, vlm, _ = tiny_case("organism")

    class NoTowerHook(type(vlm)):  # a model that has no tower-level hook (the VLM default)
        vision_position_signal = None

    bare = NoTowerHook(vlm.model, vlm.vocab, vlm.config)
    assert bare.vision_position_signal is None
    with pytest.raises(ValueError, match="position_code"), shuffle_visual_tokens(bare, 1.0, 0, move="content"):
        pass


# -- the organism: its ViT's own position encoding (model.vision.pe) -----------------------------------------
ORGANISMS = {"smoke": "sincos2d", "smoke_loud": "learned"}  # preset -> its vision_posenc


@pytest.fixture(scope="module", params=list(ORGANISMS))
def organism(request):
    """(vlm, batch): a trained smoke-sized organism (conv stem) and two random-pixel images."""
    from spatialkit.models.organism import load_or_train, preset

    vlm = load_or_train(preset(request.param), progress=False)
    assert vlm.model.cfg.vision_posenc == ORGANISMS[request.param]
    size = vlm.model.cfg.image_size
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    return vlm, vlm.prepare(images, ["where is the chick ?", "what color is the cup ?"])


def _untrained(vlm, **changes):
    """An untrained organism of ``vlm``'s architecture with ``changes`` to its ModelConfig (same vocabulary)."""
    from spatialkit.models.organism import OrganismVLM
    from spatialkit.models.organism.model import TinyVLM

    torch.manual_seed(0)
    return OrganismVLM(TinyVLM(dataclasses.replace(vlm.model.cfg, **changes)).eval(), vlm.vocab, vlm.config)


def _overrides(vlm) -> set:
    return {"add", "angles", "bias"} & set(vlm.model.vision.pe.__dict__)


def _vit_by_hand(vlm, pixels, *, content=None, position=None) -> torch.Tensor:
    """The organism's visual tokens (B*N, d) recomputed step by step (absolute position codes only): the stem's
    patch embeddings gathered by ``content``, the position table's rows by ``position`` (per-image index (N,))."""
    vit = vlm.model.vision
    with torch.no_grad():
        x = vit.embed_norm(vit.patch_embed(pixels).flatten(2).transpose(1, 2))
        table = vit.pe.table_for(vit.grid).to(x.dtype)
        if content is not None:
            x = x[:, content]
        x = x + (table if position is None else table[position])
        for block in vit.blocks:
            x = block(x, vit.pe, None, grid=vit.grid)
        tokens = vlm.model.projector(vit.ln_f(x))
    return tokens.reshape(-1, tokens.shape[-1])


def _patches_rearranged(pixels: torch.Tensor, patch: int, perm: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) with patch s showing what patch ``perm[s]`` showed (same permutation for every image)."""
    b, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    patches = pixels.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, patch, patch)
    return patches[:, perm].reshape(b, gh, gw, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def test_organism_position_only_moves_the_tokens_and_identity_is_bit_identical(organism):
    vlm, batch = organism
    _check_position_only_moves_and_identity_is_bit_identical(vlm, batch)


def test_organism_position_only_equals_the_vit_with_permuted_position_rows(organism):
    vlm, batch = organism
    pixels = batch.inputs["pixel_values"]
    perm = batch_index(batch.grids, 1.0, 3)[: batch.grids[0][0] * batch.grids[0][1]]  # every image: one grid
    assert torch.equal(_vit_by_hand(vlm, pixels), vlm.visual_tokens(batch).tokens)  # the recomputation is faithful
    with shuffle_visual_tokens(vlm, 1.0, seed=3, move="position"):
        got = vlm.visual_tokens(batch).tokens
    assert torch.equal(got, _vit_by_hand(vlm, pixels, position=perm))


def test_organism_content_only_moves_the_stem_output(organism):
    """Conv stem (the smoke organisms'): "content" = the stem's patch embeddings permuted, each slot keeping its
    own position code. It is not the patch-rearranged image: the stem's 3x3 stride-2 convolutions see across
    patch borders, so a patch cut out and moved gets other embeddings than it had in place."""
    vlm, batch = organism
    assert vlm.model.cfg.vision_stem == "conv"
    pixels = batch.inputs["pixel_values"]
    n = batch.grids[0][0] * batch.grids[0][1]
    perm = batch_index(batch.grids, 1.0, 5)[:n]
    with shuffle_visual_tokens(vlm, 1.0, seed=5, move="content"):
        got = vlm.visual_tokens(batch).tokens  # (the LM input adds smoke_loud's learned LM positions)
    want = _vit_by_hand(vlm, pixels, content=perm)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    rearranged = dataclasses.replace(batch, inputs={**batch.inputs, "pixel_values": _patches_rearranged(
        pixels, vlm.model.cfg.patch_size, perm)})
    assert (vlm.visual_tokens(rearranged).tokens - want).abs().max() > 1e-4


@pytest.mark.parametrize("posenc", ["none", "learned", "sincos2d", "rpe2d", "rope1d", "rope2d", "mrope"])
def test_organism_linear_stem_content_only_is_the_rearranged_image(posenc):
    """Linear stem (one linear map per patch): "content" = the image with its patches rearranged, run through the
    plain model, for every vision position encoding (attention sees positions only through the moved signal);
    "position" changes the tokens (except with no encoding) and its identity is bit-identical."""
    _, smoke, batch = tiny_case("organism")
    vlm = _untrained(smoke, vision_stem="linear", vision_posenc=posenc)
    n = batch.grids[0][0] * batch.grids[0][1]
    perm = batch_index(batch.grids, 1.0, 5)[:n]
    rearranged = dataclasses.replace(batch, inputs={**batch.inputs, "pixel_values": _patches_rearranged(
        batch.inputs["pixel_values"], vlm.model.cfg.patch_size, perm)})
    want = vlm.visual_tokens(rearranged).tokens
    with shuffle_visual_tokens(vlm, 1.0, seed=5, move="content"):
        got = vlm.visual_tokens(batch).tokens
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    base = _lm_visual_input(vlm, batch)
    with shuffle_visual_tokens(vlm, 1.0, seed=5, move="position"):
        moved = _lm_visual_input(vlm, batch)
    if posenc == "none":
        assert torch.equal(moved, base)
    else:
        assert (moved - base).abs().max() > 1e-4
        with shuffle_visual_tokens(vlm, 1.0, seed=5):  # whole tokens moved: not the rearranged image
            assert (vlm.visual_tokens(batch).tokens - want).abs().max() > 1e-4
    with shuffle_visual_tokens(vlm, 0.0, seed=5, move="position"):
        assert torch.equal(_lm_visual_input(vlm, batch), base)
    assert not _overrides(vlm)


@pytest.mark.parametrize("move", ["content", "position"])
@pytest.mark.parametrize("raise_inside", [False, True])
def test_organism_restored_after_the_split(organism, move, raise_inside):
    vlm, batch = organism
    _check_restored_after_the_split(vlm, batch, move, raise_inside, overridden=lambda: bool(_overrides(vlm)))
    assert not _overrides(vlm)


def test_organism_bad_slot_index_is_refused_and_the_hook_removed(organism):
    vlm, batch = organism
    hooks = _hooks(vlm.model)

    def bad(grids):
        return torch.zeros(sum(h * w for h, w in grids), dtype=torch.long)

    with pytest.raises(ValueError, match="permute each image"), vlm.vision_position_hook(bad):
        vlm.visual_tokens(batch)
    assert _hooks(vlm.model) == hooks and not _overrides(vlm)


def test_every_organism_vision_posenc_says_what_it_moves():
    from spatialkit.models.organism import OrganismVLM
    from spatialkit.models.organism.model import VISION_POSENCS

    assert set(OrganismVLM.VISION_POSITION_SIGNALS) == set(VISION_POSENCS)
    assert all(isinstance(v, str) and v for v in OrganismVLM.VISION_POSITION_SIGNALS.values())
