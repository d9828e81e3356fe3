"""Notebook kernels forked from a process that has already imported the heavy libraries.

Every notebook run starts a fresh Jupyter kernel, and every fresh kernel imports torch, pandas, scipy, matplotlib
and seaborn again (about 3.7 s of CPU on the AVX-512 machine of docs/performance.md), plus transformers when the
notebook runs a Hugging Face model (2.3 s more). A *zygote* imports them once and forks one kernel per notebook
run: the kernel starts with them in memory (shared copy-on-write) and is otherwise the kernel that
``python -m ipykernel_launcher -f CONNECTION_FILE`` would be: the same interpreter, its own session and process
group, the working folder, environment, ``sys.argv`` and ``sys.path`` of that command, stdout/stderr wherever the
runner's own go (the run's kernel.log). One difference: its stdin is /dev/null (a read ends at once), where a fresh
kernel's is a pipe nobody writes to (a read waits forever); notebooks read input through the kernel's own channel.
And ``ps`` shows a forked kernel with the zygote's command line (``python -m spatialkit.suite.zygote ...``).

Why a separate process and not a fork of the runner: GNU OpenMP is not fork-safe -- a child forked after its
parent ran a multi-threaded torch operation hangs at its first one (tried: it hangs) -- and the runner's workers
train models. The zygote only imports; it never runs a tensor operation, never starts a thread and never
initializes CUDA (no preloaded library queries the GPU when imported, checked; a kernel on a GPU initializes it
itself, as a fresh one does).

What could tell a forked kernel from a fresh one, and how each is kept the same (tests/test_zygote.py runs a probe
notebook both ways and compares what it sees):

* libraries that decide at import whether they run in a kernel: ``tqdm.auto`` (widget bars when
  ``ipykernel.zmqshell`` is imported) and pandas (``display.max_columns`` 20 in a kernel, 0 in a terminal) -- the
  zygote imports everything with ``ipykernel.zmqshell`` imported and a stand-in ``get_ipython()`` (``_preload``),
  as a kernel's first cell would, since every process it forks is a kernel;
* ipykernel reads ``JPY_PARENT_PID`` when ``ipykernel.kernelapp`` is imported: that module is imported again in
  the kernel;
* matplotlib reads ``MPLBACKEND`` when imported and resolves the backend at the first figure: the kernel sets the
  backend from its own environment, and the zygote never draws (a resolved backend refuses the fork);
* the environment: a kernel whose environment differs from the zygote's outside Jupyter's and the runner's own
  variables (``KERNEL_ONLY_ENV``), or whose interpreter or its options differ, is refused and starts fresh; the
  zygote is given ``os.environ`` (what kernels are given), not the C-level environment a subprocess inherits;
* a Python warning raised while importing is printed once, in the zygote, not in the notebook's first cell
  (the notebook outputs hold no such warning today either);
* ``spatialkit`` itself is never preloaded (the packages that running this module imported are removed in the
  kernel): a run's code fingerprints are of the files on disk when the kernel starts, and it imports them then.

Use: ``start(hf=...)`` spawns one (``python -m spatialkit.suite.zygote``) and exports its address as
``ADDRESS_ENV[hf]`` (``$SPATIALKIT_KERNEL_ZYGOTE``, ``..._HF`` for one with transformers); the runner then starts
kernels through ``kernel_manager_class(hf)`` (papermill's and nbgrader's ``kernel_manager_class``). Without the
variable, off Linux, or when the zygote refuses or cannot be reached, kernels start the usual way;
``SPATIALKIT_FORK_KERNELS=0`` turns it off. The runner watches and signals a forked kernel (the zygote's child,
not its own) through a pidfd (Linux 5.3+).

The runner does not learn a forked kernel's exit status (it is the zygote's child, reaped there): a kernel that
exits reads as exit status 0, and one that dies mid-run is reported by nbclient as a dead kernel all the same.
Its CPU time is counted where a fresh kernel's was: in the runner's children's (``_reap``), once the zygote ends.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

# The zygotes' sockets, one per preload set: a kernel starts with the libraries a fresh kernel of its notebook
# imports anyway, no more (transformers only for a notebook run on a Hugging Face model).
ADDRESS_ENV = {False: "SPATIALKIT_KERNEL_ZYGOTE", True: "SPATIALKIT_KERNEL_ZYGOTE_HF"}
SWITCH_ENV = "SPATIALKIT_FORK_KERNELS"  # "0": never fork kernels
# Imported by every notebook's kernel (directly or through spatialkit); ``_preload`` imports them as a kernel would.
PRELOAD = ("numpy", "torch", "pandas", "scipy.stats", "matplotlib.pyplot", "seaborn", "ipykernel.kernelapp")
# What spatialkit.models.hf adds for a notebook run on a Hugging Face model.
PRELOAD_HF = ("transformers", "transformers.modeling_utils", "transformers.masking_utils",
              "transformers.integrations.sdpa_attention")
READY_TIMEOUT_S = 120.0  # start(): how long the zygote may take to listen (its imports come after)
_MAX_MESSAGE = 1 << 20


class ZygoteError(RuntimeError):
    """The zygote could not fork a kernel (the caller starts a fresh one)."""


def enabled() -> bool:
    """Whether kernels may be forked here at all (Linux with pidfds, not switched off)."""
    return os.environ.get(SWITCH_ENV, "1") != "0" and _pidfds_work()


@functools.cache
def _pidfds_work() -> bool:
    if not (sys.platform.startswith("linux") and hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))  # the kernel may be older than pidfds (Linux 5.3)
    except OSError:
        return False
    return True


def address(hf: bool = False) -> str | None:
    """The zygote to fork a kernel from (``hf``: for a notebook run on a Hugging Face model): the socket named by
    ``ADDRESS_ENV[hf]`` when forking is enabled and the socket exists."""
    path = os.environ.get(ADDRESS_ENV[hf])
    return path if path and enabled() and os.path.exists(path) else None


# --- the runner's side -----------------------------------------------------------------------------------------

class Zygote:
    """A zygote this process started (``start``); ``close()`` ends it and removes its folder."""

    def __init__(self, process: subprocess.Popen, folder: Path, variable: str, saved_env: str | None):
        self.process, self.folder, self._variable, self._saved_env = process, folder, variable, saved_env
        self.address = str(folder / "zygote.sock")

    def close(self) -> None:
        if self._saved_env is None:
            os.environ.pop(self._variable, None)
        else:
            os.environ[self._variable] = self._saved_env
        with contextlib.suppress(OSError):
            self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for name in ("zygote.sock", "zygote.log"):
            with contextlib.suppress(OSError):
                (self.folder / name).unlink()
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start(*, hf: bool = False) -> Zygote | None:
    """Spawn a zygote (preloading ``PRELOAD``, and ``PRELOAD_HF`` when ``hf``) and export its address as
    ``ADDRESS_ENV[hf]`` in this process's environment (worker processes forked afterwards and subprocesses use
    it). It imports in the background; a kernel asked for meanwhile waits for its imports. None when forking is
    not enabled."""
    if not enabled():
        return None
    folder = Path(tempfile.mkdtemp(prefix="spatialkit-zygote-"))
    sock = folder / "zygote.sock"
    preload = ",".join(PRELOAD + (PRELOAD_HF if hf else ()))
    with open(folder / "zygote.log", "wb") as log:
        process = subprocess.Popen(
            [*_kernel_interpreter(), "-m", "spatialkit.suite.zygote", str(sock), str(os.getpid()), preload],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # os.environ, which kernels are given, and not the C-level environment a subprocess would inherit by
            # default: a library may have set variables there that os.environ never shows (COLUMNS and LINES under
            # pytest)
            env=dict(os.environ))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not sock.exists():  # it listens before importing anything
        if process.poll() is not None or time.monotonic() > deadline:  # e.g. a socket path over 107 bytes
            with contextlib.suppress(OSError):
                process.kill()
            process.wait()
            shutil.rmtree(folder, ignore_errors=True)
            return None  # fresh kernels, as without a zygote
        time.sleep(0.01)
    variable = ADDRESS_ENV[hf]
    saved = os.environ.get(variable)
    os.environ[variable] = str(sock)
    return Zygote(process, folder, variable, saved)


def spawn(path: str, interpreter: list[str], argv: list[str], cwd: str, env: dict[str, str]) -> int:
    """Ask the zygote at ``path`` for a kernel ``INTERPRETER -m ipykernel_launcher ARGV`` in ``cwd`` with ``env``,
    its stdout/stderr this process's fds 1 and 2; returns its pid. The zygote refuses another interpreter."""
    request = json.dumps({"interpreter": interpreter, "argv": argv, "cwd": cwd, "env": env}).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.connect(path)
            socket.send_fds(conn, [request], [1, 2])
            conn.settimeout(READY_TIMEOUT_S + 60)  # the first request waits for the zygote's imports
            reply = json.loads(conn.recv(_MAX_MESSAGE) or b"{}")
    except (OSError, ValueError) as err:
        raise ZygoteError(f"no kernel from the zygote at {path}: {err}") from None
    if "pid" not in reply:
        raise ZygoteError(f"no kernel from the zygote at {path}: {reply.get('error', 'it closed the connection')}")
    return int(reply["pid"])


