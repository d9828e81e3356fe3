"""spatialkit.models.posenc: the relative property of RoPE, equality with transformers' Qwen rotary code and
position ids, interpolation, RPE, and argument errors."""

import math

import pytest
import torch

from spatialkit.models import posenc


def _rotate(enc, q, k, positions):
    return enc.rotate(q[None, None], k[None, None], positions)


# --- RoPE's relative property ---------------------------------------------------------------------

def test_rope1d_score_depends_only_on_offset():
    torch.manual_seed(0)
    head_dim, n = 16, 12
    enc = posenc.build("rope1d", dim=32, head_dim=head_dim, n_heads=2, grid=(3, 4))
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    # the same q at every slot and the same k at every slot: score[i, j] must be a function of j - i
    qr, kr = _rotate(enc, q.expand(n, -1), k.expand(n, -1), posenc.grid_positions(3, 4))
    scores = (qr @ kr.transpose(-1, -2))[0, 0]
    for offset in range(-n + 1, n):
        diag = torch.diagonal(scores, offset=offset)
        assert diag.max() - diag.min() < 1e-4, offset
    # and it is not trivially constant: different offsets give different scores
    assert scores[0].std() > 1e-2


def test_rope2d_score_depends_only_on_2d_offset():
    torch.manual_seed(1)
    head_dim, h, w = 16, 4, 5
    enc = posenc.build("rope2d", dim=32, head_dim=head_dim, n_heads=2, grid=(h, w))
    pos = posenc.grid_positions(h, w)
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    qr, kr = _rotate(enc, q.expand(h * w, -1), k.expand(h * w, -1), pos)
    scores = (qr @ kr.transpose(-1, -2))[0, 0]
    by_offset: dict[tuple[int, int], list[float]] = {}
    for i in range(h * w):
        for j in range(h * w):
            off = (int(pos[j, 1] - pos[i, 1]), int(pos[j, 2] - pos[i, 2]))
            by_offset.setdefault(off, []).append(float(scores[i, j]))
    spreads = [max(v) - min(v) for v in by_offset.values()]
    assert max(spreads) < 1e-4
    # a vertical step and a horizontal step are told apart (unlike a bag of patches)
    assert abs(by_offset[(1, 0)][0] - by_offset[(0, 1)][0]) > 1e-3


def test_rope_preserves_norm_and_zero_position_is_identity():
    torch.manual_seed(2)
    q, k = torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
    for name in posenc.ROTARY:
        enc = posenc.build(name, dim=16, head_dim=8, n_heads=3, grid=(2, 3))
        qr, kr = enc.rotate(q, k, posenc.grid_positions(2, 3))
        assert torch.allclose(qr.norm(dim=-1), q.norm(dim=-1), atol=1e-5), name
        q0, _ = enc.rotate(q[:, :, :1], k[:, :, :1], torch.zeros(1, 3, dtype=torch.long))
        assert torch.allclose(q0, q[:, :, :1]), name


def test_mrope_on_text_positions_is_1d_rope():
    """With t = h = w (text tokens) M-RoPE is plain 1D RoPE, in both layouts."""
    torch.manual_seed(3)
    q, k = torch.randn(1, 2, 7, 16), torch.randn(1, 2, 7, 16)
    text_pos = torch.arange(7)[:, None].expand(7, 3)
    plain = posenc.build("rope1d", dim=32, head_dim=16, n_heads=2, grid=(1, 7), theta=1e6)
    for interleaved, section in ((False, None), (True, (4, 2, 2))):
        enc = posenc.build("mrope", dim=32, head_dim=16, n_heads=2, grid=(1, 7), theta=1e6,
                           section=section, interleaved=interleaved)
        got, want = enc.rotate(q, k, text_pos), plain.rotate(q, k, text_pos)
        assert torch.allclose(got[0], want[0], atol=1e-5) and torch.allclose(got[1], want[1], atol=1e-5)


