import os
import tempfile

# Offline: a hub id fails at once instead of after ~23 s of retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# One checkpoint cache per test session, so organisms trained by one test are reused by the next
# (and never leak into the user's own cache).
if "SPATIALKIT_CACHE" not in os.environ:
    os.environ["SPATIALKIT_CACHE"] = tempfile.mkdtemp(prefix="spatialkit-test-cache-")


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
