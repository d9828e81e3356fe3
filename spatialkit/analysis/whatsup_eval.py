"""Running a VLM on WhatsUp-format items: baseline, ScalingVis(α) or AdaptVis(α1, α2, β) generation, scored
with ``spatialkit.data.whatsup``'s rule, one row per item.

    df = evaluate(vlm, items, method=Method.adaptvis(0.5, 1.5, 0.4))
    table = scaling_table(vlm, items, alphas)     # every α once, for tuning AdaptVis on a split
"""

from __future__ import annotations
from dataclasses import dataclass
from typing import Callable, Sequence
import numpy as np
import pandas as pd
from spatialkit.data.whatsup import QAItem, group_of, is_correct



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
        from spatialkit.analysis.interventions.adaptvis import check_alpha

        return cls("scalingvis", alpha=check_alpha(alpha))

    @classmethod
    def adaptvis(cls, alpha1: float, alpha2: float, beta: float) -> "Method":
        from spatialkit.analysis.interventions.adaptvis import check_alpha, check_beta

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
        from spatialkit.analysis.interventions.adaptvis import adapt_vis, scaling_vis

        if self.name == "adaptvis":
            return adapt_vis(vlm, self.alpha1, self.alpha2, self.beta).generate(images, prompts, max_new_tokens)
        if self.name == "scalingvis":
            with scaling_vis(vlm, self.alpha):
                return vlm.generate(images, prompts, max_new_tokens=max_new_tokens)
        return vlm.generate(images, prompts, max_new_tokens=max_new_tokens)


def evaluate(vlm, items: Sequence[QAItem], method: Method = Method.baseline(), *, images: Sequence | None = None,
             prompt_style: str = "paper", batch_size: int = 32, max_new_tokens: int = 4,
             load_image: Callable | None = None, progress: bool = False) -> pd.DataFrame:
    """One row per item: subset, set key, gold, output, correct, confidence (unscaled), alpha used.

    ``images``: the items' images (H, W, 3) aligned with ``items`` (else read from ``image_path``).
    ``prompt_style``: "paper" (the AdaptVis question) or "native" (the record's own question text, for models
    such as the organism that only read their training templates; falls back to "paper").
    """
    from tqdm.auto import tqdm

    if prompt_style not in ("paper", "native"):
        raise ValueError(f"parameter 'prompt_style' = {prompt_style!r} is invalid; allowed: 'paper' or 'native'")
    if images is not None and len(images) != len(items):
        raise ValueError(f"got {len(images)} images for {len(items)} items")
    if load_image is None:
        from spatialkit.data.whatsup import load_image
    rows = []
    for start in tqdm(range(0, len(items), batch_size), desc=method.label(), disable=not progress):
        chunk = items[start: start + batch_size]
        imgs = images[start: start + batch_size] if images is not None else [load_image(it.image_path) for it in chunk]
        prompts = [it.native_prompt if prompt_style == "native" and it.native_prompt else it.prompt for it in chunk]
        gens = method.generate(vlm, imgs, prompts, max_new_tokens)
        for k, (it, g) in enumerate(zip(chunk, gens)):
            confidence = getattr(g, "confidence", None)
            if confidence is None:  # the AdaptVis rounding (spatialkit.models.vlm.softmax_confidence)
                confidence = float(np.floor(g.first_token_prob * 100 + 0.5) / 100)
            rows.append({"item": start + k, "subset": it.subset, "subject": it.subject, "object": it.object,
                         "gold": it.gold, "output": g.text, "correct": is_correct(g.text, it.gold),
                         "confidence": confidence, "alpha": getattr(g, "alpha", method.alpha),
                         "method": method.label()})
    return pd.DataFrame(rows)


def scaling_table(vlm, items: Sequence[QAItem], alphas: Sequence[float], *, images: Sequence | None = None,
                  prompt_style: str = "paper", batch_size: int = 32, max_new_tokens: int = 4,
                  progress: bool = False) -> pd.DataFrame:
    """Baseline (α = 1) and ScalingVis(α) for every α: one row per (item, alpha) with ``correct``, ``output``,
    the group, and ``confidence`` = the *unscaled* pass's rounded first-token probability (the AdaptVis gate)."""
    from spatialkit.analysis.interventions.adaptvis import check_alpha

    alphas = sorted({1.0, *(check_alpha(a, "alphas") for a in alphas)})
    frames = []
    for alpha in alphas:
        method = Method.baseline() if alpha == 1.0 else Method.scalingvis(alpha)
        df = evaluate(vlm, items, method, images=images, prompt_style=prompt_style, batch_size=batch_size,
                      max_new_tokens=max_new_tokens, progress=progress)
        frames.append(df.assign(alpha=alpha))
    table = pd.concat(frames, ignore_index=True)
    unscaled = table[table.alpha == 1.0].set_index("item")["confidence"]
    table["confidence"] = table["item"].map(unscaled)
    table["group"] = table["item"].map({i: group_of(it) for i, it in enumerate(items)})
    return table
