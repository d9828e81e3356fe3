"""WhatsUp (Kamath et al., EMNLP 2023) as AdaptVis (Chen et al., ICML 2025) evaluates it: file formats, the
question each caption list becomes, the scoring rule, the tuning split and individual/pair/set accuracy.

    items = load_subset("/data/whatsup", "controlled_a")                 # the real files, when present
    items = from_export(to_whatsup(bench_items, bench_scenes, folder))   # WhereBench exported the same way
    accuracies(df)                                                       # individual / pair / set

Running a model on the items lives in ``spatialkit.analysis.whatsup_eval`` (this module imports no model code).

WhatsUp ships caption lists with the correct caption first; AdaptVis turns each into a question:
``Where is the {A} in relation to the {B}? Answer with {options}.`` (one-object sets: ``Where is the {A} in the
photo?``), greedy decoding, correct if the gold word appears in the output. The subject/object and the gold
relation are parsed from the correct caption.

Options per subset (4 by default, 6 with ``n_options=6``, declared once in ``OPTIONS``): What'sUp A
left/right/on/under, What'sUp B left/right/front/behind, COCO/GQA two-object left/right/above/below, one-object
left/right/top/bottom.

Pair and set accuracy (What'sUp): the items that show the same two objects form a set (4 images: one per
relation); a set counts if every item in it is right, a pair (a relation and its opposite, e.g. left/right) if
both are. On WhereBench exports sets are formed the same way, by the named object pair, across scenes.
"""

from __future__ import annotations
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence
import numpy as np
import pandas as pd
import hashlib
import json
import os
import tempfile
from spatialkit.common.params import check_number
from spatialkit.world.questions import Question
from spatialkit.world.scene import Scene, _POSITION_PHRASE, _article
from spatialkit.world.wherebench import Item



SUBSET_FILES = {
    "controlled_a": "controlled_images_dataset.json",  # What'sUp A: 412 images, on/under/left/right
    "controlled_b": "controlled_clevr_dataset.json",  # What'sUp B: 408 images, left/right/front/behind
    "coco_one": "coco_qa_one_obj.json",
    "coco_two": "coco_qa_two_obj.json",
    "gqa_one": "vg_qa_one_obj.json",
    "gqa_two": "vg_qa_two_obj.json",
}


# "wherebench": a spatialkit.world.to_whatsup export mixing tasks; options follow each item's task (below)
SUBSETS = tuple(SUBSET_FILES) + ("wherebench",)


OPTIONS = {
    "controlled_a": ("left", "right", "on", "under"),
    "controlled_b": ("left", "right", "front", "behind"),
    "two": ("left", "right", "above", "below"),
    "one": ("left", "right", "top", "bottom"),
}


SIX_EXTRA = {"controlled_a": ("front", "behind"), "controlled_b": ("on", "under"), "two": ("front", "behind"),
             "one": ("front", "behind")}


OPPOSITE = {"left": "right", "right": "left", "on": "under", "under": "on", "above": "below", "below": "above",
            "front": "behind", "behind": "front", "top": "bottom", "bottom": "top"}


# relation phrases of WhatsUp captions and of spatialkit.world.caption_for, longest first; value = gold word
_RELATIONS = {
    "to the left of": "left", "to the right of": "right", "on the left of": "left", "on the right of": "right",
    "on the left": "left", "on the right": "right", "at the top of": "top", "at the bottom of": "bottom",
    "at the top": "top", "at the bottom": "bottom", "in front of": "front", "behind": "behind",
    "on top of": "on", "above": "above", "below": "below", "under": "under", "beneath": "under", "on": "on",
    "left of": "left", "right of": "right",
}


_ARTICLE = r"(?:a|an|the)\s+"


_CAPTION = re.compile(
    rf"^\s*(?:{_ARTICLE})?(?P<a>.+?)\s+(?:is\s+|are\s+)?(?P<rel>{'|'.join(re.escape(r) for r in _RELATIONS)})"
    rf"(?:\s+(?:{_ARTICLE})?(?P<b>.+?))?\s*\.?\s*$", re.IGNORECASE)


_ONE_OBJECT_TAIL = re.compile(r"^(?:the\s+)?(?:image|photo|picture)$", re.IGNORECASE)


@dataclass(frozen=True)
class QAItem:
    """One generative question built from a WhatsUp record."""

    subset: str
    image_path: str
    subject: str
    object: str | None  # None for one-object questions
    gold: str  # the gold relation word
    options: tuple[str, ...]
    prompt: str  # the paper's prompt (without chat template)
    native_prompt: str | None = None  # a spatialkit question text, when the record carries one (organism prompts)
    scene_seed: int | None = None

    @property
    def set_key(self) -> tuple[str, str, str | None]:
        return (self.subset, self.subject, self.object)


