"""``OrganismVLM``: the tiny trained VLM behind the one ``spatialkit.models.vlm.VLM`` interface.

    vlm = load_or_train(preset("default"))          # loads from the checkpoint store, or trains (minutes on CPU)
    df = evaluate(vlm, wherebench(vlm.config), "test")   # one row per item: family, task, correct, ...
    accuracy_by_task(df)

Prompts are plain words of the organism's vocabulary (unknown words raise a ValueError naming them); the
model answers after an implicit ``<ans>`` token. ``system_prompt=SYSTEM_PROMPT`` (or any known words)
prepends a system prompt, which the organism saw on ``system_prompt_fraction`` of its training examples.
"""

from __future__ import annotations
from spatialkit.common import checkpoints
from spatialkit.common.fingerprint import fingerprint
from spatialkit.models.organism.model import TinyVLM, Vocab
from spatialkit.models.organism.adapter import OrganismVLM
from spatialkit.models.organism.config import OrganismConfig, preset
from spatialkit.models.organism.train import train



def code_version() -> str:
    """The organism code's fingerprint (``spatialkit.common.fingerprint``): this module's import closure, which
    holds everything a trained organism depends on (config, model, data, trainer, ``VLM`` types, scene world)."""
    return fingerprint("spatialkit.models.organism.store")


def load_or_train(config: OrganismConfig | str = "default", allow_train: bool = True, *, progress: bool = True,
                  device="cpu") -> OrganismVLM:
    """The organism for ``config`` (a config or a preset name) from the checkpoint store, trained if absent.

    A corrupt or mismatched checkpoint is retrained; with ``allow_train=False`` it raises CheckpointError.
    """
    cfg = preset(config) if isinstance(config, str) else config
    built: dict = {}

    def do_train():
        model, vocab, metrics = train(cfg, progress=progress, cache_vision=True)
        built.update(model=model, vocab=vocab)
        return model.state_dict(), {**metrics, "vocab": vocab.words}

    state, metrics, _ = checkpoints.load_or_train("organism", cfg.to_dict(), code_version(), do_train,
                                                  allow_train=allow_train)
    if "model" in built:
        model, vocab = built["model"], built["vocab"]
    else:
        vocab = Vocab(metrics["vocab"])
        model = TinyVLM(cfg.model_config(len(vocab)))
        model.load_state_dict(state, strict=True)
        model.eval()
    vlm = OrganismVLM(model, vocab, cfg, device=device)
    vlm.metrics = {k: v for k, v in metrics.items() if k != "vocab"}
    return vlm
