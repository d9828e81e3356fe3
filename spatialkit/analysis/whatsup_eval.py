"""Running a VLM on WhatsUp-format items: baseline, ScalingVis(α) or AdaptVis(α1, α2, β) generation, scored
with ``spatialkit.data.whatsup``'s rule, one row per item.

    subsets = load_benchmark("/data/whatsup_vlms")    # the real subsets (WhatsUp and/or AdaptVis files)
    df = evaluate(vlm, subsets["controlled_a"].items, method=Method.adaptvis(0.5, 1.5, 0.4))
    table = scaling_table(vlm, items, alphas)     # every α once, for tuning AdaptVis on a split

The official protocol is the default (``spatialkit.data.whatsup``'s docstring names each piece): greedy decoding of
up to ``OFFICIAL_MAX_NEW_TOKENS`` (100) new tokens, stopping at EOS; the official substring rule
(``scoring="official"``); and the prompt string AdaptVis used (``prompt_format="official"``): for LLaVA-1.5
``<image>\nUSER: {question}\nASSISTANT:`` verbatim (the HF adapter's ``ADAPTVIS_LLAVA_TEMPLATE`` replaces the llava-hf chat
template, ``USER: <image>\n{question} ASSISTANT:``, while the items run), for the Qwen families their own chat
template around the same question (``prompt_format="chat"`` keeps every model's own template).
"""

from __future__ import annotations
import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence
import numpy as np
import pandas as pd
from spatialkit.data.whatsup import (PAPER_CITATION, PAPER_LLAVA15, PAPER_NAMES, QAItem, RealSubset, group_of,
                                     is_correct, load_real)
from spatialkit.data.whatsup import SCORING
from spatialkit.data.whatsup import load_image as read_image
from tqdm.auto import tqdm
from spatialkit.analysis.interventions.adaptvis import check_alpha
from spatialkit.common.params import check_number
from spatialkit.analysis.interventions.adaptvis import check_alpha, check_beta
from spatialkit.analysis.interventions.adaptvis import adapt_vis, scaling_vis, scaling_vis_generations

OFFICIAL_MAX_NEW_TOKENS = 100  # model_zoo/llava15.py: generate(..., max_new_tokens=100), greedy, stops at EOS

# AdaptVis' LLaVA-1.5 prompt string, "<image>\nUSER: {question}\nASSISTANT:", as a chat template (system turns,
# which the official runs never have, are left out; "{{ '\\n' }}" because transformers' Jinja trims a newline that
# follows a block tag)
PROMPT_FORMATS = ("official", "chat")


def use_prompt_format(vlm, fmt: str = "official") -> contextlib.AbstractContextManager:
    """While inside, ``vlm`` renders prompts the ``fmt`` way: "official" = the prompt string AdaptVis' evaluation
    used for this model (``VLM.prompt_format``: LLaVA-1.5's ``<image>\nUSER: ...\nASSISTANT:``; Qwen models and
    the organism keep their own template, which is the official one); "chat" = the model's own template."""
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"parameter 'prompt_format' = {fmt!r} is invalid; allowed: one of {list(PROMPT_FORMATS)}")
    return vlm.prompt_format(fmt)


def load_benchmark(data: str, subsets: Sequence[str] | None = None, *, n_options: int | None = None,
                   check_images: bool = True, limit: int | None = None) -> dict[str, RealSubset]:
    """The real WhatsUp subsets in folder ``data`` (a WhatsUp checkout, its data/ folder, and/or an AdaptVis
    checkout with prompts/): ``{subset: RealSubset}`` in the official form (``spatialkit.data.whatsup.load_real``;
    ``summary_table`` shows each file's items and quirks). ``data`` "" means the synthetic mirror: a ValueError
    here, since the notebook builds that one itself."""
    if not data:
        raise ValueError("parameter 'data' = '': no benchmark folder (the notebook uses the synthetic mirror then)")
    return load_real(data, subsets, n_options=n_options, check_images=check_images, limit=limit)