class ForkedKernel:
    """The part of ``subprocess.Popen`` that jupyter_client's LocalProvisioner uses, for a kernel that is the
    zygote's child: watched and signalled through a pidfd (never another process that reused its pid)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # it is gone already
            self._pidfd, self.returncode = None, 0

    def _gone(self, timeout: float | None) -> bool:
        if self._pidfd is None:
            return True
        if select.select([self._pidfd], [], [], timeout)[0]:
            os.close(self._pidfd)
            self._pidfd, self.returncode = None, 0  # its status went to the zygote, which reaped it
            return True
        return False

    def poll(self) -> int | None:
        self._gone(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._gone(timeout):
            raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def _split_launcher(cmd: list[str]) -> tuple[list[str], list[str]] | None:
    """(interpreter and its options, arguments after ``-m ipykernel_launcher``) of a kernel command, or None when
    it starts something else."""
    for i in range(1, len(cmd) - 1):
        if cmd[i:i + 2] == ["-m", "ipykernel_launcher"]:
            return list(cmd[:i]), list(cmd[i + 2:])
    return None


def _kernel_interpreter() -> list[str]:
    """This environment's kernel's interpreter and options (its kernel.json, which `make` registers: the
    options, e.g. ``-Xfrozen_modules=off`` for the debugger, must be the zygote's too)."""
    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        split = _split_launcher(json.loads(spec.read_text())["argv"])
        if split and os.path.realpath(split[0][0]) == os.path.realpath(sys.executable):
            return [sys.executable, *split[0][1:]]
    return [sys.executable]


def _same_interpreter(a: list[str], b: list[str]) -> bool:
    return len(a) == len(b) and os.path.realpath(a[0]) == os.path.realpath(b[0]) and a[1:] == b[1:]


def _provisioner_class(path: str):
    from jupyter_client.provisioning import LocalProvisioner  # lazy: only a run that executes notebooks needs it

    class ForkedKernelProvisioner(LocalProvisioner):
        """LocalProvisioner whose kernel is forked from the zygote; any failure there starts it the usual way."""

        async def launch_kernel(self, cmd, **kwargs):
            split = _split_launcher(cmd)
            if split is not None and os.path.exists(path):
                cwd = str(kwargs.get("cwd") or os.getcwd())
                try:
                    pid = spawn(path, *split, cwd, dict(kwargs["env"]))
                except ZygoteError as err:
                    print(f"spatialkit: {err}; starting a fresh kernel", file=sys.stderr, flush=True)
                else:
                    self.process = ForkedKernel(pid)
                    self.pid = self.pgid = pid  # the kernel leads its own session and process group
                    self.cwd = cwd
                    return self.connection_info
            return await super().launch_kernel(cmd, **kwargs)

    return ForkedKernelProvisioner


def kernel_manager_class(hf: bool = False):
    """The kernel manager class for papermill (``kernel_manager_class=``): jupyter_client's AsyncKernelManager
    with a provisioner that forks from ``address(hf)``; None when there is no zygote (fresh kernels, as usual)."""
    path = address(hf)
    if path is None:
        return None
    from jupyter_client import AsyncKernelManager  # lazy, as above

    provisioner = _provisioner_class(path)

    class ForkedKernelManager(AsyncKernelManager):
        async def _async_pre_start_kernel(self, **kw):
            if self.provisioner is None:  # as jupyter_client does it, with our provisioner
                self.kernel_id = self.kernel_id or kw.pop("kernel_id", str(uuid.uuid4()))
                self.provisioner = provisioner(kernel_id=self.kernel_id, kernel_spec=self.kernel_spec, parent=self)
            return await super()._async_pre_start_kernel(**kw)

    return ForkedKernelManager


# --- the zygote --------------------------------------------------------------------------------------------------

class _KernelShell:
    """What a library imported inside a kernel sees as ``get_ipython()``, as far as the preloaded ones look at it
    when imported: pandas (``display.max_columns`` is 20 in a kernel, 0 in a terminal: a shell with a ``kernel``)
    and tqdm (``tqdm.auto`` gives widget bars when ``ipykernel.zmqshell`` is imported and the shell is not Qt's)."""

    kernel = True
    config = {"IPKernelApp": {}}


def _preload(names: list[str]) -> None:
    """Import ``names`` as a kernel would before its first cell: with ``ipykernel.zmqshell`` imported and
    ``get_ipython`` defined (every process this zygote forks is a kernel). The stand-in shell is removed after."""
    import builtins  # lazy: the zygote only
    import importlib  # lazy: the zygote only

    import ipykernel.zmqshell  # noqa: F401  (imported in every kernel before any cell runs)

    builtins.get_ipython = _KernelShell  # type: ignore[attr-defined]
    try:
        importlib.import_module("tqdm.auto")  # transformers imports it at its own import
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as err:  # a missing optional library: the kernel imports what it needs itself
                print(f"zygote: cannot preload {name}: {err}", file=sys.stderr, flush=True)
    finally:
        del builtins.get_ipython


def _forkable() -> str | None:
    """Why this zygote must not fork now, or None."""
    if threading.active_count() > 1:
        return f"{threading.active_count()} threads are running in the zygote"
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and getattr(pyplot, "_backend_mod", None) is not None:
        return "matplotlib's backend was resolved in the zygote"
    if "matplotlib_inline.backend_inline" in sys.modules:
        return "the inline backend was imported outside a kernel"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # CUDA cannot be used in a child forked after that
        return "CUDA was initialized in the zygote"
    return None


def _become_kernel(request: dict, fds: list[int], client: int | None, sockets: list[socket.socket]) -> None:
    """In the forked child: turn into ``python -m ipykernel_launcher ARGV`` and never return."""
    code = 1
    try:
        for sock in sockets:
            sock.close()
        os.setsid()  # as jupyter_client's launcher does: interrupts go to the kernel's own group
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in {null, *fds}:
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["JPY_PARENT_PID"] = str(os.getppid())  # ipykernel exits if the zygote goes
        if "matplotlib" in sys.modules:  # the backend named by the kernel's environment, resolved at its first figure
            import matplotlib  # lazy: already imported (just checked)

            matplotlib.rcParams["backend"] = os.environ.get("MPLBACKEND") or "module://matplotlib_inline.backend_inline"
        if client is not None:
            _exit_with(client)
        # ipykernel.kernelapp reads JPY_PARENT_PID (the parent to exit with) when it is imported: import it here;
        # and spatialkit's own packages (imported to run this module) are the kernel's to import from disk
        for name in [m for m in sys.modules if m == "spatialkit" or m.startswith("spatialkit.")]:
            del sys.modules[name]
        sys.modules.pop("ipykernel.kernelapp", None)
        import importlib  # lazy: the child only
        import ipykernel_launcher  # lazy: the module a fresh kernel runs as __main__ (its path for sys.argv)

        sys.argv = [ipykernel_launcher.__file__, *request["argv"]]
        importlib.import_module("ipykernel.kernelapp").launch_new_instance()
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException:
        import traceback  # lazy: failure path

        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()  # what a fresh kernel's interpreter runs at exit
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _exit_with(pid: int) -> None:
    """End this kernel when process ``pid`` (the runner that asked for it) ends, as ipykernel does with a fresh
    kernel's parent: a runner killed outright must not leave its kernel running."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)

    def watch():
        select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="runner-watch").start()


# Variables a kernel's environment may add or change without the zygote's imports being any different: Jupyter's
# own (JPY_PARENT_PID, JPY_SESSION_NAME, the debugger's PYDEVD_*), the runner's (MPLBACKEND, which the kernel
# applies itself, JUPYTER_PATH, SPATIALKIT_*: spatialkit is never preloaded) and pytest's current test name. Any
# other difference (PYTHONPATH, a thread count, HF_HUB_OFFLINE, ...) could have changed what the preloaded
# libraries did when imported, so the zygote refuses and the runner starts a fresh kernel.
KERNEL_ONLY_ENV = ("JPY_", "PYDEVD_", "SPATIALKIT_", "MPLBACKEND", "JUPYTER_PATH", "PYTEST_CURRENT_TEST")


def _env_differences(own: dict, kernel: dict) -> list[str]:
    """Names (sorted) set differently in the zygote's and the kernel's environments, outside KERNEL_ONLY_ENV."""
    return sorted(name for name in set(own) | set(kernel)
                  if own.get(name) != kernel.get(name) and not name.startswith(KERNEL_ONLY_ENV))


def serve(path: str, owner: int, preload: list[str]) -> None:
    """Listen on ``path``, import ``preload``, then fork a kernel per request until ``owner`` exits."""
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]  # as ipykernel_launcher does; the kernel's shell puts '' back
    signal_when_parent_dies(signal.SIGTERM)  # end with the owner
    if os.getppid() != owner:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the runner's to handle
    signal.signal(signal.SIGTERM, _terminated)  # close() or the owner's death: clean up below
    try:
        _serve(path, owner, preload)
    except SystemExit:
        pass
    finally:  # exited kernels, then the socket, its log and folder (start() made the folder for it alone)
        _reap()
        folder = Path(path).parent
        for leftover in (Path(path), Path(path + ".tmp"), folder / "zygote.log"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()


def _reap() -> None:
    """Collect the kernels that exited (each within a second: the runner watches them through pidfds, which report
    the exit at once). With waitpid, not an ignored SIGCHLD: a child reaped that way adds its CPU time to this
    process's children's, and so to the runner's once it has waited for the zygote (benchmarks/bench_book.py reads
    it); an auto-reaped one's would be lost."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def signal_when_parent_dies(signum: int) -> None:
    """Have the kernel send this process ``signum`` when its parent dies, even by SIGKILL (Linux's
    PR_SET_PDEATHSIG; elsewhere nothing). The caller checks ``os.getppid()`` afterwards: the parent may have died
    before this call."""
    with contextlib.suppress(Exception):
        import ctypes  # lazy: only processes that must end with their parent need it

        ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # 1 = PR_SET_PDEATHSIG


