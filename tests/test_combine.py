"""Notebook 07's grid (spatialkit.analysis.combine): cell names, the catalog's plain-data declaration agreeing
with the package's configs, answer-row scoring = score_options, AdaptVis tuning and arm choice on val, the figures."""

import numpy as np
import pandas as pd
import pytest
import torch

from spatialkit.analysis import combine
from spatialkit.analysis.interventions.adaptvis import scaling_vis
from spatialkit.models.organism import preset, train
from spatialkit.models.organism.adapter import OrganismVLM
from spatialkit.models.vlm import TokenKind
from spatialkit.suite import catalog


def test_cells_parse_in_canonical_order_and_reject_what_does_not_apply():
    assert combine.parse_cell("loud+2d+norm") == ("loud", ("norm", "2d"))
    assert combine.cell_name("prior", ["2d", "local"]) == "prior+local+2d"
    for bad in ("healthy+2d", "loud+local", "llava+2d+2d", "llava+2d+pin", "llava+foo", "loud+cloc",
                "prior+cloc+local"):
        with pytest.raises(ValueError):
            combine.parse_cell(bad)
    assert combine.cell_overrides("loud+norm+2d", "rope2d") == (
        "loud", {"visual_norm": "rmsclip", "visual_norm_scale": 1.0, "lm_posenc": "rope2d"})
    # LLaVA's recipe with a localized stage 1 is healthy's recipe at the failing organisms' budget (healthy, the
    # ceiling, trains until it has learned where, its early stop reading a larger val split); loud with
    # +Normalize is loud_norm
    local, healthy = combine.cell_config("llava+local"), preset("healthy")
    assert local.optim.steps == preset("llava").optim.steps < healthy.optim.steps
    assert local.data.n_val < healthy.data.n_val
    assert local.replace(steps=healthy.optim.steps, n_val=healthy.data.n_val).to_dict() == healthy.to_dict()
    # on the WhatsUp-B mirror the LLaVA recipe with a localized stage 1 is the zoo's whatsup_b (one checkpoint)
    assert combine.cell_config("llava_b+local").to_dict() == preset("whatsup_b").to_dict()
    assert combine.cell_config("loud+norm").to_dict() == preset("loud_norm").to_dict()
    assert combine.cell_config("loud+norm", zoo="smoke").to_dict() == preset("smoke_loud_norm").to_dict()
    # +Normalize at the text norm on loud is notebook 02's loud_norm_text (the same checkpoint); it never goes
    # with the scale-1 +Normalize
    assert combine.cell_config("loud+normtext").to_dict() == preset("loud_norm_text").to_dict()
    with pytest.raises(ValueError, match="visual norm"):
        combine.parse_cell("loud+norm+normtext")
    assert combine.fix_label(("norm", "2d"), adaptvis=True) == "+Normalize + 2D position code + AdaptVis"
    # PIN's insert goes on the frozen plain organism, alone: the cell has no config of its own to train
    assert combine.parse_cell("llava+pin") == ("llava", ("pin",)) and combine.is_insert_cell("llava+pin")
    assert not combine.is_insert_cell("llava+2d") and not combine.is_tower_cell("llava+pin")
    with pytest.raises(ValueError, match="pin_store.load_insert"):
        combine.cell_config("llava+pin")
    with pytest.raises(ValueError, match="no training-time fix"):
        combine.parse_cell("loud+norm+pin")


