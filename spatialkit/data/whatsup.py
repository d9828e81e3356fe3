"""WhatsUp (Kamath et al., EMNLP 2023) as AdaptVis (Chen et al., ICML 2025) evaluates it: file formats, the
question each record becomes, the scoring rule, the tuning split and individual/pair/set accuracy.

    subsets = load_real("/data/whatsup_vlms")                            # a WhatsUp and/or AdaptVis checkout
    items = subsets["controlled_a"].items                                # QAItem: question, options, gold, image
    items = from_export(to_whatsup(bench_items, bench_scenes, folder))   # WhereBench exported the same way
    accuracies(df)                                                       # individual / pair / set

Running a model on the items lives in ``spatialkit.analysis.whatsup_eval`` (this module imports no model code).

**Two file formats, one item type** (``QAItem``: question, options in the file's order, gold, subject, object,
image path, subset):

* WhatsUp's own JSON (``read with load_subset``), one file per subset under ``<checkout>/data/``. Controlled A/B:
  ``[{"image_path": "data/controlled_images/mug_left_of_plate.jpeg", "caption_options": [correct, ...]}]`` with
  the image path relative to the *repository root* (the folder above ``data/``); COCO-QA / VG-QA rows
  ``[image_id, correct caption, wrong caption]`` with images ``data/val2017/{id:012d}.jpg`` and
  ``data/vg_images/{id}.jpg``. The question is built from the correct caption (``paper_prompt``).
* AdaptVis' prompt files (``read_prompts``), JSON lines, one file per subset in ``<AdaptVis>/prompts/``:
  ``{"id": 0, "question": "<image>\nUSER: Where is ... Answer with left, right, on or under.\nASSISTANT:",
  "answer": ["On"]}``, four options for Controlled A/B and COCO, six for VG. They carry no image: line k is
  record k of the subset's WhatsUp JSON (the official code pairs them by position), so ``load_real`` joins
  them with the WhatsUp files. The question text is kept exactly as written.

Quirks of the real files are kept, flagged per item (``QAItem.flags``) and counted per file
(``RealSubset.summary``), never dropped silently: ``QUIRKS`` lists them (plural "Where are ...", doubled
punctuation "bottom..", Oxford comma, a gold not among the options the question lists, ...). Malformed input
raises a one-line ``ValueError`` naming the file, the line or record, and the field.

**The official protocol** (github.com/shiqichen17/AdaptVis, ``model_zoo/llava15.py`` and ``main_aro.py``), the
default everywhere; each piece has a name:

* scoring ``is_correct(output, gold)`` = ``SCORING["official"]``: the gold word (lower-cased) is a substring of
  the lower-cased output, except that gold "on" with "front" in the output is wrong ("Underneath" counts for
  under, "leftmost" for left, "In front of, on the left" not for on). ``SCORING["whole_word"]`` is the
  stricter whole-word alternative.
* split ``split_indices(n)``: Python's ``random`` seeded with ``OFFICIAL_SPLIT_SEED`` (1), tuning indices
  ``sorted(random.sample(range(n), int(0.2 * n)))``, reporting on the rest; other seeds give extra splits.
* pair/set accuracy ``accuracies(df)`` (Controlled A/B): pairs correct / (n / 2), sets correct / (n / 4),
  n = items scored, so incomplete pairs and sets count as failures (``denominators="complete"``: the average
  over complete pairs/sets only).
* generation (``spatialkit.analysis.whatsup_eval``): greedy, up to ``OFFICIAL_MAX_NEW_TOKENS`` = 100 new
  tokens, stopping at EOS; the first token's max softmax probability, rounded to 2 decimals, is the AdaptVis
  confidence.
* prompt strings, side by side (the user text is the prompt file's question, or ``paper_prompt``):

  ========================  ======================================================================================
  LLaVA-1.5 (official)      ``<image>\nUSER: Where is the mug in relation to the plate? Answer with left, right,
                            on or under.\nASSISTANT:`` -- AdaptVis' string, used verbatim
                            (``models.hf.adapter.ADAPTVIS_LLAVA_TEMPLATE``; llava-hf's own chat template would render
                            ``USER: <image>\n... ASSISTANT:`` instead)
  Qwen2-VL / Qwen2.5-VL     the model's chat template: ``<|im_start|>system\nYou are a helpful
                            assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>...<|vision_end|>
                            Where is ...?<|im_end|>\n<|im_start|>assistant\n``
  Qwen3-VL                  the model's chat template (no default system turn): ``<|im_start|>user\n
                            <|vision_start|><|image_pad|>...<|vision_end|>Where is ...?<|im_end|>\n
                            <|im_start|>assistant\n``
  ========================  ======================================================================================

Options per subset (``options_for``; the official counts in ``OFFICIAL_N_OPTIONS``): What'sUp A left, right, on,
under; What'sUp B left, right, front, behind; COCO two-object left, right, above, below; COCO one-object left,
right, top, bottom; VG six options as the official files list them: one-object left, right, front, behind, top,
bottom, two-object left, right, front, behind, above, below. With four options a VG front/behind gold is not
among the options: the item is kept and flagged ``gold_not_in_options``.

Pair and set accuracy (What'sUp A/B): the images that show the same two objects form a set (one per relation,
keyed as the official code keys them, by the image file name's first and last word); a pair is a relation and
its opposite (left/right, on/under, front/behind), right if both are. On WhereBench exports sets are formed by
the named object pair, across scenes.
"""

