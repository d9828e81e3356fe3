"""Answer-row scoring (spatialkit.models.organism.answer_row) gives score_options' scores from one LM row per item."""

import numpy as np
import pytest
import torch

from spatialkit.analysis.interventions.adaptvis import scaling_vis
from spatialkit.analysis.interventions.shuffle import blank_visual_tokens, shuffle_visual_tokens
from spatialkit.common.fingerprint import closure
from spatialkit.models.organism import answer_row
from spatialkit.models import evaluate as plain
from spatialkit.models.organism import preset, wherebench
from spatialkit.models.organism.adapter import OrganismVLM
from spatialkit.models.organism.data import build_vocab
from spatialkit.models.organism.model import SYSTEM_PROMPT, TinyVLM


def random_organism(world: str = "organism_whatsup_b", **model):
    """An untrained organism (random weights, seeded): scores are scores, trained or not."""
    cfg = preset("smoke", scene_preset=world, n_test=60, **model)
    vocab = build_vocab(cfg)
    torch.manual_seed(0)
    return OrganismVLM(TinyVLM(cfg.model_config(len(vocab))).eval(), vocab, cfg)


def batch_of(vlm, n: int = 40):
    bench = wherebench(vlm.config)
    items = bench.splits["test"][:n]
    images = np.stack([plain._render(it.scene_seed, bench.config).image for it in items])
    return bench, images, [it.question.text for it in items], [list(it.question.options) for it in items]


LAYOUTS = [dict(), dict(lm_posenc="learned"), dict(lm_posenc="rope2d"), dict(lm_posenc="mrope"),
           dict(lm_attention="prefix", packed=False), dict(visual_norm="rmsclip")]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "default")
def test_scores_equal_score_options_on_every_layout_with_longer_options(layout):
    vlm = random_organism(**layout)
    _, images, prompts, options = batch_of(vlm)
    # the B mirror asks front/behind: "in front" is two words, so both row kinds are read in one batch
    assert any(len(vlm.vocab.encode(o)) > 1 for opts in options for o in opts)
    assert any(all(len(vlm.vocab.encode(o)) == 1 for o in opts) for opts in options)
    ref = vlm.score_options(images, prompts, options)
    got = answer_row.score_options(vlm, images, prompts, options)
    assert got.shape == ref.shape
    assert torch.equal(torch.isinf(got), torch.isinf(ref))  # ragged lists padded alike (2 and 4 options)
    finite = torch.isfinite(ref)
    assert torch.allclose(got[finite], ref[finite], atol=1e-5)
    ref_sys = vlm.score_options(images, prompts, options, system_prompt=SYSTEM_PROMPT)
    got_sys = answer_row.score_options(vlm, images, prompts, options, system_prompt=SYSTEM_PROMPT)
    assert torch.allclose(got_sys[finite], ref_sys[finite], atol=1e-5)
    assert not torch.allclose(got_sys[finite], got[finite])  # the system prompt is really in the rows


def test_visual_hooks_see_the_whole_batch_and_evaluate_matches():
    vlm = random_organism()
    bench, images, prompts, options = batch_of(vlm)
    for hook in (lambda: blank_visual_tokens(vlm), lambda: shuffle_visual_tokens(vlm, 1.0, seed=3)):
        with hook():
            ref = vlm.score_options(images, prompts, options)
            got = answer_row.score_options(vlm, images, prompts, options)
        finite = torch.isfinite(ref)
        assert torch.allclose(got[finite], ref[finite], atol=1e-5)
    old = plain.evaluate(vlm, bench, "test", batch_size=16)
    new = answer_row.evaluate(vlm, bench, "test", batch_size=16)
    assert new.drop(columns=["predicted", "correct"]).equals(old.drop(columns=["predicted", "correct"]))
    assert (new.predicted == old.predicted).mean() >= 0.95  # random weights: near-ties can round either way


def test_attention_hooks_and_other_models_fall_back_to_score_options():
    vlm = random_organism(world="organism_easy")
    _, images, prompts, options = batch_of(vlm, 12)
    assert answer_row.applies(vlm)
    with scaling_vis(vlm, 3.0):
        assert not answer_row.applies(vlm)  # ScalingVis scales the last row: score_options' own rows
        assert torch.equal(answer_row.score_options(vlm, images, prompts, options),
                           vlm.score_options(images, prompts, options))
    assert answer_row.applies(vlm)

    class Other:
        def score_options(self, images, prompts, options):
            return torch.zeros(len(prompts), 2)

    assert not answer_row.applies(Other())
    assert torch.equal(answer_row.score_options(Other(), images, prompts, options), torch.zeros(12, 2))


def test_bad_input_is_refused_with_a_clear_error():
    vlm = random_organism(world="organism_easy")
    _, images, prompts, options = batch_of(vlm, 4)
    with pytest.raises(ValueError, match="4 images but 3 prompts"):
        answer_row.score_options(vlm, images, prompts[:3], options[:3])
    with pytest.raises(ValueError, match="one option list per prompt"):
        answer_row.score_options(vlm, images, prompts, options[:2])
    with pytest.raises(ValueError, match="vocabulary does not know"):
        answer_row.score_options(vlm, images, prompts, [["left", "chicken"]] * 4)


def test_the_trainer_does_not_import_it_so_no_checkpoint_key_depends_on_it():
    assert "spatialkit.models.organism.answer_row" not in closure("spatialkit.models.organism.store")