@pytest.mark.parametrize("zoo", ["zoo", "smoke"])
def test_catalog_declares_exactly_the_organisms_the_notebook_loads(zoo):
    assert catalog.preset_steps("llava") == preset("llava").optim.steps
    assert catalog.GRID_ORGANISMS == combine.FAILING
    assert catalog.preset_pretrain_world("llava_a") == preset("llava_a").optim.vision_pretrain_world
    assert catalog.preset_pretrain_world("llava") is None
    for organism in (*combine.FAILING, combine.HEALTHY):  # the catalog's plain-data copy of the preset names
        assert catalog.zoo_preset(organism, zoo) == combine.preset_name(organism, zoo)
    with pytest.raises(ValueError, match="unknown organism preset"):
        catalog.preset_steps("no_such_organism")
    assert set(catalog.GRID_CELLS) == {c for c in catalog.GRID_CELLS if combine.parse_cell(c)}
    params = catalog.get("07_putting_it_together").validate({"zoo": zoo, "cells": list(catalog.GRID_CELLS),
                                                             "posenc_2d": "rope2d"})
    declared = {str(preset(spec["preset"], **spec["overrides"]).to_dict())
                for kind, spec in catalog.checkpoints("07_putting_it_together", params) if kind == "organism"}
    ceilings = [combine.ceiling_config(o, 0, zoo) for o in combine.FAILING]
    loaded = {str(c.to_dict()) for c in [combine.healthy_config(0, zoo), combine.never_config(0, zoo), *ceilings]
              + [combine.cell_config(c, "rope2d", 0, zoo) for c in catalog.GRID_CELLS
                 if not (combine.is_tower_cell(c) or combine.is_insert_cell(c))]}
    # the tower ("cloc") cells: tests/test_tower_store.py; the insert ("pin") cells: tests/test_pin_store.py; each
    # organism a pin cell freezes is declared (as a plain cell, and by its pin task)
    assert declared == loaded
    assert {c for c in catalog.GRID_CELLS if combine.is_insert_cell(c)} == {f"{o}+pin" for o in combine.FAILING}
    # a grid without the mirror organisms declares none of their ceilings (nothing trains for them)
    small = catalog.get("07_putting_it_together").validate({"zoo": zoo, "cells": ["llava", "llava+2d"]})
    worlds = {preset(spec["preset"], **spec["overrides"]).data.scene_preset
              for kind, spec in catalog.checkpoints("07_putting_it_together", small) if kind == "organism"}
    assert worlds == {combine.healthy_config(0, zoo).data.scene_preset}


@pytest.mark.parametrize("zoo", ["zoo", "smoke"])
def test_the_ceiling_is_healthys_recipe_on_the_organisms_own_world(zoo):
    healthy = combine.healthy_config(0, zoo)
    for organism in combine.FAILING:
        world = preset(combine.preset_name(organism, zoo)).data.scene_preset
        ceiling = combine.ceiling_config(organism, 0, zoo)
        assert ceiling.data.scene_preset == world
        # only the world differs from healthy: the same recipe and schedule; no early stop where the prior
        # answers the val items
        stop = None if combine.prior_answers_val(world) else healthy.optim.target
        assert ceiling.optim.target == stop
        # its stage 1 trains where the organism's does (llava_a's on the B mirror)
        own_stage1 = preset(combine.preset_name(organism, zoo)).optim.vision_pretrain_world
        assert ceiling.optim.vision_pretrain_world == (None if own_stage1 == world else own_stage1)
        back = ceiling.replace(scene_preset=healthy.data.scene_preset, target=healthy.optim.target,
                               vision_pretrain_world=None)
        assert back.to_dict() == healthy.to_dict()
        same_world = world == healthy.data.scene_preset
        assert combine.ceiling_cell(organism, zoo) == (combine.HEALTHY if same_world else f"healthy_{organism}")
        assert combine.ceiling_cell(organism, zoo) in combine.CONTROLS
    assert combine.ceiling_cell("prior", zoo) == "healthy_prior"  # prior's world is its own
    if zoo == "zoo":  # on the WhatsUp-A mirror the ceiling is the zoo's whatsup_a (one checkpoint)
        assert combine.ceiling_config("llava_a").to_dict() == preset("whatsup_a").to_dict()
    from spatialkit import world as scenes

    assert set(catalog.PRIOR_WORLDS) == {w for w in scenes.PRESETS if combine.prior_answers_val(w)}
    from spatialkit.models.organism.config import DataConfig

    assert catalog.DEFAULT_WORLD == DataConfig().scene_preset
    assert combine.prior_answers_val(combine.world_of("prior", zoo))
    assert not combine.prior_answers_val(combine.world_of("llava", zoo))
    # a fix cell on the prior world trains its whole schedule; the plain cell keeps its preset's early stop
    assert combine.cell_config("prior+local", zoo=zoo).optim.target is None
    assert combine.cell_config("prior", zoo=zoo).to_dict() == preset(combine.preset_name("prior", zoo)).to_dict()
    assert combine.cell_config("llava+local", zoo=zoo).optim.target == preset(combine.preset_name("llava", zoo)).optim.target
    with pytest.raises(ValueError, match="organism must be one of"):
        combine.ceiling_cell("healthy")