from __future__ import annotations
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence
import numpy as np
import pandas as pd
import hashlib
import json
import os
import random
import tempfile
from spatialkit.common.params import check_number
from spatialkit.world.questions import Question
from spatialkit.world.scene import Scene, _POSITION_PHRASE, _article
from spatialkit.world.wherebench import Item
import io



SUBSET_FILES = {
    "controlled_a": "controlled_images_dataset.json",  # What'sUp A: 412 images, on/under/left/right
    "controlled_b": "controlled_clevr_dataset.json",  # What'sUp B: 408 images, left/right/front/behind
    "coco_one": "coco_qa_one_obj.json",  # 2247 rows [image_id, correct, wrong]; images val2017/{id:012d}.jpg
    "coco_two": "coco_qa_two_obj.json",  # 440 rows
    "vg_one": "vg_qa_one_obj.json",  # 1160 rows; images vg_images/{id}.jpg
    "vg_two": "vg_qa_two_obj.json",  # 291 rows
}

# the names the paper's table uses
PAPER_NAMES = {"controlled_a": "Cont_A", "controlled_b": "Cont_B", "coco_one": "COCO_one", "coco_two": "COCO_two",
               "vg_one": "VG_one", "vg_two": "VG_two"}

# AdaptVis' prompt files: prompts/{name}_with_answer_{four|six}_options.jsonl
PROMPT_NAMES = {"controlled_a": "Controlled_Images_A", "controlled_b": "Controlled_Images_B",
                "coco_one": "COCO_QA_one_obj", "coco_two": "COCO_QA_two_obj", "vg_one": "VG_QA_one_obj",
                "vg_two": "VG_QA_two_obj"}

OFFICIAL_N_OPTIONS = {"controlled_a": 4, "controlled_b": 4, "coco_one": 4, "coco_two": 4, "vg_one": 6, "vg_two": 6}

_ALIASES = {"gqa_one": "vg_one", "gqa_two": "vg_two"}  # earlier names of the VG subsets

# "wherebench": a spatialkit.world.to_whatsup export mixing tasks; options follow each item's task (below)
SUBSETS = tuple(SUBSET_FILES) + ("wherebench",)

# subsets with pair/set accuracy (sets of one image per relation of an object pair)
PAIRED_SUBSETS = ("controlled_a", "controlled_b", "wherebench")


OPTIONS = {
    "controlled_a": ("left", "right", "on", "under"),
    "controlled_b": ("left", "right", "front", "behind"),
    "two": ("left", "right", "above", "below"),
    "one": ("left", "right", "top", "bottom"),
}


# six options: VG's official order (left, right, front, behind, then the vertical pair); the other subsets have
# no official six-option file and follow the same pattern
SIX_OPTIONS = {
    "controlled_a": ("left", "right", "front", "behind", "on", "under"),
    "controlled_b": ("left", "right", "front", "behind", "on", "under"),
    "two": ("left", "right", "front", "behind", "above", "below"),
    "one": ("left", "right", "front", "behind", "top", "bottom"),
}


OPPOSITE = {"left": "right", "right": "left", "on": "under", "under": "on", "above": "below", "below": "above",
            "front": "behind", "behind": "front", "top": "bottom", "bottom": "top"}


# relation phrases of WhatsUp captions and of spatialkit.world.caption_for, longest first; value = gold word
_RELATIONS = {
    "to the left of": "left", "to the right of": "right", "on the left of": "left", "on the right of": "right",
    "on the left": "left", "on the right": "right", "at the top of": "top", "at the bottom of": "bottom",
    "at the top": "top", "at the bottom": "bottom", "on the top": "top", "on the bottom": "bottom",
    "at the left": "left", "at the right": "right", "in front of": "front", "behind": "behind",
    "on top of": "on", "above": "above", "below": "below", "under": "under", "beneath": "under", "on": "on",
    "left of": "left", "right of": "right",
}


_ARTICLE = r"(?:a|an|the)\s+"


_CAPTION = re.compile(
    rf"^\s*(?:{_ARTICLE})?(?:(?:photo|picture|image)\s+of\s+(?:{_ARTICLE})?)?(?P<a>.+?)\s+(?:is\s+|are\s+)?"
    rf"(?P<rel>{'|'.join(re.escape(r) for r in _RELATIONS)})"
    rf"(?:\s+(?:{_ARTICLE})?(?P<b>.+?))?\s*\.?\s*$", re.IGNORECASE)


_ONE_OBJECT_TAIL = re.compile(r"^(?:the\s+)?(?:image|photo|picture)$", re.IGNORECASE)


# quirks of real files: kept, flagged on the item, counted per file
QUIRKS = {
    "plural": "the question says 'Where are ...' (kept as written)",
    "doubled_punctuation": "the question ends with doubled punctuation, e.g. 'bottom..' (kept as written)",
    "oxford_comma": "the options are listed 'a, b, or c' (kept as written)",
    "extra_whitespace": "the question has doubled or leading spaces (kept as written)",
    "short_option_list": "the question lists fewer options than the file's usual list, e.g. 'behind or front'",
    "gold_not_in_options": "the gold word is not among the options the question lists (kept: scored as usual)",
    "gold_differs_from_caption": "the prompt file's gold differs from the WhatsUp caption's relation (the "
                                 "prompt file's gold is used, as the official code does)",
    "id_mismatch": "the record's 'id' is not its line number (the official code pairs by position)",
}

