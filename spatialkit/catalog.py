"""The notebooks of the suite and their declared parameters (one entry per notebook).

The runner, the profiles file and each notebook's first code cell all read this catalog, so a
parameter is declared exactly once, with its type and allowed range.
"""

from __future__ import annotations

from spatialkit.params import NotebookSpec, Param, ParameterError

# Parameters most notebooks share.
SEED = Param("seed", int, 0, "seed for every random thing in the notebook", low=0, high=2**31 - 1)
DEVICE = Param("device", str, "cpu", "torch device; 'auto' picks cuda when present", choices=("cpu", "cuda", "auto"))
MODEL = Param(
    "model", str, "tiny",
    "'tiny' trains or loads the model organism; otherwise a Hugging Face id or local folder",
    choices=("tiny",), allow_other=True,
)

NOTEBOOKS: dict[str, NotebookSpec] = {}


def register(spec: NotebookSpec) -> NotebookSpec:
    if spec.name in NOTEBOOKS:
        raise ValueError(f"notebook {spec.name} registered twice")
    NOTEBOOKS[spec.name] = spec
    return spec


def get(name: str) -> NotebookSpec:
    try:
        return NOTEBOOKS[name]
    except KeyError:
        raise ParameterError(f"unknown notebook '{name}'; known: {', '.join(NOTEBOOKS)}") from None


# --- 00 -----------------------------------------------------------------------------------------
register(NotebookSpec(
    name="00_wheres_the_chicken",
    title="Where's the chicken? The spatial-scene world",
    params=(
        SEED,
        Param("image_size", int, 128, "rendered scene size in pixels", low=32, high=1024),
        Param("n_scenes", int, 200, "scenes for the statistics section", low=1, high=100_000),
    ),
))

# --- further notebooks register below, in order (01 ... 06) ---------------------------------------