@pytest.mark.parametrize("zoo", ["zoo", "smoke"])
def test_same_recipe_tells_the_ceilings_own_recipe_from_a_fix_of_another_kind(zoo):
    """07's gap claim is not testable when the best single fix is the ceiling's recipe on a shorter schedule."""
    for organism in combine.FAILING:
        ceiling = combine.ceiling_config(organism, 0, zoo)
        local = combine.cell_config(f"{organism}+local", zoo=zoo) if organism != "loud" else None
        if local is not None:  # the localized stage 1 differs from its ceiling in the schedule alone
            assert combine.same_recipe(local, ceiling)
            assert set(combine.recipe_differences(local, ceiling)) <= set(combine.SCHEDULE_FIELDS)
        for cell in (organism, f"{organism}+2d"):
            other = combine.cell_config(cell, zoo=zoo)
            assert not combine.same_recipe(other, ceiling)
            assert set(combine.recipe_differences(other, ceiling)) - set(combine.SCHEDULE_FIELDS)
    healthy = combine.healthy_config(0, zoo)
    assert combine.recipe_differences(healthy, healthy) == {}
    # the schedule's fields only: another length or early stop is the same recipe, another seed is not
    assert combine.same_recipe(healthy.replace(steps=123, target=None, n_val=50), healthy)
    assert combine.recipe_differences(healthy.replace(steps=123), healthy) == {
        "optim.steps": (123, healthy.optim.steps)}
    assert not combine.same_recipe(healthy.replace(seed=1), healthy)
    assert not combine.same_recipe(combine.never_config(0, zoo), healthy)  # never asked where
    # the arms 07 leaves out of "a fix of another kind": llava+local only (not the plain cell, its 2D fix, or
    # another organism's cells); the controls in the configs are skipped, not parsed
    configs = {c: combine.cell_config(c, zoo=zoo) for c in ("llava", "llava+local", "llava+2d", "prior+local")}
    configs[combine.HEALTHY], configs[combine.NEVER] = healthy, combine.never_config(0, zoo)
    assert combine.ceiling_recipe_arms(configs, "llava", zoo) == {("llava+local", "plain")}
    del configs["llava+local"]
    assert combine.ceiling_recipe_arms(configs, "llava", zoo) == set()


@pytest.fixture(scope="module")
def smoke_vlm():
    cfg = preset("smoke", steps=3, eval_every=3, vision_pretrain_steps=2, scene_preset="organism_easy")
    model, vocab, _ = train(cfg, progress=False)
    return OrganismVLM(model.eval(), vocab, cfg)