@dataclass(frozen=True)
class QAItem:
    """One generative question: from a WhatsUp record, an AdaptVis prompt line, or a WhereBench export."""

    subset: str
    image_path: str | None  # None for a prompt-file item not yet joined with its WhatsUp record
    subject: str
    object: str | None  # None for one-object questions
    gold: str  # the gold relation word, lower case
    options: tuple[str, ...]  # in the order the question lists them
    prompt: str  # the user text (the prompt file's question verbatim, or paper_prompt), without chat template
    native_prompt: str | None = None  # a spatialkit question text, when the record carries one (organism prompts)
    scene_seed: int | None = None
    index: int | None = None  # position in its file: what the official split indexes
    pair_key: str | None = None  # the official set key (Controlled A/B: first and last word of the file name)
    flags: tuple[str, ...] = ()  # quirks of the record (QUIRKS)
    source: str | None = None  # "file, record k" / "file:line", for messages

    @property
    def set_key(self) -> tuple:
        if self.pair_key is not None:
            return (self.subset, self.pair_key)
        return (self.subset, self.subject, self.object)


def canonical_subset(subset: str) -> str:
    """``subset`` with its earlier alias resolved (gqa_one -> vg_one), or a ValueError naming the allowed ones."""
    subset = _ALIASES.get(subset, subset)
    if subset not in SUBSETS:
        raise ValueError(f"parameter 'subset' = {subset!r} is invalid; allowed: one of {list(SUBSETS)}")
    return subset


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


def options_for(subset: str, one_object: bool, n_options: int | None = None, gold: str | None = None) -> tuple[str, ...]:
    """The answer options of a question, in the official order (``n_options`` None: the subset's official count,
    ``OFFICIAL_N_OPTIONS``; 4 for exports). "wherebench" exports: depth questions get What'sUp B's options,
    on/under questions (the What'sUp A mirror world) What'sUp A's, one-object questions the one-object list, the
    rest the two-object list."""
    subset = canonical_subset(subset)
    if n_options is None:
        n_options = OFFICIAL_N_OPTIONS.get(subset, 4)
    if n_options not in (4, 6):
        raise ValueError(f"parameter 'n_options' = {n_options!r} is invalid; allowed: 4 or 6")
    if one_object:
        key = "one"
    elif subset in ("controlled_a", "controlled_b"):
        key = subset
    elif subset == "wherebench" and gold in ("front", "behind"):
        key = "controlled_b"
    elif subset == "wherebench" and gold in ("on", "under"):
        key = "controlled_a"
    else:
        key = "two"
    return SIX_OPTIONS[key] if n_options == 6 else OPTIONS[key]


def paper_prompt(subject: str, obj: str | None, options: Sequence[str]) -> str:
    """The AdaptVis question (Chen et al., ICML 2025, and their code), without the model's chat template."""
    listed = ", ".join(options[:-1]) + " or " + options[-1]
    if obj is None:
        return f"Where is the {subject} in the photo? Answer with {listed}."
    return f"Where is the {subject} in relation to the {obj}? Answer with {listed}."


def _controlled_key(image_path: str) -> tuple[str, str] | None:
    """(set key, relation) of a What'sUp A/B file name as the official code reads it: "mug_left_of_plate.jpeg"
    -> ("mug|plate", "left"); None when the name has fewer than three words."""
    stem = os.path.basename(image_path).rsplit(".", 1)[0]
    parts = stem.split("_")
    if len(parts) < 3:
        return None
    return f"{parts[0]}|{parts[-1]}", parts[1]


def to_qa(records, subset: str, n_options: int | None = None, sources: Sequence[str] | None = None) -> list[QAItem]:
    """QA items from ``spatialkit.world.WhatsUpItem`` records (the correct caption at ``answer``, first by
    default). A gold outside the options is kept and flagged (a ValueError for WhereBench exports, where it
    is a bug)."""
    subset = canonical_subset(subset)
    out = []
    for k, rec in enumerate(records):
        where = sources[k] if sources is not None else f"{rec.image_path}"
        try:
            answer = getattr(rec, "answer", 0)
            subject, gold, obj = parse_caption(rec.caption_options[answer])
        except ValueError as e:
            raise ValueError(f"{where}: field 'caption_options'[{answer}]: {e}") from None
        options = options_for(subset, obj is None, n_options, gold)
        flags = ()
        if gold not in options:
            if subset == "wherebench":
                raise ValueError(f"{where}: gold relation {gold!r} is not among the {subset} options {options}")
            flags = ("gold_not_in_options",)
        pair_key = None
        if subset in ("controlled_a", "controlled_b") and rec.image_path is not None:
            key = _controlled_key(rec.image_path)
            pair_key = key[0] if key is not None else None
        question = getattr(rec, "question", None)
        out.append(QAItem(subset, rec.image_path, subject, obj, gold, options, paper_prompt(subject, obj, options),
                          question.text if question is not None else None, getattr(rec, "scene_seed", None),
                          index=k, pair_key=pair_key, flags=flags, source=where))
    return out


