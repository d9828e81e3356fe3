"""The checkpoint store: load a trained model if a valid checkpoint exists, else train (and save) it.

Layout, one folder per key under ``cache_dir()/checkpoints/<kind>-<key>/``::

    model.safetensors   the weights
    config.json         the full training config (and anything needed to rebuild the model, e.g. the vocab)
    metrics.json        what training measured (eval history, wall time, state-dict hash)
    manifest.json       sha256 of each file above + the key; written LAST

The key is a hash of the full training config and the code version, so changing either retrains. Every
file is written to a temp name and ``os.replace``-d into place, and the manifest only appears once all
files are complete: a run killed midway leaves a folder without a manifest, which ``load`` treats as absent
(never as a valid checkpoint). On load, a missing file, a sha256 mismatch or a config that differs from the
requested one raises :class:`CheckpointError`; ``load_or_train`` then retrains, or re-raises with a clear
message when training is not allowed.

Concurrency: ``load_or_train`` holds a per-key lock, ``checkpoints/.locks/<kind>-<key>.lock`` (flock;
outside the folder, which a retrain deletes): shared while loading, exclusive while checking, training and
saving. So of several processes asking for one key, one trains and the others wait, then load its result;
a loader never reads a folder a writer is rewriting (whose files would not match the manifest it read) and
never deletes a good checkpoint. A read-only store is still loadable (without the lock).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from spatialkit.common.locks import file_lock

MANIFEST = "manifest.json"
FILES = ("model.safetensors", "config.json", "metrics.json")


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be trusted (corrupt, incomplete or for another config)."""