def test_answer_row_scores_are_score_options_and_alpha_moves_them(smoke_vlm):
    sets = combine.item_sets(smoke_vlm.config, n_items=24, n_tune=12)
    items, images = sets.items["test"]["where_two"], sets.images["test"]["where_two"]
    plain, conf = combine.answer_row_scores(smoke_vlm, images, items, 1.0)
    ref = smoke_vlm.score_options(images, [it.question.text for it in items],
                                  [list(it.question.options) for it in items]).numpy()
    assert np.allclose(plain, ref, atol=1e-5)
    assert ((0 <= conf) & (conf <= 1)).all() and np.allclose(conf, np.round(conf, 2))
    scaled, _ = combine.answer_row_scores(smoke_vlm, images, items, 3.0)
    assert not np.allclose(scaled, plain)
    # one plain prefill, the answer row rerun per α: the numbers of the whole scaled forward (vlm.logits); bit for
    # bit when the prompts have one length (where_two), up to the order of float sums when padding differs (what)
    for metric, exact in (("where_two", True), ("what", False)):
        its, ims = sets.items["test"][metric], sets.images["test"][metric]
        batch = smoke_vlm.prepare(ims, [it.question.text for it in its])
        assert exact or len(set((batch.token_kind != TokenKind.PAD).sum(1).tolist())) > 1
        with scaling_vis(smoke_vlm, 3.0), torch.no_grad():
            whole = smoke_vlm.logits(batch)[torch.arange(len(its)), batch.last_index()].log_softmax(-1)
        option_ids, _ = combine.option_ids(smoke_vlm, its)
        whole = whole.gather(1, option_ids.clamp(min=0)).numpy()
        mine = combine.answer_row_scores(smoke_vlm, ims, its, 3.0)[0]
        mine[option_ids.numpy() < 0] = whole[option_ids.numpy() < 0]  # -inf pads of ragged option lists
        assert np.array_equal(mine, whole) if exact else np.allclose(mine, whole, atol=1e-5)
        assert exact or np.array_equal(mine.argmax(1), whole.argmax(1))
    # every α from one plain forward per batch: exactly the one-α-at-a-time numbers (small batches: 3 of them)
    many, conf_many = combine.answer_row_scores_per_alpha(smoke_vlm, images, items, (1.0, 3.0, 0.5), batch_size=5)
    one_by_one = {a: combine.answer_row_scores(smoke_vlm, images, items, a, batch_size=5)[0] for a in (1.0, 3.0, 0.5)}
    assert all(np.array_equal(many[a], one_by_one[a]) for a in one_by_one) and np.array_equal(many[3.0], scaled)
    assert np.array_equal(conf_many, conf)
    for bad_images, bad_items, alphas in ((images[:-1], items, (1.0,)), (images[:0], items[:0], (1.0,)),
                                          (images, items, ())):
        with pytest.raises(ValueError, match="one image per item"):
            combine.answer_row_scores_per_alpha(smoke_vlm, bad_images, bad_items, alphas)
    run = combine.score_cell(smoke_vlm, sets, alphas=(0.5, 2.0))
    assert run.alphas == (0.5, 1.0, 2.0) and set(sets.count("test")) <= {m for _, m in run.gold}
    df = combine.cell_results(run, "llava", combine.tune_adaptvis(run, [0.5], [2.0], [0.5]))
    assert set(df.method) == {"plain", "adaptvis"} and set(df.split) == {"val", "test"}


def _run(val_correct: dict, test_correct: dict, conf_val, conf_test) -> combine.CellRun:
    """A CellRun whose α's answers are right exactly where ``*_correct[α]`` is 1 (gold 0, 2 options)."""
    scores, gold, chance, confidence = {}, {}, {}, {}
    for split, table, c in (("val", val_correct, conf_val), ("test", test_correct, conf_test)):
        n = len(c)
        gold[(split, "where_two")] = np.zeros(n, int)
        chance[(split, "where_two")] = np.full(n, 0.5)
        confidence[(split, "where_two")] = np.asarray(c, float)
        for a, right in table.items():
            right = np.asarray(right)
            scores[(split, "where_two", a)] = np.stack([right * 1.0, 1.0 - right], axis=1)
    return combine.CellRun(gold, chance, scores, confidence, tuple(sorted(val_correct)))


def test_adaptvis_gate_and_tuning_choose_on_val():
    # unsure items (conf < 0.5) are right at α 0.5, sure ones at α 2; plain gets half of each
    val = {0.5: [1, 1, 0, 0], 1.0: [1, 0, 1, 0], 2.0: [0, 0, 1, 1]}
    run = _run(val, val, [0.1, 0.2, 0.9, 0.8], [0.1, 0.2, 0.9, 0.8])
    assert run.adaptvis_correct("val", "where_two", 0.5, 2.0, 0.5).tolist() == [1, 1, 1, 1]
    best = combine.tune_adaptvis(run, [0.5], [2.0], [0.5, 0.95], metrics=("where_two",))
    assert (best["alpha1"], best["alpha2"], best["beta"], best["val_accuracy"]) == (0.5, 2.0, 0.5, 1.0)
    # nothing beats plain on val: plain (α1 = α2 = 1) is kept
    flat = {a: [1, 0, 1, 0] for a in (0.5, 1.0, 2.0)}
    keep = combine.tune_adaptvis(_run(flat, flat, [0.1] * 4, [0.1] * 4), [0.5], [2.0], [0.5], metrics=("where_two",))
    assert (keep["alpha1"], keep["alpha2"]) == (1.0, 1.0)
    assert combine.adaptvis_is_plain(keep) and not combine.adaptvis_is_plain(best)
    assert not combine.adaptvis_is_plain({"alpha1": 1.0, "alpha2": 2.0, "beta": 0.5})  # fires on sure items