def compare_with_paper(ours: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Our per-subset accuracies (%) beside the paper's LLaVA-1.5 rows (``PAPER_LLAVA15``, ``PAPER_CITATION``).

    ``ours``: rows with ``subset``, ``method`` (baseline / ScalingVis / AdaptVis) and ``value`` (a number in %
    or a formatted estimate). One row per (subset, method): paper, ours, and the paper's name of the subset."""
    rows = []
    for (subset, method), g in ours.groupby(["subset", "method"], sort=False):
        rows.append({"subset": PAPER_NAMES.get(subset, subset), "method": method,
                     "paper (LLaVA-1.5)": PAPER_LLAVA15.get(method, {}).get(subset, float("nan")),
                     "ours": g[value].iloc[0]})
    out = pd.DataFrame(rows)
    out.attrs["citation"] = PAPER_CITATION
    return out



@dataclass(frozen=True)
class Method:
    """Baseline, ScalingVis(α) or AdaptVis(α1, α2, β): how to generate an answer."""

    name: str
    alpha: float = 1.0
    alpha1: float = 1.0
    alpha2: float = 1.0
    beta: float = 0.0

    @classmethod
    def baseline(cls) -> "Method":
        return cls("baseline")

    @classmethod
    def scalingvis(cls, alpha: float) -> "Method":

        return cls("scalingvis", alpha=check_alpha(alpha))

    @classmethod
    def adaptvis(cls, alpha1: float, alpha2: float, beta: float) -> "Method":

        return cls("adaptvis", alpha1=check_alpha(alpha1, "alpha1"), alpha2=check_alpha(alpha2, "alpha2"),
                   beta=check_beta(beta))

    def label(self) -> str:
        if self.name == "scalingvis":
            return f"ScalingVis α={self.alpha:g}"
        if self.name == "adaptvis":
            return f"AdaptVis α1={self.alpha1:g} α2={self.alpha2:g} β={self.beta:g}"
        return "baseline"

    def generate(self, vlm, images, prompts, max_new_tokens: int):
        """Generations with ``confidence`` (rounded first-token max prob, unscaled) and ``alpha`` per item."""

        if self.name == "adaptvis":
            return adapt_vis(vlm, self.alpha1, self.alpha2, self.beta).generate(images, prompts, max_new_tokens)
        if self.name == "scalingvis":
            with scaling_vis(vlm, self.alpha):
                return vlm.generate(images, prompts, max_new_tokens=max_new_tokens)
        return vlm.generate(images, prompts, max_new_tokens=max_new_tokens)


def evaluate(vlm, items: Sequence[QAItem], method: Method = Method.baseline(), *, images: Sequence | None = None,
             prompt_style: str = "paper", batch_size: int = 32, max_new_tokens: int = OFFICIAL_MAX_NEW_TOKENS,
             load_image: Callable | None = None, progress: bool = False, scoring: str = "official",
             prompt_format: str = "official") -> pd.DataFrame:
    """One row per item: subset, set key, gold, output, correct, confidence (unscaled), alpha used.

    The official protocol by default: greedy, up to ``max_new_tokens`` (100) new tokens stopping at EOS,
    ``scoring`` "official" (``spatialkit.data.whatsup.SCORING``), ``prompt_format`` "official" (``use_prompt_format``).
    ``images``: the items' images (H, W, 3) aligned with ``items`` (else read from ``image_path``).
    ``prompt_style``: "paper" (the item's prompt: the AdaptVis question) or "native" (the record's own question
    text, for models such as the organism that only read their training templates; falls back to "paper").
    """

    _check(items, images, prompt_style, scoring, batch_size)
    with use_prompt_format(vlm, prompt_format):
        return _evaluate(vlm, items, method, images, prompt_style, batch_size, max_new_tokens, load_image, progress,
                         scoring)


def _evaluate(vlm, items, method, images, prompt_style, batch_size, max_new_tokens, load_image, progress,
              scoring) -> pd.DataFrame:
    if load_image is None:
        load_image = read_image
    rows = []
    for start, chunk, imgs, prompts in _batches(items, images, prompt_style, batch_size, load_image, progress,
                                                method.label()):
        rows += _rows(start, chunk, method.generate(vlm, imgs, prompts, max_new_tokens), method, scoring)
    return pd.DataFrame(rows)


def _check(items, images, prompt_style: str, scoring: str, batch_size: int) -> None:
    """The arguments of ``evaluate`` and ``scaling_table`` checked before any work."""
    check_number("batch_size", batch_size, 1, None, int)
    if scoring not in SCORING:
        raise ValueError(f"parameter 'scoring' = {scoring!r} is invalid; allowed: one of {list(SCORING)}")
    if prompt_style not in ("paper", "native"):
        raise ValueError(f"parameter 'prompt_style' = {prompt_style!r} is invalid; allowed: 'paper' or 'native'")
    if images is not None and len(images) != len(items):
        raise ValueError(f"got {len(images)} images for {len(items)} items")


def _batches(items, images, prompt_style, batch_size, load_image, progress, desc):
    """(start, items, images, prompts) per batch, the images read when not given."""
    for start in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress):
        chunk = items[start: start + batch_size]
        imgs = images[start: start + batch_size] if images is not None else [load_image(it.image_path) for it in chunk]
        prompts = [it.native_prompt if prompt_style == "native" and it.native_prompt else it.prompt for it in chunk]
        yield start, chunk, imgs, prompts


