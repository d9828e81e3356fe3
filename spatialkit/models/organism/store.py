"""The organism through the checkpoint store: ``load_or_train(preset)`` loads a trained organism whose key is
its config plus the code fingerprint of everything it depends on, or trains and stores it (atomic, checksummed).

    vlm = load_or_train("quick")       # minutes on CPU the first time, then a second
"""

from __future__ import annotations
from spatialkit.common import checkpoints
from spatialkit.common.fingerprint import fingerprint
from spatialkit.models.organism.model import TinyVLM, Vocab
from spatialkit.models.organism.adapter import OrganismVLM
from spatialkit.models.organism.config import OrganismConfig, preset
from spatialkit.models.organism.train import runtime_facts, train



def code_version() -> str:
    """The organism code's fingerprint (``spatialkit.common.fingerprint``): this module's import closure, which
    holds everything a trained organism depends on (config, model, data, trainer, ``VLM`` types, scene world)."""
    return fingerprint("spatialkit.models.organism.store")


def checkpoint_config(cfg: OrganismConfig) -> dict:
    """What the organism's checkpoint key (and its stored config.json) is made of: the full config, plus the
    runtime facts the trained weights depend on although no config field holds them. torch's CPU thread count
    changes how matmul and reduction kernels split their sums, so the same config and seed train different
    weights with 1 or 2 threads (the notebooks' ``threads`` parameter); the torch version changes kernels too.
    Without them, whichever thread count trained first would silently stand for all."""
    return {**cfg.to_dict(), "runtime": runtime_facts()}


def checkpoint_folder(cfg: OrganismConfig):
    """The store folder that holds (or will hold) the organism trained for ``cfg`` in this process."""
    return checkpoints.checkpoint_dir("organism", checkpoints.config_key(checkpoint_config(cfg), code_version()))


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

    state, metrics, _ = checkpoints.load_or_train("organism", checkpoint_config(cfg), code_version(), do_train,
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
