"""Notebook 05's trained towers from plain-data specs, so ``spatialkit run`` trains them ahead in its worker pool
(``spatialkit.suite.parallel``, kinds "clip" and "encoder_swap") and notebook 07's "cloc" cells load the same
checkpoints notebook 05 trains.

A "clip" spec is one tiny CLIP / CLOC / CLOC-RoI / CLOC-RoI+G encoder, exactly notebook 05's call::

    {"data": {"preset": "llava", "overrides": {"seed": 0}, "seed": 0, "n_train": 2000, "n_test": 300,
              "regions": 3, "caption_order": "canonical"},
     "model": {"width": 64, "depth": 2, "text_depth": 2, "embed_dim": 64, "max_text_len": 24,
               "region_head": "none"},
     "train": {"steps": 300, "batch_size": 64, "lr": 0.001, "lam": 1.0, "dup_threshold": 0.9},
     "seed": 0, "threads": 1, "device": "cpu"}

= ``clip.train_or_load(CLIPConfig(vocab_size=len(tok), image_size=<the world's>, **model), train_data,
TrainConfig(**train), seed=seed, device=device)`` on ``clip.prepare_data(data["seed"], scene_config(preset(
data["preset"], **data["overrides"])), ...)``'s training scenes, under ``torch.set_num_threads(threads)``
(0 = torch's default). An "encoder_swap" spec is the LLaVA recipe's stage 2 on such an encoder, frozen::

    {"organism": {"preset": "llava", "overrides": {"seed": 0, "steps": 1000}}, "encoder": <a clip spec>,
     "threads": 1, "device": "cpu"}

= ``encoder_swap.train_or_load_swapped(preset(...), <the encoder>, encoder_key=encoder_key(...),
threads=threads or None, device=device)``. ``load_swapped(spec)`` returns that organism (notebook 07).

Each kind has ``*_checkpoint_tasks(specs)`` (plan: one task per distinct store key, with whether it is stored)
and ``*_build_checkpoint(task)`` (train it under the key's lock, or load it when another process did); a swapped
organism's encoder is its own task (kind "clip"), trained first.
"""

from __future__ import annotations

import functools
import json
import time

from spatialkit.common import checkpoints
from spatialkit.models import clip as C
from spatialkit.models import encoder_swap
from spatialkit.models.organism import preset, scene_config
from spatialkit.models.organism.train import torch_threads

TOWERS = {head: name for name, head in C.VARIANTS.items()}  # region head -> tower name ("none" -> "CLIP")


@functools.lru_cache(maxsize=4)
def _data(data_json: str):
    """(tokenizer, training data, scene config) of a spec's "data" (rendered once per process)."""
    data = json.loads(data_json)
    scene_cfg = scene_config(preset(data["preset"], **(data.get("overrides") or {})))
    tok, train_data, _, _ = C.prepare_data(data["seed"], scene_cfg, n_train=data["n_train"], n_test=data["n_test"],
                                           regions=data["regions"],
                                           caption_order=data.get("caption_order", "canonical"))
    return tok, train_data, scene_cfg


def clip_parts(spec: dict):
    """(model config, training data, training config, tower name) of a "clip" spec."""
    tok, train_data, scene_cfg = _data(json.dumps(spec["data"], sort_keys=True))
    model_cfg = C.CLIPConfig(vocab_size=len(tok), image_size=scene_cfg.image_size, **spec["model"])
    return model_cfg, train_data, C.TrainConfig(**spec["train"]), TOWERS[model_cfg.region_head]


def _threads(spec: dict) -> int | None:
    return spec.get("threads") or None


def clip_folder(spec: dict):
    model_cfg, data, tc, _ = clip_parts(spec)
    return C.checkpoint_folder(model_cfg, data, tc, seed=spec["seed"], device=spec.get("device", "cpu"))