def test_mrope_frequency_layouts_match_reference():
    axis2 = posenc.mrope_axis_of_frequency(posenc.QWEN2_MROPE_SECTION)
    assert axis2[:16].eq(0).all() and axis2[16:40].eq(1).all() and axis2[40:].eq(2).all()
    axis3 = posenc.mrope_axis_of_frequency(posenc.QWEN3_MROPE_SECTION, interleaved=True)
    assert torch.equal(torch.nonzero(axis3 == 1).ravel(), torch.arange(1, 60, 3))
    assert torch.equal(torch.nonzero(axis3 == 2).ravel(), torch.arange(2, 60, 3))
    t_freqs = torch.nonzero(axis3 == 0).ravel().tolist()
    assert t_freqs == list(range(0, 60, 3)) + [60, 61, 62, 63]
    assert posenc.default_mrope_section(128) == (16, 24, 24)


# --- equality with transformers' Qwen rotary code ---------------------------------------------------

def _qwen_positions(batch=2):
    """(3, B, L) ids: text, an image of 3 x 5 merged tokens, more text (what get_rope_index produces)."""
    ids = torch.tensor([[7, 8, 9] + [5] * 15 + [10, 11, 12, 13]] * batch)
    thw = torch.tensor([[1, 6, 10]] * batch)
    return posenc.qwen_rope_index(ids, thw, image_token_id=5, spatial_merge_size=2)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_mrope_equals_transformers_rotary(family):
    if family == "qwen2_vl":
        from transformers.models.qwen2_vl import configuration_qwen2_vl as cfg_mod, modeling_qwen2_vl as mod
        section, theta, interleaved = [16, 24, 24], 1e6, False
        config = cfg_mod.Qwen2VLTextConfig(hidden_size=1024, num_attention_heads=8, head_dim=128,
                                           rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": section})
        rotary = mod.Qwen2VLRotaryEmbedding(config)
    else:
        from transformers.models.qwen3_vl import configuration_qwen3_vl as cfg_mod, modeling_qwen3_vl as mod
        section, theta, interleaved = [24, 20, 20], 5e6, True
        config = cfg_mod.Qwen3VLTextConfig(hidden_size=1024, num_attention_heads=8, head_dim=128,
                                           rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": section})
        rotary = mod.Qwen3VLTextRotaryEmbedding(config)
    position_ids = _qwen_positions()  # (3, B, L)
    # make t, h and w differ by more than the image offsets so a swapped axis would show
    position_ids = position_ids + torch.tensor([0, 40, 300])[:, None, None]
    torch.manual_seed(4)
    B, L = position_ids.shape[1:]
    q, k = torch.randn(B, 8, L, 128), torch.randn(B, 8, L, 128)
    cos, sin = rotary(q, position_ids)
    want_q, want_k = mod.apply_rotary_pos_emb(q, k, cos, sin)

    enc = posenc.build("mrope", dim=1024, head_dim=128, n_heads=8, grid=(3, 5), theta=theta,
                       section=section, interleaved=interleaved)
    got_q, got_k = enc.rotate(q, k, position_ids.permute(1, 2, 0))  # (B, L, 3)
    assert (got_q - want_q).abs().max() <= 1e-5
    assert (got_k - want_k).abs().max() <= 1e-5


# --- position ids equal get_rope_index on a tiny Qwen2-VL ------------------------------------------

IMAGE_TOKEN, VISION_START, VISION_END = 60, 61, 62


@pytest.fixture(scope="module")
def tiny_qwen2vl():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, bos_token_id=None,
                         eos_token_id=0, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=IMAGE_TOKEN, video_token_id=63, vision_start_token_id=VISION_START,
        vision_end_token_id=VISION_END,
    )
    return Qwen2VLForConditionalGeneration(config).eval()


def _real_inputs(grids, pad_left=(0, 0)):
    """input_ids / mm_token_type_ids / pixel_values / image_grid_thw as the processor lays them out:
    chat text, <vision_start>, h'*w' image pads, <vision_end>, question text; left padding."""
    rows, thw = [], []
    for (gh, gw) in grids:
        n = (gh // 2) * (gw // 2)
        rows.append([1, 2, 3, VISION_START] + [IMAGE_TOKEN] * n + [VISION_END, 4, 5, 6, 7])
        thw.append([1, gh, gw])
    length = max(len(r) + p for r, p in zip(rows, pad_left))
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, (r, p) in enumerate(zip(rows, pad_left)):
        ids[b, length - len(r):] = torch.tensor(r)
        mask[b, length - len(r):] = 1
    thw = torch.tensor(thw)
    n_patches = int((thw[:, 1] * thw[:, 2]).sum())
    pixels = torch.randn(n_patches, 3 * 2 * 14 * 14)
    return ids, mask, (ids == IMAGE_TOKEN).int(), pixels, thw


@pytest.mark.parametrize("grids", [[(4, 6), (4, 6)], [(6, 4), (2, 8)]])  # 2nd: left padding
def test_position_ids_equal_get_rope_index(tiny_qwen2vl, grids):
    ids, mask, types, pixels, thw = _real_inputs(grids)
    want, _ = tiny_qwen2vl.model.get_rope_index(ids, types, image_grid_thw=thw, attention_mask=mask)
    got = posenc.qwen_rope_index(ids, thw, image_token_id=IMAGE_TOKEN, spatial_merge_size=2, attention_mask=mask)
    assert torch.equal(got, want)


def test_position_ids_equal_what_the_model_uses_in_forward(tiny_qwen2vl):
    """Capture the ids the LM's rotary embedding really receives during a forward pass."""
    ids, mask, types, pixels, thw = _real_inputs([(4, 6), (4, 6)])
    seen = []
    handle = tiny_qwen2vl.model.language_model.rotary_emb.register_forward_hook(
        lambda mod, args, out: seen.append(args[1].clone()))
    try:
        with torch.no_grad():
            tiny_qwen2vl(input_ids=ids, attention_mask=mask, mm_token_type_ids=types,
                         pixel_values=pixels, image_grid_thw=thw)
    finally:
        handle.remove()
    got = posenc.qwen_rope_index(ids, thw, image_token_id=IMAGE_TOKEN, spatial_merge_size=2, attention_mask=mask)
    assert seen and torch.equal(seen[0].expand(3, -1, -1), got)


def test_qwen_rope_index_follows_reference_rules():
    ids = torch.tensor([[1, 2, 5, 5, 5, 5, 5, 5, 3]])  # 2 text, a 2 x 3 merged image, 1 text
    pos = posenc.qwen_rope_index(ids, torch.tensor([[1, 4, 6]]), image_token_id=5)[:, 0]
    assert pos[:, :2].tolist() == [[0, 1]] * 3
    s = 2
    assert pos[:, 2:8].T.tolist() == [[s, s + i, s + j] for i in range(2) for j in range(3)]
    assert pos[:, 8].tolist() == [s + 3] * 3  # resumes at s + max(h', w'), not s + 6


# --- absolute and relative encodings ----------------------------------------------------------------

def test_learned_ape_interpolates_to_new_grid():
    enc = posenc.build("learned", dim=8, head_dim=4, n_heads=2, grid=(4, 4))
    x = torch.zeros(1, 16, 8)
    assert torch.equal(enc.add(x, (4, 4))[0], enc.table.detach())
    y = enc.add(torch.zeros(2, 36, 8), (6, 6))
    assert y.shape == (2, 36, 8)
    # a table that is linear in the column is still linear after bilinear resizing (inside the grid)
    with torch.no_grad():
        enc.table.copy_(posenc.grid_positions(4, 4)[:, 2:3].float().expand(16, 8))
    resized = enc.table_for((4, 8))[:, 0].reshape(4, 8)
    assert torch.allclose(resized[0, 1:-1].diff(), torch.full((5,), 0.5))


def test_sincos_tables():
    table = posenc.sincos_2d(3, 4, 16)
    assert table.shape == (12, 16)
    # row half is constant along a row, column half constant along a column
    t = table.reshape(3, 4, 16)
    assert torch.allclose(t[:, :1, :8].expand(3, 4, 8), t[:, :, :8])
    assert torch.allclose(t[:1, :, 8:].expand(3, 4, 8), t[:, :, 8:])
    # dot products of 1D sinusoids depend only on the offset
    s = posenc.sincos_1d(torch.arange(10), 8)
    gram = s @ s.T
    assert torch.allclose(torch.diagonal(gram, 2), torch.diagonal(gram, 2)[:1].expand(8), atol=1e-5)


def test_rpe2d_bias_is_shaw_formula_and_clipped():
    torch.manual_seed(5)
    enc = posenc.build("rpe2d", dim=16, head_dim=8, n_heads=2, grid=(3, 3), max_distance=1)
    q = torch.randn(2, 2, 9, 8)
    bias = enc.bias(q, (3, 3))
    assert bias.shape == (2, 2, 9, 9)
    pos = posenc.grid_positions(3, 3)
    for i, j in [(0, 8), (4, 5), (7, 1)]:
        dr = max(-1, min(1, int(pos[j, 1] - pos[i, 1]))) + 1
        dc = max(-1, min(1, int(pos[j, 2] - pos[i, 2]))) + 1
        want = q[..., i, :] @ (enc.row_table[dr] + enc.col_table[dc]) / math.sqrt(8)
        assert torch.allclose(bias[..., i, j], want, atol=1e-6)
    # works on a grid it was not built for (offsets beyond max_distance reuse the clipped entries)
    assert enc.bias(torch.randn(1, 2, 20, 8), (4, 5)).shape == (1, 2, 20, 20)


def test_non_position_kinds_are_identities():
    x = torch.randn(2, 6, 8)
    q, k = torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    for name in posenc.ENCODINGS:
        enc = posenc.build(name, dim=8, head_dim=4, n_heads=2, grid=(2, 3))
        if name not in posenc.ABSOLUTE:
            assert torch.equal(enc.add(x, (2, 3)), x), name
        if name not in posenc.ROTARY:
            assert enc.rotate(q, k, posenc.grid_positions(2, 3)) == (q, k), name
        if name != "rpe2d":
            assert enc.bias(q, (2, 3)) is None, name


# --- bad arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, word", [
    (dict(name="alibi"), "name"),
    (dict(grid=(0, 4)), "grid"),
    (dict(grid=(4, -1)), "grid"),
    (dict(dim=7), "dim"),
    (dict(head_dim=0), "head_dim"),
    (dict(n_heads=0), "n_heads"),
    (dict(name="rope2d", head_dim=6), "head_dim"),
    (dict(name="rope1d", theta=-1.0), "theta"),
    (dict(name="mrope", section=(1, 1, 1)), "section"),
])
def test_bad_arguments_raise_valueerror_naming_them(kwargs, word):
    args = dict(name="none", dim=16, head_dim=8, n_heads=2, grid=(4, 4)) | kwargs
    name = args.pop("name")
    with pytest.raises(ValueError, match=word):
        posenc.build(name, **args)


