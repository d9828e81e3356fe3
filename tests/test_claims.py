"""Claims as data: the one CI formatter, the one verdict function (reproduced / contradicted / inconclusive /
not testable: none can overstate), controls, and the per-model table."""

import math

import pytest

from spatialkit.common.stats import Estimate
from spatialkit.present.claims import (COLUMNS, HOLDS, Claim, Control, Every, Pairwise, Rule, Within, above_chance,
                                       claims_table, covers, enough, fires, format_estimate, headroom, verdict)

NAN = float("nan")
E = Estimate


def est(mean, low, high, n=10):
    return Estimate(mean, low, high, n)


# ------------------------------------------------------------------------------------------------ formatting

@pytest.mark.parametrize("value, kwargs, expected", [
    # what Estimate.as_percent() gave (notebooks 00, 03, 06)
    (est(0.5, 0.2, 0.8), dict(unit="%", at=None), "50.0 [20.0, 80.0]"),
    (est(0.5, 0.2, 0.8), dict(unit="%", at=None, n=True), "50.0 [20.0, 80.0] (n=10)"),
    # notebook 01's fmt: percent with the unit after the interval
    (est(0.273, 0.136, 0.394), dict(unit="%", at="end"), "27.3 [13.6, 39.4] %"),
    # the common form: percent glued to the mean
    (est(0.412, 0.35, 0.471), dict(unit="%"), "41.2% [35.0, 47.1]"),
    # a PSI already in percent (notebook 02)
    ((1.234, 0.5, 2.0), dict(unit="%", scale=1), "1.2% [0.5, 2.0]"),
    # differences of fractions in points, signed (02 "pts", 04/06 "pp")
    (est(0.0267, 0.004, 0.051), dict(unit="pts"), "+2.7 pts [+0.4, +5.1]"),
    (est(-0.01, -0.056, 0.101), dict(unit="pp"), "-1.0 pp [-5.6, +10.1]"),
    ((20.14, 3.0, 40.0), dict(unit="pts", scale=1), "+20.1 pts [+3.0, +40.0]"),
    # 03: points after the interval, signed (gap) or unsigned (as_percent + " pts")
    ((0.025, -0.137, 0.184), dict(unit="pts", at="end"), "+2.5 [-13.7, +18.4] pts"),
    (est(-0.003, -0.02, 0.01), dict(unit="pts", at="end", signed=False), "-0.3 [-2.0, 1.0] pts"),
    # 05: points without a unit; 04/05: plain signed with 3 digits
    (est(0.0, -0.069, 0.069), dict(unit="pts", at=None), "+0.0 [-6.9, +6.9]"),
    ((-0.128, -0.165, -0.09), dict(digits=3, signed=True), "-0.128 [-0.165, -0.090]"),
    # ratios and plain numbers
    (est(9.87, 8.0, 12.0), dict(unit="x"), "9.9× [8.0, 12.0]"),
    (0.5, dict(unit="%"), "50.0%"),
    (3, dict(), "3.0"),
    # missing and NaN: None is "n/a"; NaN prints as Python prints it (what the notebooks showed)
    (None, dict(unit="%"), "n/a"),
    ((NAN, NAN, NAN), dict(digits=3, signed=True), "+nan [+nan, +nan]"),
    (est(NAN, NAN, NAN), dict(unit="%", at=None), "nan [nan, nan]"),
])
def test_format_estimate(value, kwargs, expected):
    assert format_estimate(value, **kwargs) == expected


@pytest.mark.parametrize("kwargs", [dict(unit="furlongs"), dict(at="start")])
def test_format_estimate_rejects_unknown_options(kwargs):
    with pytest.raises(ValueError):
        format_estimate(est(0.5, 0.4, 0.6), **kwargs)


def test_format_estimate_rejects_non_estimates():
    with pytest.raises(TypeError):
        format_estimate(("a", "b", "c"))


# ------------------------------------------------------------------------------------------------------ rules

R, C, I = "reproduced", "contradicted", "inconclusive"