def _clip_label(spec: dict) -> str:
    _, _, tc, tower = clip_parts(spec)
    return (f"{tower} encoder seed {spec['seed']} on {spec['data']['preset']}'s world ({tc.steps} steps, "
            f"threads {spec.get('threads') or 'default'}, {spec.get('device', 'cpu')})")


def load_clip(spec: dict, *, progress: bool = False):
    """The trained encoder of a "clip" spec (trained into the store when missing): (TinyCLIP, metrics)."""
    model_cfg, data, tc, _ = clip_parts(spec)
    with torch_threads(_threads(spec)):
        return C.train_or_load(model_cfg, data, tc, seed=spec["seed"], device=spec.get("device", "cpu"),
                               progress=progress)


def clip_checkpoint_tasks(specs: list[dict]) -> list[dict]:
    """One task per distinct encoder key: {"kind": "clip", "id", "label", "deps": [], "done", "spec", "for"}."""
    tasks: dict[str, dict] = {}
    for index, spec in enumerate(specs):
        task = _clip_task(spec)
        tasks.setdefault(task["id"], task)["for"].append(index)
    return list(tasks.values())


def _clip_task(spec: dict) -> dict:
    folder = clip_folder(spec)
    return {"kind": "clip", "id": folder.name, "label": _clip_label(spec), "deps": [],
            "done": (folder / checkpoints.MANIFEST).exists(), "spec": spec, "for": []}


def clip_build_checkpoint(task: dict) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    load_clip(task["spec"])
    return {"id": task["id"], "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


# --- the LLaVA recipe on a frozen CLIP / CLOC tower -----------------------------------------------------------


def swap_parts(spec: dict):
    """(organism config, encoder model config, encoder key) of an "encoder_swap" spec."""
    enc = spec["encoder"]
    model_cfg, data, tc, tower = clip_parts(enc)
    cfg = preset(spec["organism"]["preset"], **(spec["organism"].get("overrides") or {}))
    return cfg, model_cfg, encoder_swap.encoder_key(tower, enc["seed"], data, tc, model_cfg)


def swap_folder(spec: dict):
    cfg, model_cfg, key = swap_parts(spec)
    return encoder_swap.checkpoint_folder(cfg, model_cfg, encoder_key=key, threads=_threads(spec),
                                          device=spec.get("device", "cpu"))


def load_swapped(spec: dict, *, progress: bool = False):
    """The swapped-tower organism of an "encoder_swap" spec (it and its encoder trained into the store when
    missing): (OrganismVLM, the trainer's metrics)."""
    cfg, _, key = swap_parts(spec)
    clip_model, _ = load_clip(spec["encoder"])
    return encoder_swap.train_or_load_swapped(cfg, clip_model, encoder_key=key, threads=_threads(spec),
                                              device=spec.get("device", "cpu"), progress=progress)


def swap_checkpoint_tasks(specs: list[dict]) -> list[dict]:
    """One task per distinct swapped-organism key, after its encoder's task (kind "clip", emitted too)."""
    tasks: dict[str, dict] = {}
    for index, spec in enumerate(specs):
        enc = _clip_task(spec["encoder"])
        tasks.setdefault(enc["id"], enc)
        folder = swap_folder(spec)
        cfg, _, _ = swap_parts(spec)
        _, _, _, tower = clip_parts(spec["encoder"])
        label = (f"{spec['organism']['preset']} (seed {cfg.seed}, {cfg.optim.steps} steps) on the {tower} tower "
                 f"seed {spec['encoder']['seed']} (threads {spec.get('threads') or 'default'}, "
                 f"{spec.get('device', 'cpu')})")
        tasks.setdefault(folder.name, {"kind": "encoder_swap", "id": folder.name, "label": label,
                                       "deps": [enc["id"]], "done": (folder / checkpoints.MANIFEST).exists(),
                                       "spec": spec, "for": []})["for"].append(index)
    return list(tasks.values())


def swap_build_checkpoint(task: dict) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    load_swapped(task["spec"])
    return {"id": task["id"], "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
