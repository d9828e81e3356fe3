"""The model organism: a tiny VLM (ViT -> projector -> causal LM) trained from scratch on the scene world.

- ``config``   ``OrganismConfig`` (sections ``model``/``data``/``optim`` + ``seed``) and the presets (presets.yml)
- ``model``    ``TinyVLM`` top to bottom (nanoGPT-style), its vocabulary and ``ModelConfig``
- ``data``     the example pool: scenes -> token rows, packing, sampling
- ``train``    the seeded two-stage trainer
- ``store``    ``load_or_train``: the checkpoint store keyed by config and code fingerprint
- ``adapter``  ``OrganismVLM``: the organism behind the one ``VLM`` interface
- ``answer_row`` its WhereBench scoring with one LM row per item instead of one per option (the notebooks';
                the trainer's validation keeps ``spatialkit.models.evaluate``, and nothing here imports it)
- ``benches``  ``items_per_task``: a config whose WhereBench test split holds k items per task of its world

    vlm = load_or_train(preset("quick"))
    df = evaluate(vlm, wherebench(vlm.config), "test")
"""

from spatialkit.models.evaluate import accuracy_by_family, accuracy_by_task, evaluate  # noqa: F401
from spatialkit.models.organism.adapter import OrganismVLM, greedy_continue  # noqa: F401
from spatialkit.models.organism.config import (PRESET_WHY, PRESETS, DataConfig, OptimConfig,  # noqa: F401
                                               OrganismConfig, preset, validate)
from spatialkit.models.organism.data import scene_config, tasks_for, wherebench  # noqa: F401
from spatialkit.models.organism.model import CAPTION_PROMPT, SYSTEM_PROMPT, ModelConfig  # noqa: F401
from spatialkit.models.organism.store import code_version, load_or_train  # noqa: F401
from spatialkit.models.organism.train import train  # noqa: F401
