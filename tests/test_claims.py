"""Claims as data: the one CI formatter, the rule objects (each reproducing a verdict form the notebooks used
before the rules moved into the package) and the table."""

import math

import pytest

from spatialkit.common.stats import Estimate
from spatialkit.present.claims import (COLUMNS, HOLDS, Claim, Every, Holds, Rule, Within, claims_table, covers,
                                       format_estimate, verdict)

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

HURTS = {"opposite": "not reproduced (it hurts)", "not": "not reproduced (no detectable change)"}

# (old verdict form, new rule, measured, expected verdict)
CASES = [
    # verdict(e.low > 0, partly=e.mean > 0)  -- notebooks 02, 03, 05
    ("lo>0 | est>0", Rule(">", 0.0), est(0.02, 0.01, 0.03), "reproduced"),
    ("lo>0 | est>0", Rule(">", 0.0), est(0.02, -0.01, 0.05), "partly reproduced"),
    ("lo>0 | est>0", Rule(">", 0.0), est(-0.02, -0.05, 0.01), "not reproduced"),
    ("lo>0 | est>0", Rule(">", 0.0), est(0.0, 0.0, 0.0), "not reproduced"),
    ("lo>0 | est>0", Rule(">", 0.0), est(-0.02, -0.05, -0.01), "not reproduced"),
    # verdict(e.low > -M, partly=e.mean > -M)  -- 05 non-inferiority
    ("lo>-M | est>-M", Rule(">", -0.02), est(0.0, -0.01, 0.01), "reproduced"),
    ("lo>-M | est>-M", Rule(">", -0.02), est(0.0, -0.069, 0.069), "partly reproduced"),
    ("lo>-M | est>-M", Rule(">", -0.02), est(-0.03, -0.06, 0.0), "not reproduced"),
    # verdict(e.high < 10, partly=e.mean < 10)  -- 02 what-PSI
    ("hi<10 | est<10", Rule("<", 10.0), (1.0, 0.0, 5.0), "reproduced"),
    ("hi<10 | est<10", Rule("<", 10.0), (8.0, 0.0, 15.0), "partly reproduced"),
    ("hi<10 | est<10", Rule("<", 10.0), (12.0, 9.0, 15.0), "not reproduced"),
    # verdict(a.low > b.high, partly=a.mean > b.mean)  -- 02, comparing two estimates
    ("a.lo>b.hi | a>b", Rule(">", (10.0, 5.0, 15.0)), (40.0, 20.0, 60.0), "reproduced"),
    ("a.lo>b.hi | a>b", Rule(">", (10.0, 5.0, 15.0)), (40.0, 14.0, 60.0), "partly reproduced"),
    ("a.lo>b.hi | a>b", Rule(">", (10.0, 5.0, 15.0)), (9.0, 4.0, 14.0), "not reproduced"),
    ("a.lo>b.hi | a>b", Rule(">", est(0.1, 0.05, 0.15)), est(0.3, 0.2, 0.4), "reproduced"),
    # sign_verdict(e, big=0.4)  -- 04: lo > big reproduced, lo > 0 partly, else why not
    ("04 big", Rule(">", 0.0, min_effect=0.4, partly=None, say=HURTS), est(0.5, 0.45, 0.55), "reproduced"),
    ("04 big", Rule(">", 0.0, min_effect=0.4, partly=None, say=HURTS), est(0.3, 0.1, 0.5), "partly reproduced"),
    ("04 big", Rule(">", 0.0, min_effect=0.4, partly=None, say=HURTS), est(0.3, -0.1, 0.5),
     "not reproduced (no detectable change)"),
    ("04 big", Rule(">", 0.0, min_effect=0.4, partly=None, say=HURTS), est(-0.3, -0.5, -0.1),
     "not reproduced (it hurts)"),
    # "reproduced" if e.low > 0 else "not reproduced"  -- 04, 06
    ("lo>0", Rule(">", 0.0, partly=None), est(0.03, -0.056, 0.101), "not reproduced"),
    ("lo>0", Rule(">", 0.0, partly=None), est(0.03, 0.01, 0.101), "reproduced"),
    # 04: NaN confidence gap -> "cannot tell"
    ("04 nan", Rule(">", 0.0, partly=None, say={"nan": "cannot tell"}), (NAN, NAN, NAN), "cannot tell"),
    ("04 nan", Rule(">", 0.0, partly=None, say={"nan": "cannot tell"}), (0.1, 0.05, 0.2), "reproduced"),
    # verdict(e.low <= chance <= e.high)  -- 00
    ("covers", covers(0.25), est(0.5, 0.2, 0.8), "reproduced"),
    ("covers", covers(0.25), est(0.5, 0.25, 0.8), "reproduced"),
    ("covers", covers(0.25), est(0.5, 0.3, 0.8), "not reproduced"),
    ("covers", covers(0.5), est(0.3, 0.1, 0.45), "not reproduced"),
    # verdict(3 <= x <= 30, partly=x > 1)  -- 02 loudness on a plain number
    ("3<=x<=30 | x>1", Within(3, 30, partly=Rule(">", 1.0)), 10.0, "reproduced"),
    ("3<=x<=30 | x>1", Within(3, 30, partly=Rule(">", 1.0)), 30.0, "reproduced"),
    ("3<=x<=30 | x>1", Within(3, 30, partly=Rule(">", 1.0)), 2.0, "partly reproduced"),
    ("3<=x<=30 | x>1", Within(3, 30, partly=Rule(">", 1.0)), 0.7, "not reproduced"),
    ("3<=x<=30 | x>1", Within(3, 30, partly=Rule(">", 1.0)), 40.0, "partly reproduced"),
    # verdict(e.high <= 0.20, partly=e.high < tokens)  -- 03 image share
    ("hi<=.2 | hi<tok", Within(-math.inf, 0.20, need="inside", partly=Rule("<", 0.79)), est(.1, .05, .2),
     "reproduced"),
    ("hi<=.2 | hi<tok", Within(-math.inf, 0.20, need="inside", partly=Rule("<", 0.79)), est(.725, .717, .733),
     "partly reproduced"),
    ("hi<=.2 | hi<tok", Within(-math.inf, 0.20, need="inside", partly=Rule("<", 0.79)), est(.8, .7, .85),
     "not reproduced"),
    # verdict(lo <= .82 and hi >= .62, partly=lo > tokens)  -- 03 system share
    ("overlap | lo>tok", Within(0.62, 0.82, partly=Rule(">", 0.25, partly=None)), est(.7, .6, .8), "reproduced"),
    ("overlap | lo>tok", Within(0.62, 0.82, partly=Rule(">", 0.25, partly=None)), est(.5, .4, .6),
     "partly reproduced"),
    ("overlap | lo>tok", Within(0.62, 0.82, partly=Rule(">", 0.25, partly=None)), est(.232, .229, .236),
     "not reproduced"),
    # verdict(diff.low <= 0)  -- 03 gaze no better than uniform
    ("lo<=0", Within(-math.inf, 0.0), est(-0.003, -0.02, 0.01), "reproduced"),
    ("lo<=0", Within(-math.inf, 0.0), est(0.03, 0.0, 0.05), "reproduced"),
    ("lo<=0", Within(-math.inf, 0.0), est(0.03, 0.01, 0.05), "not reproduced"),
    # verdict(1/3 <= depth <= 2/3)  -- 03
    ("middle", Within(1 / 3, 2 / 3), 0.5, "reproduced"),
    ("middle", Within(1 / 3, 2 / 3), 0.0, "not reproduced"),
    # 06 mIoU against the paper's range, worded
    ("06 miou", Within(0.35, 0.45, say={"reproduced": "comparable", "above": "higher", "below": "lower"}),
     est(.074, .026, .117), "lower"),
    ("06 miou", Within(0.35, 0.45, say={"reproduced": "comparable", "above": "higher", "below": "lower"}),
     est(.4, .3, .5), "comparable"),
    ("06 miou", Within(0.35, 0.45, say={"reproduced": "comparable", "above": "higher", "below": "lower"}),
     est(.6, .5, .7), "higher"),
    # 06 what-answers: CI covers 0 -> no change, else lower / higher
    ("06 delta", covers(0.0, say={"reproduced": "no change", "above": "higher", "below": "lower"}),
     est(0.0, 0.0, 0.0), "no change"),
    ("06 delta", covers(0.0, say={"reproduced": "no change", "above": "higher", "below": "lower"}),
     est(-.1, -.2, -.05), "lower"),
    ("06 delta", covers(0.0, say={"reproduced": "no change", "above": "higher", "below": "lower"}),
     est(.1, .05, .2), "higher"),
    # all / any over groups  -- 04 ScalingVis
    ("all | any", Every(say={"not": "none"}), [est(.1, .05, .2), est(.1, .01, .2)], "reproduced"),
    ("all | any", Every(say={"not": "none"}), [est(.1, .05, .2), est(.1, -.01, .2)], "partly reproduced"),
    ("all | any", Every(say={"not": "none"}), [est(.1, -.05, .2), est(0, 0, 0)], "none"),
    ("all | any", Every(say={"not": "none"}), [], "reproduced"),
    # verdict(agrees, partly=weaker)  -- composite checks computed in the notebook (00, 01, 06)
    ("bool", HOLDS, True, "reproduced"),
    ("bool", HOLDS, False, "not reproduced"),
    ("bool | partly", Holds(partly=True), False, "partly reproduced"),
    ("bool | partly", Holds(partly=True), True, "reproduced"),
    ("bool worded", Holds(partly=True, say={"partly": "partly (why)"}), False, "partly (why)"),
    # fixed verdicts
    ("fixed", "not testable (1 LM layer(s))", None, "not testable (1 LM layer(s))"),
]