def parse_caption(caption: str) -> tuple[str, str, str | None]:
    """(subject, gold word, object or None) of a caption such as "A mug to the left of a plate"."""
    m = _CAPTION.match(caption)
    if m is None:
        raise ValueError(f"cannot parse a spatial relation from caption {caption!r}")
    b = m.group("b")
    if b is not None:
        b = re.sub(r"\s+of\s+the\s+(?:image|photo|picture)$", "", b, flags=re.IGNORECASE).strip()
        if _ONE_OBJECT_TAIL.match(b):
            b = None
    return m.group("a").strip(), _RELATIONS[m.group("rel").lower()], b


def options_for(subset: str, one_object: bool, n_options: int = 4, gold: str | None = None) -> tuple[str, ...]:
    """The answer options of a question. "wherebench" exports: depth questions get What'sUp B's options,
    one-object questions the one-object list, the rest the two-object list."""
    if n_options not in (4, 6):
        raise ValueError(f"parameter 'n_options' = {n_options!r} is invalid; allowed: 4 or 6")
    if one_object:
        key = "one"
    elif subset in ("controlled_a", "controlled_b"):
        key = subset
    elif subset == "wherebench" and gold in ("front", "behind"):
        key = "controlled_b"
    else:
        key = "two"
    return OPTIONS[key] + (SIX_EXTRA[key] if n_options == 6 else ())


def paper_prompt(subject: str, obj: str | None, options: Sequence[str]) -> str:
    """The AdaptVis question (REFERENCE §3), without the model's chat template."""
    listed = ", ".join(options[:-1]) + " or " + options[-1]
    if obj is None:
        return f"Where is the {subject} in the photo? Answer with {listed}."
    return f"Where is the {subject} in relation to the {obj}? Answer with {listed}."


def to_qa(records, subset: str, n_options: int = 4) -> list[QAItem]:
    """QA items from ``spatialkit.world.WhatsUpItem`` records (correct caption first)."""
    if subset not in SUBSETS:
        raise ValueError(f"parameter 'subset' = {subset!r} is invalid; allowed: one of {list(SUBSETS)}")
    out = []
    for rec in records:
        subject, gold, obj = parse_caption(rec.caption_options[0])
        options = options_for(subset, obj is None, n_options, gold)
        if gold not in options:
            raise ValueError(f"{rec.image_path}: gold relation {gold!r} is not among the {subset} options {options}")
        question = getattr(rec, "question", None)
        out.append(QAItem(subset, rec.image_path, subject, obj, gold, options, paper_prompt(subject, obj, options),
                          question.text if question is not None else None, getattr(rec, "scene_seed", None)))
    return out


def load_subset(root: str | Path, subset: str, n_options: int = 4, image_root: str | Path | None = None) -> list[QAItem]:
    """The real WhatsUp file of ``subset`` under ``root`` (``SUBSET_FILES``), as QA items."""

    if subset not in SUBSETS:
        raise ValueError(f"parameter 'subset' = {subset!r} is invalid; allowed: one of {list(SUBSETS)}")
    path = Path(root) / SUBSET_FILES[subset]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: download the WhatsUp data (github.com/amitakamath/whatsup_vlms, "
                                f"data/) and pass its folder as root")
    return to_qa(from_whatsup(path, image_root), subset, n_options)


def from_export(path: str | Path, subset: str = "wherebench", n_options: int = 4) -> list[QAItem]:
    """QA items from a ``spatialkit.world.to_whatsup`` export (sums verified)."""

    return to_qa(from_whatsup(path), subset, n_options)


def is_correct(output: str, gold: str) -> bool:
    """The official rule: the gold word appears in the (lower-cased) output, as a whole word."""
    return re.search(rf"\b{re.escape(gold.lower())}\b", output.lower()) is not None


def accuracies(df: pd.DataFrame) -> dict[str, float]:
    """Individual accuracy, pair accuracy (a relation and its opposite within a set, both right) and set
    accuracy (every item of a set right). Sets: items naming the same subject and object."""
    if df.empty:
        return {"individual": float("nan"), "pair": float("nan"), "set": float("nan")}
    sets = df.groupby(["subset", "subject", df["object"].fillna("")], sort=False)
    pair_hits = []
    for _, g in sets:
        by_gold = g.groupby("gold")["correct"].all()
        for gold in sorted(by_gold.index):
            opposite = OPPOSITE.get(gold)
            if opposite in by_gold.index and gold < opposite:
                pair_hits.append(bool(by_gold[gold] and by_gold[opposite]))
    return {"individual": float(df["correct"].mean()),
            "pair": float(np.mean(pair_hits)) if pair_hits else float("nan"),
            "set": float(sets["correct"].all().mean())}


