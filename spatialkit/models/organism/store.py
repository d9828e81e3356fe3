"""The organism through the checkpoint store: ``load_or_train(preset)`` loads a trained organism whose key is
its config plus the code fingerprint of everything it depends on, or trains and stores it (atomic, checksummed).

    vlm = load_or_train("quick")       # minutes on CPU the first time, then a second
"""

from __future__ import annotations

import json
import time

from spatialkit.common import checkpoints
from spatialkit.common.fingerprint import fingerprint
from spatialkit.models.organism.model import TinyVLM, Vocab
from spatialkit.models.organism.adapter import OrganismVLM
from spatialkit.models.organism.config import OrganismConfig, preset
from spatialkit.models.organism.train import (resolve_device, runtime_facts, torch_threads, train,
                                              train_vision_stage, vision_checkpoint_folder)
import argparse



def code_version() -> str:
    """The organism code's fingerprint (``spatialkit.common.fingerprint``): this module's import closure, which
    holds everything a trained organism depends on (config, model, data, trainer, ``VLM`` types, scene world)."""
    return fingerprint("spatialkit.models.organism.store")


def checkpoint_config(cfg: OrganismConfig, device="cpu") -> dict:
    """What the organism's checkpoint key (and its stored config.json) is made of: the full config, plus the
    runtime facts the trained weights depend on although no config field holds them. torch's CPU thread count
    changes how matmul and reduction kernels split their sums, so the same config and seed train different
    weights with 1 or 2 threads (the notebooks' ``threads`` parameter); the torch version changes kernels too.
    Without them, whichever thread count trained first would silently stand for all. An organism trained on a
    GPU (``device``) has its device type in the key too (a CPU key is unchanged by it)."""
    return {**cfg.to_dict(), "runtime": runtime_facts(device)}


def checkpoint_folder(cfg: OrganismConfig, device="cpu"):
    """The store folder that holds (or will hold) the organism trained for ``cfg`` in this process."""
    return checkpoints.checkpoint_dir("organism", checkpoints.config_key(checkpoint_config(cfg, device),
                                                                         code_version()))


def load_or_train(config: OrganismConfig | str = "default", allow_train: bool = True, *, progress: bool = True,
                  device="cpu") -> OrganismVLM:
    """The organism for ``config`` (a config or a preset name) from the checkpoint store, trained if absent.

    Trains on ``device`` ("auto": cuda when present); a GPU-trained organism has its own key (``checkpoint_config``).
    A corrupt or mismatched checkpoint is retrained; with ``allow_train=False`` it raises CheckpointError.
    """
    cfg = preset(config) if isinstance(config, str) else config
    device = resolve_device(device)
    built: dict = {}

    def do_train():
        model, vocab, metrics = train(cfg, progress=progress, cache_vision=True, device=device)
        built.update(model=model, vocab=vocab)
        return model.state_dict(), {**metrics, "vocab": vocab.words}

    state, metrics, _ = checkpoints.load_or_train("organism", checkpoint_config(cfg, device), code_version(), do_train,
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


# --- building checkpoints ahead of the notebooks (spatialkit run's training pool) --------------------------
# A spec is plain data, as the suite's catalog declares it: {"preset": name, "overrides": {...}, "threads": n,
# "device": "cpu"}: the organism load_or_train(preset(name, **overrides), device=device) gives under
# torch.set_num_threads(n) (0 = torch's default count). The suite calls these two functions by name in its
# worker processes (it may not import model code): ``checkpoint_tasks`` plans, ``build_checkpoint`` trains one.


def spec_config(spec: dict) -> OrganismConfig:
    return preset(spec["preset"], **(spec.get("overrides") or {}))


def _spec_label(spec: dict) -> str:
    over = " ".join(f"{k}={v}" for k, v in (spec.get("overrides") or {}).items())
    threads = spec.get("threads") or "default"
    return f"{spec['preset']}{' ' + over if over else ''} (threads {threads}, {spec.get('device', 'cpu')})"


def checkpoint_tasks(specs: list[dict]) -> list[dict]:
    """The training tasks behind organism ``specs``, one per distinct checkpoint key, missing or not.

    Each task: {"kind", "id" (its store folder's name), "label", "stage" ("vision" | "organism"), "deps" (ids
    trained first), "done" (a finished checkpoint is there), "spec", "for" (the indices of the ``specs`` it
    builds; organism tasks)}. An organism's stage-1 vision encoder,
    shared by organisms that differ only later, is its own task, so two workers never wait on one encoder."""
    tasks: dict[str, dict] = {}
    for index, spec in enumerate(specs):
        cfg = spec_config(spec)
        device = resolve_device(spec.get("device", "cpu"))
        with torch_threads(spec.get("threads") or None):
            folder = checkpoint_folder(cfg, device)
            vision = vision_checkpoint_folder(cfg, device) if cfg.optim.vision_pretrain_steps else None
        deps = []
        if vision is not None:
            deps.append(vision.name)
            tasks.setdefault(vision.name, {
                "kind": "organism", "id": vision.name, "label": f"vision encoder of {_spec_label(spec)}",
                "stage": "vision", "deps": [], "done": (vision / checkpoints.MANIFEST).exists(), "spec": spec})
        tasks.setdefault(folder.name, {
            "kind": "organism", "id": folder.name, "label": f"organism {_spec_label(spec)}", "stage": "organism",
            "deps": deps, "done": (folder / checkpoints.MANIFEST).exists(), "spec": spec, "for": []})
        tasks[folder.name]["for"].append(index)
    return list(tasks.values())


def build_checkpoint(task: dict) -> dict:
    """Train (or load, when another process trained it meanwhile) one task of ``checkpoint_tasks`` into the
    store, under the key's lock. Returns {"id", "wall_s", "cpu_s"} (this process's CPU time)."""
    spec = task["spec"]
    t0, c0 = time.perf_counter(), time.process_time()
    cfg, device = spec_config(spec), resolve_device(spec.get("device", "cpu"))
    with torch_threads(spec.get("threads") or None):
        if task.get("stage") == "vision":
            train_vision_stage(cfg, device=device)
        else:
            load_or_train(cfg, progress=False, device=device)
    return {"id": task["id"], "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def main(argv: list[str] | None = None) -> int:
    """``python -m spatialkit.models.organism --preset quick --threads 1 --overrides '{"seed": 1}'``: train the
    organism (and its stage-1 encoder) into the checkpoint store unless it is there; prints one JSON line."""

    ap = argparse.ArgumentParser(prog="python -m spatialkit.models.organism", description=main.__doc__.split(":")[0])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--overrides", default="{}", help="JSON object of preset overrides, e.g. '{\"seed\": 1}'")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default); part of the key")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plan", action="store_true", help="only print the tasks (JSON) and whether each is done")
    args = ap.parse_args(argv)
    spec = {"preset": args.preset, "overrides": json.loads(args.overrides), "threads": args.threads,
            "device": args.device}
    tasks = checkpoint_tasks([spec])
    if args.plan:
        print(json.dumps(tasks, indent=1))
        return 0
    for task in tasks:
        if not task["done"]:
            print(json.dumps({"label": task["label"], **build_checkpoint(task)}), flush=True)
    print(json.dumps({"done": [t["id"] for t in tasks]}))
    return 0