def load_subset(root: str | Path, subset: str, n_options: int | None = None, image_root: str | Path | None = None,
                check_images: bool = False) -> list[QAItem]:
    """The real WhatsUp file of ``subset`` (``SUBSET_FILES``) as QA items. ``root``: the folder holding the JSON
    files, or a WhatsUp checkout holding them in ``data/``. Image paths follow the real layouts (see the module
    docstring); ``check_images`` raises a one-line ValueError for the first missing image."""
    subset = canonical_subset(subset)
    if subset == "wherebench":
        raise ValueError("parameter 'subset' = 'wherebench' has no real file; read exports with from_export")
    root = Path(root)
    path = root / SUBSET_FILES[subset]
    if not path.is_file() and (root / "data" / SUBSET_FILES[subset]).is_file():
        path = root / "data" / SUBSET_FILES[subset]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: download the WhatsUp data (github.com/amitakamath/whatsup_vlms, "
                                f"data/) and pass its folder as root")
    records = from_whatsup(path, image_root, subset=subset)
    items = to_qa(records, subset, n_options, sources=[f"{path}, record {k}" for k in range(len(records))])
    if check_images:
        check_image_files(items)
    return items


def check_image_files(items: Sequence[QAItem]) -> None:
    """A one-line ValueError naming the file, record and image of the first item whose image is missing."""
    for it in items:
        if it.image_path is None or not os.path.isfile(it.image_path):
            field = "image_path" if it.subset in ("controlled_a", "controlled_b", "wherebench") else "image id (field 0)"
            raise ValueError(f"{it.source}: field {field!r}: image {it.image_path} not found")


def from_export(path: str | Path, subset: str = "wherebench", n_options: int | None = None) -> list[QAItem]:
    """QA items from a ``spatialkit.world.to_whatsup`` export (sums verified)."""
    records = from_whatsup(path)
    return to_qa(records, subset, n_options, sources=[f"{path}, record {k}" for k in range(len(records))])


def is_correct_official(output: str, gold: str) -> bool:
    """AdaptVis' rule (model_zoo/llava15.py): the gold word is a substring of the lower-cased output, except that
    gold "on" with "front" in the output is wrong. "Underneath" is right for under, "leftmost" for left."""
    g, out = gold.strip().lower(), output.lower()
    return bool(g) and g in out and not (g == "on" and "front" in out.strip())


def is_correct_whole_word(output: str, gold: str) -> bool:
    """The stricter alternative: the gold word appears in the lower-cased output as a whole word."""
    return re.search(rf"\b{re.escape(gold.strip().lower())}\b", output.lower()) is not None


SCORING = {"official": is_correct_official, "whole_word": is_correct_whole_word}


def is_correct(output: str, gold: str, rule: str = "official") -> bool:
    """Is ``output`` right for ``gold`` under scoring ``rule`` (``SCORING``; default the official rule)."""
    try:
        return SCORING[rule](output, gold)
    except KeyError:
        raise ValueError(f"parameter 'rule' = {rule!r} is invalid; allowed: one of {list(SCORING)}") from None


def _set_column(df: pd.DataFrame) -> pd.Series:
    if "set" in df.columns:
        return df["set"].astype(str)
    return df["subset"].astype(str) + "|" + df["subject"].astype(str) + "|" + df["object"].fillna("").astype(str)


def accuracies(df: pd.DataFrame, denominators: str = "official") -> dict[str, float]:
    """Individual accuracy, pair accuracy (a relation and its opposite within a set, both right) and set
    accuracy (all four relations of a set present and right). Sets: the ``set`` column (``QAItem.set_key``),
    else items naming the same subject and object. Pair/set only over rows of ``PAIRED_SUBSETS`` (NaN when
    there are none: COCO/VG have no sets).

    ``denominators="official"`` (the AdaptVis/WhatsUp code): pairs right / (n / 2) and sets right / (n / 4),
    n = the paired rows scored, so a pair or set missing a member (e.g. split across tune/report) counts as a
    failure. ``"complete"``: the mean over complete pairs and sets only.
    """
    if denominators not in ("official", "complete"):
        raise ValueError(f"parameter 'denominators' = {denominators!r} is invalid; allowed: 'official' or 'complete'")
    nan = float("nan")
    if df.empty:
        return {"individual": nan, "pair": nan, "set": nan}
    individual = float(df["correct"].astype(bool).mean())
    paired = df[df["subset"].isin(PAIRED_SUBSETS)]
    if paired.empty:
        return {"individual": individual, "pair": nan, "set": nan}
    pair_hits, set_hits = [], []
    for _, g in paired.groupby(_set_column(paired), sort=False):
        by_gold = g.groupby("gold")["correct"].all()
        pairs = [(a, OPPOSITE[a]) for a in sorted(by_gold.index) if OPPOSITE.get(a) in by_gold.index and a < OPPOSITE[a]]
        pair_hits += [bool(by_gold[a] and by_gold[b]) for a, b in pairs]
        if len(pairs) >= 2:
            set_hits.append(bool(by_gold.all()))
    n = len(paired)
    if denominators == "official":
        return {"individual": individual, "pair": sum(pair_hits) / (n / 2), "set": sum(set_hits) / (n / 4)}
    return {"individual": individual, "pair": float(np.mean(pair_hits)) if pair_hits else nan,
            "set": float(np.mean(set_hits)) if set_hits else nan}


