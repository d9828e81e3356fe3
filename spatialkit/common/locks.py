"""Advisory inter-process locks on a lock file (``fcntl.flock``), used by the notebook runner (one run of a
notebook at a time) and the checkpoint store (one trainer per key, readers never see a half-written folder).

    with file_lock(folder / ".locks" / "NAME.lock", on_wait=lambda holder: print("waiting for", holder)):
        ...  # exclusive; shared=True for readers

The kernel drops a flock when its holder exits or is killed, so a crashed run never leaves a stale lock. The
lock file itself is never deleted (deleting it while another process waits on it would split the lock).
Standard library only: importing this module stays light (the CLI imports it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator


class LockBusy(RuntimeError):
    """The lock is held by another process and the caller asked not to wait. ``str(err)`` names the holder."""


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"


@contextlib.contextmanager
def file_lock(path: Path | str, *, shared: bool = False, wait: bool = True,
              on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive (or ``shared``) lock on ``path`` (created, with its folder, if missing).

    If another process holds it: ``wait=False`` raises :class:`LockBusy`; otherwise ``on_wait(holder)`` is
    called once ("pid 1234") and the call blocks until the lock is free (Ctrl-C interrupts the wait).
    An exclusive holder writes its pid into the file, for the waiters' message.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise LockBusy(f"{holder} holds {path}") from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(fd, mode)
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