def _rows(start: int, chunk, gens, method: Method, scoring: str) -> list[dict]:
    """One result row per item of a batch."""
    rows = []
    for k, (it, g) in enumerate(zip(chunk, gens)):
        confidence = getattr(g, "confidence", None)
        if confidence is None:  # the AdaptVis rounding (spatialkit.models.vlm.softmax_confidence)
            confidence = float(np.floor(g.first_token_prob * 100 + 0.5) / 100)
        rows.append({"item": start + k, "index": it.index, "subset": it.subset, "set": "|".join(map(str, it.set_key)),
                     "subject": it.subject, "object": it.object,
                     "gold": it.gold, "output": g.text, "correct": is_correct(g.text, it.gold, scoring),
                     "confidence": confidence, "alpha": getattr(g, "alpha", method.alpha),
                     "method": method.label()})
    return rows


def scaling_table(vlm, items: Sequence[QAItem], alphas: Sequence[float], *, images: Sequence | None = None,
                  prompt_style: str = "paper", batch_size: int = 32, max_new_tokens: int = OFFICIAL_MAX_NEW_TOKENS,
                  progress: bool = False, scoring: str = "official", prompt_format: str = "official") -> pd.DataFrame:
    """Baseline (α = 1) and ScalingVis(α) for every α: one row per (item, alpha) with ``correct``, ``output``,
    the group, and ``confidence`` = the *unscaled* pass's rounded first-token probability (the AdaptVis gate).

    Each half of a batch runs its images and prompts once, unscaled, and each α ≠ 1 reruns only the last prompt
    position over a copy of that cache before decoding (``scaling_vis_generations``): the answers of ``evaluate``
    with ``Method.scalingvis(α)`` for each α (tests/test_whatsup.py), without the vision tower and the whole
    prompt again per α. Half a batch at a time because the prompt's KV cache is kept while a copy of it decodes:
    two caches of half a batch hold what one ``generate`` of the whole batch holds, so a ``batch_size`` that
    fits ``generate`` (``hf.check_against(steps=("generate",))``) fits here."""

    alphas = sorted({1.0, *(check_alpha(a, "alphas") for a in alphas)})
    _check(items, images, prompt_style, scoring, batch_size)
    methods = {a: Method.baseline() if a == 1.0 else Method.scalingvis(a) for a in alphas}
    rows: dict[float, list[dict]] = {a: [] for a in alphas}
    desc = f"ScalingVis, {len(alphas)} α"
    half = max(1, (batch_size + 1) // 2)  # the sweep's two KV caches (kept + decoding) of half a batch each
    with use_prompt_format(vlm, prompt_format):
        for start, chunk, imgs, prompts in _batches(items, images, prompt_style, batch_size, read_image, progress,
                                                    desc):
            gens = {a: [] for a in alphas}
            for at in range(0, len(chunk), half):
                for a, g in scaling_vis_generations(vlm, imgs[at: at + half], prompts[at: at + half], alphas,
                                                    max_new_tokens).items():
                    gens[a] += g
            for a in alphas:
                rows[a] += _rows(start, chunk, gens[a], methods[a], scoring)
    table = pd.concat([pd.DataFrame(rows[a]).assign(alpha=a) for a in alphas], ignore_index=True)
    unscaled = table[table.alpha == 1.0].set_index("item")["confidence"]
    table["confidence"] = table["item"].map(unscaled)
    table["group"] = table["item"].map({i: group_of(it) for i, it in enumerate(items)})
    return table