def split_indices(n: int, seed: int, tune_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """The official protocol's random split: (tune indices, report indices), ``tune_fraction`` for tuning."""
    check_number("tune_fraction", tune_fraction, 0, 1, low_open=True, high_open=True)
    order = np.random.default_rng([seed, 20]).permutation(n)
    k = max(1, int(round(tune_fraction * n)))
    return np.sort(order[:k]), np.sort(order[k:])


def best(results: pd.DataFrame, by: Sequence[str], score: str = "accuracy") -> pd.Series:
    """The row with the highest ``score`` (ties: the first in ``by`` order, so the choice is deterministic)."""
    return results.sort_values([score, *by], ascending=[False, *[True] * len(by)], kind="stable").iloc[0]


def group_of(item: QAItem) -> str:
    """The WhatsUp-style subset an item mirrors: one-object, or two-object (by its relation family)."""
    if item.object is None:
        return "one-object"
    if item.gold in ("front", "behind"):
        return "two-object front/behind"
    if item.gold in ("on", "under"):
        return "two-object on/under"
    return "two-object left/right/above/below"


def correct_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """(items x alphas) bool: is item i right under ScalingVis(α)."""
    return table.pivot(index="item", columns="alpha", values="correct").astype(bool)


def adaptvis_correct(table: pd.DataFrame, alpha1: float, alpha2: float, beta: float) -> pd.Series:
    """Per item, correctness of AdaptVis(α1, α2, β), looked up from the ScalingVis table (see above)."""
    matrix = correct_matrix(table)
    for a in (alpha1, alpha2):
        if a not in matrix.columns:
            raise ValueError(f"α = {a} is not in the ScalingVis table (alphas {list(matrix.columns)})")
    confidence = table[table.alpha == 1.0].set_index("item")["confidence"].reindex(matrix.index)
    return pd.Series(np.where(confidence < beta, matrix[alpha1], matrix[alpha2]), index=matrix.index, name="correct")


def tune_and_report(table: pd.DataFrame, *, split_seed: int, alphas: Sequence[float], alpha1s: Sequence[float],
                    alpha2s: Sequence[float], betas: Sequence[float], tune_fraction: float = 0.2) -> dict:
    """The official protocol on one random split: pick ScalingVis' α and AdaptVis' (α1, α2, β) by accuracy on
    the tuning share, report per-item correctness of baseline / ScalingVis / AdaptVis on the rest.

    Returns ``{"alpha", "alpha1", "alpha2", "beta", "tune", "report"}``: ``tune``/``report`` item indices,
    and ``correct``: a DataFrame (report items x methods) of booleans.
    """
    matrix = correct_matrix(table)
    tune, report = split_indices(len(matrix), split_seed, tune_fraction)
    tune_items, report_items = matrix.index[tune], matrix.index[report]
    scaling = pd.DataFrame({"alpha": list(alphas),
                            "accuracy": [float(matrix.loc[tune_items, a].mean()) for a in alphas]})
    alpha = float(best(scaling, ["alpha"])["alpha"])
    grid = [(a1, a2, b, float(adaptvis_correct(table, a1, a2, b).loc[tune_items].mean()))
            for a1 in alpha1s for a2 in alpha2s for b in betas]
    adaptive = pd.DataFrame(grid, columns=["alpha1", "alpha2", "beta", "accuracy"])
    pick = best(adaptive, ["alpha1", "alpha2", "beta"])
    a1, a2, b = float(pick.alpha1), float(pick.alpha2), float(pick.beta)
    correct = pd.DataFrame({"baseline": matrix.loc[report_items, 1.0],
                            "ScalingVis": matrix.loc[report_items, alpha],
                            "AdaptVis": adaptvis_correct(table, a1, a2, b).loc[report_items]})
    return {"alpha": alpha, "alpha1": a1, "alpha2": a2, "beta": b, "tune": tune_items.to_numpy(),
            "report": report_items.to_numpy(), "correct": correct, "tune_scaling": scaling, "tune_adaptive": adaptive}


# --------------------------------------------------------------------------------------------------
# WhatsUp files written from and read into the scene world





@dataclass(frozen=True)
class WhatsUpItem:
    image_path: str
    caption_options: tuple[str, ...]   # the correct caption first (answer index 0)
    question: Question | None = None   # present for files written by ``to_whatsup``
    scene_seed: int | None = None
    answer: int = 0

    def item(self) -> Item:
        if self.question is None or self.scene_seed is None:
            raise ValueError(f"{self.image_path}: not a spatialkit item (no question/scene_seed keys)")
        return Item(self.scene_seed, self.question)


def caption_for(scene: Scene, q: Question, option: str) -> str:
    """The statement that option ``option`` of question ``q`` makes about the scene."""
    ref = scene.ref
    if q.task == "where_two":
        rel = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}[option]
        return f"the {ref(q.objects[0])} is {rel} the {ref(q.objects[1])}"
    if q.task in ("depth", "on_under", "whatsup_a", "whatsup_b"):  # the WhatsUp mirrors' relations too
        rel = {"in front": "in front of", "behind": "behind", "on": "on", "under": "under",
               "left": "to the left of", "right": "to the right of"}[option]
        return f"the {ref(q.objects[0])} is {rel} the {ref(q.objects[1])}"
    if q.task == "where_one":
        return f"the {ref(q.objects[0])} is {_POSITION_PHRASE[option]} of the image"
    if q.task == "color":
        return f"the {ref(q.objects[0])} is {option}"
    if q.task == "count":
        return f"there {'is' if option == '1' else 'are'} {option} object{'' if option == '1' else 's'}"
    if q.task == "identity":
        return f"there is {_article(option)} {option}"
    if q.task == "presence":
        kind = q.text[len("Is there "):-len(" in the image?")]
        return f"there is {kind}" if option == "yes" else f"there is no {kind.split(' ', 1)[1]}"
    raise ValueError(f"unknown task {q.task!r}")