OFFICIAL_SPLIT_SEED = 1


def split_indices(n: int, seed: int = OFFICIAL_SPLIT_SEED, tune_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """The official tune/report split (main_aro.py): ``random.seed(seed)``, tuning indices
    ``sorted(random.sample(range(n), int(tune_fraction * n)))``, report = the rest (sorted). ``seed`` =
    ``OFFICIAL_SPLIT_SEED`` (1) is the paper's split; other seeds give extra random splits."""
    check_number("tune_fraction", tune_fraction, 0, 1, low_open=True, high_open=True)
    k = int(tune_fraction * n)
    if not 0 < k < n:
        raise ValueError(f"cannot split {n} items with tune_fraction={tune_fraction}: int({tune_fraction} * {n}) = {k} "
                         f"tuning items (need at least 1 and at most {n - 1})")
    tune = sorted(random.Random(seed).sample(range(n), k))
    chosen = set(tune)
    return np.array(tune, dtype=int), np.array([i for i in range(n) if i not in chosen], dtype=int)


def split_seeds(n_splits: int) -> list[int]:
    """Split seeds: the official one first, then extra splits (1, 2, ..., n_splits)."""
    return [OFFICIAL_SPLIT_SEED + k for k in range(n_splits)]


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


def tune_and_report(table: pd.DataFrame, *, split_seed: int = OFFICIAL_SPLIT_SEED, alphas: Sequence[float],
                    alpha1s: Sequence[float], alpha2s: Sequence[float], betas: Sequence[float],
                    tune_fraction: float = 0.2) -> dict:
    """The official protocol on one split (``split_indices``; the paper's split by default): pick ScalingVis' α
    and AdaptVis' (α1, α2, β) by accuracy on the tuning share, report per-item correctness of baseline /
    ScalingVis / AdaptVis on the rest. ``table``: one subset, items numbered in file order (``evaluate`` on the
    whole subset), so the split indexes the same records as the official code.

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

    from PIL import Image  # image files only when reading/writing them

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


def _load_json(path: Path):
    """The JSON value of ``path``, or a one-line ValueError naming the file, line and column."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        hint = (" -- several JSON values: a JSON-lines file? AdaptVis prompt files (one question per line) are read "
                "by read_prompts") if e.msg == "Extra data" else ""
        raise ValueError(f"{path}: line {e.lineno} column {e.colno}: not valid JSON ({e.msg}){hint}") from None


def _subset_of_file(path: Path) -> str | None:
    for subset, name in SUBSET_FILES.items():
        if path.name == name:
            return subset
    return None


def _resolve_image(root: Path, rel: str, root_is_repository: bool = False) -> str:
    """A What'sUp A/B ``image_path``: relative to the WhatsUp repository root (the folder above ``data/``), so
    "data/controlled_images/x.jpeg" is tried against the JSON folder's parent first, then the JSON folder (with
    and without the leading "data/"); the first that exists wins (else the repository-root reading).
    ``root_is_repository``: ``root`` was given as the repository root itself (``image_root=``), tried first."""
    if os.path.isabs(rel):
        return rel
    candidates = [root / rel]
    if rel.startswith("data/"):
        candidates = [root.parent / rel, root / rel, root / rel[len("data/"):]]
        if root_is_repository:
            candidates = [root / rel, root.parent / rel, root / rel[len("data/"):]]
    for c in candidates:
        if c.exists():
            return str(c)
    return str(candidates[0])


def _image_of_row(root: Path, subset: str | None, image_id, where: str) -> str:
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or not str(image_id).strip().isdigit():
        raise ValueError(f"{where}: field 0 (image id) must be an integer image id, got {image_id!r}")
    if subset in ("coco_one", "coco_two"):
        return str(root / "val2017" / f"{int(image_id):012d}.jpg")
    if subset in ("vg_one", "vg_two"):
        return str(root / "vg_images" / f"{str(image_id).strip()}.jpg")
    raise ValueError(f"{where}: a [image_id, captions...] row, but the file is not a COCO-QA / VG-QA file "
                     f"({', '.join(SUBSET_FILES[s] for s in ('coco_one', 'coco_two', 'vg_one', 'vg_two'))}); "
                     f"pass subset= to say which")


def _captions(value, where: str, field: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: field {field!r} must be a list of caption strings, got {type(value).__name__} "
                         f"{str(value)[:60]!r}")
    if len(value) == 0:
        raise ValueError(f"{where}: field {field!r} is empty (needs the correct caption and at least one other)")
    for j, c in enumerate(value):
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"{where}: field {field!r}[{j}] must be a non-empty caption string, got {c!r}")
    return tuple(value)


