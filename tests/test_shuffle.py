"""shuffle_visual_tokens on all five model kinds: identity at fraction 0, a real change at fraction 1, the LM
receives exactly the permuted tokens (DeepStack levels included), and the model is restored afterwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spatialkit.analysis.interventions import shuffle_visual_tokens, slot_permutation
from spatialkit.analysis.interventions.norms import hidden_states
from spatialkit.analysis.interventions.shuffle import batch_index
from spatialkit.models.vlm import TokenKind

from tests.kinds import MODEL_KINDS as KINDS, tiny_case


def _organism():
    from spatialkit.models.organism import load_or_train, preset

    return load_or_train(preset("smoke"), progress=False)


@pytest.fixture(scope="module", params=KINDS)
def case(request):
    """(kind, vlm, batch) with position-dependent images (random pixels: every patch differs)."""
    return tiny_case(request.param)


def _visual_hooks_idle(vlm) -> bool:
    if vlm.family == "organism":
        return vlm._visual_fns == []
    return len(vlm._visual_module._forward_hooks) == 0


def test_fraction_zero_is_bit_identical(case):
    _, vlm, batch = case
    base = vlm.logits(batch)
    with shuffle_visual_tokens(vlm, fraction=0.0, seed=3):
        same = vlm.logits(batch)
    assert torch.equal(base, same)


def test_fraction_one_changes_outputs(case):
    _, vlm, batch = case
    base = vlm.logits(batch)
    with shuffle_visual_tokens(vlm, fraction=1.0, seed=0):
        shuffled = vlm.logits(batch)
    # the prompt tokens after the image read it through attention: their logits must move (fraction 0 leaves
    # them bit-identical, so any difference well above float noise is the shuffle's doing)
    text = batch.token_kind == TokenKind.TEXT
    diff = (base[text] - shuffled[text]).abs().max()
    assert diff > 1e-6, f"fraction 1 left the prompt logits unchanged (max diff {diff:.2e})"


def test_lm_receives_exactly_the_permuted_tokens(case):
    kind, vlm, batch = case
    original = vlm.visual_tokens(batch)
    deepstack: list = []

    def grab_deepstack(module, args, kwargs):
        deepstack.append(kwargs.get("deepstack_visual_embeds"))

    handle = None
    if kind == "qwen3_vl":
        handle = vlm.model.model.language_model.register_forward_pre_hook(grab_deepstack, with_kwargs=True)
    try:
        with shuffle_visual_tokens(vlm, fraction=1.0, seed=7, record=True) as rec:
            lm_input = hidden_states(vlm, batch)[0]
    finally:
        if handle is not None:
            handle.remove()
    index = batch_index(original.grids, 1.0, 7)
    assert len(rec.calls) == 1 and torch.equal(rec.calls[0], index)
    moved = (index != torch.arange(len(index))).float().mean()
    assert moved == 1.0, "fraction 1 must displace every visual token"
    received = lm_input[batch.image_mask]  # image positions in batch order, raster order within an image
    assert torch.equal(received, original.tokens[index].to(received.dtype))
    if kind == "qwen3_vl":
        assert original.extras, "Qwen3-VL must expose its DeepStack levels as extras"
        (levels,) = deepstack
        assert len(levels) == len(original.extras)
        for got, level in zip(levels, original.extras):
            assert torch.equal(got, level[index])


@pytest.mark.parametrize("raise_inside", [False, True])
def test_model_restored_after_exit(case, raise_inside):
    _, vlm, batch = case
    base = vlm.logits(batch)
    if raise_inside:
        with pytest.raises(RuntimeError, match="boom"):
            with shuffle_visual_tokens(vlm, fraction=1.0, seed=1):
                raise RuntimeError("boom")
    else:
        with shuffle_visual_tokens(vlm, fraction=1.0, seed=1):
            vlm.logits(batch)
    assert _visual_hooks_idle(vlm)
    assert torch.equal(vlm.logits(batch), base)


def test_shuffle_applies_during_generation_and_scoring():
    vlm = _organism()
    size = vlm.model.cfg.image_size
    images = np.random.default_rng(1).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    options = [["left", "right", "above", "below"]]
    with shuffle_visual_tokens(vlm, 1.0, seed=0, record=True) as rec:
        vlm.score_options(images, ["where is the chick ?"], options)
        vlm.generate(images, ["describe the image ."], max_new_tokens=3)
    assert len(rec.calls) == 2


def test_multi_image_batch_permutes_within_each_block():
    grids = [(2, 3), (4, 4), (2, 3)]
    index = batch_index(grids, 1.0, seed=5)
    start = 0
    for h, w in grids:
        block = index[start: start + h * w]
        assert sorted(block.tolist()) == list(range(start, start + h * w))
        start += h * w
    assert torch.equal(index[:6], index[-6:] - 22)  # same grid -> same permutation


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_fraction_is_the_share_of_displaced_tokens(fraction):
    perm = slot_permutation(24, 24, fraction, seed=0)
    assert sorted(perm.tolist()) == list(range(576))
    k = int(np.floor(fraction * 576 + 0.5))
    assert int((perm != torch.arange(576)).sum()) == (k if k >= 2 else 0)
    assert torch.equal(perm, slot_permutation(24, 24, fraction, seed=0))  # deterministic
    if k >= 2:
        assert not torch.equal(perm, slot_permutation(24, 24, fraction, seed=1))


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", None, True, float("nan")])
def test_bad_fraction_fails_before_touching_the_model(bad):
    class Untouchable:  # any attribute access would mean work started
        def __getattr__(self, name):
            raise AssertionError(f"touched the model ({name})")

    with pytest.raises(ValueError, match=r"parameter 'fraction' = .* allowed: float in \[0, 1\]"):
        with shuffle_visual_tokens(Untouchable(), fraction=bad, seed=0):
            pass


@pytest.mark.parametrize("bad", [-1, 1.5, "0"])
def test_bad_seed_is_named(bad):
    with pytest.raises(ValueError, match=r"parameter 'seed' = .* allowed: int in \[0, "):
        with shuffle_visual_tokens(None, fraction=1.0, seed=bad):
            pass


# -- the permutation test on a benchmark ----------------------------------------------------------------
def test_permutation_test_frame_on_the_organism():
    from spatialkit.analysis.interventions.shuffle import permutation_test, psi_summary
    from spatialkit.models.organism import wherebench

    vlm = _organism()
    bench = wherebench(vlm.config)
    df = permutation_test(vlm, bench, fractions=[0.0, 1.0], seeds=[0, 1], limit=20)
    assert len(df) == 40 and set(df.fraction) == {0.0, 1.0}
    zero = df[df.fraction == 0.0]
    assert (zero["correct"] == zero["correct_perm"]).all()  # fraction 0 is the identity
    assert df["correct_perm"].between(0, 1).all()
    summary = psi_summary(df, by=("fraction", "family"), n_boot=100)
    assert (summary[summary.fraction == 0.0]["psi"].fillna(0) == 0).all()


def test_psi_summary_matches_the_formula():
    import pandas as pd

    from spatialkit.analysis.interventions.shuffle import psi_summary

    df = pd.DataFrame({"family": ["where"] * 10 + ["what"] * 10,
                       "correct": [1.0] * 8 + [0.0] * 2 + [1.0] * 10,
                       "correct_perm": [1.0] * 4 + [0.0] * 6 + [1.0] * 9 + [0.0]})
    s = psi_summary(df, by="family", n_boot=200).set_index("family")
    assert s.loc["where", "psi"] == pytest.approx(100 * (0.8 - 0.4) / 0.8)
    assert s.loc["what", "psi"] == pytest.approx(10.0)
    assert s.loc["where", "psi_low"] <= s.loc["where", "psi"] <= s.loc["where", "psi_high"]


def test_psi_difference_is_paired_and_signed():
    import pandas as pd

    from spatialkit.analysis.interventions.shuffle import psi_difference

    a = pd.DataFrame({"correct": [1.0] * 20, "correct_perm": [0.0] * 10 + [1.0] * 10})  # PSI 50
    b = pd.DataFrame({"correct": [1.0] * 20, "correct_perm": [0.0] * 2 + [1.0] * 18})  # PSI 10
    d = psi_difference(a, b, n_boot=300)
    assert d.mean == pytest.approx(40.0) and d.low <= 40.0 <= d.high
    with pytest.raises(ValueError, match="equal-length"):
        psi_difference(a, b.iloc[:5])


def test_blank_control_feeds_one_mean_token_and_restores(case):
    from spatialkit.analysis.interventions import blank_visual_tokens

    _, vlm, batch = case
    original = vlm.visual_tokens(batch).tokens
    base = vlm.logits(batch)
    with blank_visual_tokens(vlm):
        received = hidden_states(vlm, batch)[0][batch.image_mask]
    assert torch.allclose(received, original.mean(0, keepdim=True).expand_as(received).to(received.dtype), atol=1e-6)
    assert _visual_hooks_idle(vlm) and torch.equal(vlm.logits(batch), base)


def test_permutation_test_blind_column():
    from spatialkit.analysis.interventions.shuffle import permutation_test, psi_summary
    from spatialkit.models.organism import wherebench

    vlm = _organism()
    df = permutation_test(vlm, wherebench(vlm.config), fractions=[1.0], seeds=[0], limit=12, blind=True)
    assert "correct_blind" in df and df["correct_blind"].isin([0.0, 1.0]).all()
    s = psi_summary(df, by="family", n_boot=100)
    assert {"acc_blind", "image_gain_low"} <= set(s.columns)


def test_content_and_position_moves_add_up_to_the_full_shuffle(case):
    """move='content' keeps each slot's position code, move='position' moves only the codes; together they
    are the full shuffle: content + position − original = all."""
    from spatialkit.analysis.interventions import slot_position_code

    _, vlm, batch = case
    vt = vlm.visual_tokens(batch)
    code = slot_position_code(vt)
    got = {}
    for move in ("all", "content", "position"):
        kwargs = {} if move == "all" else {"position_code": code}
        with shuffle_visual_tokens(vlm, 1.0, seed=2, move=move, **kwargs):
            got[move] = hidden_states(vlm, batch)[0][batch.image_mask]
    index = batch_index(vt.grids, 1.0, 2)
    full_code = code.repeat(len(vt.grids), 1).to(got["all"].dtype)
    assert torch.allclose(got["content"], vt.tokens[index] - full_code[index] + full_code, atol=1e-5)
    assert torch.allclose(got["content"] + got["position"] - vt.tokens, got["all"], atol=1e-5)
    assert _visual_hooks_idle(vlm)


def test_move_arguments_are_checked():
    with pytest.raises(ValueError, match="move must be one of"):
        with shuffle_visual_tokens(None, 1.0, 0, move="rows"):
            pass
    with pytest.raises(ValueError, match="position_code"):
        with shuffle_visual_tokens(None, 1.0, 0, move="all", position_code=torch.zeros(4, 2)):
            pass
    with pytest.raises(TypeError, match="VLM"):
        with shuffle_visual_tokens(None, 1.0, 0, move="content"):
            pass


def test_permutation_runs_share_one_encoding_per_batch_unless_the_shuffle_is_in_the_tower(monkeypatch):
    """The runs of a permutation test score the same images: the organism's encoder runs once per batch and its
    output is reused (the same frame as encoding every run anew); a shuffle inside the tower encodes every run."""
    import contextlib

    import pandas as pd

    from spatialkit.analysis.interventions import shuffle
    from spatialkit.models.organism import wherebench
    from spatialkit.models.organism.answer_row import reuse_encoder_outputs

    vlm = _organism()
    bench = wherebench(vlm.config)
    calls = []
    handle = vlm.model.vision.register_forward_hook(lambda *args: calls.append(1))
    kwargs = dict(fractions=[0.5, 1.0], seeds=[0, 1], limit=20, batch_size=8, blind=True)
    try:
        frames, counts = {}, {}
        for way in ("reused", "encoded every run"):
            if way != "reused":
                monkeypatch.setattr(shuffle, "reuse_encoder_outputs", lambda vlm: contextlib.nullcontext())
            frames[way] = shuffle.permutation_test(vlm, bench, **kwargs)
            counts[way], calls[:] = len(calls), []
        monkeypatch.undo()
        shuffle.permutation_test(vlm, bench, move="content", **kwargs)  # in the tower: no reuse
        counts["in the tower"] = len(calls)
        with pytest.raises(RuntimeError, match="inside"), reuse_encoder_outputs(vlm):
            raise RuntimeError("inside")
    finally:
        handle.remove()
    pd.testing.assert_frame_equal(frames["reused"], frames["encoded every run"])
    # 6 evaluations (plain, 2 fractions x 2 seeds, blind) of the same batches
    assert counts["reused"] >= 1 and counts["encoded every run"] == 6 * counts["reused"] == counts["in the tower"]
    assert "encode_image" not in vars(vlm.model)  # the method is the model's own again
