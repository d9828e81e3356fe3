"""Share a checkpoint store: ``spatialkit store list | pack FILE | unpack FILE``.

Training the quick book's models is most of a cold build (about 40 minutes on two cores, docs/performance.md);
the notebooks themselves take minutes. A teacher or a lab trains once and hands out one file:

    spatialkit store pack models.tar      # where the book was built: every finished checkpoint of the store
    spatialkit store unpack models.tar    # on each machine; then `make book` trains only what the file lacks

A checkpoint is found by its key, which holds its whole config, the code fingerprint of the modules that
train it, the torch version and the thread count: a machine uses a packed checkpoint only where these agree
(the same spatialkit commit, the pinned torch, the default one thread) and trains the rest as usual, so a
file from another commit costs nothing but its unpacking. Every machine that loads the same checkpoints scores
the same weights, whatever its CPU type (training on another CPU type draws other weights).

Nothing is lost: ``pack`` writes the file atomically and reads each checkpoint under its lock (shared: a
retrain of that key waits); ``unpack`` first checks that every member of the file is a checkpoint file
(``checkpoints/KIND-KEY/NAME``, a plain file, nothing else), then extracts each checkpoint beside the store's
folder, checks every file against the checkpoint's manifest (sha256) and only then moves it into place under
its lock; a finished checkpoint already in the store is never replaced.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import spatialkit
from spatialkit.common.locks import file_lock

INFO = "spatialkit-store.json"  # the file's own description: who packed it, with what, and its checkpoints
FOLDER = re.compile(r"^[a-z0-9_]+-[0-9a-f]{8,64}$")  # KIND-KEY, as checkpoints.checkpoint_dir names them


class StoreError(RuntimeError):
    """A one-line error of ``spatialkit store`` (nothing was written)."""


@dataclass
class Entry:
    name: str  # KIND-KEY
    bytes: int
    problem: str | None  # None: finished and every file matches its manifest


def _checkpoints():
    from spatialkit.common import checkpoints  # lazy: imports torch (safetensors); the CLI starts without it

    return checkpoints


def check_folder(folder: Path, name: str | None = None) -> str | None:
    """Why ``folder`` is not a finished, intact checkpoint (None when it is), by the store's own check
    (``checkpoints.load``: a manifest for the key of its name -- ``name``, default the folder's, KIND-KEY --,
    every file's sha256, readable weights), with the folder's own config as the one requested."""
    ck = _checkpoints()
    if not (folder / ck.MANIFEST).exists():
        return "unfinished (no manifest)"
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        return "config.json is missing"
    except (OSError, ValueError) as err:
        return f"unreadable config.json ({err})"
    try:
        ck.load(folder, config, (name or folder.name).rsplit("-", 1)[-1])
    except ck.CheckpointError as err:
        return str(err).split(": ", 1)[-1]  # without "checkpoint FOLDER: " (a staging folder, when unpacking)
    return None


def root() -> Path:
    """The store: ``$SPATIALKIT_CACHE``, default ``~/.cache/spatialkit``."""
    return Path(_checkpoints().cache_dir())


def _folders(root: Path | None) -> list[Path]:
    """The checkpoint folders (KIND-KEY) of the store at ``root`` (default: ``$SPATIALKIT_CACHE``), by name."""
    base = Path(root or _checkpoints().cache_dir()) / "checkpoints"
    return sorted(p for p in base.iterdir() if p.is_dir() and FOLDER.match(p.name)) if base.is_dir() else []


def entries(root: Path | None = None) -> list[Entry]:
    """Every checkpoint folder of the store at ``root`` (default: ``$SPATIALKIT_CACHE``), checked."""
    return [Entry(p.name, sum(f.stat().st_size for f in p.iterdir() if f.is_file()), check_folder(p))
            for p in _folders(root)]


def pack(out: Path, root: Path | None = None, echo=print) -> list[str]:
    """Write every finished, intact checkpoint of the store into the tar file ``out`` (atomically); returns
    their names. A checkpoint that fails its check is left out and named."""
    ck = _checkpoints()
    root = Path(root or ck.cache_dir())
    out = Path(out).absolute()
    if not out.parent.is_dir():
        raise StoreError(f"cannot write {out}: {out.parent} is not a folder")
    if out.is_dir():
        raise StoreError(f"cannot write {out}: it is a folder; give a file name, e.g. {out / 'models.tar'}")
    packed: list[str] = []
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w") as tar:
            for folder in _folders(root):
                with file_lock(ck.lock_file(folder), shared=True):  # a retrain of this key waits
                    problem = check_folder(folder)
                    if problem:
                        echo(f"  left out {folder.name}: {problem}")
                        continue
                    for name in (*ck.FILES, ck.MANIFEST):
                        tar.add(folder / name, arcname=f"checkpoints/{folder.name}/{name}", recursive=False)
                packed.append(folder.name)
            info = json.dumps({"spatialkit": spatialkit.__version__, "torch": _torch_version(),
                               "checkpoints": packed}, indent=1).encode()
            member = tarfile.TarInfo(INFO)
            member.size = len(info)
            tar.addfile(member, io.BytesIO(info))
        if not packed:
            raise StoreError(f"no finished checkpoint in {root / 'checkpoints'}: nothing to pack (run the notebooks "
                             "first, e.g. `make book`)")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would keep the file from the people it is for
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return packed


def _members(tar: tarfile.TarFile, source: Path) -> dict[str, dict[str, tarfile.TarInfo]]:
    """{KIND-KEY: {file name: member}}, or StoreError naming the first member that is not a checkpoint file."""
    ck = _checkpoints()
    allowed = {*ck.FILES, ck.MANIFEST}
    folders: dict[str, dict[str, tarfile.TarInfo]] = {}
    for member in tar.getmembers():
        if member.name == INFO and member.isfile():
            continue
        parts = member.name.split("/")
        if (len(parts) != 3 or parts[0] != "checkpoints" or not FOLDER.match(parts[1]) or parts[2] not in allowed
                or not member.isfile()):
            raise StoreError(f"{source}: member '{member.name}' is not a checkpoint file "
                             "(checkpoints/KIND-KEY/NAME, a plain file); nothing was unpacked")
        folders.setdefault(parts[1], {})[parts[2]] = member
    return folders


def unpack(source: Path, root: Path | None = None, echo=print) -> dict[str, list[str]]:
    """Add the checkpoints of the tar file ``source`` to the store. Returns {"added", "present", "refused"}
    (checkpoint names); a refused one (a file missing or not matching its manifest) is named with its reason."""
    ck = _checkpoints()
    root = Path(root or ck.cache_dir())
    source = Path(source)
    try:
        tar = tarfile.open(source, "r")
    except (OSError, tarfile.TarError) as err:
        first = str(err).splitlines()[0].rstrip(":")  # tarfile lists every compression it tried, a line each
        raise StoreError(f"{source}: not a readable tar file ({first})") from None
    done: dict[str, list[str]] = {"added": [], "present": [], "refused": []}
    with tar:
        folders = _members(tar, source)
        info = _info(tar)
        if info.get("torch") not in (None, _torch_version()):
            echo(f"  note: packed with torch {info['torch']}, this machine has {_torch_version()}: its checkpoint "
                 "keys differ, so the notebooks will train their own")
        base = root / "checkpoints"
        try:
            base.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"checkpoint store {root} is not writable ({err.strerror or err})") from None
        for name, files in sorted(folders.items()):
            dest = base / name
            if (dest / ck.MANIFEST).exists():
                done["present"].append(name)
                continue
            staging = Path(tempfile.mkdtemp(dir=base, prefix=f".unpack-{name}-"))
            try:
                for file_name, member in files.items():
                    with tar.extractfile(member) as src, open(staging / file_name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                problem = check_folder(staging, name)
                if problem:
                    echo(f"  refused {name}: {problem}")
                    done["refused"].append(name)
                    continue
                with file_lock(ck.lock_file(dest)):  # loaders and trainers of this key wait
                    if (dest / ck.MANIFEST).exists():  # finished meanwhile (trained here): keep it
                        done["present"].append(name)
                        continue
                    if dest.exists():  # an unfinished folder (a run killed while training it)
                        shutil.rmtree(dest)
                    os.rename(staging, dest)
                done["added"].append(name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return done


def _info(tar: tarfile.TarFile) -> dict:
    try:
        member = tar.getmember(INFO)
        with tar.extractfile(member) as f:
            info = json.loads(f.read())
        return info if isinstance(info, dict) else {}
    except (KeyError, ValueError, OSError):
        return {}


def _torch_version() -> str:
    import torch  # lazy: the CLI starts without it (the checkpoints' keys hold its version)

    return torch.__version__