def from_whatsup(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 verify: bool = True, subset: str | None = None) -> list[WhatsUpItem]:
    """Read a WhatsUp-format JSON (ours or the original What'sUp / COCO-QA / VG-QA files).

    Records: ``{"image_path", "caption_options"[, "answer"]}`` (correct caption at ``answer``, default 0) or
    COCO-QA / VG-QA rows ``[image_id, correct caption, wrong caption]``. Image paths follow the real layouts
    relative to ``image_root`` (default: the JSON's folder): ``image_path`` against the repository root
    (``_resolve_image``), COCO ids ``val2017/{id:012d}.jpg``, VG ids ``vg_images/{id}.jpg`` (``subset``, default
    from the file name, tells COCO from VG). With a ``SHA256SUMS`` file next to the JSON (written by
    ``to_whatsup``) the files are verified. Malformed records raise a one-line ValueError naming the file,
    record and field.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    subset = canonical_subset(subset) if subset is not None else _subset_of_file(path)
    if verify and (path.parent / "SHA256SUMS").exists():
        for line in (path.parent / "SHA256SUMS").read_text().splitlines():
            digest, rel = line.split("  ", 1)
            actual = hashlib.sha256((path.parent / rel).read_bytes()).hexdigest()
            if actual != digest:
                raise ValueError(f"{path.parent / rel}: sha256 {actual} does not match SHA256SUMS ({digest})")
    records = _load_json(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    out = []
    for k, rec in enumerate(records):
        where = f"{path}, record {k}"
        if isinstance(rec, list):  # COCO-QA / VG-QA: [image_id, correct caption, wrong caption]
            if len(rec) < 3:
                raise ValueError(f"{where}: a COCO-QA / VG-QA row needs [image_id, correct caption, wrong caption], "
                                 f"got {len(rec)} field(s): {str(rec)[:80]}")
            image = _image_of_row(root, subset, rec[0], where)
            out.append(WhatsUpItem(image, _captions(rec[1:], where, "captions (fields 1..)")))
            continue
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object with 'image_path' and 'caption_options' (or a COCO/VG row "
                             f"list), got {type(rec).__name__} {str(rec)[:60]!r}")
        if "image_path" not in rec or "caption_options" not in rec:
            raise ValueError(f"{where}: lacks field 'image_path' or 'caption_options'")
        image_path = rec["image_path"]
        if not isinstance(image_path, str) or not image_path.strip():
            raise ValueError(f"{where}: field 'image_path' must be a non-empty string, got {image_path!r}")
        captions = _captions(rec["caption_options"], where, "caption_options")
        answer = rec.get("answer", 0)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(captions):
            raise ValueError(f"{where}: field 'answer' = {answer!r} is not an index into its {len(captions)} "
                             f"caption_options")
        q = rec.get("question")
        question = None
        if q is not None:
            try:
                question = Question(q["text"], tuple(q["options"]), int(q["answer"]), q["family"], q["task"],
                                    tuple(q["objects"]), q["relation"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{where}: field 'question' is malformed ({type(e).__name__}: {e})") from None
        out.append(WhatsUpItem(_resolve_image(root, image_path, image_root is not None), captions, question, rec.get("scene_seed"), answer))
    return out


# --------------------------------------------------------------------------------------------------
# AdaptVis prompt files (JSON lines) and the real benchmark folder


_PROMPT = re.compile(r"^<image>\s*USER: ?(?P<q>.*?)\n?ASSISTANT:\s*$", re.DOTALL)
_QUESTION = re.compile(
    r"^\s*Where\s+(?P<verb>is|are)\s+(?:the\s+)?(?P<a>.+?)\s+(?:in\s+relation\s+to\s+(?:the\s+)?(?P<b>.+?)"
    r"|in\s+the\s+(?:photo|image|picture))\s*\?\s*Answer\s+with\s+(?P<opts>.+?)\s*(?P<end>[.?!]*)\s*$",
    re.DOTALL | re.IGNORECASE)
_PROMPT_FILE = re.compile(r"^(?P<name>.+)_with_answer_(?P<n>two|four|six)_options\.jsonl$")
_COUNT = {"two": 2, "four": 4, "six": 6}


def prompt_file_name(subset: str, n_options: int | None = None) -> str:
    """AdaptVis' prompt file of ``subset``: "{name}_with_answer_{four|six}_options.jsonl"."""
    subset = canonical_subset(subset)
    if subset not in PROMPT_NAMES:
        raise ValueError(f"subset {subset!r} has no AdaptVis prompt file")
    n = OFFICIAL_N_OPTIONS[subset] if n_options is None else n_options
    word = {v: k for k, v in _COUNT.items()}.get(n)
    if word is None:
        raise ValueError(f"parameter 'n_options' = {n_options!r} is invalid; allowed: 4 or 6")
    return f"{PROMPT_NAMES[subset]}_with_answer_{word}_options.jsonl"


def _subset_of_prompt_file(path: Path) -> str | None:
    m = _PROMPT_FILE.match(path.name)
    if m is None:
        return None
    return {v: k for k, v in PROMPT_NAMES.items()}.get(m.group("name"))


def _split_options(text: str) -> tuple[str, ...]:
    return tuple(o.strip().lower() for o in re.split(r"\s*,\s*(?:or\s+)?|\s+or\s+", text.strip()) if o.strip())


