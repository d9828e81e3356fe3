"""Test splits sized per task: ``items_per_task(cfg, k)`` is ``cfg`` whose WhereBench test split holds ``k`` items
per task of the organism's world, as the notebooks and benchmarks measure organisms::

    bench = wherebench(items_per_task(vlm.config, 400))

Worlds ask different numbers of tasks (the WhatsUp mirrors add front/behind or on/under; a world whose images
always hold two objects asks no count question), so a fixed total would give each task of a richer world fewer
items. A small split, though balanced per question text, still leans towards each text's common relation (the
fewer items, the more); the same count per task keeps that lean the same across worlds.

Not part of ``data``: that module's code is part of every trained organism's checkpoint key, and how many items a
measurement asks for has nothing to do with training."""

from spatialkit.models.organism.config import OrganismConfig
from spatialkit.models.organism.data import scene_config, tasks_for


def items_per_task(cfg: OrganismConfig, per_task: int) -> OrganismConfig:
    """``cfg`` with ``n_test`` = ``per_task`` x the number of tasks its world asks (everything else unchanged)."""
    if isinstance(per_task, bool) or not isinstance(per_task, int) or per_task < 1:
        raise ValueError(f"per_task: test items per task must be an integer >= 1, got {per_task!r}")
    return cfg.replace(n_test=per_task * len(tasks_for(scene_config(cfg))))