@pytest.mark.parametrize("rule, measured, expected", [
    # one-sided: the CI must clear the null (plus the stated minimal effect) in the claimed direction
    (Rule(">", 0.0), est(0.05, 0.01, 0.09), R),
    (Rule(">", 0.0), est(0.05, -0.01, 0.09), I),          # right side on the point estimate only: no "partly"
    (Rule(">", 0.0), est(-0.05, -0.09, -0.01), C),        # the data go the other way
    (Rule(">", 0.0, min_effect=0.4), est(0.30, 0.10, 0.50), I),   # clears 0 but not +0.4: inconclusive
    (Rule(">", 0.0, min_effect=0.4), est(0.48, 0.42, 0.55), R),
    (Rule("<", 0.5), est(0.3, 0.2, 0.45), R),
    (Rule("<", 0.5), est(0.6, 0.55, 0.7), C),
    (Rule(">", est(0.5, 0.4, 0.6)), est(0.65, 0.61, 0.7), R),     # vs another estimate: CIs separate
    (Rule(">", est(0.5, 0.4, 0.6)), est(0.65, 0.55, 0.7), I),
    (Rule(">", est(0.5, 0.4, 0.6)), est(0.3, 0.2, 0.39), C),
    # "the value lies in the band": inside reproduces, outside contradicts, straddling is inconclusive
    (Within(0.2, 0.3), est(0.25, 0.22, 0.28), R),
    (Within(0.2, 0.3), est(0.28, 0.22, 0.34), I),
    (Within(0.2, 0.3), est(0.9, 0.88, 0.95), C),
    (covers(0.25, 0.05), est(0.273, 0.197, 0.348), I),
    (Every(Rule(">", 0.0)), [est(0.1, 0.05, 0.2), est(0.1, 0.01, 0.2)], R),
    (Every(Rule(">", 0.0)), [est(0.1, 0.05, 0.2), est(0.1, -0.01, 0.2)], I),
    (Every(Rule(">", 0.0)), [est(-0.1, -0.2, -0.05), est(-0.1, -0.2, -0.01)], C),
    (Every(Rule(">", 0.0)), [], I),
    (Pairwise("<"), [(est(0.4, 0.3, 0.5), est(0.9, 0.85, 0.95)), (est(0.5, 0.4, 0.6), est(0.8, 0.7, 0.9))], R),
    (Pairwise("<"), [(est(0.4, 0.3, 0.5), est(0.9, 0.85, 0.95)), (est(0.84, 0.8, 0.88), est(0.9, 0.85, 0.95))], I),
    (Pairwise("<"), [(est(0.95, 0.93, 0.97), est(0.9, 0.85, 0.92))], C),
    (HOLDS, True, R),
    (HOLDS, False, C),
    # NaN never reproduces
    (Rule(">", 0.0), (NAN, NAN, NAN), I),
    (Rule(">", 0.0), (0.1, NAN, 0.2), I),
    (Within(0, 1), (NAN, NAN, NAN), I),
])
def test_rule_outcomes(rule, measured, expected):
    assert verdict(measured, rule) == expected


def test_edge_distance_is_how_far_the_ci_is_from_another_outcome():
    # ">" with a 3-point minimal effect: the low end against +0.03 (reproduced), the high end against 0 (contradicted)
    rule = Rule(">", 0.0, min_effect=0.03)
    assert rule.edge_distance(est(0.025, 0.0, 0.05)) == pytest.approx(0.03)
    assert rule.edge_distance(est(-0.033, -0.067, -0.002)) == pytest.approx(0.002)  # nearly not contradicted
    assert rule.edge_distance(est(0.06, 0.035, 0.09)) == pytest.approx(0.005)  # nearly not reproduced
    # "<" mirrors it: the high end against -0.03, the low end against 0
    below = Rule("<", 0.0, min_effect=0.03)
    assert below.edge_distance(est(0.017, 0.004, 0.031)) == pytest.approx(0.004)
    assert below.edge_distance(est(-0.05, -0.08, -0.028)) == pytest.approx(0.002)
    # moving an end by the distance (and a hair) changes the outcome; NaN has no distance
    e = est(0.017, 0.004, 0.031)
    assert below.outcome(e) == C and below.outcome(est(0.017, 0.004 - below.edge_distance(e) - 1e-9, 0.031)) == I
    assert math.isnan(rule.edge_distance(float("nan")))


