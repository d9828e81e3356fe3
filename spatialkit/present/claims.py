"""Claim-vs-measured tables: every notebook ends with one, computed from its own results.

A notebook lists its claims as data and renders them with one call::

    claims_table([
        Claim("+Normalize raises accuracy", "Qi et al. 2025, 2DS", "56.63 → 59.30 (+2.67)",
              acc_gain, Rule(">", 0.0), text=f"where-acc {format_estimate(acc_gain, 'pts')}"),
        ...
    ])

Each row's verdict is computed here, from its ``measured`` value and its ``rule``; nothing is typed by hand.
Rules are small frozen dataclasses (data, not code in the notebook), so a later change of what counts as
"reproduced" is a change of the rule objects in one place:

* ``Rule(direction, null, min_effect=None, partly="estimate")`` — one-sided: reproduced when the CI clears
  ``null`` (or ``null + min_effect``) in ``direction``; ``null`` may itself be an estimate (then its CI).
* ``Within(low, high, need="overlap")`` — the CI overlaps (or lies inside) an interval; ``covers(x)`` is
  ``Within(x, x)``.
* ``Every(rule)`` — a list of values: reproduced when ``rule`` reproduces on all, partly when on some.
* ``Holds(partly=False)`` — a yes/no check already computed in the notebook (``measured`` is a bool).
* a plain string — a fixed verdict such as ``"not testable (1 LM layer)"``.

Each rule returns an *outcome* (``"reproduced"``, ``"partly"``, ``"not"``, ``"opposite"``, ``"above"``,
``"below"``, ``"nan"``), worded by ``VERDICTS`` unless the rule's ``say`` overrides a wording.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence, Union

import pandas as pd

from spatialkit.common.stats import Estimate

#: default wording of each outcome a rule can return
VERDICTS: Mapping[str, str] = {
    "reproduced": "reproduced",
    "partly": "partly reproduced",
    "not": "not reproduced",       # the CI includes the null / misses the target
    "opposite": "not reproduced",  # the CI lies entirely on the other side of the null
    "above": "not reproduced",     # ``Within``: entirely above the interval
    "below": "not reproduced",     # ``Within``: entirely below the interval
    "nan": "not measured",         # the point estimate is NaN
}

COLUMNS = ["claim", "source", "paper's number", "measured here", "verdict"]

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


def _point(null: Any) -> float:
    return _as_estimate(null).mean if isinstance(null, (Estimate, tuple, list)) else float(null)


def _show(x: Any) -> str:
    if isinstance(x, (Estimate, tuple, list)):
        return "the other estimate's CI"
    return f"{float(x):g}"


@dataclass(frozen=True)
class RuleBase:
    """What every rule has: ``outcome(measured)`` (a key of ``VERDICTS``), ``say`` (outcome -> wording
    overrides), ``verdict(measured)`` (the wording) and ``describe()`` (the rule in words)."""

    def outcome(self, measured: Any) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def verdict(self, measured: Any) -> str:
        return {**VERDICTS, **dict(self.say)}[self.outcome(measured)]

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


def _partly(partly: Any, measured: Any) -> bool:
    """``partly`` given as a rule: partly when that rule reproduces on the same measured value."""
    return isinstance(partly, RuleBase) and partly.outcome(measured) == "reproduced"


@dataclass(frozen=True)
class Rule(RuleBase):
    """One-sided: is the measured value above (``">"``) or below (``"<"``) ``null``?

    reproduced  the CI clears ``null + min_effect`` (``null - min_effect`` for "<"), strictly;
    partly      ``min_effect`` is set and the CI clears only ``null``; or ``partly == "estimate"`` and the point
                estimate clears ``null``; or ``partly`` is a rule that reproduces;
    opposite    the CI lies entirely on the other side of ``null``;
    not         otherwise; ``nan`` when the point estimate is NaN.

    ``null`` may be a number or another estimate (then its facing CI end, and its mean for ``partly``).
    """

    direction: str = ">"
    null: Any = 0.0
    min_effect: float | None = None
    partly: Union[str, RuleBase, None] = "estimate"
    say: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.direction not in (">", "<"):
            raise ValueError(f"direction must be '>' or '<', got {self.direction!r}")
        if not (self.partly is None or self.partly == "estimate" or isinstance(self.partly, RuleBase)):
            raise ValueError(f"partly must be None, 'estimate' or a rule, got {self.partly!r}")

    def outcome(self, measured: Any) -> str:
        e = _as_estimate(measured)
        if e is None or math.isnan(e.mean):
            return "nan"
        up = self.direction == ">"
        sign = 1.0 if up else -1.0  # sign * (a - b) > 0 reads "a is beyond b in the claimed direction"
        near, far = (e.low, e.high) if up else (e.high, e.low)  # the CI end that must clear the threshold
        null_ci = _bound(self.null, "high" if up else "low")
        if sign * (near - (null_ci + sign * (self.min_effect or 0.0))) > 0:
            return "reproduced"
        if self.min_effect is not None and sign * (near - null_ci) > 0:
            return "partly"
        if self.partly == "estimate" and sign * (e.mean - _point(self.null)) > 0:
            return "partly"
        if _partly(self.partly, measured):
            return "partly"
        if sign * (far - _bound(self.null, "low" if up else "high")) < 0:
            return "opposite"
        return "not"

    def describe(self) -> str:
        d, null = self.direction, _show(self.null)
        out = f"CI {d} {null}" + (f" by {self.min_effect:g}" if self.min_effect is not None else "")
        if self.min_effect is not None:
            out += f"; partly: CI {d} {null}"
        elif self.partly == "estimate":
            out += f"; partly: estimate {d} {null}"
        elif isinstance(self.partly, RuleBase):
            out += f"; partly: {self.partly.describe()}"
        return out


@dataclass(frozen=True)
class Within(RuleBase):
    """Two-sided: the measured CI overlaps ``[low, high]`` (``need="overlap"``) or lies inside it
    (``need="inside"``), bounds inclusive; a plain number is a CI of width 0. ``Within(high=x)`` is
    "reaches x or lower".

    reproduced  the condition holds; partly  ``partly`` (a rule) reproduces;
    above/below the CI lies entirely above/below the interval; not  otherwise; nan  NaN point estimate.
    """

    low: float = -math.inf
    high: float = math.inf
    need: str = "overlap"
    partly: RuleBase | None = None
    say: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.need not in ("overlap", "inside"):
            raise ValueError(f"need must be 'overlap' or 'inside', got {self.need!r}")

    def outcome(self, measured: Any) -> str:
        e = _as_estimate(measured)
        if e is None or math.isnan(e.mean):
            return "nan"
        if self.need == "overlap":
            ok = e.low <= self.high and e.high >= self.low
        else:
            ok = e.low >= self.low and e.high <= self.high
        if ok:
            return "reproduced"
        if _partly(self.partly, measured):
            return "partly"
        if e.low > self.high:
            return "above"
        if e.high < self.low:
            return "below"
        return "not"

    def describe(self) -> str:
        if self.low == self.high:
            out = f"CI covers {self.low:g}"
        else:
            out = f"CI {'overlaps' if self.need == 'overlap' else 'inside'} [{self.low:g}, {self.high:g}]"
        return out + (f"; partly: {self.partly.describe()}" if self.partly is not None else "")


@dataclass(frozen=True)
class Every(RuleBase):
    """``measured`` is a list: reproduced when ``rule`` reproduces on every item (vacuously on none), partly
    when it does on some (``partly_if_any``), else not."""

    rule: RuleBase = field(default_factory=lambda: Rule(">", 0.0, partly=None))
    partly_if_any: bool = True
    say: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, measured: Sequence[Any]) -> str:
        hits = [self.rule.outcome(m) == "reproduced" for m in measured]
        if all(hits):
            return "reproduced"
        return "partly" if self.partly_if_any and any(hits) else "not"

    def describe(self) -> str:
        return f"every item: {self.rule.describe()}" + ("; partly: some item" if self.partly_if_any else "")


@dataclass(frozen=True)
class Holds(RuleBase):
    """A yes/no check computed in the notebook: ``measured`` is the bool; ``partly`` the weaker check."""

    partly: bool = False
    say: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, measured: Any) -> str:
        if measured:
            return "reproduced"
        return "partly" if self.partly else "not"

    def describe(self) -> str:
        return "check holds" + ("; partly: weaker check holds" if self.partly else "")


#: the plain yes/no rule
HOLDS = Holds()


def covers(value: float, **kw) -> Within:
    """Reproduced when the CI includes ``value`` (e.g. chance level)."""
    return Within(value, value, **kw)


def verdict(measured: Any, rule: RuleBase | str) -> str:
    """The verdict wording for ``measured`` under ``rule`` (a string rule is a fixed verdict)."""
    return rule if isinstance(rule, str) else rule.verdict(measured)


# -------------------------------------------------------------------------------------------------- table

@dataclass(frozen=True)
class Claim:
    """One row: what the blog/paper says, what this notebook measured, and the rule that judges it.

    ``measured`` is what the rule judges: an ``Estimate``, a (mean, low, high) triple, a number, a bool (for
    ``Holds``) or a list (for ``Every``). ``text`` is the "measured here" cell; by default
    ``format_estimate(measured)``. ``rule`` is a rule object or a fixed verdict string (``"not testable"``).
    """

    claim: str
    source: str
    paper: str
    measured: Any
    rule: RuleBase | str
    text: str | None = None

    @property
    def verdict(self) -> str:
        return verdict(self.measured, self.rule)

    @property
    def shown(self) -> str:
        if self.text is not None:
            return self.text
        if isinstance(self.measured, str):
            return self.measured
        if isinstance(self.measured, bool):
            return "yes" if self.measured else "no"
        return format_estimate(self.measured, digits=3)


def claims_table(claims: Sequence[Claim], *, rules: bool = False) -> pd.DataFrame:
    """A DataFrame with one row per claim (claim, source, paper's number, measured here, verdict), the verdict
    computed from each row's rule; ``rules=True`` adds a column describing the rule."""
    rows = [(c.claim, c.source, c.paper, c.shown, c.verdict) for c in claims]
    table = pd.DataFrame(rows, columns=COLUMNS)
    if rules:
        table["rule"] = [c.rule if isinstance(c.rule, str) else c.rule.describe() for c in claims]
    return table
