"""The run's results file (``$SPATIALKIT_RESULTS``, set by the runner): one JSON object that the notebook's
``setup()`` starts (notebook, parameters, environment) and its claims tables complete (claims, verdicts).
Written atomically; shared by ``spatialkit.suite.notebook`` and ``spatialkit.present.claims``, which may not
import each other."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

RESULTS_ENV = "SPATIALKIT_RESULTS"


def results_target(path: str | os.PathLike | None = None) -> Path | None:
    """``path``, else the runner's ``$SPATIALKIT_RESULTS``; None when neither (a notebook run by hand)."""
    target = path or os.environ.get(RESULTS_ENV)
    return Path(target) if target else None


def update_results(target: Path, fields: dict) -> Path:
    """Merge ``fields`` into the JSON object at ``target`` (an unreadable or missing file counts as empty) and
    write it back atomically."""
    try:
        data = json.loads(target.read_text()) if target.exists() else {}
    except (OSError, ValueError):
        data = {}
    data.update(fields)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, target)
    return target
