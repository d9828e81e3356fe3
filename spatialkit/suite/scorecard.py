"""The reproduction scorecard: every claim of every chapter and its verdict per model, from results files.

Each executed notebook leaves ``book/executed/NAME.results.json`` beside itself (the kernel writes it: see
``spatialkit.present.claims.record_claims`` and ``spatialkit.suite.notebook.record_context``; the runner
publishes it). This module only reads those JSON files (the suite imports no analysis code):

* :func:`table` turns one or more result folders into rows: chapter, claim, paper's number, then one verdict
  column per model run (with two or more folders, one per folder and model, plus whether they agree);
* :func:`render` prints them as an aligned text table, CSV or JSON (``spatialkit results``);
* :func:`markdown` writes the book's Scorecard page (``spatialkit.suite.book`` puts it after the chapters),
  headed by :func:`build_info` (the spatialkit version and git commit the book was built from).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from spatialkit.suite.runner import RESULTS_SUFFIX

SINGLE_MODEL = ""  # the model key of a claim judged on one model (spatialkit.present.claims.SINGLE_MODEL)
FORMATS = ("table", "csv", "json")
SINGLE_COLUMN = "own models / no model"  # the book's header of the single-model verdict column
OUTCOMES = ("reproduced", "contradicted", "inconclusive", "not testable")


class ScorecardError(RuntimeError):
    """No results to show (the message says where it looked)."""


def load(folder: Path | str) -> list[dict]:
    """The results files in ``folder``, in catalog order (then by name); each dict gains ``notebook``."""
    from spatialkit.suite import catalog  # lazy: the CLI starts without it

    folder = Path(folder)
    order = {name: i for i, name in enumerate(catalog.NOTEBOOKS)}
    found = []
    for path in sorted(folder.glob(f"*{RESULTS_SUFFIX}")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ScorecardError(f"{path}: not a readable results file ({err})") from None
        data.setdefault("notebook", path.name[: -len(RESULTS_SUFFIX)])
        data["file"] = str(path)
        found.append(data)
    return sorted(found, key=lambda d: (order.get(d["notebook"], len(order)), d["notebook"]))


def column_name(model: str, folder: str | None = None) -> str:
    head = "verdict" if model == SINGLE_MODEL else f"verdict: {model}"
    return head if folder is None else f"{folder} | {head}"


def folder_labels(folders: Sequence[Path | str]) -> list[str]:
    """Short unique names for the folders (their last path parts)."""
    paths = [Path(f).resolve() for f in folders]
    for depth in range(1, 1 + max(len(p.parts) for p in paths)):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


@dataclass
class Table:
    columns: list[str]
    rows: list[dict[str, Any]]
    folders: list[str] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)  # per row: measured text per column
    counted: list[str] | None = None  # the columns counts() tallies (default: the verdict columns)
    sources: list[str] = field(default_factory=list)  # per row: where the claim and the paper's number come from


def table(folders: Sequence[Path | str]) -> Table:
    """Rows (chapter, claim, paper's number, verdict per model [per folder], [agree]) from result folders."""
    folders = list(folders)
    if not folders:
        raise ScorecardError("no results folder given")
    labels = folder_labels(folders) if len(folders) > 1 else [None]
    loaded = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise ScorecardError(f"{folder}: not a folder")
        results = load(folder)
        if not results:
            raise ScorecardError(f"{folder}: no *{RESULTS_SUFFIX} files (run `spatialkit run` first; notebooks "
                                 "executed before results were recorded need a re-run, e.g. --force)")
        loaded.append(results)
    return tabulate(loaded, labels, [str(f) for f in folders])


def tabulate(loaded: Sequence[Sequence[dict]], labels: Sequence[str | None],
             folders: Sequence[str] = ()) -> Table:
    """The rows of :func:`table` from loaded results, one list per folder (label None: a single folder)."""
    labels = list(labels)
    keys: list[tuple] = []  # (chapter, claim, source, paper) in first-seen order
    cells: dict[tuple, dict] = {}
    columns_seen: list[str] = []
    for label, results in zip(labels, loaded):
        for res in results:
            for claim in res.get("claims", []):
                key = (res["notebook"], claim.get("claim", ""), claim.get("source", ""), claim.get("paper", ""))
                if key not in cells:
                    keys.append(key)
                    cells[key] = {}
                for model, m in (claim.get("models") or {}).items():
                    col = column_name(model, label)
                    if col not in columns_seen:
                        columns_seen.append(col)
                    cells[key][col] = (m.get("outcome") or m.get("verdict", ""), m.get("measured", ""),
                                       m.get("verdict", ""), label, m.get("edge_distance"))
    verdict_cols = _ordered(columns_seen, labels)
    several = len(labels) > 1
    columns = ["chapter", "claim", "paper's number"] + verdict_cols + (["agree"] if several else [])
    rows, details, sources = [], [], []
    for key in keys:
        sources.append(key[2])
        row = {"chapter": key[0], "claim": key[1], "paper's number": key[3]}
        detail = {}
        for col in verdict_cols:
            got = cells[key].get(col)
            row[col] = got[0] if got else "—"
            detail[col] = {"measured": got[1], "verdict": got[2], "edge_distance": got[4]} if got else None
        if several:
            row["agree"] = _agree(cells[key], labels)
        rows.append(row)
        details.append(detail)
    return Table(columns, rows, list(folders), details, sources=sources)


def _ordered(columns: list[str], labels: list) -> list[str]:
    """Folder by folder (in the given order), single-model column first within a folder."""
    def rank(col: str) -> tuple:
        folder = next((i for i, lab in enumerate(labels) if lab is not None and col.startswith(f"{lab} | ")), 0)
        return folder, 0 if col.endswith("| verdict") or col == "verdict" else 1, columns.index(col)
    return sorted(columns, key=rank)


def _agree(cells: dict, labels: list) -> str:
    """'yes' when every folder gives the same outcomes (per model, in model order), 'no' when they differ,
    '—' when a folder lacks the claim."""
    per_folder = []
    for label in labels:
        outcomes = [v[0] for c, v in cells.items() if v[3] == label]
        if not outcomes:
            return "—"
        per_folder.append(sorted(outcomes))
    return "yes" if all(p == per_folder[0] for p in per_folder) else "no"


NEAR = 0.01  # a verdict whose CI ends within this of its rule's threshold is marked (spatialkit.present.claims.NEAR)
NEAR_MARK = "†"


def is_near(edge_distance: float | None) -> bool:
    """A recorded ``edge_distance`` (``claims.claim_record``) under ``NEAR``; None (no threshold, not judged,
    or recorded before the field existed) is not near."""
    return edge_distance is not None and edge_distance < NEAR


def counts(t: Table) -> dict[str, dict[str, int]]:
    """Per verdict column: how many claims got each outcome."""
    out = {}
    for col in t.columns[3:] if t.counted is None else t.counted:
        if col == "agree":
            continue
        values = [r[col] for r in t.rows if r[col] != "—"]
        out[col] = {o: sum(v == o for v in values) for o in OUTCOMES}
    return out


def render(t: Table, fmt: str = "table") -> str:
    if fmt not in FORMATS:
        raise ScorecardError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "json":
        rows = [{**row, "details": detail} for row, detail in zip(t.rows, t.details)]
        return json.dumps({"folders": t.folders, "columns": t.columns, "counts": counts(t), "rows": rows},
                          indent=1, ensure_ascii=False)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=t.columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(t.rows)
        return buf.getvalue()
    widths = {c: min(60, max([len(c)] + [len(str(r[c])) for r in t.rows])) for c in t.columns}

    def line(values: dict) -> str:
        return "  ".join(_clip(str(values[c]), widths[c]).ljust(widths[c]) for c in t.columns).rstrip()

    out = [line({c: c for c in t.columns}), line({c: "-" * widths[c] for c in t.columns})]
    out += [line(r) for r in t.rows]
    for col, n in counts(t).items():
        out.append(f"{col}: " + ", ".join(f"{k} {v}" for k, v in n.items()))
    return "\n".join(out) + "\n"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --- the book's page ------------------------------------------------------------------------------

def build_info(root: Path | str) -> dict[str, Any]:
    """What the book was built from: spatialkit version, git commit (and whether the tree had changes),
    the repository and branch the launch buttons and the Colab/Binder install cell use."""
    import spatialkit  # lazy: the CLI starts without it
    from spatialkit.suite.bootstrap import read_repository, requirement  # lazy: the CLI starts without it

    root = Path(root)
    url, branch = read_repository(root / "_config.yml")

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"spatialkit": spatialkit.__version__, "commit": commit, "modified": bool(status),
            "repository": url, "branch": branch, "install": requirement(url, branch),
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(folder: Path | str, chapters: Sequence[str], info: dict[str, Any] | None = None,
             titles: dict[str, str] | None = None) -> str:
    """The Scorecard page: one table of every claim of ``chapters`` (notebook names) with its verdicts."""
    titles = titles or {}
    lines = ["# Scorecard", "",
             "Every claim the chapters test, the paper's number with the paper it comes from, and the verdict per "
             "model run (with the value measured here). Verdicts come from each chapter's claims table "
             "(`spatialkit.present.claims`); the same table prints with `spatialkit results`, and "
             "`spatialkit results A B` compares two runs.",
             "",
             f"The column *{SINGLE_COLUMN}* holds claims a chapter tests on models of its own (notebook 01's "
             "small classifiers) or on no model at all (the scene world). Every other column is one model. "
             "`healthy` is the control: on a claim about a failure, a *contradicted* verdict there is what a "
             "model without the failure should give, so the tallies below count what each model showed, not "
             "whether the blog was confirmed.",
             ""]
    if info:
        commit = info.get("commit") or "unknown"
        short = commit[:12] + (" + local changes" if info.get("modified") else "")
        lines += [f"Built from spatialkit {info.get('spatialkit')}, commit `{short}`, on {info.get('built_at')}; "
                  f"Colab/Binder install `{info.get('install')}`.", ""]
    results = {r["notebook"]: r for r in load(folder)} if Path(folder).is_dir() else {}
    missing = [c for c in chapters if c not in results]
    present = [c for c in chapters if c in results]
    if present:
        t = tabulate([[results[c] for c in present]], [None], [str(folder)])
        header = ["Chapter", "Claim", "Paper (source)"] + [
            c.replace("verdict: ", "") if c != "verdict" else SINGLE_COLUMN for c in t.columns[3:]]
        lines += ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
        for i, (row, detail) in enumerate(zip(t.rows, t.details)):
            name = row["chapter"]
            chapter = f"[{_md(titles.get(name, name))}]({name}.ipynb)"
            source = t.sources[i] if t.sources else ""
            number = row["paper's number"]
            paper = f"{number} ({source})" if source else number
            cells = [chapter, _md(row["claim"]), _md(paper)]
            for col in t.columns[3:]:
                d = detail.get(col)
                mark = NEAR_MARK if d is not None and is_near(d.get("edge_distance")) else ""
                cells.append("—" if d is None else f"**{_md(row[col])}**{mark} {_md(d['measured'])}".strip())
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""]
        for col, n in counts(t).items():
            label = SINGLE_COLUMN if col == "verdict" else col.replace("verdict: ", "")
            near = sum(is_near((d.get(col) or {}).get("edge_distance")) for d in t.details)
            lines.append(f"- {_md(label)}: " + ", ".join(f"{v} {k}" for k, v in n.items() if v)
                         + (f" ({near} {NEAR_MARK})" if near else ""))
        if any(is_near((d or {}).get("edge_distance")) for row in t.details for d in row.values()):
            lines += ["", f"{NEAR_MARK} The verdict's CI ends within {100 * NEAR:.0f} point of the threshold its "
                      "rule compares it with: another training run or another sample of items could move it."]
        lines.append("")
        params = [f"- {_md(titles.get(c, c))}: " + ", ".join(
            f"`{k}={v}`" for k, v in (results[c].get("parameters") or {}).items()) for c in present]
        lines += ["## Parameters of these runs", ""] + params + [""]
    if missing:
        lines += ["```{note}", "No results file for: " + ", ".join(missing) + " (executed before results were "
                  "recorded, or not executed; `spatialkit run --force --only NAME` writes one).", "```", ""]
    return "\n".join(lines)
