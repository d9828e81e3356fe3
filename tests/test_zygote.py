"""Kernels forked from a zygote (spatialkit/suite/zygote.py) are the kernels a fresh start would give.

A probe notebook reports what a notebook could see of how its kernel started (paths, argv, environment, signals,
session, how tqdm / pandas / matplotlib set themselves up, ipykernel's parent); run in a fresh kernel and in a
forked one, the reports must be equal except for what was preloaded. Then the forked kernel's life: interrupted,
shut down, ended with the process that asked for it; the zygote's refusals, and its clean-up.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from spatialkit.suite import runner, zygote

pytestmark = pytest.mark.skipif(not zygote.enabled(), reason="kernels are forked on Linux only")

PROBE = r'''
import json, os, signal, sys
preloaded = "torch" in sys.modules
spatialkit_modules = sorted(m for m in sys.modules if m.split(".")[0] == "spatialkit")
import matplotlib, pandas, torch
from tqdm.auto import tqdm
import ipykernel.kernelapp
app = ipykernel.kernelapp.IPKernelApp.instance()
stdin = os.readlink("/proc/self/fd/0")
report = {
    "sys.path": sys.path, "argv": [os.path.basename(sys.argv[0]), *sys.argv[1:2], *sys.argv[3:]], "cwd": os.getcwd(),
    "probe_env": os.environ.get("ZYGOTE_PROBE"), "mplbackend": matplotlib.get_backend(),
    "tqdm": tqdm.__mro__[1].__module__, "pandas max_columns": pandas.get_option("display.max_columns"),
    "threads": torch.get_num_threads(), "shell": type(get_ipython()).__name__,
    "parent_handle is parent": app.parent_handle == os.getppid(), "own session": os.getsid(0) == os.getpid(),
    "stdin": stdin, "main": sys.modules["__main__"].__name__, "spatialkit modules": spatialkit_modules,
    "signals": {name: str(signal.getsignal(getattr(signal, name))) for name in ("SIGINT", "SIGTERM", "SIGCHLD")},
}
print(json.dumps({"preloaded": preloaded, "report": report}))
'''
FIGURE = "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]);"


@pytest.fixture
def own_zygote(monkeypatch):
    """A zygote of this test's own (not the session's), without transformers."""
    for variable in zygote.ADDRESS_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ZYGOTE_PROBE", "zygote's")
    started = zygote.start()
    assert started is not None
    yield started
    started.close()


def _execute(tmp_path: Path, name: str, forked) -> tuple[dict, list]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PROBE), nbformat.v4.new_code_cell(FIGURE)]
    source, out = tmp_path / f"{name}.ipynb", tmp_path / f"{name}.out.ipynb"
    nbformat.write(nb, source)
    papermill = runner.nbimport.papermill()
    with runner.kernel_environment(runner.INLINE_BACKEND):
        papermill.execute_notebook(str(source), str(out), kernel_name=runner.KERNEL, cwd=str(tmp_path),
                                   progress_bar=False, **({"kernel_manager_class": forked} if forked else {}))
    cells = json.loads(out.read_text())["cells"]
    probe = json.loads("".join(cells[0]["outputs"][0]["text"]))
    return probe, [sorted(o.get("data", {})) for o in cells[1]["outputs"]]


def test_a_forked_kernel_is_the_kernel_a_fresh_one_would_be(own_zygote, tmp_path):
    forked = zygote.kernel_manager_class()
    assert forked is not None
    fresh_probe, fresh_figure = _execute(tmp_path, "fresh", None)
    forked_probe, forked_figure = _execute(tmp_path, "forked", forked)
    assert fresh_probe["preloaded"] is False and forked_probe["preloaded"] is True  # it did fork
    # stdin: a fresh kernel's is a pipe nobody writes to (a read waits forever), a forked one's /dev/null (a read
    # ends at once); notebooks read input through the kernel's stdin channel, never from fd 0
    assert fresh_probe["report"].pop("stdin").startswith("pipe:")
    assert forked_probe["report"].pop("stdin") == os.devnull
    assert forked_probe["report"] == fresh_probe["report"]
    report = forked_probe["report"]
    assert report["tqdm"] == "tqdm.notebook" and report["pandas max_columns"] == 20  # as inside a kernel
    assert report["mplbackend"] == runner.INLINE_BACKEND
    assert report["parent_handle is parent"] and report["own session"]
    assert forked_figure == fresh_figure == [["image/png", "text/plain"]]


def _connection_file(tmp_path: Path) -> str:
    from jupyter_client.connect import write_connection_file

    return write_connection_file(str(tmp_path / "kernel.json"))[0]


def test_interrupt_and_shutdown(own_zygote, tmp_path):
    manager_class = zygote.kernel_manager_class()

    async def scenario():
        km = manager_class(kernel_name=runner.KERNEL)
        with runner.kernel_environment(runner.INLINE_BACKEND):
            await km.start_kernel(cwd=str(tmp_path))
        process = km.provisioner.process
        assert isinstance(process, zygote.ForkedKernel)
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            msg_id = client.execute("import time; time.sleep(60)")
            await asyncio.sleep(1.0)
            await km.interrupt_kernel()
            reply = await client.get_shell_msg(timeout=30)
            assert reply["parent_header"]["msg_id"] == msg_id
            assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
            assert await km.is_alive()
        finally:
            client.stop_channels()
            await km.shutdown_kernel()
        assert process.poll() is not None  # gone, and watched through its pidfd (no pid reuse)

    asyncio.run(scenario())


def test_the_kernel_ends_with_the_process_that_asked_for_it(own_zygote, tmp_path):
    asker = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys, time\nfrom spatialkit.suite import zygote\n"
         f"print(zygote.spawn({own_zygote.address!r}, zygote._kernel_interpreter(),"
         f" ['-f', {_connection_file(tmp_path)!r}], {str(tmp_path)!r}, dict(os.environ)), flush=True)\n"
         "time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ))  # not the C-level one (see zygote.start)
    pid = int(asker.stdout.readline())
    kernel = zygote.ForkedKernel(pid)
    assert kernel.poll() is None
    asker.kill()
    asker.wait()
    kernel.wait(timeout=30)  # raises TimeoutExpired if it outlived the asker


def test_refusals_name_their_reason_and_the_runner_falls_back(own_zygote, tmp_path, monkeypatch):
    conn = _connection_file(tmp_path)
    other_env = {**os.environ, "PYTHONPATH": "/elsewhere"}
    with pytest.raises(zygote.ZygoteError, match="environment differs .* in PYTHONPATH"):
        zygote.spawn(own_zygote.address, zygote._kernel_interpreter(), ["-f", conn], str(tmp_path), other_env)
    with pytest.raises(zygote.ZygoteError, match="the kernel is"):
        zygote.spawn(own_zygote.address, ["/usr/bin/python3"], ["-f", conn], str(tmp_path), dict(os.environ))
    monkeypatch.setenv(zygote.SWITCH_ENV, "0")
    assert zygote.address() is None and zygote.kernel_manager_class() is None
    monkeypatch.setenv(zygote.SWITCH_ENV, "1")
    monkeypatch.setenv(zygote.ADDRESS_ENV[False], str(tmp_path / "no-such.sock"))
    assert zygote.kernel_manager_class() is None  # no zygote there: fresh kernels


def test_env_differences_ignore_what_only_the_kernel_sets():
    own = {"PATH": "/bin", "HF_HUB_OFFLINE": "1", "SPATIALKIT_ROOT": "a"}
    kernel = {"PATH": "/bin", "HF_HUB_OFFLINE": "1", "SPATIALKIT_ROOT": "/abs/a", "JPY_PARENT_PID": "7",
              "MPLBACKEND": "module://matplotlib_inline.backend_inline", "JUPYTER_PATH": "/x",
              "PYDEVD_IPYTHON_COMPATIBLE_DEBUGGING": "1"}
    assert zygote._env_differences(own, kernel) == []
    assert zygote._env_differences(own, {**kernel, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin"}) == [
        "OMP_NUM_THREADS", "PATH"]
    assert zygote._env_differences(own, {k: v for k, v in kernel.items() if k != "HF_HUB_OFFLINE"}) == [
        "HF_HUB_OFFLINE"]


def test_a_zygote_ends_and_cleans_up_with_its_owner(tmp_path):
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import time\nfrom spatialkit.suite import zygote\nz = zygote.start()\n"
         "print(z.process.pid, z.folder, flush=True)\ntime.sleep(600)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, zygote.ADDRESS_ENV[False]: ""})
    pid, folder = owner.stdout.readline().split()
    assert Path(folder, "zygote.sock").exists()
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 30
    while Path(folder).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(folder).exists()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):  # it exited (a zombie of the killed owner's is reaped by init)
            os.kill(int(pid), 0)
            time.sleep(0.1)
        raise AssertionError("the zygote outlived its owner")


def test_close_ends_it_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv(zygote.ADDRESS_ENV[False], "/earlier.sock")
    monkeypatch.setenv(zygote.SWITCH_ENV, "1")
    started = zygote.start()
    assert os.environ[zygote.ADDRESS_ENV[False]] == started.address
    started.close()
    assert os.environ[zygote.ADDRESS_ENV[False]] == "/earlier.sock"
    assert started.process.poll() is not None and not started.folder.exists()  # ended by SIGTERM, folder removed


def _children_cpu_s(pid: int) -> float:
    """cutime + cstime of process ``pid``: the CPU of the children it has reaped (proc(5))."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def test_a_forked_kernels_cpu_is_counted_like_a_fresh_ones(own_zygote, tmp_path):
    """The zygote reaps its kernels with waitpid, so their CPU time reaches its children's (and the runner's once
    it waits for the zygote): benchmarks/bench_book.py reads the run's CPU there."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n"
                                          "    pass")]
    nbformat.write(nb, tmp_path / "busy.ipynb")
    with runner.kernel_environment(runner.INLINE_BACKEND):
        runner.nbimport.papermill().execute_notebook(
            str(tmp_path / "busy.ipynb"), str(tmp_path / "busy.out.ipynb"), kernel_name=runner.KERNEL,
            cwd=str(tmp_path), progress_bar=False, kernel_manager_class=zygote.kernel_manager_class())
    deadline = time.monotonic() + 10
    while _children_cpu_s(own_zygote.process.pid) < 1.0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _children_cpu_s(own_zygote.process.pid) >= 1.0


def test_a_zygote_that_cannot_listen_leaves_fresh_kernels_and_no_folder(monkeypatch, tmp_path):
    long_tmp = tmp_path / ("x" * 120)  # a unix socket path must fit in 107 bytes
    long_tmp.mkdir()
    monkeypatch.setattr(zygote.tempfile, "tempdir", str(long_tmp))
    for variable in zygote.ADDRESS_ENV.values():
        monkeypatch.delenv(variable, raising=False)
    assert zygote.start() is None
    assert list(long_tmp.iterdir()) == [] and zygote.kernel_manager_class() is None