@pytest.mark.parametrize("form, rule, measured, expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_rule_reproduces_old_verdict(form, rule, measured, expected):
    assert verdict(measured, rule) == expected


@pytest.mark.parametrize("rule, measured", [
    (Rule(">", 0.0), (NAN, NAN, NAN)),
    (Rule("<", 10.0), NAN),
    (Within(3, 30), NAN),
    (covers(0.25), None),
])
def test_nan_is_not_measured(rule, measured):
    assert verdict(measured, rule) == "not measured"


def test_nan_bounds_with_a_mean_do_not_reproduce():
    assert verdict((0.5, NAN, NAN), Rule(">", 0.0, partly=None)) == "not reproduced"


def test_nan_items_do_not_count_in_every():
    assert verdict([est(.1, .05, .2), (NAN, NAN, NAN)], Every()) == "partly reproduced"


@pytest.mark.parametrize("bad", [dict(direction=">="), dict(partly="mean")])
def test_rule_rejects_unknown_forms(bad):
    with pytest.raises(ValueError):
        Rule(**bad)


def test_within_rejects_unknown_need():
    with pytest.raises(ValueError):
        Within(0, 1, need="touch")


def test_rules_are_replaceable_values():
    a = Rule(">", 0.0)
    assert a == Rule(">", 0.0) and a != Rule(">", 0.0, partly=None)
    assert "CI > 0" in a.describe() and "estimate > 0" in a.describe()
    assert "covers 0.25" in covers(0.25).describe()


# ------------------------------------------------------------------------------------------------------ table

def test_claims_table_computes_verdicts_and_keeps_columns():
    rows = [
        Claim("gain", "paper §1", "+2.67", est(0.02, 0.01, 0.03), Rule(">", 0.0)),
        Claim("gain, shown", "paper §2", "+2.67", est(0.02, -0.01, 0.05), Rule(">", 0.0),
              text=f"where-acc {format_estimate(est(0.02, -0.01, 0.05), 'pts')}"),
        Claim("check", "blog", "yes", True, HOLDS),
        Claim("deep", "paper", "17 of 32", None, "not testable (1 LM layer(s))", text="layer 0 of 1"),
    ]
    table = claims_table(rows)
    assert list(table.columns) == COLUMNS
    assert table["measured here"].tolist() == ["0.020 [0.010, 0.030]", "where-acc +2.0 pts [-1.0, +5.0]", "yes",
                                               "layer 0 of 1"]
    assert table["verdict"].tolist() == ["reproduced", "partly reproduced", "reproduced",
                                         "not testable (1 LM layer(s))"]
    with_rules = claims_table(rows, rules=True)
    assert list(with_rules.columns) == COLUMNS + ["rule"]
    assert with_rules["rule"].iloc[3] == "not testable (1 LM layer(s))"


# ------------------------------------------------------------------ the old verdict code, on a grid of CIs

def _old(agrees, partly=False):
    return "reproduced" if agrees else ("partly reproduced" if partly else "not reproduced")


def _old_sign(e, big=None):  # notebook 04's sign_verdict
    if big is not None and e.low > big:
        return "reproduced"
    if e.low > 0:
        return "partly reproduced" if big is not None else "reproduced"
    return "not reproduced" + (" (it hurts)" if e.high < 0 else " (no detectable change)")


GRID = [-0.5, -0.1, -0.02, 0.0, 0.02, 0.1, 0.2, 0.25, 0.35, 0.4, 0.45, 0.5, 0.62, 0.7, 0.82, 0.9]
CIS = [est(m, lo, hi) for lo in GRID for hi in GRID if lo <= hi for m in {lo, (lo + hi) / 2, hi}]
OTHER = est(0.25, 0.2, 0.35)
# (old code as a function of the estimate e, the new rule)
EQUIVALENT = [
    (lambda e: _old(e.low > 0, partly=e.mean > 0), Rule(">", 0.0)),
    (lambda e: _old(e.low > -0.02, partly=e.mean > -0.02), Rule(">", -0.02)),
    (lambda e: _old(e.high < 0.2, partly=e.mean < 0.2), Rule("<", 0.2)),
    (lambda e: _old(e.low > OTHER.high, partly=e.mean > OTHER.mean), Rule(">", OTHER)),
    (lambda e: _old(e.high < OTHER.low, partly=e.mean < OTHER.mean), Rule("<", OTHER)),
    (lambda e: _old_sign(e, big=0.4), Rule(">", 0.0, min_effect=0.4, partly=None, say=HURTS)),
    (lambda e: _old_sign(e), Rule(">", 0.0, partly=None, say=HURTS)),
    (lambda e: _old(e.low <= 0.25 <= e.high), covers(0.25)),
    (lambda e: _old(e.high <= 0.2, partly=e.high < 0.7), Within(high=0.2, need="inside", partly=Rule("<", 0.7))),
    (lambda e: _old(e.low <= 0.82 and e.high >= 0.62, partly=e.low > 0.25),
     Within(0.62, 0.82, partly=Rule(">", 0.25))),
    (lambda e: _old(e.low <= 0.0), Within(high=0.0)),
    (lambda e: _old(e.low <= 0.25, partly=e.high < OTHER.low), Within(high=0.25, partly=Rule("<", OTHER))),
    (lambda e: "comparable" if e.high >= 0.35 and e.low <= 0.45 else ("higher" if e.low > 0.45 else "lower"),
     Within(0.35, 0.45, say={"reproduced": "comparable", "above": "higher", "below": "lower"})),
    (lambda e: "same" if e.low <= 0 <= e.high else ("lower" if e.high < 0 else "higher"),
     covers(0.0, say={"reproduced": "same", "above": "higher", "below": "lower"})),
]


@pytest.mark.parametrize("i", range(len(EQUIVALENT)))
def test_rule_equals_old_code_on_every_ci(i):
    old, rule = EQUIVALENT[i]
    assert [verdict(e, rule) for e in CIS] == [old(e) for e in CIS]


@pytest.mark.parametrize("x", GRID + [1.0, 3.0, 10.0, 30.0, 31.0])
def test_plain_number_rules_equal_old_code(x):
    assert verdict(x, Within(3, 30, partly=Rule(">", 1.0))) == _old(3 <= x <= 30, partly=x > 1)
    assert verdict(x, Within(1 / 3, 2 / 3)) == _old(1 / 3 <= x <= 2 / 3)


def test_every_equals_old_code():
    rule = Every(Rule(">", 0.0, partly=None), say={"not": "none"})
    for group in ([CIS[0], CIS[-1]], CIS[:5], CIS[-5:], CIS[::7]):
        old = ("reproduced" if all(e.low > 0 for e in group)
               else ("partly reproduced" if any(e.low > 0 for e in group) else "none"))
        assert verdict(group, rule) == old
