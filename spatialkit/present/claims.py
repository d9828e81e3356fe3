"""Claim-vs-measured tables: every notebook ends with one, computed from its own results."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass
class Claim:
    """One row: what the blog/paper says, what this notebook measured, and the verdict.

    ``verdict`` must be decided by code from the measured numbers (e.g. ``"agrees" if ci.low > x
    else "does not reproduce"``), never typed by hand.
    """

    claim: str
    source: str
    paper: str
    measured: str
    verdict: str


def claims_table(claims: list[Claim]) -> pd.DataFrame:
    """A DataFrame with one row per claim, ready to display."""
    return pd.DataFrame(
        [(c.claim, c.source, c.paper, c.measured, c.verdict) for c in claims],
        columns=["claim", "source", "paper's number", "measured here", "verdict"],
    )


def verdict(agrees: bool, *, partly: bool = False) -> str:
    """Uniform verdict wording."""
    if agrees:
        return "reproduced"
    return "partly reproduced" if partly else "not reproduced"