def read_prompts(path: str | os.PathLike, subset: str | None = None) -> list[QAItem]:
    """QA items from an AdaptVis prompt file (JSON lines: ``{"id", "question", "answer": ["On"]}``).

    The user text between ``<image>\nUSER: `` and ``\nASSISTANT:`` becomes ``prompt`` verbatim; subject, object
    and the options (in the order listed) are parsed from it, the gold is ``answer[0]`` lower-cased. The items
    carry no image (``image_path`` None): ``load_real`` joins line k with record k of the subset's WhatsUp JSON.
    ``subset`` defaults to the one the file name says. Quirks are flagged (``QUIRKS``); malformed lines raise a
    one-line ValueError naming the file, line and field.
    """
    path = Path(path)
    subset = canonical_subset(subset) if subset is not None else _subset_of_prompt_file(path)
    if subset is None:
        raise ValueError(f"{path}: cannot tell the subset from the file name (expected e.g. "
                         f"{prompt_file_name('controlled_a')}); pass subset=")
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from None
    m = _PROMPT_FILE.match(path.name)
    usual = _COUNT[m.group("n")] if m else OFFICIAL_N_OPTIONS.get(subset, 4)
    out = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: column {e.colno}: not a JSON object ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected an object with 'question' and 'answer', got {type(rec).__name__} "
                             f"{line.strip()[:60]!r}")
        question, answer = rec.get("question"), rec.get("answer")
        if not isinstance(question, str):
            raise ValueError(f"{where}: field 'question' must be a string, got {question!r}"[:200])
        if (isinstance(answer, str) or not isinstance(answer, list) or not answer
                or not isinstance(answer[0], str) or not answer[0].strip()):
            raise ValueError(f"{where}: field 'answer' must be a non-empty list of strings like [\"On\"], got {answer!r}")
        pm = _PROMPT.match(question)
        if pm is None:
            raise ValueError(f"{where}: field 'question' is not '<image>\\nUSER: ...\\nASSISTANT:': {question[:80]!r}")
        text = pm.group("q")
        qm = _QUESTION.match(text)
        if qm is None:
            raise ValueError(f"{where}: field 'question' is not 'Where is/are the A (in relation to the B | in the "
                             f"photo)? Answer with ...': {text[:80]!r}")
        index = len(out)
        flags = []
        if qm.group("verb").lower() == "are":
            flags.append("plural")
        if len(qm.group("end")) > 1 or "?." in text or ".." in text.split("Answer with", 1)[0]:
            flags.append("doubled_punctuation")
        if re.search(r",\s*or\s", qm.group("opts")):
            flags.append("oxford_comma")
        if text != text.strip() or "  " in text:
            flags.append("extra_whitespace")
        options = _split_options(qm.group("opts"))
        if len(options) < usual:
            flags.append("short_option_list")
        gold = answer[0].strip().lower()
        if gold not in options:
            flags.append("gold_not_in_options")
        if rec.get("id", index) != index:
            flags.append("id_mismatch")
        b = qm.group("b")
        out.append(QAItem(subset, None, qm.group("a").strip(), b.strip() if b is not None else None, gold, options,
                          text, index=index, flags=tuple(flags), source=where))
    if not out:
        raise ValueError(f"{path}: no questions (an empty file)")
    return out


@dataclass(frozen=True)
class Layout:
    """What a benchmark folder holds: the WhatsUp JSON folder and/or the AdaptVis prompt folder."""

    folder: Path
    whatsup: Path | None  # the folder holding SUBSET_FILES (a checkout's data/, or the folder itself)
    prompts: Path | None  # the folder holding AdaptVis prompt files (prompts/, or the folder itself)
    subsets: tuple[str, ...]  # subsets with a WhatsUp JSON (images): the ones that can run
    prompt_only: tuple[str, ...]  # subsets with a prompt file but no WhatsUp JSON


def detect_layout(folder: str | os.PathLike) -> Layout:
    """Recognise a benchmark folder: a WhatsUp checkout (``data/*.json`` + images), its ``data/`` folder, an
    AdaptVis checkout (``prompts/*.jsonl`` + ``data/``), or a folder of prompt files. A one-line ValueError
    when it is none of these."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"parameter 'data' = {str(folder)!r}: not a folder")
    whatsup = next((d for d in (folder, folder / "data") if any((d / f).is_file() for f in SUBSET_FILES.values())),
                   None)
    prompts = next((d for d in (folder, folder / "prompts") if d.is_dir() and any(
        _subset_of_prompt_file(f) for f in d.glob("*_with_answer_*_options.jsonl"))), None)
    if whatsup is None and prompts is None:
        raise ValueError(f"parameter 'data' = {str(folder)!r}: no WhatsUp layout found (expected data/"
                         f"{SUBSET_FILES['controlled_a']} etc. from github.com/amitakamath/whatsup_vlms, or prompts/"
                         f"{prompt_file_name('controlled_a')} etc. from github.com/shiqichen17/AdaptVis)")
    subsets = tuple(s for s in SUBSET_FILES if whatsup is not None and (whatsup / SUBSET_FILES[s]).is_file())
    prompted = () if prompts is None else tuple(
        s for s in PROMPT_NAMES if any(_subset_of_prompt_file(f) == s for f in prompts.glob("*_with_answer_*_options.jsonl")))
    return Layout(folder, whatsup, prompts, subsets, tuple(s for s in prompted if s not in subsets))


@dataclass
class RealSubset:
    """One real subset, ready to run: its items (file order; ``index`` = position) and where they came from."""

    name: str
    items: list[QAItem]
    files: tuple[str, ...]
    questions_from: str  # "prompt file" (AdaptVis' questions verbatim) or "captions" (paper_prompt)

    def quirks(self) -> dict[str, int]:
        """Items per quirk (``QUIRKS``), zeros included."""
        counts = Counter(f for it in self.items for f in it.flags)
        return {q: counts.get(q, 0) for q in QUIRKS}

    def flagged(self, quirk: str) -> list[int]:
        return [it.index for it in self.items if quirk in it.flags]

    def summary(self) -> dict:
        options = Counter(it.options for it in self.items).most_common(1)[0][0] if self.items else ()
        return {"subset": self.name, "paper name": PAPER_NAMES.get(self.name, self.name), "items": len(self.items),
                "options": ", ".join(options), "questions from": self.questions_from,
                "files": "; ".join(self.files), **self.quirks(),
                "gold not in options (records)": self.flagged("gold_not_in_options")[:20]}


def summary_table(subsets: Mapping[str, RealSubset]) -> pd.DataFrame:
    """The per-file summary of loaded subsets: items, options, source, and every quirk's count."""
    return pd.DataFrame([s.summary() for s in subsets.values()])