def test_bad_call_arguments():
    enc = posenc.build("learned", dim=8, head_dim=4, n_heads=2, grid=(2, 2))
    with pytest.raises(ValueError, match="grid"):
        enc.add(torch.zeros(1, 5, 8), (2, 2))
    rope = posenc.build("rope2d", dim=8, head_dim=4, n_heads=2, grid=(2, 2))
    with pytest.raises(ValueError, match="positions"):
        rope.rotate(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="grid"):
        posenc.grid_positions(0, 3)


# --- position kernels (notebook 01's similarity analysis) -------------------------------------------

def test_kernels_show_1d_flattening_and_2d_recovery():
    g = (6, 6)
    kw = dict(dim=64, head_dim=32, n_heads=2, grid=g, theta=100.0)
    k1 = posenc.encoding_kernel(posenc.build("rope1d", **kw), g)
    k2 = posenc.encoding_kernel(posenc.build("rope2d", **kw), g)
    loc1, loc2 = posenc.neighbour_locality(k1, g), posenc.neighbour_locality(k2, g)
    assert loc1["horizontal"] - loc1["vertical"] > 0.1  # the vertical neighbour is w slots away
    assert abs(loc2["horizontal"] - loc2["vertical"]) < 1e-6  # axial 2D RoPE is symmetric in h and w
    assert posenc.distance_rank_correlation(k2, g) > posenc.distance_rank_correlation(k1, g)
    assert posenc.distance_rank_correlation(posenc.encoding_kernel(posenc.build("none", **kw), g), g) == 0.0
    assert torch.allclose(torch.diagonal(k1), torch.ones(36))


def test_distance_rank_correlation_of_distance_itself_is_one():
    g = (4, 5)
    assert posenc.distance_rank_correlation(-posenc.grid_distances(g), g) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="grid"):
        posenc.distance_rank_correlation(torch.zeros(3, 3), g)


def test_build_options():
    assert posenc.build("none", dim=8, head_dim=4, n_heads=2, grid=(2, 2), theta=5.0).name == "none"
    with pytest.raises(ValueError, match="max_distance"):
        posenc.build("rope1d", dim=8, head_dim=4, n_heads=2, grid=(2, 2), max_distance=3)