# Each row a review found overstated, with the numbers it printed, judged by the one function.
OVERSTATED = [
    # 01: "a quiet position code is ignored" printed "partly reproduced" at 91.8 % vs 96.7 % (chance 25 %):
    # the claim is that accuracy falls to chance; it is far above chance, so the data contradict it
    ("01 quiet code ignored", est(0.918, 0.887, 0.946), covers(0.25, 0.05), [], C),
    # 01: "APE breaks at a new resolution" printed "partly" although the interpolated learned APE is the most
    # robust encoding there: its drop vs the other interpolated encodings is not below them
    ("01 APE breaks (like for like)", est(0.02, -0.01, 0.05), Rule(">", 0.0, min_effect=0.05), [], I),
    # 02: "a model never asked where ignores position" printed "reproduced" although the where-accuracy of that
    # model is at chance (0.273 [0.197, 0.348]): a PSI of a model that cannot answer is not a test
    ("02 never asked where", est(-0.028, -0.1, 0.05), covers(0.0, 0.05),
     [above_chance(est(0.273, 0.197, 0.348), 0.25, "where-accuracy")], "not testable"),
    # 03: "gaze predicts correctness" rested on 11 wrong answers
    ("03 gaze vs correctness", est(0.137, 0.051, 0.219), Rule(">", 0.0), [enough(11, 100, "wrong answers")],
     "not testable"),
    # 04: AdaptVis >= ScalingVis printed +0.0 [+0.0, +0.0] with a gate that sent 0 % of items to alpha1 and a
    # baseline of 0.90 (no headroom)
    ("04 AdaptVis gate", est(0.0, 0.0, 0.0), Rule(">", 0.0), [fires(0.0, "the AdaptVis gate")], "not testable"),
    ("04 AdaptVis headroom", est(0.0, 0.0, 0.0), Rule(">", 0.0), [headroom(est(0.90, 0.87, 0.93), 0.4, 0.75)],
     "not testable"),
    # 06: PIN printed "partly" while PIN minus a constant prior box is +0.7 [-1.7, +3.0] pp mIoU
    ("06 PIN vs prior box", est(0.007, -0.017, 0.030), Rule(">", 0.0), [], I),
]


@pytest.mark.parametrize("name, measured, rule, controls, expected", OVERSTATED, ids=[o[0] for o in OVERSTATED])
def test_overstated_rows_get_honest_verdicts(name, measured, rule, controls, expected):
    got = verdict(measured, rule, controls)
    assert got.split(" (")[0] == expected, got
    assert "partly" not in got


def test_failed_control_names_its_reason_and_passing_controls_do_not_interfere():
    assert verdict(est(0.1, 0.05, 0.2), Rule(">", 0.0), [enough(11, 100, "wrong answers")]) == \
        "not testable (only 11 wrong answers (needs >= 100))"
    ok = [enough(150, 100, "wrong answers"), fires(0.3), headroom(est(0.6, 0.55, 0.65), 0.4, 0.75),
          above_chance(est(0.6, 0.55, 0.65), 0.25)]
    assert all(c.ok for c in ok)
    assert verdict(est(0.1, 0.05, 0.2), Rule(">", 0.0), ok) == "reproduced"
    assert not fires(1.0).ok and not fires(NAN).ok and not above_chance((NAN, NAN, NAN), 0.25).ok


def test_headroom_reads_the_point_estimate_and_its_reason_says_so():
    # 02's healthy where: 96.25 % with a CI straddling the 96 % bound fails on its point estimate
    c = headroom(est(0.9625, 0.931, 0.988), 0.0, 0.96, "healthy where-accuracy")
    assert not c.ok
    assert c.reason == "healthy where-accuracy 96.2% [93.1, 98.8]: its point estimate 96.2% is outside [0%, 96%]"
    assert headroom(est(0.95, 0.93, 0.97), 0.0, 0.96).ok  # the CI may cross the bound: the point estimate decides
    assert not headroom(None, 0.0, 0.96).ok