def test_best_arm_is_chosen_on_val_and_gains_are_paired():
    rows = []
    for cell, val_acc, test_acc in (("llava", 0.2, 0.2), ("llava+2d", 0.6, 0.3), ("llava+local", 0.4, 0.9),
                                    ("llava+local+2d", 0.7, 0.5)):
        organism, fixes = combine.parse_cell(cell)
        for split, acc in (("val", val_acc), ("test", test_acc)):
            correct = (np.arange(10) < round(10 * acc)).astype(float)
            rows.append(pd.DataFrame({"cell": cell, "organism": organism, "fixes": "+".join(fixes),
                                      "n_fixes": len(fixes), "method": "plain", "split": split, "metric": "where_two",
                                      "item": np.arange(10), "correct": correct, "chance": 0.25}))
    results = pd.concat(rows, ignore_index=True)
    assert combine.best_arm(results, "llava", "where_two", [1]) == ("llava+2d", "plain")  # by val, not test
    assert combine.best_arm(results, "llava", "where_two", [2, 3]) == ("llava+local+2d", "plain")
    assert combine.best_arm(results, "llava", "where_two", [5]) is None
    # an arm left out (an AdaptVis arm tuned to plain attention is its cell unchanged) is never chosen
    assert combine.best_arm(results, "llava", "where_two", [2, 3], exclude=[("llava+local+2d", "plain")]) is None
    assert combine.best_arm(results, "llava", "where_two", [1], exclude=[("llava+2d", "plain")]) == (
        "llava+local", "plain")
    g = combine.gains(results, seed=0, n_boot=200).set_index("cell")
    assert g.loc["llava+local", "gain"] == pytest.approx(0.7) and g.loc["llava+local", "low"] > 0
    s = combine.summarize(results, seed=0, n_boot=200)
    assert set(s.arm) == {"none", "2D position code", "localized stage 1", "localized stage 1 + 2D position code"}


def test_single_fix_changes_pair_each_fix_with_its_plain_cell():
    def frame(cell, method, acc, metric="what", n=20):
        organism, fixes = combine.parse_cell(cell)
        correct = (np.arange(n) < round(n * acc)).astype(float)
        return pd.DataFrame({"cell": cell, "organism": organism, "fixes": "+".join(fixes),
                             "n_fixes": len(fixes) + (method == "adaptvis"), "method": method, "split": "test",
                             "metric": metric, "item": np.arange(n), "correct": correct, "chance": 0.25})

    results = pd.concat([frame("llava", "plain", 0.9), frame("llava", "adaptvis", 0.8),
                         frame("llava+2d", "plain", 0.5), frame("llava+2d", "adaptvis", 0.4),
                         frame("llava+local", "plain", 0.95), frame("loud", "plain", 0.6),
                         frame("loud+norm", "plain", 0.6), frame("loud", "adaptvis", 0.6),
                         frame("llava+2d", "plain", 0.1, metric="where_two")], ignore_index=True)
    changes = combine.single_fix_changes(results, ["llava", "loud"], seed=0, n_boot=200)
    # FIX_ORDER's labels first, AdaptVis last; combinations (2D + AdaptVis) and other metrics never enter
    assert list(changes) == ["localized stage 1", "+Normalize", "2D position code", "AdaptVis"]
    arm, e = changes["2D position code"]["llava"]
    assert arm == ("llava+2d", "plain") and e.mean == pytest.approx(-0.4) and e.high < 0
    assert changes["localized stage 1"]["llava"][1].mean == pytest.approx(0.05)
    assert list(changes["AdaptVis"]) == ["llava", "loud"] and changes["+Normalize"]["loud"][1].mean == 0
    # an AdaptVis arm tuned to plain attention is no fix: left out
    kept = combine.single_fix_changes(results, ["llava", "loud"], seed=0, n_boot=200, exclude=[("loud", "adaptvis")])
    assert list(kept["AdaptVis"]) == ["llava"]
    assert combine.single_fix_changes(results, ["prior"], seed=0, n_boot=200) == {}