def _question_json(q: Question) -> dict:
    return {"text": q.text, "options": list(q.options), "answer": q.answer, "family": q.family,
            "task": q.task, "objects": list(q.objects), "relation": q.relation}


def _atomic_write(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (temp file + os.replace); return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return hashlib.sha256(data).hexdigest()


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def to_whatsup(items: Sequence[Item], scenes: Sequence[Scene], folder: str | os.PathLike,
               name: str = "whatsup.json") -> Path:
    """Write ``images/*.png`` + ``name`` (WhatsUp JSON, correct caption first) + ``SHA256SUMS``.

    Returns the JSON path. All files are written atomically; ``from_whatsup`` verifies the sums.
    """
    if len(items) != len(scenes):
        raise ValueError(f"to_whatsup: {len(items)} items but {len(scenes)} scenes; they must align")
    folder = Path(folder)
    sums: dict[str, str] = {}
    records = []
    for item, scene in zip(items, scenes):
        if scene.seed != item.scene_seed:
            raise ValueError(f"to_whatsup: item seed {item.scene_seed} does not match scene seed {scene.seed}")
        rel = f"images/scene_{item.scene_seed}.png"
        if rel not in sums:
            sums[rel] = _atomic_write(folder / rel, _png_bytes(scene.image))
        q = item.question
        gold_first = [q.gold] + [o for k, o in enumerate(q.options) if k != q.answer]
        records.append({"image_path": rel,
                        "caption_options": [caption_for(scene, q, o) for o in gold_first],
                        "question": _question_json(q), "scene_seed": item.scene_seed})
    sums[name] = _atomic_write(folder / name, json.dumps(records, indent=1).encode())
    _atomic_write(folder / "SHA256SUMS", "".join(f"{h}  {p}\n" for p, h in sorted(sums.items())).encode())
    return folder / name


def from_whatsup(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 verify: bool = True) -> list[WhatsUpItem]:
    """Read a WhatsUp-format JSON (ours or the original What'sUp / COCO-QA / VG-QA files).

    Relative image paths are resolved against ``image_root`` (default: the JSON's folder). With a
    ``SHA256SUMS`` file next to the JSON (written by ``to_whatsup``) the files are verified.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if verify and (path.parent / "SHA256SUMS").exists():
        for line in (path.parent / "SHA256SUMS").read_text().splitlines():
            digest, rel = line.split("  ", 1)
            actual = hashlib.sha256((path.parent / rel).read_bytes()).hexdigest()
            if actual != digest:
                raise ValueError(f"{path.parent / rel}: sha256 {actual} does not match SHA256SUMS ({digest})")
    records = json.loads(path.read_text())
    out = []
    for k, rec in enumerate(records):
        if isinstance(rec, list):  # COCO-QA / VG-QA: [image_id, correct caption, wrong caption]
            out.append(WhatsUpItem(str(root / str(rec[0])), tuple(rec[1:])))
            continue
        if "image_path" not in rec or "caption_options" not in rec:
            raise ValueError(f"{path}: record {k} lacks 'image_path' or 'caption_options'")
        image_path = rec["image_path"]
        if not os.path.isabs(image_path):
            image_path = str(root / image_path)
        q = rec.get("question")
        question = None
        if q is not None:
            question = Question(q["text"], tuple(q["options"]), int(q["answer"]), q["family"], q["task"],
                                tuple(q["objects"]), q["relation"])
        out.append(WhatsUpItem(image_path, tuple(rec["caption_options"]), question, rec.get("scene_seed")))
    return out


def load_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 image from a file (for WhatsUp items)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()