def test_notes_explain_but_never_change_a_verdict():
    rule = Rule(">", 0.0, note={"contradicted": "it hurts"})
    assert verdict(est(-0.1, -0.2, -0.05), rule) == "contradicted (it hurts)"
    assert verdict(est(0.1, 0.05, 0.2), rule) == "reproduced"


def test_fixed_verdicts_can_only_say_not_testable():
    assert verdict(None, "not testable (1 LM layer)") == "not testable (1 LM layer)"
    with pytest.raises(ValueError, match="not testable"):
        verdict(None, "reproduced")


@pytest.mark.parametrize("bad", [dict(direction=">="), dict(min_effect=-1)])
def test_rule_rejects_bad_forms(bad):
    with pytest.raises(ValueError):
        Rule(**bad)


def test_rules_are_replaceable_values():
    assert Rule(">", 0.0) == Rule(">", 0.0) and Rule(">", 0.0) != Rule(">", 0.0, min_effect=0.1)
    assert "0.1" in Rule(">", 0.0, min_effect=0.1).describe()


# ------------------------------------------------------------------------------------------------------ table

def test_claims_table_single_model_columns():
    rows = [Claim("a", "s", "p", est(0.1, 0.05, 0.2), Rule(">", 0.0), text="x"),
            Claim("b", "s", "p", True, HOLDS), Claim("c", "s", "p", None, "not testable (no data)")]
    table = claims_table(rows, rules=True)
    assert list(table.columns) == COLUMNS + ["rule"]
    assert table["verdict"].tolist() == ["reproduced", "reproduced", "not testable (no data)"]
    assert table["measured here"].tolist()[:2] == ["x", "yes"]


def test_claims_table_has_a_column_pair_per_model_with_controls_per_model():
    failing, healthy = est(0.1, 0.05, 0.2), est(0.0, -0.03, 0.02)
    rows = [Claim("shuffle hurts where", "Qi et al. 2025", "41 %", {"llava": failing, "healthy": healthy},
                  Rule(">", 0.0), controls={"llava": [above_chance(est(0.56, 0.5, 0.6), 0.25)]}),
            Claim("only on one", "s", "p", {"healthy": est(0.3, 0.2, 0.4)}, Within(0.2, 0.45))]
    table = claims_table(rows)
    assert list(table.columns) == COLUMNS[:3] + ["measured: llava", "verdict: llava", "measured: healthy",
                                                 "verdict: healthy"]
    assert table.loc[0, "verdict: llava"] == "reproduced" and table.loc[0, "verdict: healthy"] == "inconclusive"
    assert table.loc[1, "verdict: llava"] == "—" and table.loc[1, "verdict: healthy"] == "reproduced"
    assert table.loc[0, "measured: llava"] == "0.100 [0.050, 0.200]"


def test_verdict_line_lists_each_models_verdict_kind():
    c = Claim("shuffle hurts where", "s", "p", {"llava": est(0.1, 0.05, 0.2), "healthy": est(0.0, -0.1, 0.1)},
              Rule(">", 0.0, note={"reproduced": "a note"}))
    from spatialkit.present.claims import verdict_line

    assert verdict_line(c) == "- *shuffle hurts where* — llava: reproduced, healthy: inconclusive"


def test_near_threshold_lists_judged_verdicts_whose_ci_ends_at_a_threshold():
    from spatialkit.present.claims import Claim, Control, Every, Rule, near_threshold

    rule = Rule(">", 0.0, min_effect=0.03)
    measured = {"edge": est(-0.01, -0.02, 0.004),  # inconclusive, 0.4 points from contradicted
                "clear": est(0.10, 0.08, 0.12),  # reproduced, 5 points from the threshold
                "gated": est(0.0, -0.001, 0.001)}  # at the edge, but a control fails
    c = Claim("x", "s", "p", measured, rule,
              controls={"gated": [Control("room", False, "no room")]})
    every = Claim("y", "s", "p", [est(0.0, -0.001, 0.001)], Every(rule))  # no single threshold: skipped
    assert near_threshold([c, every]) == [(c, "edge")]
    assert near_threshold([c], within=0.0) == []
    assert [m for _, m in near_threshold([c], within=0.06)] == ["edge", "clear"]
    with pytest.raises(ValueError, match="within"):
        near_threshold([c], within=-1)


