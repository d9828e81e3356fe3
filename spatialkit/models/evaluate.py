"""Multiple-choice scoring of any ``VLM`` on WhereBench: option log-likelihoods, one row per item.

    df = evaluate(vlm, bench, "test")     # family, task, relation, gold, predicted, correct
    accuracy_by_task(df)
"""

from __future__ import annotations
import numpy as np
import pandas as pd
from spatialkit.models.vlm import VLM
from spatialkit import world as scenes



_SCENE_CACHE: dict = {}


def _render(seed: int, scene_config):

    key = (seed, scene_config)
    if key not in _SCENE_CACHE:
        if len(_SCENE_CACHE) > 20_000:
            _SCENE_CACHE.clear()
        _SCENE_CACHE[key] = scenes.render_scene(seed, scene_config)
    return _SCENE_CACHE[key]


def evaluate(vlm: VLM, bench, split: str = "test", *, batch_size: int = 256, system_prompt: str | None = None,
             limit: int | None = None) -> pd.DataFrame:
    """Multiple-choice evaluation by option log-likelihood: one row per item with its family, task, relation,
    gold and predicted option and ``correct`` (bool)."""
    items = bench.splits[split][:limit]
    rows = []
    kwargs = {"system_prompt": system_prompt} if system_prompt else {}
    for start in range(0, len(items), batch_size):
        chunk = items[start: start + batch_size]
        images = np.stack([_render(it.scene_seed, bench.config).image for it in chunk])
        scores = vlm.score_options(images, [it.question.text for it in chunk],
                                   [list(it.question.options) for it in chunk], **kwargs)
        predicted = scores.argmax(-1).tolist()
        for j, it in enumerate(chunk):
            q = it.question
            rows.append({"item": start + j, "scene_seed": it.scene_seed, "family": q.family, "task": q.task,
                         "relation": q.relation, "question": q.text, "answer": q.options[q.answer],
                         "predicted": q.options[predicted[j]], "correct": predicted[j] == q.answer})
    return pd.DataFrame(rows)


def accuracy_by_family(df: pd.DataFrame) -> dict[str, float]:
    return {f: float(g["correct"].mean()) for f, g in df.groupby("family")}


def accuracy_by_task(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy, item count and the number of options' chance level per task."""
    return df.groupby(["family", "task"]).agg(accuracy=("correct", "mean"), n=("correct", "size")).reset_index()
