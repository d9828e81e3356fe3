"""Notebook parameter declarations and validation.

Every notebook declares its parameters once, in ``spatialkit.suite.catalog``, as a list of :class:`Param`.
The runner validates overrides before launching papermill, and the notebook's first code cell
validates again (``spatialkit.suite.notebook.setup``), so a bad value fails in well under a second with one
line naming the notebook, the parameter, the value and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Sequence


class ParameterError(ValueError):
    """A notebook parameter has a bad name, type or value. ``str(err)`` is one line."""


_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list"}


@dataclass(frozen=True)
class Param:
    """One notebook parameter.

    ``kind`` is int, float, str, bool or list. Numbers may have ``low``/``high`` bounds (inclusive, or
    exclusive with ``low_open``/``high_open``);
    strings and list items may have ``choices``. ``item_kind`` types list elements. ``allow_other``
    lets a str parameter also accept values outside ``choices`` that pass ``other_check`` (used for
    ``model``: "tiny" or a Hugging Face id/path).

    ``path`` marks a str parameter whose value (outside ``choices``) is a file-system path: the runner
    resolves it against the caller's working directory (the kernel runs in notebooks/) and checks it exists
    before any kernel starts. ``path="model"``: a local model folder (holding config.json), or, when no such
    path exists, a Hugging Face hub id ("org/name") left for the kernel to look up.
    """

    name: str
    kind: type
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: Sequence[Any] | None = None
    item_kind: type | None = None
    min_len: int = 0
    max_len: int | None = None
    allow_other: bool = False
    low_open: bool = False
    high_open: bool = False
    path: bool | str = False

    def _interval(self) -> str:
        return (f"{'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}"
                f"{')' if self.high_open else ']'}")

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        if self.kind is list:
            base = f"a list of {_TYPE_NAMES.get(self.item_kind, 'values')}"
            if self.choices is not None:
                base += f" from {list(self.choices)}"
            if self.low is not None or self.high is not None:
                base += f" each in {self._interval()}"
            if self.min_len or self.max_len is not None:
                base += f" with {self.min_len}..{self.max_len if self.max_len is not None else 'any'} items"
            return base
        if self.choices is not None:
            extra = " or a Hugging Face model id / local path" if self.allow_other else ""
            return f"one of {list(self.choices)}{extra}"
        if self.kind in (int, float) and (self.low is not None or self.high is not None):
            return f"{_TYPE_NAMES[self.kind]} in {self._interval()}"
        return _TYPE_NAMES.get(self.kind, self.kind.__name__)

    def coerce(self, value: Any, notebook: str) -> Any:
        """Return ``value`` converted to this parameter's type, or raise :class:`ParameterError`."""
        if self.kind is list:
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                raise self._error(notebook, value)
            items = [self._coerce_scalar(v, self.item_kind, notebook, whole=value) for v in value]
            if len(items) < self.min_len or (self.max_len is not None and len(items) > self.max_len):
                raise self._error(notebook, value)
            for item in items:
                self._check_range(item, notebook, whole=value)
            return items
        coerced = self._coerce_scalar(value, self.kind, notebook, whole=value)
        self._check_range(coerced, notebook, whole=value)
        return coerced

    def _coerce_scalar(self, value: Any, kind: type | None, notebook: str, whole: Any) -> Any:
        if kind is None:
            return value
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise self._error(notebook, whole)
        if kind in (int, float):  # an int takes whole floats ("3.0" fails); a float takes ints; numeric strings parse
            if isinstance(value, bool):
                raise self._error(notebook, whole)
            if isinstance(value, int) or (isinstance(value, float) and (kind is float or value.is_integer())):
                return kind(value)
            if isinstance(value, str):
                try:
                    return kind(value)
                except ValueError:
                    raise self._error(notebook, whole) from None
            raise self._error(notebook, whole)
        if kind is str:
            if not isinstance(value, str):
                raise self._error(notebook, whole)
            return value
        raise TypeError(f"unsupported parameter kind {kind!r}")

    def _check_range(self, value: Any, notebook: str, whole: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value:  # NaN
                raise self._error(notebook, whole)
            if not self.in_range(value):
                raise self._error(notebook, whole)
        if self.choices is not None and value not in self.choices:
            if not (self.allow_other and isinstance(value, str) and value.strip()):
                raise self._error(notebook, whole)

    def in_range(self, value: float) -> bool:
        """``value`` lies within ``low``/``high`` (each bound inclusive unless it is open)."""
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def _error(self, notebook: str, value: Any) -> ParameterError:
        return ParameterError(
            f"{notebook}: parameter '{self.name}' = {value!r} is invalid; allowed: {self.allowed()}"
        )


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None, kind: type = float, *,
                 low_open: bool = False, high_open: bool = False, note: str = "") -> Any:
    """``value`` as ``kind`` (int or float) if it is a finite number in the range, else a one-line ParameterError.

    The library's argument checks (``check_number("alpha", alpha, 0, 100)``); the message names the parameter
    and what :class:`Param` allows: "parameter 'alpha' = -1 is invalid; allowed: float in [0, 100]", then
    ``note`` in parentheses. Unlike a notebook override nothing is coerced: strings and bools fail, an int
    parameter takes integers only (NumPy's too), a float parameter ints and floats; NaN and inf fail.
    ``name`` may be qualified ("PinConfig.steps").
    """
    spec = Param(name, kind, None, help=note, low=low, high=high, low_open=low_open, high_open=high_open)
    number = numbers.Integral if kind is int else numbers.Real
    if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value) \
            or not spec.in_range(value):
        raise ParameterError(f"parameter '{name}' = {value!r} is invalid; allowed: {spec.allowed()}"
                             + (f" ({note})" if note else ""))
    return kind(value)


def _fmt(bound: float | None) -> str:
    if bound is None:
        return "..."
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


@dataclass(frozen=True)
class NotebookSpec:
    """A notebook of the suite: its file stem, title and declared parameters."""

    name: str
    title: str
    params: tuple[Param, ...] = field(default_factory=tuple)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params)
        raise ParameterError(f"{self.name}: unknown parameter '{name}'; known parameters: {known}")

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
        """Validate ``values``; return them coerced. Unknown names are errors.

        With ``partial=False`` missing parameters are filled from the defaults.
        """
        out = {} if partial else self.defaults()
        for name, value in values.items():
            out[name] = self.param(name).coerce(value, self.name)
        if not partial:
            for p in self.params:
                out[p.name] = p.coerce(out[p.name], self.name)
        return out