def test_plane_and_heatmap_draw():
    import matplotlib

    matplotlib.use("Agg")
    from spatialkit.common.stats import Estimate
    from spatialkit.present.plots import plot_gain_heatmap, plot_tradeoff_plane

    pts = pd.DataFrame([{"organism": o, "arm": a, "where": w, "where_low": w - 0.05, "where_high": w + 0.05,
                         "what": 0.9, "what_low": 0.85, "what_high": 0.95}
                        for o in ("llava", "loud") for a, w in (("none", 0.4), ("2D position code", 0.6))])
    axes = plot_tradeoff_plane(pts, ceiling={"where": Estimate(0.9, 0.85, 0.95, 10), "what": Estimate(0.9, 0.8, 1, 10)},
                               chance={"x": 0.25})
    assert len(axes) == 2 and len(axes[0].texts) == 1  # one arrow per non-base arm
    # panels wrap into rows of ncols; a chance level per panel (two options on one, four on the other)
    wide = pd.concat([pts[pts.organism == "llava"].assign(organism="a 0"), pts], ignore_index=True)
    axes = plot_tradeoff_plane(wide, chance={"x": {"llava": 0.25, "loud": 0.5}, "y": 0.3}, ncols=2)
    panels = [ax.get_title() for ax in axes]
    assert panels == ["a 0", "llava", "loud"] and len(axes[0].figure.axes) == 4  # 2 x 2
    spare = axes[0].figure.axes[3]  # the grid cell without a panel holds the legend, no axis
    assert not spare.axison and spare.get_legend() is not None and axes[-1].get_legend() is None
    dotted = {ax.get_title(): [(tuple(ln.get_xdata()), tuple(ln.get_ydata())) for ln in ax.lines
                               if ln.get_linestyle() == ":"] for ax in axes}
    assert ((0.25, 0.25), (0, 1)) in dotted["llava"] and ((0.5, 0.5), (0, 1)) in dotted["loud"]
    assert dotted["a 0"] == [((0, 1), (0.3, 0.3))]  # no x level for that panel, the y level everywhere
    # more arms than tab10 has colours: every arm keeps a colour of its own in the legend
    many = pd.concat([pts.assign(arm="none" if k == 0 else f"arm {k}") for k in range(13)], ignore_index=True)
    legend = plot_tradeoff_plane(many)[-1].get_legend()
    colours = {tuple(np.round(np.asarray(h.get_color()).reshape(-1, 4)[0], 6)) for h in legend.legend_handles}
    assert len(legend.legend_handles) == 13 and len(colours) == 13
    # every arm also has a marker, neighbours differ; the star's label can differ per panel
    handles, names = plot_tradeoff_plane(many)[0].get_legend_handles_labels()  # errorbar containers
    marks = list({n: h.lines[0].get_marker() for h, n in zip(handles, names)}.values())
    assert len(marks) == 13
    assert all(marks[i] != marks[i + 1] for i in range(len(marks) - 1))
    axes = plot_tradeoff_plane(pts, ceiling={"where": Estimate(0.9, 0.85, 0.95, 10), "what": Estimate(0.9, 0.8, 1, 10)},
                               ceiling_label={"loud": "healthy, other world"})
    names = axes[-1].get_legend().get_texts()
    assert {"healthy (ceiling)", "healthy, other world"} <= {t.get_text() for t in names}
    # a ceiling per panel: each panel's star sits at its own ceiling, a panel without one has no star
    own = {"llava": {"where": Estimate(0.7, 0.65, 0.75, 10), "what": Estimate(0.8, 0.75, 0.85, 10)}}
    axes = plot_tradeoff_plane(pts, ceiling=own)
    stars = [[ln for ln in ax.get_lines() if ln.get_marker() == "*"] for ax in axes]
    assert [len(s) for s in stars] == [1, 0]
    assert tuple(stars[0][0].get_data()[0]) == (0.7,) and tuple(stars[0][0].get_data()[1]) == (0.8,)
    ax = plot_gain_heatmap(pd.DataFrame({"llava · where_two": [0.2, -0.1]}, index=["2D", "AdaptVis"]))
    assert ax.get_title() == ""
    matplotlib.pyplot.close("all")