def _terminated(signum, frame):
    raise SystemExit(0)


def _serve(path: str, owner: int, preload: list[str]) -> None:
    own_env = dict(os.environ)
    own = [sys.executable, *sys.orig_argv[1:sys.orig_argv.index("-m")]]  # the interpreter and options it runs as
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path + ".tmp")
    listener.listen(64)
    os.replace(path + ".tmp", path)  # appears only once it accepts
    _preload(preload)
    while os.getppid() == owner:
        _reap()
        if not select.select([listener], [], [], 1.0)[0]:
            continue
        conn, _ = listener.accept()
        with conn:
            try:
                message, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 2)
                request = json.loads(message)
            except (OSError, ValueError):
                continue
            try:
                refused = _forkable() if len(fds) == 2 else "expected two file descriptors"
                if not refused and (differs := _env_differences(own_env, request.get("env") or {})):
                    refused = f"the kernel's environment differs from the zygote's in {', '.join(differs)}"
                if not refused and not _same_interpreter(request.get("interpreter") or [""], own):
                    refused = f"the kernel is {request.get('interpreter')}, this zygote {own}"
                if refused:
                    conn.send(json.dumps({"error": refused}).encode())
                    continue
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                client = int.from_bytes(creds[:4], sys.byteorder) or None
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
                pid = os.fork()
                if pid == 0:
                    _become_kernel(request, fds, client, [listener, conn])
                conn.send(json.dumps({"pid": pid}).encode())
            finally:
                for fd in fds:
                    os.close(fd)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), [name for name in sys.argv[3].split(",") if name])
