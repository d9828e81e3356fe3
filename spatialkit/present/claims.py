"""Claim-vs-measured tables: every notebook ends with one, computed from its own results.

A notebook lists its claims as data and renders them with one call::

    claims_table([
        Claim("+Normalize raises where-accuracy", "Qi et al. 2025, 2DS", "56.63 → 59.30 (+2.67)",
              {"loud": gain_loud, "healthy": gain_healthy}, Rule(">", 0.0, min_effect=0.01),
              controls={"loud": [above_chance(where_loud, 0.25)]}),
        ...
    ])

**One verdict function** (``verdict``), four verdicts, none of which can overstate:

* **reproduced** — the CI excludes the null in the claimed direction by the rule's stated minimal effect;
* **contradicted** — the CI excludes the null in the opposite direction (the data go the other way);
* **inconclusive** — anything else (a CI that straddles the null, or clears it by less than the minimal effect);
* **not testable** — a control says the model cannot show the effect (a blind control at chance, a baseline
  without headroom, a gate that never fires, too few errors): the claim is neither reproduced nor not.

There is no "partly": a point estimate on the right side of a CI that includes the null is inconclusive.

Rules are small frozen dataclasses (data, not code in the notebook):

* ``Rule(direction, null, min_effect=0)`` — one-sided; ``null`` may be another estimate (then its CI end);
* ``Within(low, high)`` — the claim "the value lies in [low, high]" (e.g. at chance, or the paper's band):
  reproduced when the CI lies inside, contradicted when it lies entirely outside;
* ``Every(rule)`` — a list of values: reproduced when every item reproduces, contradicted when every item is
  contradicted, else inconclusive;
* ``Pairwise(direction)`` — a list of pairs (a, b), each a against b, aggregated as ``Every``;
* ``Holds()`` — an exact yes/no check computed in the notebook (e.g. bit-identical outputs);
* a plain string starting with "not testable" — a fixed verdict when no measurement can test the claim.

``Claim.measured`` may be a dict ``{model: value}``: the table then has a measured and a verdict column per
model (e.g. the failing organism beside the healthy control). ``controls`` (a list, or a dict per model) are
``Control`` objects; one that fails makes that model's verdict "not testable (reason)".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from spatialkit.common.results import RESULTS_ENV, results_target, update_results  # noqa: F401 (RESULTS_ENV re-exported)
from spatialkit.common.stats import Estimate

#: the four verdicts; a rule's outcome is one of the first three, a failed control gives the fourth
VERDICTS = ("reproduced", "contradicted", "inconclusive", "not testable")

COLUMNS = ["claim", "source", "paper's number", "measured here", "verdict"]  # one model; more: a pair per model

# --------------------------------------------------------------------------------------------- formatting

#: unit -> (scale, signed, glued): "%" is a fraction shown in percent, "pp"/"pts" a difference of fractions
#: in percentage points; "x" a ratio; "" a plain number
UNITS: Mapping[str, tuple[float, bool, bool]] = {
    "": (1.0, False, True),
    "%": (100.0, False, True),
    "pp": (100.0, True, False),
    "pts": (100.0, True, False),
    "x": (1.0, False, True),
}
_UNIT_TEXT = {"x": "×"}


def _as_estimate(value: Any) -> Estimate | None:
    """An ``Estimate`` from an Estimate, a (mean, low, high) triple, or a plain number (CI = the point)."""
    if value is None or isinstance(value, Estimate):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(_is_number(v) for v in value):
        mean, low, high = (float(v) for v in value)
        return Estimate(mean, low, high, 0)
    if _is_number(value):
        return Estimate(float(value), float(value), float(value), 0)
    raise TypeError(f"cannot read an estimate from {value!r}")


def _is_number(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return not isinstance(v, (str, bytes))


def format_estimate(est: Estimate | tuple | float | None, unit: str = "", *, digits: int = 1,
                    scale: float | None = None, signed: bool | None = None, at: str | None = "mean",
                    n: bool = False) -> str:
    """One CI formatter for every table: ``"41.2% [35.0, 47.1]"``, ``"+2.7 pp [+0.4, +5.1]"``.

    ``unit`` picks the defaults (see ``UNITS``): "%" multiplies a fraction by 100; "pp"/"pts" multiply by 100
    and show a sign; "x" and "" show the number as is. ``scale``/``signed`` override them (e.g. ``scale=1``
    for a PSI that is already in percent). ``at`` places the unit after the mean ("mean", "%" glued:
    ``41.2% [..]``), after the interval ("end", spaced: ``41.2 [..] %``) or hides it (None).
    ``n=True`` appends `` (n=…)``. ``None`` gives ``"n/a"``; a plain number is shown without an interval;
    NaNs print as Python prints them (``nan``), as the notebooks did.
    """
    if est is None:
        return "n/a"
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; one of {sorted(UNITS)}")
    if at not in ("mean", "end", None):
        raise ValueError(f"at must be 'mean', 'end' or None, got {at!r}")
    default_scale, default_signed, glued = UNITS[unit]
    scale = default_scale if scale is None else scale
    signed = default_signed if signed is None else signed
    spec = f"{'+' if signed else ''}.{digits}f"
    text = _UNIT_TEXT.get(unit, unit)
    after_mean = (text if glued else " " + text) if (text and at == "mean") else ""
    after_ci = " " + text if (text and at == "end") else ""
    if _is_number(est) and not isinstance(est, (tuple, list)):
        return f"{format(scale * float(est), spec)}{after_mean}{after_ci}"
    e = _as_estimate(est)
    out = (f"{format(scale * e.mean, spec)}{after_mean} "
           f"[{format(scale * e.low, spec)}, {format(scale * e.high, spec)}]{after_ci}")
    return out + (f" (n={e.n})" if n else "")


# -------------------------------------------------------------------------------------------------- rules

def _bound(null: Any, side: str) -> float:
    """A threshold as a number: for an estimate, the CI end facing the measured CI (``side`` "low"/"high")."""
    if isinstance(null, (Estimate, tuple, list)):
        return getattr(_as_estimate(null), side)
    return float(null)


def _show(x: Any) -> str:
    if isinstance(x, (Estimate, tuple, list)):
        return "the other estimate's CI"
    return f"{float(x):g}"


def _is_nan(measured: Any) -> bool:
    e = _as_estimate(measured)
    return e is None or math.isnan(e.mean) or math.isnan(e.low) or math.isnan(e.high)


@dataclass(frozen=True)
class RuleBase:
    """What every rule has: ``outcome(measured)`` ("reproduced" | "contradicted" | "inconclusive"),
    ``note`` (outcome -> a few words appended in brackets, e.g. ``{"contradicted": "it hurts"}``: a note can
    explain a verdict, never change it) and ``describe()`` (the rule in words)."""

    def outcome(self, measured: Any) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def worded(self, outcome: str) -> str:
        extra = dict(self.note).get(outcome)
        return f"{outcome} ({extra})" if extra else outcome


@dataclass(frozen=True)
class Rule(RuleBase):
    """One-sided claim: the measured value is above (``">"``) or below (``"<"``) ``null``.

    reproduced    the CI lies beyond ``null + min_effect`` (``null - min_effect`` for "<"), strictly;
    contradicted  the CI lies entirely on the other side of ``null``;
    inconclusive  otherwise (also when the point estimate or an end of the CI is NaN).

    ``null`` may be a number or another estimate (then the facing end of its CI).
    """

    direction: str = ">"
    null: Any = 0.0
    min_effect: float = 0.0
    note: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.direction not in (">", "<"):
            raise ValueError(f"direction must be '>' or '<', got {self.direction!r}")
        if not (isinstance(self.min_effect, (int, float)) and self.min_effect >= 0):
            raise ValueError(f"min_effect must be a number >= 0, got {self.min_effect!r}")

    def outcome(self, measured: Any) -> str:
        if _is_nan(measured) or _is_nan(self.null):
            return "inconclusive"
        e = _as_estimate(measured)
        if self.direction == ">":
            if e.low > _bound(self.null, "high") + self.min_effect:
                return "reproduced"
            if e.high < _bound(self.null, "low"):
                return "contradicted"
        else:
            if e.high < _bound(self.null, "low") - self.min_effect:
                return "reproduced"
            if e.low > _bound(self.null, "high"):
                return "contradicted"
        return "inconclusive"

    def edge_distance(self, measured: Any) -> float:
        """How close the measured CI is to another outcome: the smallest distance between an end of the CI and the
        threshold ``outcome`` compares it with (for ">": the low end and null + min_effect, the high end and
        null; mirrored for "<"). A verdict with a small distance is one that another training run or item sample
        could move. NaN when the outcome cannot be computed."""
        if _is_nan(measured) or _is_nan(self.null):
            return math.nan
        e = _as_estimate(measured)
        if self.direction == ">":
            return min(abs(e.low - (_bound(self.null, "high") + self.min_effect)), abs(e.high - _bound(self.null, "low")))
        return min(abs(e.high - (_bound(self.null, "low") - self.min_effect)), abs(e.low - _bound(self.null, "high")))

    def describe(self) -> str:
        effect = f" by more than {self.min_effect:g}" if self.min_effect else ""
        return f"reproduced: CI {self.direction} {_show(self.null)}{effect}; contradicted: CI on the other side"


@dataclass(frozen=True)
class Within(RuleBase):
    """Claim "the value lies in [low, high]" (bounds inclusive; ``Within(high=x)``: "x or lower").

    reproduced    the CI lies inside the interval;
    contradicted  the CI lies entirely outside it;
    inconclusive  the CI straddles a bound (or is NaN).
    """

    low: float = -math.inf
    high: float = math.inf
    note: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, measured: Any) -> str:
        if _is_nan(measured):
            return "inconclusive"
        e = _as_estimate(measured)
        if e.low >= self.low and e.high <= self.high:
            return "reproduced"
        if e.low > self.high or e.high < self.low:
            return "contradicted"
        return "inconclusive"

    def describe(self) -> str:
        return f"reproduced: CI inside [{self.low:g}, {self.high:g}]; contradicted: CI outside it"


@dataclass(frozen=True)
class Every(RuleBase):
    """``measured`` is a list: reproduced when ``rule`` reproduces on every item, contradicted when it is
    contradicted on every item, else inconclusive (an empty list is inconclusive)."""

    rule: RuleBase = field(default_factory=lambda: Rule(">", 0.0))
    note: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, measured: Sequence[Any]) -> str:
        outcomes = {self.rule.outcome(m) for m in measured}
        if len(outcomes) == 1 and outcomes != {"inconclusive"}:
            return outcomes.pop()
        return "inconclusive"

    def describe(self) -> str:
        return f"every item: {self.rule.describe()}"


@dataclass(frozen=True)
class Pairwise(RuleBase):
    """``measured`` is a list of pairs ``(a, b)``: each judged by ``Rule(direction, b, min_effect)`` on ``a``
    (e.g. accuracy at an unseen resolution below the same model's at the training one), then aggregated as
    ``Every`` does."""

    direction: str = "<"
    min_effect: float = 0.0
    note: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, measured: Sequence[tuple]) -> str:
        outcomes = {Rule(self.direction, b, self.min_effect).outcome(a) for a, b in measured}
        if len(outcomes) == 1 and outcomes != {"inconclusive"}:
            return outcomes.pop()
        return "inconclusive"

    def describe(self) -> str:
        return f"every pair (a, b): CI of a {self.direction} CI of b; contradicted: every pair the other way"


@dataclass(frozen=True)
class Holds(RuleBase):
    """An exact yes/no check computed in the notebook (no sampling error, e.g. bit-identical outputs):
    True reproduces, False contradicts."""

    note: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, measured: Any) -> str:
        return "reproduced" if bool(measured) else "contradicted"

    def describe(self) -> str:
        return "exact check: holds = reproduced, fails = contradicted"


#: the plain yes/no rule
HOLDS = Holds()


def ci_side(est: Estimate, null: float = 0.0) -> int:
    """Which side of ``null`` a CI lies on: +1 wholly above, -1 wholly below, 0 when it touches or straddles it
    (no direction shown). The one reading behind the notebooks' "rises / falls / does not move detectably"."""
    e = _as_estimate(est)
    if e is None or _is_nan(e):
        raise ValueError(f"ci_side needs an estimate with a CI, got {est!r}")
    return 1 if e.low > null else -1 if e.high < null else 0


def covers(value: float, tolerance: float, **kw) -> Within:
    """The claim "the value is ``value`` within ± ``tolerance``" (e.g. chance level ± 5 points)."""
    return Within(value - tolerance, value + tolerance, **kw)


# ----------------------------------------------------------------------------------------------- controls

@dataclass(frozen=True)
class Control:
    """A precondition for testing a claim on one model. ``ok`` False: the claim is not testable there."""

    name: str
    ok: bool
    reason: str  # why it fails, shown in the verdict: "not testable (reason)"


def above_chance(accuracy: Any, chance: float, what: str = "accuracy", level: str = "chance") -> Control:
    """The model must answer above chance (its CI above ``chance``), or a test of *how* it answers is moot.
    ``level`` names the threshold in the message (e.g. "the most-frequent-answer level")."""
    e = _as_estimate(accuracy)
    ok = e is not None and not _is_nan(e) and e.low > chance
    return Control("above chance", ok, f"{what} {format_estimate(e, '%')} is not above {level} {chance:.0%}")


def headroom(accuracy: Any, low: float, high: float, what: str = "baseline") -> Control:
    """An intervention can only show a gain where the baseline leaves room (point estimate in [low, high])."""
    e = _as_estimate(accuracy)
    ok = e is not None and not _is_nan(e) and low <= e.mean <= high
    # the rule reads the point estimate, so the reason names it (its CI may straddle the bound)
    return Control("headroom", ok, f"{what} {format_estimate(e, '%')}: its point estimate {e.mean:.1%} is outside "
                                   f"[{low:.0%}, {high:.0%}]" if e is not None else f"{what}: no estimate")


def enough(count: int, minimum: int, what: str) -> Control:
    """At least ``minimum`` cases of ``what`` (e.g. wrong answers) to estimate a difference."""
    return Control("enough cases", int(count) >= minimum, f"only {int(count)} {what} (needs >= {minimum})")


def fires(share: float, what: str = "the gate") -> Control:
    """A switch (e.g. AdaptVis's confidence gate) must take both branches on some items."""
    ok = not math.isnan(float(share)) and 0.0 < float(share) < 1.0
    return Control("fires", ok, f"{what} sent {float(share):.0%} of items one way")


def decided(controls: Sequence[Control] = ()) -> Control | None:
    """The first failing control, or None."""
    return next((c for c in controls if not c.ok), None)


def verdict(measured: Any, rule: RuleBase | str, controls: Sequence[Control] = ()) -> str:
    """THE verdict function: a failed control -> "not testable (reason)"; else the rule's outcome
    ("reproduced" / "contradicted" / "inconclusive", with the rule's note if any). A string rule must be a
    fixed "not testable ..." verdict (a claim no measurement here can test)."""
    failed = decided(controls)
    if failed is not None:
        return f"not testable ({failed.reason})"
    if isinstance(rule, str):
        if not rule.startswith("not testable"):
            raise ValueError(f"a fixed verdict must start with 'not testable', got {rule!r}; use a rule instead")
        return rule
    return rule.worded(rule.outcome(measured))


# -------------------------------------------------------------------------------------------------- table

@dataclass(frozen=True)
class Claim:
    """One row: what the blog/paper says, what this notebook measured, and the rule that judges it.

    ``measured`` is what the rule judges: an ``Estimate``, a (mean, low, high) triple, a number, a bool (for
    ``Holds``) or a list (for ``Every``) — or a dict ``{model: value}`` to judge the claim on several models.
    ``text`` is the "measured here" cell (a string, or a dict per model); by default
    ``format_estimate(measured)``. ``rule`` is a rule object or a fixed "not testable ..." string.
    ``controls``: a list of ``Control`` for every model, or a dict ``{model: [Control, ...]}``.
    """

    claim: str
    source: str
    paper: str
    measured: Any
    rule: RuleBase | str
    text: Any = None
    controls: Any = ()

    def models(self) -> list:
        return list(self.measured) if isinstance(self.measured, dict) else [None]

    def verdict_for(self, model: Any = None) -> str:
        measured = self.measured[model] if isinstance(self.measured, dict) else self.measured
        controls = self.controls.get(model, ()) if isinstance(self.controls, dict) else self.controls
        return verdict(measured, self.rule, controls)

    def shown_for(self, model: Any = None) -> str:
        measured = self.measured[model] if isinstance(self.measured, dict) else self.measured
        text = self.text.get(model) if isinstance(self.text, dict) else self.text
        if text is not None:
            return text
        if isinstance(measured, str):
            return measured
        if isinstance(measured, bool):
            return "yes" if measured else "no"
        return format_estimate(measured, digits=3)

    @property
    def verdict(self) -> str:
        return self.verdict_for(self.models()[0])

    @property
    def shown(self) -> str:
        return self.shown_for(self.models()[0])


#: the smallest what-vs-where gap worth calling a gap (5 points of accuracy above chance, or of PSI): notebook 00's
#: what-vs-where claims and notebook 02's "far more shuffle-sensitive" use one value
MIN_GAP = 0.05

#: a judged verdict whose CI ends closer than this to its rule's threshold is "near" it (``near_threshold``; the
#: Scorecard marks it, ``spatialkit.suite.scorecard.NEAR``): 1 accuracy point
NEAR = 0.01


def near_threshold(claims: Sequence[Claim], within: float = NEAR) -> list[tuple[Claim, Any]]:
    """(claim, model) of every judged verdict (not "not testable") whose CI ends within ``within`` of a
    threshold its rule compares it with (``Rule.edge_distance``): the verdicts that another training run or
    another sample of items could move. Rules without such a threshold (``Within``, ``Every``, ...) are skipped."""
    if not within >= 0:
        raise ValueError(f"within must be >= 0, got {within}")
    out = []
    for c in claims:
        for m in c.models():
            distance = edge_distance(c, m)
            if distance is not None and distance < within:
                out.append((c, m))
    return out


def near_threshold_note(claims: Sequence[Claim], sample: str = "items", within: float = NEAR) -> str:
    """A Markdown sentence naming each ``near_threshold`` verdict with its measured text, or "" when there is
    none. ``sample`` names what the CIs resample (e.g. "test objects")."""
    near = near_threshold(claims, within)
    if not near:
        return ""
    points = f"{100 * within:g} point" + ("" if 100 * within == 1 else "s")
    return (f"Verdicts whose CI ends within {points} of the threshold their rule compares them with (another "
            f"training run or sample of {sample} could move them): "
            + "; ".join(f"*{c.claim}* on {m} ({c.shown_for(m)}: {c.verdict_for(m)})" for c, m in near) + ".")


def edge_distance(c: Claim, model: Any = None) -> float | None:
    """``Rule.edge_distance`` of the claim's verdict on ``model``: how far its CI ends from a threshold the
    rule compares it with. None when the verdict is not judged ("not testable"), the rule has no such
    threshold (``Within``, ``Every``, ...) or the value has no CI."""
    edge = getattr(c.rule, "edge_distance", None)
    if edge is None or c.verdict_for(model).startswith("not testable"):
        return None
    try:
        distance = float(edge(c.measured[model] if isinstance(c.measured, dict) else c.measured))
    except (TypeError, ValueError):
        return None
    return None if math.isnan(distance) else distance


def claims_table(claims: Sequence[Claim], *, rules: bool = False) -> pd.DataFrame:
    """A DataFrame with one row per claim, the verdicts computed by ``verdict``.

    Single-model claims: columns claim, source, paper's number, measured here, verdict. When any claim is
    judged on several models (``measured`` a dict), one "measured: M" and one "verdict: M" column per model,
    in order of first appearance ("—" where a claim was not measured on a model). ``rules=True`` adds a
    column describing each rule.
    """
    names: list = []
    for c in claims:
        if isinstance(c.measured, dict):
            names += [m for m in c.measured if m not in names]
    if not names:
        rows = [(c.claim, c.source, c.paper, c.shown, c.verdict) for c in claims]
        table = pd.DataFrame(rows, columns=COLUMNS)
    else:
        columns = COLUMNS[:3] + [f"{kind}: {m}" for m in names for kind in ("measured", "verdict")]
        rows = []
        for c in claims:
            row = [c.claim, c.source, c.paper]
            for m in names:
                if isinstance(c.measured, dict) and m not in c.measured:
                    row += ["—", "—"]
                else:
                    key = m if isinstance(c.measured, dict) else None
                    row += [c.shown_for(key), c.verdict_for(key)]
            rows.append(row)
        table = pd.DataFrame(rows, columns=columns)
    if rules:
        table["rule"] = [c.rule if isinstance(c.rule, str) else c.rule.describe() for c in claims]
    record_claims(claims)
    return table


# ------------------------------------------------------------------------------------- results recording
#
# Every claims_table() call also records its rows, so an executed notebook leaves machine-readable results
# with no extra code: under the runner ($SPATIALKIT_RESULTS set to a file in the run's folder), the rows
# recorded so far are merged into that JSON file (key "claims"; the runner publishes it beside the notebook
# as book/executed/NAME.results.json, and `spatialkit results` / the book's Scorecard page read it). Outside
# the runner nothing is written. Recording never changes a verdict: it stores what verdict() returned.

#: the model key of a claim judged on one model (``measured`` not a dict)
SINGLE_MODEL = ""
_RECORDED: dict[tuple, dict] = {}  # (claim, source, paper) -> row; a re-run cell replaces its rows


def _plain(value: Any) -> Any:
    """``value`` as JSON data: an estimate -> {mean, low, high, n}; NaN -> None; unknown -> str."""
    if isinstance(value, Estimate):
        return {key: _plain(getattr(value, key)) for key in ("mean", "low", "high", "n")}
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if _is_number(value):
        number = float(value)
        if math.isnan(number) or math.isinf(number):
            return None
        integral = isinstance(value, int) or getattr(getattr(value, "dtype", None), "kind", "") in ("i", "u")
        return int(number) if integral else number
    return str(value)


def outcome_of(verdict_text: str) -> str:
    """The verdict's kind (one of ``VERDICTS``) without its note or reason."""
    return next((v for v in VERDICTS if verdict_text.startswith(v)), verdict_text)


def contradicted_on(c: Claim, models: Sequence[Any] | None = None) -> list:
    """The models (of ``models``; all when None) on which claim ``c`` reads *contradicted*, in column order."""
    return [m for m in c.models()
            if (models is None or m in models) and outcome_of(c.verdict_for(m)) == "contradicted"]


def disagreement_lines(claims: Sequence[Claim], models: Sequence[Any] | None = None,
                       reading: dict[str, Any] | None = None) -> list[str]:
    """One Markdown bullet per claim that reads *contradicted* on some model (of ``models``): the claim, its
    source and paper's number, each such model's measured text, and what it says in words: ``reading`` maps a
    claim's text to a function of the model giving that sentence, said once when it is the same for every
    model. What a notebook prints under "where this run disagrees with the blog"."""
    lines = []
    for c in claims:
        ms = contradicted_on(c, models)
        if not ms:
            continue
        say = (reading or {}).get(c.claim)
        said = [say(m) if say else "" for m in ms]
        once = len(set(said)) == 1
        cells = "; ".join((f"**{m}** " if m is not None else "") + c.shown_for(m)
                          + ("" if once or not s else f": {s}") for m, s in zip(ms, said))
        paper = "" if not c.paper or c.paper.startswith("—") else f"; paper's number: {c.paper}"
        lines.append(f"- *{c.claim}* ({c.source}{paper}) — {cells}" + (f": {said[0]}" if once and said[0] else "")
                     + ".")
    return lines


def verdict_line(c: Claim) -> str:
    """A Markdown bullet: the claim and, per model, its verdict's kind ("- *claim* — llava: reproduced, ...")."""
    return f"- *{c.claim}* — " + ", ".join(f"{m}: {outcome_of(c.verdict_for(m))}" for m in c.models())


def claim_record(c: Claim) -> dict:
    """One claim as JSON data: texts, rule, and per model the measured value, its estimate and verdict."""
    models = {}
    for model in c.models():
        measured = c.measured[model] if isinstance(c.measured, dict) else c.measured
        estimate = None
        if not isinstance(c.rule, (Every, Pairwise, str)) and not isinstance(measured, (bool, str)):
            try:
                estimate = _plain(_as_estimate(measured))
            except (TypeError, ValueError):
                estimate = None
        text = c.verdict_for(model)
        models[SINGLE_MODEL if model is None else str(model)] = {
            "measured": c.shown_for(model), "value": _plain(measured), "estimate": estimate,
            "verdict": text, "outcome": outcome_of(text), "edge_distance": edge_distance(c, model),
        }
    return {"claim": c.claim, "source": c.source, "paper": c.paper,
            "rule": c.rule if isinstance(c.rule, str) else c.rule.describe(), "models": models}


def recorded_claims() -> list[dict]:
    """The rows every ``claims_table`` call in this process recorded, in order."""
    return list(_RECORDED.values())


def record_claims(claims: Sequence[Claim], path: str | Path | None = None) -> Path | None:
    """Record ``claims`` and, when ``path`` or ``$SPATIALKIT_RESULTS`` names a file, merge every recorded row
    into it (atomically). Returns the file written, or None. A failure to write warns, never raises."""
    for c in claims:
        try:
            _RECORDED[(c.claim, c.source, c.paper)] = claim_record(c)
        except Exception as err:  # recording must never break a notebook's table
            warnings.warn(f"claims: could not record {c.claim!r}: {err}", stacklevel=2)
    target = results_target(path)
    if target is None:
        return None
    rows = recorded_claims()
    models: list[str] = []
    for row in rows:
        models += [m for m in row["models"] if m not in models]
    try:
        return update_results(target, {"schema": 1, "claims": rows, "models": models,
                                       "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    except OSError as err:
        warnings.warn(f"claims: could not write results to {target}: {err}", stacklevel=2)
        return None
