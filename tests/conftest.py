import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

# Offline: a hub id fails at once instead of after ~23 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# One checkpoint cache per test session, so organisms trained by one test are reused by the next
# (and never leak into the user's own cache).
if "SPATIALKIT_CACHE" not in os.environ:
    os.environ["SPATIALKIT_CACHE"] = tempfile.mkdtemp(prefix="spatialkit-test-cache-")


# nbformat and papermill without jsonschema's IRI grammars (1.2 s CPU per process; spatialkit.suite.nbimport)
from spatialkit.suite.nbimport import skip_iri_grammars  # noqa: E402

skip_iri_grammars()

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine extra threads only add
    contention (several times slower). Notebook smoke runs use their own kernels and are unaffected."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# Notebook kernels fork from two zygotes per test process (spatialkit/suite/zygote.py: one with torch & co.
# imported, one with transformers too), started once for the session when it runs notebooks, and inherited by the
# `spatialkit run` subprocesses the tests start (which then start none of their own): each notebook's kernel skips
# those imports (about 4 s of CPU, 6 s with transformers).
NOTEBOOK_TESTS = {"test_notebooks.py", "test_hf_notebooks.py", "test_same_numbers.py", "test_reliability.py",
                  "test_browser.py", "test_runner.py", "test_parallel.py", "test_sweep.py", "test_scorecard.py",
                  "test_assignments.py"}
_zygotes: list = []


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: the blocks and the zygotes are for what runs
def pytest_collection_modifyitems(session, config, items):
    from spatialkit.suite import zygote

    items[:] = longest_first(items, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    if not _zygotes and any(Path(str(item.fspath)).name in NOTEBOOK_TESTS for item in items):
        _zygotes.extend(z for hf in (False, True) if not zygote.address(hf) for z in [zygote.start(hf=hf)] if z)


def expected_seconds(item) -> float:
    """A test's rough duration, for ordering the run: its `slow` mark's `seconds` (60 unless given), else 0."""
    slow = item.get_closest_marker("slow")
    return slow.kwargs.get("seconds", 60) if slow else 0


def longest_first(items: list, workers: int) -> list:
    """The collection laid out for `make test`'s `pytest -n N --dist worksteal`, which hands worker i the i-th of N
    contiguous blocks and lets a worker that runs dry take the back half of another's queue: the slow tests are
    shared out longest first (each to the block with the least expected time) at the front of their blocks, the
    short ones follow in file order. So every worker starts on long tests and short ones fill the end, when workers
    steal; in file order a test of minutes that started late left the other worker idle at the end (with xdist's
    default `load` scheduling too). The layout depends only on the collection and N, so every worker computes the
    same one, which xdist requires."""
    workers = max(workers, 1)
    slow = sorted((item for item in items if expected_seconds(item)), key=expected_seconds, reverse=True)
    fast = [item for item in items if not expected_seconds(item)]
    sizes, left = [], len(items)
    for i in range(workers):  # xdist's first split: each idle worker gets len(pending) // workers_remaining
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    blocks: list[list] = [[] for _ in sizes]
    for item in slow:
        room = [b for b in range(workers) if len(blocks[b]) < sizes[b]]
        blocks[min(room, key=lambda b: sum(map(expected_seconds, blocks[b])))].append(item)
    for block, size in zip(blocks, sizes):
        take = size - len(block)
        block += fast[:take]
        fast = fast[take:]
    return [item for block in blocks for item in block]


def pytest_sessionfinish(session, exitstatus):
    while _zygotes:
        _zygotes.pop().close()


@pytest.fixture
def adamw_params_seen(monkeypatch):
    """The parameters handed to every ``torch.optim.AdamW`` built during the test, as sets of ids (one per
    optimizer): what a trainer really optimises."""
    import torch

    seen: list[set[int]] = []
    real_adamw = torch.optim.AdamW

    def spy(params, **kw):
        params = list(params)
        seen.append({id(p) for p in params})
        return real_adamw(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    return seen


# --- the smoke book: every catalog notebook executed once under the smoke profile ------------------------------
# tests/test_notebooks.py checks each notebook's run, tests/test_browser.py builds the book from the same runs.
# Under `pytest -n 2` the first worker that needs it executes the notebooks two at a time (one process each) while
# the other waits on a file lock -- its core runs the second notebook -- and both then read the same results.
REPO = Path(__file__).resolve().parents[1]


def copy_book_sources(root: Path) -> None:
    """What `spatialkit book` reads, copied into ``root`` (a private book root)."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "_vendor", root / "_vendor")
    shutil.copytree(REPO / "notebooks", root / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (root / "book").mkdir()
    for path in (REPO / "book").iterdir():
        if path.is_file():
            shutil.copy(path, root / "book" / path.name)


def _execute_one(job, out: Path) -> dict:
    from spatialkit.suite import runner

    result = runner.execute(job, out)
    return {"status": result.status, "error": result.error}


@contextlib.contextmanager
def _exclusive(path: Path):
    """A lock shared by the test processes of one session (xdist workers)."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _session_dir(tmp_path_factory) -> Path:
    """A folder all xdist workers of this session share (the base temp's parent under xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory):
    """(root, {notebook: {"status", "error"}}): a copy of the book sources in which every catalog notebook with a
    file ran under the smoke profile (``runner.execute``, as `spatialkit run --profile smoke` does), failures
    included (each test judges its own notebook). Executed once per session, two notebooks at a time."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    from spatialkit.suite import runner

    shared = _session_dir(tmp_path_factory)
    root, done = shared / "smoke-book", shared / "smoke-book.json"
    with _exclusive(shared / "smoke-book.lock"):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            copy_book_sources(root)
            out = runner.executed_dir(root)
            out.mkdir(parents=True, exist_ok=True)
            jobs = runner.plan("smoke", root=root)
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
                futures = {job.name: pool.submit(_execute_one, job, out) for job in jobs}
                results = {name: f.result() for name, f in futures.items()}
            done.write_text(json.dumps(results))
    return root, json.loads(done.read_text())


@pytest.fixture(scope="session")
def smoke_book_html(smoke_book, tmp_path_factory) -> Path:
    """The smoke book built (jupyter-book) from ``smoke_book``'s runs, once per session: its html folder."""
    from spatialkit.suite import book, catalog

    root, results = smoke_book
    shared = _session_dir(tmp_path_factory)
    with _exclusive(shared / "smoke-book-html.lock"):
        marker = shared / "smoke-book-html.txt"
        if not marker.exists():
            failed = {name: r["error"] for name, r in results.items() if r["status"] == "failed"}
            if failed:  # tests/test_notebooks.py owns notebook failures; build what ran
                print(f"warning: some notebooks failed, building the book without them: {failed}")
            assert book.chapters(list(catalog.NOTEBOOKS), root), "no notebook executed: nothing to check"
            marker.write_text(str(book.build(list(catalog.NOTEBOOKS), root, echo=print)))
    return Path(marker.read_text())