def test_near_threshold_note_names_each_near_verdict_and_is_empty_without_one():
    from spatialkit.present.claims import NEAR, Claim, Rule, near_threshold_note
    from spatialkit.suite import scorecard

    assert scorecard.NEAR == NEAR  # the page marks what the chapters list
    rule = Rule(">", 0.0, min_effect=0.03)
    c = Claim("fix helps", "s", "p", {"edge": est(-0.01, -0.02, 0.004), "clear": est(0.10, 0.08, 0.12)}, rule,
              text={"edge": "edge text", "clear": "clear text"})
    note = near_threshold_note([c], sample="test objects")
    assert note.startswith("Verdicts whose CI ends within 1 point of the threshold")
    assert "sample of test objects" in note and "*fix helps* on edge (edge text: inconclusive)" in note
    assert "clear" not in note
    assert near_threshold_note([c], within=0.001) == ""


@pytest.mark.parametrize("low, high, null, side", [
    (0.01, 0.05, 0.0, 1), (-0.05, -0.01, 0.0, -1), (-0.01, 0.02, 0.0, 0), (0.0, 0.03, 0.0, 0),
    (0.6, 0.7, 0.5, 1), (0.4, 0.55, 0.5, 0),
])
def test_ci_side_reads_which_side_of_the_null_a_ci_lies(low, high, null, side):
    from spatialkit.present.claims import ci_side

    assert ci_side(Estimate((low + high) / 2, low, high, 10), null) == side


def test_ci_side_refuses_a_number_without_a_ci():
    from spatialkit.present.claims import ci_side

    with pytest.raises(ValueError, match="needs an estimate with a CI"):
        ci_side(None)


def test_disagreement_lines_name_every_contradicted_cell_with_its_numbers():
    from spatialkit.present.claims import contradicted_on, disagreement_lines

    gap = Claim("where lags what", "blog", "large gap", {"llava": est(0.3, 0.2, 0.4), "loud": est(-0.2, -0.3, -0.1),
                                                          "prior": est(-0.1, -0.2, -0.05)},
                Rule(">", 0.0), text={"llava": "+30 pts", "loud": "-20 pts", "prior": "-10 pts"})
    same = Claim("gaze misses the objects", "Chen et al. 2025", "—", {"llava": est(-0.2, -0.3, -0.1)}, Rule(">", 0.0))
    blocked = Claim("untestable", "blog", "x", {"loud": est(-0.2, -0.3, -0.1)}, Rule(">", 0.0),
                    controls={"loud": [Control("headroom", False, "no room")]})
    single = Claim("one model", "paper", "1.0", est(-0.5, -0.6, -0.4), Rule(">", 0.0))
    held = Claim("holds", "paper", "2", est(0.5, 0.4, 0.6), Rule(">", 0.0))
    claims = [gap, same, blocked, single, held]
    assert contradicted_on(gap) == ["loud", "prior"] and contradicted_on(gap, ["prior", "llava"]) == ["prior"]
    assert contradicted_on(blocked) == [] and contradicted_on(held) == [] and contradicted_on(single) == [None]
    # one reading for both models: said once at the end; a different one per model: said beside each
    lines = disagreement_lines(claims, reading={"where lags what": lambda m: "where leads"})
    assert lines == ["- *where lags what* (blog; paper's number: large gap) — **loud** -20 pts; **prior** -10 pts: "
                     "where leads.",
                     "- *gaze misses the objects* (Chen et al. 2025) — **llava** -0.200 [-0.300, -0.100].",
                     "- *one model* (paper; paper's number: 1.0) — -0.500 [-0.600, -0.400]."]
    per_model = disagreement_lines([gap], reading={"where lags what": lambda m: f"{m} reads backwards"})
    assert per_model == ["- *where lags what* (blog; paper's number: large gap) — **loud** -20 pts: loud reads "
                         "backwards; **prior** -10 pts: prior reads backwards."]
    assert disagreement_lines(claims, models=["llava"]) == [lines[1]]
    assert disagreement_lines([held, blocked]) == []