def test_training_noise_measures_the_spread_between_seeds_of_one_recipe():
    items = np.arange(100)
    # recipe A: seeds right on the first 40 / 60 / 50 items; recipe B: three identical runs
    correct = {("A", s): {"where_two": (items < n).astype(float), "what": np.ones(100)}
               for s, n in ((0, 40), (1, 60), (2, 50))}
    correct |= {("B", s): {"where_two": (items % 2).astype(float), "what": (items < 90).astype(float)}
                for s in (3, 4, 5)}
    t = combine.training_noise(correct, ("where_two", "what"), seed=0, n_boot=500).set_index(["recipe", "metric"])
    a, b = t.loc[("A", "where_two")], t.loc[("B", "where_two")]
    assert a.per_seed == [0.4, 0.6, 0.5] and a["range"] == pytest.approx(0.2) and a.seeds == 3
    assert a.first_mean == pytest.approx(0.4) and a.all_mean == pytest.approx(0.5) and a.n_items == 100
    # the seeds disagree, so the CI over seeds and items is wider than one run's item-only CI
    assert a.width_ratio > 1.2 and a.all_low < 0.45 and a.all_high > 0.55
    # identical runs: no spread, and resampling seeds adds nothing to the item CI's width
    assert b["range"] == 0.0 and b.first_mean == b.all_mean == pytest.approx(0.5)
    assert b.width_ratio == pytest.approx(1.0, abs=0.25)
    # every run right on every item: no width to compare
    assert t.loc[("A", "what"), "range"] == 0.0 and np.isnan(t.loc[("A", "what"), "width_ratio"])
    with pytest.raises(ValueError, match="at least 2"):
        combine.training_noise({("C", 0): {"what": np.ones(5)}}, ("what",), seed=0, n_boot=50)


@pytest.mark.parametrize("zoo", ["zoo", "smoke"])
def test_each_organism_is_judged_on_its_worlds_relation_and_bad_grids_are_refused(zoo):
    judged = {o: combine.judged_metric(o, zoo) for o in combine.FAILING}
    assert judged == {"llava": "where_two", "loud": "where_two", "prior": "counter", "llava_a": "on_under",
                      "llava_b": "depth"}
    assert set(combine.METRIC_WORDS) <= set(combine.METRICS)
    assert combine.where_metrics("organism_whatsup_b") == ("where_one", "where_two", "depth")
    assert combine.check_grid(["llava_b", "llava_b+2d", "llava", "llava+local"]) == ["llava", "llava_b"]
    with pytest.raises(ValueError, match="plain cell of every failing organism.*'llava_a'"):
        combine.check_grid(["llava", "llava+2d", "llava_a+2d"])
    with pytest.raises(ValueError, match="at least one fix cell.*'prior'"):
        combine.check_grid(["llava", "llava+2d", "prior"])
    with pytest.raises(ValueError, match="organism must be one of"):
        combine.check_grid(["whatsup_b", "whatsup_b+2d"])


def test_plane_refuses_a_bad_ncols():
    from spatialkit.present.plots import plot_tradeoff_plane

    pts = pd.DataFrame([{"organism": "llava", "arm": "none", "where": 0.4, "where_low": 0.3, "where_high": 0.5,
                         "what": 0.9, "what_low": 0.85, "what_high": 0.95}])
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="ncols must be a positive int"):
            plot_tradeoff_plane(pts, ncols=bad)


@pytest.mark.parametrize("cells", [["llava", "llava+2d"], ["loud+pin"], ["llava", "llava+2d", "prior"],
                                   ["llava_a", "llava_a+local", "llava+2d"], ["llava", "llava+pin", "loud", "loud+norm"]])
def test_the_runner_checks_07s_grid_as_the_notebook_does_before_any_training(cells):
    from spatialkit.common.params import ParameterError
    from spatialkit.suite import runner

    try:
        combine.check_grid(cells)
        notebook_error = None
    except ValueError as err:
        notebook_error = str(err)
    if notebook_error is None:
        catalog.check_grid_cells(cells)
        return
    with pytest.raises(ParameterError) as caught:
        catalog.check_grid_cells(cells)
    assert str(caught.value) == notebook_error  # the same one line, before the pool trains anything
    with pytest.raises(ParameterError, match="parameter 'cells'"):
        runner.plan("quick", ["07_putting_it_together"], {"cells": cells})