def _join(prompt_items: list[QAItem], whatsup_items: list[QAItem], prompt_file: Path, json_file: Path) -> list[QAItem]:
    """Prompt line k gets record k's image and set key (the official pairing, by position)."""
    if len(prompt_items) != len(whatsup_items):
        raise ValueError(f"{prompt_file}: {len(prompt_items)} questions but {json_file} has {len(whatsup_items)} "
                         f"records; the official code pairs them by position")
    out = []
    for p, w in zip(prompt_items, whatsup_items):
        flags = p.flags + (("gold_differs_from_caption",) if p.gold != w.gold else ())
        out.append(replace(p, image_path=w.image_path, pair_key=w.pair_key, flags=flags))
    return out


def load_real(folder: str | os.PathLike, subsets: Sequence[str] | None = None, n_options: int | None = None,
              check_images: bool = True, limit: int | None = None) -> dict[str, RealSubset]:
    """The real WhatsUp subsets under ``folder`` (``detect_layout``), in the official form.

    With an AdaptVis prompt file for a subset (``n_options`` None: the official four/six-option file) the
    questions and golds are the file's, verbatim, joined by position with the WhatsUp JSON's images; otherwise
    they are built from the captions (``paper_prompt``, ``options_for``). ``check_images``: every image must
    exist (a one-line ValueError names the first missing one). ``limit``: the first ``limit`` items per subset
    (the official split needs all of them).
    """
    layout = detect_layout(folder)
    if not layout.subsets:
        raise ValueError(f"parameter 'data' = {str(layout.folder)!r}: prompt files ({', '.join(layout.prompt_only)}) "
                         f"but no WhatsUp data: the prompt files carry no images; put the WhatsUp JSON files and "
                         f"images (github.com/amitakamath/whatsup_vlms, data/) in {layout.folder / 'data'}")
    wanted = layout.subsets if subsets is None else tuple(canonical_subset(s) for s in subsets)
    missing = [s for s in wanted if s not in layout.subsets]
    if missing:
        raise ValueError(f"parameter 'data' = {str(layout.folder)!r}: no WhatsUp file for {missing} (found: "
                         f"{list(layout.subsets)})")
    out = {}
    for subset in wanted:
        json_file = layout.whatsup / SUBSET_FILES[subset]
        items = load_subset(layout.whatsup, subset, n_options, check_images=check_images)
        files, source = (str(json_file),), "captions"
        prompt_file = None
        if layout.prompts is not None:
            names = [prompt_file_name(subset, n_options)] if n_options is not None else [prompt_file_name(subset)]
            prompt_file = next((layout.prompts / n for n in names if (layout.prompts / n).is_file()), None)
        if prompt_file is not None:
            items = _join(read_prompts(prompt_file, subset), items, prompt_file, json_file)
            files, source = (str(prompt_file), str(json_file)), "prompt file"
        if limit is not None:
            items = items[:limit]
        out[subset] = RealSubset(subset, items, files, source)
    return out


PAPER_CITATION = ("S. Chen et al., Why Is Spatial Reasoning Hard for VLMs? An Attention Mechanism Perspective on "
                  "Focus Areas, ICML 2025, main results table (LLaVA-1.5 rows; accuracy %, tuned on 20%, reported on "
                  "the other 80%)")

# accuracy % per subset, LLaVA-1.5 rows of the paper's table (PAPER_CITATION)
PAPER_LLAVA15 = {
    "baseline": {"controlled_a": 60.3, "controlled_b": 73.1, "coco_one": 53.0, "coco_two": 58.2, "vg_one": 35.9,
                 "vg_two": 40.8},
    "ScalingVis": {"controlled_a": 64.5, "controlled_b": 75.2, "coco_one": 53.6, "coco_two": 59.4, "vg_one": 42.7,
                   "vg_two": 48.1},
    "AdaptVis": {"controlled_a": 84.9, "controlled_b": 83.8, "coco_one": 53.6, "coco_two": 59.9, "vg_one": 42.7,
                 "vg_two": 48.1},
}


def paper_table() -> pd.DataFrame:
    """``PAPER_LLAVA15`` as a table: one row per subset (with the paper's name), one column per method."""
    rows = [{"subset": s, "paper name": PAPER_NAMES[s], **{m: PAPER_LLAVA15[m][s] for m in PAPER_LLAVA15}}
            for s in PAPER_NAMES]
    return pd.DataFrame(rows)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 image from a file (for WhatsUp items)."""
    from PIL import Image  # image files only when reading/writing them

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()
