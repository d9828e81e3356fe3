"""What every notebook's first code cell calls: validate parameters, seed, record the environment."""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import os
import platform
import random
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from spatialkit.common.results import RESULTS_ENV, results_target, update_results  # noqa: F401 (RESULTS_ENV re-exported)
from spatialkit.suite import catalog


def run_tempdir(prefix: str = "tmp-") -> Path:
    """A fresh scratch folder for this notebook run, removed when the run ends.

    Under the runner (``spatialkit run``) it lies in the run's own folder, ``$SPATIALKIT_RUN_TMP``
    (``book/executed/.running/NAME.XXXX/tmp/``), which the runner deletes however the run ends. Run by hand in
    Jupyter it is a system temp folder deleted when the kernel exits. Use it instead of ``tempfile.mkdtemp``,
    which leaves one folder in the system temp directory per run.
    """
    parent = os.environ.get("SPATIALKIT_RUN_TMP")
    if parent and Path(parent).is_dir():
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    folder = Path(tempfile.mkdtemp(prefix=f"spatialkit-{prefix}"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) from one integer."""
    import numpy as np  # lazy: the CLI starts without it
    import torch  # lazy: the CLI starts without it

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str) -> str:
    import torch  # lazy: the CLI starts without it

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise catalog.ParameterError("parameter 'device' = 'cuda' but no CUDA device is available; use 'cpu' or 'auto'")
    return device


def environment(device: str) -> dict[str, str]:
    """Versions and device, recorded in every executed notebook."""
    import numpy as np  # lazy: the CLI starts without it
    import torch  # lazy: the CLI starts without it

    import spatialkit  # lazy: the CLI starts without it

    info = {
        "spatialkit": spatialkit.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": device,
        "torch_threads": str(torch.get_num_threads()),
    }
    # the installed version, read without importing transformers (0.6 s a notebook; the organism-only runs never
    # import it, and an HF run imports it anyway and reports an import error with its own message)
    try:
        info["transformers"] = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:  # optional for the organism-only notebooks
        info["transformers"] = "not installed"
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info




def record_context(name: str, title: str, params: dict[str, Any], env: dict[str, str]) -> Path | None:
    """Under the runner, start the run's results file (``$SPATIALKIT_RESULTS``) with the notebook, its
    parameters and the environment; ``spatialkit.present.claims.claims_table`` adds the claims. A no-op when
    the variable is unset (a notebook run by hand)."""
    target = results_target()
    if target is None:
        return None
    return update_results(target, {"schema": 1, "notebook": name, "title": title, "parameters": params,
                                   "environment": env})


def setup(name: str, namespace: dict[str, Any], *, quiet: bool = False) -> SimpleNamespace:
    """Validate the notebook's parameters (taken from ``namespace``), seed, and print the environment.

    Returns the validated parameters as attributes, plus ``env`` (dict) and ``device`` (resolved).
    Raises :class:`spatialkit.common.params.ParameterError` with a one-line message on a bad value.
    """
    spec = catalog.get(name)
    values = {p.name: namespace[p.name] for p in spec.params if p.name in namespace}
    missing = [p.name for p in spec.params if p.name not in namespace]
    if missing:
        raise catalog.ParameterError(f"{name}: parameters cell lacks {', '.join(missing)}")
    params = spec.validate(values)
    device = resolve_device(params["device"]) if "device" in params else "cpu"
    if "seed" in params:
        seed_everything(params["seed"])
    env = environment(device)
    record_context(name, spec.title, {**params, "device": device}, env)
    with contextlib.suppress(ImportError):
        import pandas as pd  # lazy and optional: every notebook has pandas, a bare kernel need not

        pd.set_option("display.max_colwidth", None)  # claims and organism notes are sentences: never cut them
    if not quiet:
        width = max(len(k) for k in env)
        print(f"{spec.title}\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in env.items()))
    return SimpleNamespace(**{**params, "device": device}, env=env, spec=spec)  # device: the resolved one