def cache_dir() -> Path:
    """``$SPATIALKIT_CACHE`` if set, else ``~/.cache/spatialkit``."""
    root = os.environ.get("SPATIALKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spatialkit")
    return Path(os.path.abspath(os.path.expanduser(root)))  # relative: to the current directory, read now


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def config_key(config: dict, code_version: str) -> str:
    """16 hex digits of sha256(canonical config JSON + code version)."""
    return hashlib.sha256((canonical_json(config) + "|" + code_version).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temp file in the same folder, then move it into place atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_text(path: Path, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def checkpoint_dir(kind: str, key: str, root: Path | None = None) -> Path:
    return Path(root or cache_dir()) / "checkpoints" / f"{kind}-{key}"


def lock_file(folder: Path) -> Path:
    """The lock of a checkpoint folder: beside it, in ``.locks/``, so deleting the folder keeps the lock."""
    folder = Path(folder)
    return folder.parent / ".locks" / f"{folder.name}.lock"


def save(folder: Path, state_dict: dict[str, torch.Tensor], config: dict, metrics: dict, key: str) -> Path:
    """Write the checkpoint files atomically, manifest last. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / MANIFEST
    if manifest_path.exists():  # overwriting: invalidate first, so a crash in between leaves no valid checkpoint
        manifest_path.unlink()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    _atomic_write(folder / "model.safetensors", lambda tmp: save_file(tensors, tmp))
    _write_text(folder / "config.json", canonical_json(config))
    _write_text(folder / "metrics.json", json.dumps(metrics, indent=1, sort_keys=True, default=str))
    manifest = {"key": key, "files": {name: sha256_file(folder / name) for name in FILES}}
    _write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
    return folder


def load(folder: Path, config: dict, key: str) -> tuple[dict[str, torch.Tensor], dict, dict] | None:
    """(state_dict, config, metrics) of a valid checkpoint; None if there is none (or only an unfinished one).

    Raises CheckpointError if the folder holds a finished checkpoint that is corrupt or for another config.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.exists():
        return None  # nothing, or a run that died before finishing: never loaded
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"checkpoint {folder}: unreadable manifest ({e}) (corrupt)") from None
    expected = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(expected, dict) or not all(isinstance(expected.get(n), str) for n in FILES):
        raise CheckpointError(f"checkpoint {folder}: malformed manifest (needs 'key' and 'files' with a sha256 "
                              f"for each of {', '.join(FILES)}) (corrupt)")
    if manifest.get("key") != key:
        raise CheckpointError(f"checkpoint {folder}: manifest key {manifest.get('key')} != requested {key}")
    for name in FILES:
        path = folder / name
        if not path.exists():
            raise CheckpointError(f"checkpoint {folder}: {name} is missing")
        digest = sha256_file(path)
        if digest != expected.get(name):
            raise CheckpointError(f"checkpoint {folder}: {name} sha256 {digest[:12]} != manifest {str(expected.get(name))[:12]} (corrupt)")
    try:
        stored = json.loads((folder / "config.json").read_text())
        metrics = json.loads((folder / "metrics.json").read_text())
        state = load_file(str(folder / "model.safetensors"))
    except Exception as e:  # checksums matched a manifest written for broken files: still not trustworthy
        raise CheckpointError(f"checkpoint {folder}: unreadable file ({type(e).__name__}: {e}) (corrupt)") from None
    if canonical_json(stored) != canonical_json(config):
        raise CheckpointError(f"checkpoint {folder}: stored config differs from the requested config")
    return state, stored, metrics


def _unwritable(root: Path, err: OSError) -> CheckpointError:
    return CheckpointError(f"checkpoint store {root} is not writable ({err.strerror or err}); set SPATIALKIT_CACHE "
                           "to a writable folder")


def load_or_train(kind: str, config: dict, code_version: str, train: Callable[[], tuple[dict, dict]], *,
                  allow_train: bool = True, root: Path | None = None, log: Callable[[str], None] = print):
    """Return (state_dict, metrics, folder): loaded when a valid checkpoint exists, else trained and saved.

    ``config`` must be JSON-serialisable and hold everything that determines the result. ``train()`` returns
    (state_dict, metrics). A corrupt or mismatched checkpoint is retrained (and replaced) when ``allow_train``,
    otherwise a CheckpointError says what is wrong and how to fix it. Several processes asking for one key
    train it once: the first trains under the key's lock, the others wait (``log`` says so) and load.
    """
    key = config_key(config, code_version)
    folder = checkpoint_dir(kind, key, root)
    lock = lock_file(folder)
    waiting = lambda holder: log(f"checkpoint {folder.name}: {holder} is training or saving it; waiting (lock {lock})")

    try:
        shared = file_lock(lock, shared=True, on_wait=waiting)
        shared.__enter__()
    except OSError:
        shared = None  # a read-only store: loading needs no lock when nobody can write there
    try:
        found = load(folder, config, key)
        problem = None
    except CheckpointError as e:
        found, problem = None, e
    finally:
        if shared is not None:
            shared.__exit__(None, None, None)
    if found is not None:
        state, _, metrics = found
        return state, metrics, folder
    if not allow_train:
        if problem is not None:
            raise CheckpointError(f"{problem}; retraining is disabled (allow_train=False): delete {folder} or "
                                  "allow training") from None
        raise CheckpointError(f"no checkpoint for {kind} key {key} in {folder.parent} and training is disabled "
                              "(allow_train=False)")
    store = Path(root or cache_dir())
    try:
        exclusive = file_lock(lock, on_wait=waiting)
        exclusive.__enter__()
    except OSError as e:
        raise _unwritable(store, e) from None
    try:
        try:  # again, under the exclusive lock: another process may have trained it while we waited
            found = load(folder, config, key)
        except CheckpointError as e:
            log(f"{e}; retraining")
            shutil.rmtree(folder, ignore_errors=True)
            found = None
        if found is not None:
            state, _, metrics = found
            return state, metrics, folder
        state, metrics = train()
        try:
            save(folder, state, config, metrics, key)
        except OSError as e:
            raise _unwritable(store, e) from None
        return state, metrics, folder
    finally:
        exclusive.__exit__(None, None, None)
