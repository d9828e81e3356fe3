"""Notebook 06's PIN inserts as checkpoints of ``spatialkit run``'s training pool (kind "pin").

A spec is plain data, as the suite's catalog declares it::

    {"organism": {"preset": "llava", "overrides": {"seed": 0}}, "variant": "PIN (insert + loc rows)",
     "config": {"n_train_scenes": 1000, "steps": 600, ..., "use_insert": True}, "n_bins_from": "llava",
     "threads": 1, "device": "cpu"}

= notebook 06's ``load_or_train_pin(vlm, PinConfig(**config), data=location_set(scene_config(vlm.config),
split_seeds(vlm.config.bench_seed, "train", config["n_train_scenes"]), n_bins), model_sha256=state_dict_sha256(
vlm.model))`` on ``vlm = load_or_train(preset(organism["preset"], **organism["overrides"]), device=device)``, all
under ``torch.set_num_threads(threads)`` (0 = torch's default), where ``n_bins`` is the number of location tokens
of the organism preset ``n_bins_from`` (the notebook's failing organism: both organisms' sets use its count).
``variant`` only names the task.

The insert's store key holds the trained organism's weights and the rendered training data, so it is known only
once the organism is trained: a task's id is a digest of its spec, it depends on the organism's task (emitted too,
kind "organism", so the scheduler trains it first), and it is done when the organism is stored and the insert's
own folder (``pin.pin_folder``, the key ``load_or_train_pin`` uses) holds a finished checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time

from spatialkit.analysis.interventions import pin as pinlib
from spatialkit.common import checkpoints
from spatialkit.models.organism import preset, scene_config
from spatialkit.models.organism import store as organism_store
from spatialkit.models.organism.adapter import loc_token_ids
from spatialkit.models.organism.model import Vocab, state_dict_sha256
from spatialkit.models.organism.train import resolve_device, torch_threads


def organism_spec(spec: dict) -> dict:
    """The organism store's spec (``organism.store.checkpoint_tasks``) of the frozen organism a pin spec trains on."""
    org = spec["organism"]
    return {"preset": org["preset"], "overrides": dict(org.get("overrides") or {}),
            "threads": spec.get("threads", 0), "device": spec.get("device", "cpu")}


def n_bins(spec: dict) -> int:
    """How many location tokens the organism preset ``n_bins_from`` has (its vocabulary's loc0, loc1, ...)."""
    cfg = preset(spec["n_bins_from"], **(spec["organism"].get("overrides") or {}))
    return len(loc_token_ids(Vocab.build((), loc_grid=cfg.data.loc_grid)))


def pin_config(spec: dict) -> pinlib.PinConfig:
    return pinlib.PinConfig(**spec["config"])


def task_id(spec: dict) -> str:
    """A stable id of a pin spec (the store key needs the trained organism, so it cannot be the id)."""
    return "pin-spec-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def load_organism(spec: dict, *, allow_train: bool = True):
    """(the frozen organism, its weights' sha256) of a pin spec, as the notebook loads it (under the spec's threads:
    the organism's key holds the thread count)."""
    ospec = organism_spec(spec)
    with torch_threads(ospec["threads"] or None):
        vlm = organism_store.load_or_train(organism_store.spec_config(ospec), allow_train, progress=False,
                                           device=resolve_device(ospec["device"]))
    return vlm, state_dict_sha256(vlm.model)


def load_insert(spec: dict, *, allow_train: bool = True) -> tuple:
    """(the frozen organism, its PIN, PIN's training record) of a pin spec, as the pool builds them: loaded from the
    store, trained when missing and ``allow_train`` (notebook 07's "pin" cells; notebook 06 builds its own)."""
    vlm, sha = load_organism(spec, allow_train=allow_train)
    with torch_threads(spec.get("threads") or None):
        pin, metrics = pinlib.load_or_train_pin(vlm, pin_config(spec), data=training_data(vlm, spec),
                                                allow_train=allow_train, progress=False, model_sha256=sha)
    return vlm, pin, metrics


def training_data(vlm, spec: dict) -> pinlib.LocationSet:
    """The notebook's training location set for the organism ``vlm``."""
    return pinlib.location_set(scene_config(vlm.config),
                               pinlib.split_seeds(vlm.config.data.bench_seed, "train", spec["config"]["n_train_scenes"]),
                               n_bins(spec))


def _label(spec: dict) -> str:
    org, cfg = spec["organism"], spec["config"]
    over = " ".join(f"{k}={v}" for k, v in (org.get("overrides") or {}).items())
    variant = spec.get("variant") or f"use_insert={cfg.get('use_insert', True)} train_loc_rows={cfg.get('train_loc_rows', True)}"
    return (f"PIN '{variant}' on {org['preset']}{' ' + over if over else ''} ({cfg.get('steps')} steps, "
            f"threads {spec.get('threads') or 'default'}, {spec.get('device', 'cpu')})")


def checkpoint_tasks(specs: list[dict]) -> list[dict]:
    """One task per pin spec, after its organism's tasks (emitted too, kind "organism"): {"kind": "pin", "id",
    "label", "deps": [the organism's id], "done", "spec", "for"}. An organism already stored is loaded (tiny
    organisms load in a fraction of a second) to find out whether the insert is stored too."""
    org_tasks = organism_store.checkpoint_tasks([organism_spec(s) for s in specs])
    organism_of = {index: t for t in org_tasks for index in t.get("for", [])}
    tasks: dict[str, dict] = {t["id"]: {**t, "kind": "organism", "for": []} for t in org_tasks}
    loaded: dict[str, tuple] = {}  # organism id -> (vlm, sha256)
    data: dict[tuple, pinlib.LocationSet] = {}
    for index, spec in enumerate(specs):
        org = organism_of[index]
        done = False
        if org["done"]:
            try:
                if org["id"] not in loaded:
                    loaded[org["id"]] = load_organism(spec, allow_train=False)
                vlm, sha = loaded[org["id"]]
                which = (org["id"], spec["config"]["n_train_scenes"], n_bins(spec))
                if which not in data:
                    data[which] = training_data(vlm, spec)
                folder = pinlib.pin_folder(vlm, pin_config(spec), data[which], model_sha256=sha)
                done = (folder / checkpoints.MANIFEST).exists()
            except checkpoints.CheckpointError:  # a damaged organism: its build retrains it, then the insert
                done = False
        ident = task_id(spec)
        tasks.setdefault(ident, {"kind": "pin", "id": ident, "label": _label(spec), "deps": [org["id"]],
                                 "done": done, "spec": spec, "for": []})["for"].append(index)
    return list(tasks.values())


def build_checkpoint(task: dict) -> dict:
    """Train (or load, when another process trained it meanwhile) one pin task's insert into the store, under its
    key's lock (its organism too, when missing). Returns {"id", "wall_s", "cpu_s"} (this process's CPU time)."""
    spec = task["spec"]
    t0, c0 = time.perf_counter(), time.process_time()
    vlm, sha = load_organism(spec)
    with torch_threads(spec.get("threads") or None):
        pinlib.load_or_train_pin(vlm, pin_config(spec), data=training_data(vlm, spec), model_sha256=sha,
                                 progress=False)
    return {"id": task["id"], "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
