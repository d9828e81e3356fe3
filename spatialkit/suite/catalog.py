"""The notebooks of the suite and their declared parameters (one entry per notebook).

The runner, the profiles file and each notebook's first code cell all read this catalog, so a
parameter is declared exactly once, with its type and allowed range.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable

from spatialkit.common.params import NotebookSpec, Param, ParameterError

# Parameters most notebooks share.
SEED = Param("seed", int, 0, "seed for every random thing in the notebook", low=0, high=2**31 - 1)
DEVICE = Param("device", str, "cpu", "torch device; 'auto' picks cuda when present", choices=("cpu", "cuda", "auto"))
MODEL = Param(
    "model", str, "tiny",
    "'tiny' trains or loads the model organism; otherwise a Hugging Face id or local folder",
    choices=("tiny",), allow_other=True, path="model",  # a local folder is checked before any kernel starts
)

# A Hugging Face model's runtime settings (spatialkit.models.hf.load's arguments; hf.load_for(P) reads them), shared by
# the notebooks that take `model`. The organism ignores them.
DTYPE = Param("dtype", str, "auto", "weights dtype of an HF model: 'auto' = float32 on the CPU, the checkpoint's own "
              "(bfloat16) on CUDA", choices=("auto", "bfloat16", "float16", "float32"))
ATTN_IMPLEMENTATION = Param("attn_implementation", str, "sdpa", "attention of an HF model (flash_attention_2 needs the "
                            "flash_attn package and CUDA)", choices=("sdpa", "eager", "flash_attention_2"))
MIN_PIXELS = Param("min_pixels", int, 3136, "smallest image area (pixels) a Qwen processor resizes to; LLaVA ignores it",
                   low=784, high=16_777_216)
MAX_PIXELS = Param("max_pixels", int, 1_003_520, "largest image area (pixels) a Qwen processor resizes to: 1280 tokens "
                   "of 28 px (hf.DEFAULT_MAX_PIXELS; the hub's preprocessor allows 12.8 MP); LLaVA ignores it",
                   low=3136, high=16_777_216)
HF_MODEL_PARAMS = (DTYPE, ATTN_IMPLEMENTATION, MIN_PIXELS, MAX_PIXELS)  # after MODEL in a spec: *HF_MODEL_PARAMS

N_BOOT = Param("n_boot", int, 1000, "bootstrap resamples for the CIs", low=100, high=100_000)
HF_IMAGE_SIZE = Param("image_size", int, 224, "scene size in pixels for an HF model (the organism uses its own)",
                      low=56, high=1024)
THREADS = Param("threads", int, 1, "torch CPU threads (0 = torch's default); 1 is fastest on a shared 2-core machine",
                low=0, high=256)


@functools.cache
def _presets_data() -> dict:
    """The organism presets as plain data, from their one file, spatialkit/models/organism/presets.yml (importing
    spatialkit.models.organism would load torch for every parameter check)."""
    import yaml  # lazy: the CLI starts without it

    path = Path(__file__).resolve().parent.parent / "models" / "organism" / "presets.yml"
    return yaml.safe_load(path.read_text())


def _organism_presets() -> tuple[str, ...]:
    """The organism presets' names (a top-level name starting with "_" holds YAML anchors, not a preset)."""
    return tuple(name for name in _presets_data() if not name.startswith("_"))


ORGANISM_PRESETS = _organism_presets()


def preset_steps(name: str) -> int:
    """A preset's VQA steps (``optim.steps``), read as data like ``ORGANISM_PRESETS``; every preset the catalog
    asks this of states its steps (a preset that does not is a one-line error, not a KeyError)."""
    if name not in ORGANISM_PRESETS:
        raise ValueError(f"unknown organism preset {name!r}; known: {', '.join(ORGANISM_PRESETS)}")
    steps = (_presets_data()[name].get("optim") or {}).get("steps")
    if steps is None:
        raise ValueError(f"organism preset {name!r} does not state optim.steps in presets.yml")
    return int(steps)


DEFAULT_WORLD = "organism"  # DataConfig.scene_preset's default (tests/test_combine.py checks it)


def preset_pretrain_world(name: str) -> str | None:
    """The world a preset's stage-1 encoder trains on when it is not the preset's own (``optim.
    vision_pretrain_world``; None when it states none), read as data like ``preset_world``."""
    if name not in ORGANISM_PRESETS:
        raise ValueError(f"unknown organism preset {name!r}; known: {', '.join(ORGANISM_PRESETS)}")
    world = (_presets_data()[name].get("optim") or {}).get("vision_pretrain_world")
    return None if world is None else str(world)


def preset_world(name: str) -> str:
    """A preset's scene world (``data.scene_preset``; DataConfig's default "organism" when it states none), read
    as data like ``preset_steps``."""
    if name not in ORGANISM_PRESETS:
        raise ValueError(f"unknown organism preset {name!r}; known: {', '.join(ORGANISM_PRESETS)}")
    data = _presets_data()[name].get("data") or {}
    return str(data["scene_preset"]) if "scene_preset" in data else DEFAULT_WORLD


# the scene worlds whose relations follow the object kinds (spatialkit.world presets with prior_relations; the
# suite does not import the world, tests/test_combine.py checks this list against it): combine.prior_answers_val
PRIOR_WORLDS = ("organism_prior",)


def _prior_answers_val(world: str) -> bool:
    return world in PRIOR_WORLDS


def organism_param(role: str = "organism preset", default: str = "quick") -> Param:
    """The ``organism`` parameter: which organism preset the notebook loads (or trains) from the checkpoint store."""
    return Param("organism", str, default, f"{role} (spatialkit.models.organism.PRESETS), loaded from the checkpoint "
                 "store or trained", choices=ORGANISM_PRESETS)


def failing_param(default: list[str]) -> Param:
    """The ``failing`` parameter: the zoo organisms that fail at where (each for one of the blog's reasons),
    measured beside the healthy control ``organism``."""
    return Param("failing", list, default, "zoo organisms that fail at where, each judged beside the control "
                 "(spatialkit.models.organism.PRESETS)", item_kind=str, choices=ORGANISM_PRESETS, min_len=0, max_len=8)


NOTEBOOKS: dict[str, NotebookSpec] = {}


def register(spec: NotebookSpec) -> NotebookSpec:
    if spec.name in NOTEBOOKS:
        raise ValueError(f"notebook {spec.name} registered twice")
    NOTEBOOKS[spec.name] = spec
    # Book order is the notebooks' numeric prefix, whatever order the entries below are written in.
    ordered = sorted(NOTEBOOKS.items())
    NOTEBOOKS.clear()
    NOTEBOOKS.update(ordered)
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
        DEVICE,
        Param("image_size", int, 128, "rendered scene size in pixels", low=32, high=1024),
        Param("n_scenes", int, 200, "scenes for the statistics section", low=1, high=100_000),
        Param("organisms", list, ["healthy", "llava", "loud", "prior", "llava_a", "llava_b"], "organism presets "
              "whose what and where accuracy open the notebook (the first is the control), loaded from the "
              "checkpoint store or trained",
              item_kind=str, choices=ORGANISM_PRESETS, min_len=1, max_len=8),
        Param("n_items", int, 400, "held-out test items per task of each organism's world (what and where)", low=20, high=100_000),
        Param("n_blind", int, 7000, "test items of the blind answerers' per-task chance check (a WhereBench of "
              "its own; about n_blind / 7 per task)",
              low=20, high=100_000),
        N_BOOT,
        THREADS,
    ),
))

# --- further notebooks register below, in order (01 ... 06) ---------------------------------------

# --- 01 -----------------------------------------------------------------------------------------
_POSENC_NAMES = ("none", "learned", "sincos2d", "rpe2d", "rope1d", "rope2d", "mrope")  # == posenc.ENCODINGS
register(NotebookSpec(
    name="01_positional_encodings",
    title="Positional encodings: APE, RPE, RoPE, 2D RoPE and M-RoPE on a grid, tested by training",
    params=(
        SEED,
        DEVICE,
        MODEL,
        *HF_MODEL_PARAMS,
        Param("grid", int, 6, "training grid side in patches (image = grid * patch_size px; below 6 the "
              "two objects rarely fit a patch apart)", low=6, high=64),
        Param("unseen_grid", int, 9, "grid side of the unseen-resolution test images", low=6, high=128),
        Param("patch_size", int, 8, "ViT patch side in pixels (also the random paste jitter)", choices=(8, 16)),
        Param("encodings", list, list(_POSENC_NAMES), "encodings to train and compare", item_kind=str,
              choices=_POSENC_NAMES, min_len=1, max_len=7),
        Param("seeds", int, 3, "training seeds per encoding (seed, seed+1, ...)", low=3, high=20),
        Param("steps", int, 300, "optimizer steps per model (same budget for every encoding)", low=1, high=1_000_000),
        Param("batch_size", int, 64, "images per step", low=4, high=8192),
        Param("lr", float, 5e-3, "AdamW peak learning rate (one-cycle schedule)", low=1e-6, high=1.0),
        Param("n_train", int, 2000, "training scenes (rendered once, shared by every model)", low=64, high=1_000_000),
        Param("n_test", int, 400, "test scenes per resolution", low=20, high=100_000),
        Param("dim", int, 32, "ViT width", choices=(16, 32, 48, 64, 96, 128, 192, 256)),
        Param("depth", int, 2, "ViT layers", low=1, high=24),
        Param("theta", float, 100.0, "RoPE base: frequencies theta^(-2f/d); small grids need a small base",
              low=1.0, high=1e7),
        Param("kernel_grid", int, 8, "grid side for the similarity heatmaps and rank correlations", low=2, high=32),
        Param("ape_stds", list, [0.02, 1.0], "init std of the learned APE table in the loudness experiment "
              "(0.02 = ViT's usual init)", item_kind=float, low=1e-4, high=100.0, min_len=2, max_len=6),
        Param("n_shifted", int, 200, "scenes in the translation test (each pair pasted at 5 places on the "
              "training grid)", low=10, high=100_000),
        HF_IMAGE_SIZE,
        N_BOOT,
        THREADS,
    ),
))

# --- 05 -----------------------------------------------------------------------------------------
register(NotebookSpec(
    name="05_clip_vs_cloc",
    title="From a global glance to localized training: tiny CLIP vs tiny CLOC",
    params=(
        SEED,
        DEVICE,
        MODEL,
        *HF_MODEL_PARAMS,
        Param("organism", str, "llava", "the LLaVA-recipe organism preset whose frozen stage-1 encoder fails 'where': "
              "its scene world trains every encoder, its stage 2 runs on the CLIP and CLOC towers, its own encoder is "
              "probed", choices=ORGANISM_PRESETS),
        Param("control", str, "healthy", "the healthy control organism preset (same world; max-pooled stage 1)",
              choices=ORGANISM_PRESETS),
        Param("n_train", int, 2000, "training scenes (rendered once, shared by every model)", low=64, high=1_000_000),
        Param("n_test", int, 300, "held-out test scenes", low=20, high=100_000),
        Param("steps", int, 300, "optimizer steps per model (same for CLIP, CLOC and the RoI ablation)", low=1, high=1_000_000),
        Param("batch_size", int, 64, "images per step", low=4, high=8192),
        Param("regions", int, 3, "M: ground-truth boxes per image used by the region losses", low=1, high=9),
        Param("lam", float, 1.0, "lambda in L = L_CLIP + lambda (L_CLOC + L_grounding)", low=0.0, high=100.0),
        Param("dup_threshold", float, 0.9, "drop region negatives whose caption word-count cosine exceeds this (1 = keep all)",
              low=0.0, high=1.0),
        Param("width", int, 64, "transformer width (image, text, Prompter)", choices=(32, 48, 64, 96, 128, 192, 256, 384, 512, 768)),
        Param("depth", int, 2, "ViT and text transformer layers", low=1, high=24),
        Param("embed_dim", int, 64, "dimension of the shared CLIP space", low=8, high=2048),
        Param("lr", float, 1e-3, "AdamW peak learning rate", low=1e-6, high=1.0),
        Param("n_seeds", int, 3, "training seeds per encoder and per swapped-tower organism (seed, seed+1, ...)",
              low=1, high=10),
        Param("probe_train", int, 1000, "training scenes the linear where-probe is fitted on (the first of the "
              "encoders' training scenes); it is tested on the test scenes", low=10, high=1_000_000),
        HF_IMAGE_SIZE,
        Param("swap_steps", int, 0, "stage-2 steps of the organism on the CLIP / CLOC tower (0 = the preset's own "
              "schedule, the zoo organisms' budget; fewer is cheaper but leaves both VLMs undertrained)",
              low=0, high=10_000_000),
        Param("n_items", int, 400, "test items per task of the organisms' world on which the LLaVA recipe on each "
              "tower and the two own-stage-1 organisms are scored (what and where)", low=5, high=100_000),
        N_BOOT,
        THREADS,
    ),
))

# --- 03 -----------------------------------------------------------------------------------------
register(NotebookSpec(
    name="03_attention_allocation",
    title="Text dominates, vision follows: where the answer token's attention goes",
    params=(
        SEED,
        DEVICE,
        MODEL,
        *HF_MODEL_PARAMS,
        organism_param("the healthy control organism", default="healthy"),
        failing_param(["llava", "loud", "prior"]),
        Param("n_items", int, 3000, "held-out where-questions per organism (one- and two-object, test-split scenes); "
              "sized for >= 100 wrong answers on the failing ones and on a control that errs on 4-5 % of them",
              low=10, high=100_000),
        Param("layer", int, -1, "LM layer fixed for the heatmap and the gaze tests; -1 = num_layers // 2 (the last "
              "of a 2-layer LM; checked against the model)",
              low=-1, high=255),
        Param("with_system_prompt", bool, False, "prompt the heatmap and gaze sections with the system prompt"),
        HF_IMAGE_SIZE,
        Param("batch_size", int, 64, "prompts per forward pass", low=1, high=4096),
        N_BOOT,
        THREADS,
    ),
))

# --- 02 -----------------------------------------------------------------------------------------
register(NotebookSpec(
    name="02_semantic_loudness",
    title="Semantic loudness: the permutation test, embedding norms and norm normalization",
    params=(
        SEED,
        DEVICE,
        MODEL,
        *HF_MODEL_PARAMS,
        Param("organisms", list, ["healthy", "llava", "prior"], "organisms of the permutation test, each with its "
              "blind control: the healthy control first, then organisms that fail", item_kind=str,
              choices=ORGANISM_PRESETS, min_len=1, max_len=8),
        Param("loud", str, "loud", "the organism with loud visual tokens (norm analysis, +Normalize at inference, "
              "dose-response)", choices=ORGANISM_PRESETS),
        Param("loud_norm_arms", list, ["loud_norm", "loud_norm_text"], "the loud organism retrained with +Normalize "
              "(the trained-in arms)", item_kind=str, choices=ORGANISM_PRESETS, min_len=1, max_len=4),
        Param("n_items", int, 400, "WhereBench test items per task of each organism's world (what and where "
              "questions)", low=5, high=100_000),
        Param("fractions", list, [0.0, 0.25, 0.5, 0.75, 1.0], "shuffled fractions of the visual tokens (PSI curve)",
              item_kind=float, low=0.0, high=1.0, min_len=2, max_len=21),
        Param("shuffle_seeds", int, 2, "random permutations averaged per shuffled evaluation", low=1, high=50),
        Param("norm_ratios", list, [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0], "visual/text norm ratios at the LM input of "
              "the inference-time dose-response (every visual token rescaled to ratio x the text-token norm)",
              item_kind=float, low=0.01, high=1000.0, min_len=2, max_len=16),
        Param("n_norm_images", int, 32, "test images for the per-layer norm measurements", low=2, high=4096),
        HF_IMAGE_SIZE,
        N_BOOT,
        THREADS,
    ),
))

# --- 04 -----------------------------------------------------------------------------------------
register(NotebookSpec(
    name="04_adaptvis",
    title="AdaptVis and ScalingVis: a temperature on the answer token's image attention",
    params=(
        SEED,
        DEVICE,
        MODEL,
        *HF_MODEL_PARAMS,
        Param("data", str, "", "real WhatsUp benchmark folder: a WhatsUp checkout (data/*.json + images) and/or an "
              "AdaptVis checkout (prompts/*.jsonl); '' = the synthetic mirror. Existence is checked by the runner, the "
              "layout at notebook setup (spatialkit.data.whatsup.detect_layout)", choices=("",), allow_other=True,
              path=True),
        organism_param("the healthy control organism", default="healthy"),
        failing_param(["llava", "prior", "whatsup_a", "whatsup_a_partial", "whatsup_b", "llava_a", "llava_b"]),
        Param("organism_seeds", list, [0], "training seeds of the organisms evaluated (each its own checkpoint); "
              "CIs pool items over seeds", item_kind=int, low=0, high=2**31 - 1, min_len=1, max_len=10),
        Param("n_items", int, 2000, "held-out questions per organism, on the relations it fails at (WhereBench "
              "test-split scenes exported as a WhatsUp-style set); enough for >= 100 wrong answers on the "
              "controls too, which err rarely", low=20, high=100_000),
        Param("alphas", list, [0.5, 0.8, 1.2, 1.5, 2.0], "ScalingVis grid: α on the last row's image logits "
              "(1 = baseline)", item_kind=float, low=0.0, high=100.0, min_len=1, max_len=30),
        Param("alpha1s", list, [0.5, 0.8], "AdaptVis α1 grid (used when the confidence is below β)",
              item_kind=float, low=0.0, high=100.0, min_len=1, max_len=10),
        Param("alpha2s", list, [1.2, 1.5, 2.0], "AdaptVis α2 grid (used when the confidence is at least β)",
              item_kind=float, low=0.0, high=100.0, min_len=1, max_len=10),
        Param("betas", list, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], "AdaptVis confidence thresholds β",
              item_kind=float, low=0.0, high=1.0, min_len=1, max_len=21),
        Param("tune_fraction", float, 0.2, "share of items used to tune α/α1/α2/β (the paper: 20%); the rest "
              "reports", low=0.05, high=0.5),
        Param("n_splits", int, 3, "random tune/report splits (split seeds seed..seed+n-1)", low=1, high=50),
        Param("max_new_tokens", int, 3, "greedy tokens per answer", low=1, high=64),
        HF_IMAGE_SIZE,
        Param("batch_size", int, 64, "prompts per generation call", low=1, high=4096),
        N_BOOT,
        THREADS,
    ),
))

# --- 06 -----------------------------------------------------------------------------------------
register(NotebookSpec(
    name="06_pin",
    title="PIN: a positional insert unlocks localisation in a frozen VLM",
    params=(
        SEED,
        DEVICE,
        MODEL,
        *HF_MODEL_PARAMS,
        Param("organism", str, "llava", "the frozen organism preset that fails 'where' (never trained to output "
              "boxes), loaded from the checkpoint store or trained", choices=ORGANISM_PRESETS),
        Param("control", str, "healthy", "the healthy control organism preset, given the same PIN training",
              choices=ORGANISM_PRESETS),
        Param("n_train_scenes", int, 1000, "PIN training scenes (train split; every object is one example)",
              low=10, high=1_000_000),
        Param("n_test_scenes", int, 300, "held-out test scenes for the box mIoU (every object is one example)",
              low=5, high=100_000),
        Param("steps", int, 600, "PIN optimizer steps (same for every variant)", low=1, high=1_000_000),
        Param("batch_size", int, 64, "examples per step", low=1, high=8192),
        Param("lr", float, 1e-2, "AdamW peak learning rate (warm-up, then cosine)", low=1e-6, high=1.0),
        Param("hidden", int, 64, "width of the insert MLP", low=1, high=65_536),
        Param("table_dim", int, 64, "width of the fixed sinusoidal grid table (a multiple of 4)",
              choices=(16, 32, 64, 128, 256, 512)),
        Param("n_what", int, 400, "WhereBench test 'what' items for the forget-free check", low=10, high=100_000),
        Param("n_items", int, 400, "test items per task of each frozen organism's world for its accuracy table "
              "(what and where)", low=5, high=100_000),
        HF_IMAGE_SIZE,
        Param("hf_batch_size", int, 8, "an HF model's examples per PIN step and per decoding / scoring batch "
              "(checked against the device's free memory)", low=1, high=4096),
        N_BOOT,
        THREADS,
    ),
))


# --- 07 -----------------------------------------------------------------------------------------
# The grid's cells as plain data (spatialkit.analysis.combine holds their meaning; tests/test_combine.py checks that
# both agree): a failing organism, then its training-time fixes in canonical order. "cloc" = the LLaVA recipe's
# stage 2 on notebook 05's CLOC tower (the same checkpoints 05 trains): for every organism of the LLaVA recipe
# (all but loud, whose stage 1 is localized already), never with "local" (both replace the stage-1 encoder). "pin" =
# notebook 06's PIN insert on the frozen plain organism (the same insert 06 trains, for llava), alone.
GRID_ORGANISMS = ("llava", "loud", "prior", "llava_a", "llava_b")  # combine.FAILING
GRID_FIXES = ("local", "cloc", "norm", "normtext", "2d")  # normtext = +Normalize at the text norm (loud_norm_text)


def _grid_cells() -> tuple[str, ...]:
    from itertools import combinations  # lazy: the CLI starts without it

    cells = []
    for organism in GRID_ORGANISMS:
        # loud's stage 1 is localized already, and the CLOC tower is the LLaVA recipe's (the others)
        fixes = [f for f in GRID_FIXES if not (organism == "loud" and f in ("local", "cloc"))]
        for k in range(len(fixes) + 1):
            cells += ["+".join((organism, *c)) for c in combinations(fixes, k)
                      if not ({"local", "cloc"} <= set(c) or {"norm", "normtext"} <= set(c))]
        cells.append(f"{organism}+pin")
    return tuple(cells)


GRID_CELLS = _grid_cells()


def check_grid_cells(cells: list[str]) -> None:
    """Notebook 07's ``cells`` as a whole, before any training: every organism in it has its plain cell and at
    least one fix cell. The same rule as ``spatialkit.analysis.combine.check_grid`` (which the notebook calls
    too; tests/test_combine.py checks both agree), kept as plain data so the runner checks it without torch."""
    organisms = list(dict.fromkeys(cell.split("+")[0] for cell in cells))
    missing = [o for o in GRID_ORGANISMS if o in organisms and o not in cells]
    if missing:
        raise ParameterError(f"parameter 'cells' must hold the plain cell of every failing organism it fixes; "
                             f"missing: {missing}")
    unfixed = [o for o in GRID_ORGANISMS if o in organisms and not any(c.startswith(f"{o}+") for c in cells)]
    if unfixed:
        raise ParameterError(f"parameter 'cells' must hold at least one fix cell beside the plain cell of every "
                             f"organism in it (e.g. '{unfixed[0]}+2d'); only a plain cell: {unfixed}")

register(NotebookSpec(
    name="07_putting_it_together",
    title="Putting it together: every fix alone and combined, and the what-vs-where trade-off",
    params=(
        SEED,
        DEVICE,
        Param("zoo", str, "zoo", "organism presets: the zoo (llava, loud, prior, llava_a, llava_b, healthy) or "
              "their smoke-sized twins (smoke_llava, ...; tests)", choices=("zoo", "smoke")),
        Param("cells", list, ["llava", "llava+local", "llava+cloc", "llava+norm", "llava+2d", "llava+pin", "loud",
                              "loud+norm", "loud+normtext", "loud+2d", "loud+pin", "loud+norm+2d", "loud+normtext+2d",
                              "prior", "prior+local", "prior+cloc", "prior+norm", "prior+2d", "prior+pin", "llava_a",
                              "llava_a+local", "llava_a+2d", "llava_b", "llava_b+local", "llava_b+2d"],
              "trained cells of the grid: a failing organism + its training-time fixes (local = localized stage 1, "
              "cloc = the LLaVA recipe on notebook 05's CLOC tower, norm = +Normalize trained in, normtext = "
              "+Normalize at the text tokens' norm (on loud: notebook 02's loud_norm_text), 2d = 2D position "
              "code in the LM; pin = notebook 06's PIN insert on the frozen organism, alone); each new one trains "
              "an organism (~2 min CPU; a pin cell an insert, ~30 s); every cell is also measured with AdaptVis on "
              "top", item_kind=str, choices=GRID_CELLS, min_len=1, max_len=len(GRID_CELLS)),
        Param("posenc_2d", str, "rope2d", "the LM's 2D position code of the '2d' fix: the axial 2D RoPE (fast "
              "frequencies on both axes) or Qwen2-VL's M-RoPE (at this LM's head size its column axis barely turns)",
              choices=("rope2d", "mrope")),
        Param("cloc_budget", str, "equal", "stage 2 of the 'cloc' cells on notebook 05's CLOC tower: 'equal', the "
              "plain cell's own schedule (every fix compared at one budget; at 05's defaults also 05's own, so "
              "trained once), or 'notebook05', 05's swap_steps whatever they are (a budget confound when they "
              "differ)", choices=("equal", "notebook05")),
        Param("noise_seeds", int, 3, "training seeds of the LLaVA recipe on notebook 05's CLIP and CLOC towers "
              "scored to measure how far one draw of training moves a cell (at the defaults notebook 05's own "
              "three seeds, so nothing more trains in a book run); 0 skips the measurement, 1 cannot measure it",
              choices=(0, 2, 3, 4, 5)),
        Param("n_items", int, 900, "held-out test items per world (balanced over its what and where tasks)",
              low=20, high=100_000),
        Param("n_tune", int, 450, "val items per world: tune AdaptVis and pick each organism's best arm",
              low=20, high=100_000),
        Param("n_counter", int, 200, "counter-prior where_two items per split (the prior world)", low=10, high=100_000),
        Param("alpha1s", list, [0.5, 0.8], "AdaptVis α1 grid (confidence below β; 1 = plain is always a candidate)",
              item_kind=float, low=0.0, high=100.0, min_len=1, max_len=10),
        Param("alpha2s", list, [1.5, 2.0, 3.0], "AdaptVis α2 grid (confidence at least β)",
              item_kind=float, low=0.0, high=100.0, min_len=1, max_len=10),
        Param("betas", list, [0.3, 0.5, 0.7, 0.9], "AdaptVis confidence thresholds β", item_kind=float, low=0.0,
              high=1.0, min_len=1, max_len=21),
        Param("batch_size", int, 256, "prompts per forward pass", low=1, high=8192),
        N_BOOT,
        THREADS,
    ),
))


# --- the checkpoints each notebook loads ----------------------------------------------------------
# ``checkpoints(name, params)`` lists, from a notebook's validated parameters, the trained models its code
# loads from the checkpoint store, as (kind, spec) pairs of plain data; ``spatialkit run`` trains the missing
# ones first, in parallel worker processes (spatialkit.suite.parallel), so the notebook only loads them.
# A declaration mirrors the notebook's own calls: one it misses is simply trained by the notebook itself
# (slower, same result); one too many costs training time only; a declaration that fails (e.g. a parameter
# renamed since) is reported and skipped. Kinds:
#   ("organism", {"preset", "overrides", "threads", "device"}) = load_or_train(preset(preset, **overrides),
#   device=device) under torch.set_num_threads(threads) (0 = torch's default; the thread count is in the key).
#   ("clip", {"data", "model", "train", "seed", "threads", "device"}) = notebook 05's tiny CLIP / CLOC /
#   CLOC-RoI encoder, and ("encoder_swap", {"organism": {"preset", "overrides"}, "encoder": <a clip spec>,
#   "threads", "device"}) = the LLaVA recipe's stage 2 on it, frozen (spatialkit.models.tower_store says how each
#   field enters notebook 05's calls).
#   ("pin", {"organism": {"preset", "overrides"}, "variant", "config", "n_bins_from", "threads", "device"}) = notebook
#   06's insert ``variant`` (PinConfig(**config)) on the frozen organism (spatialkit.analysis.interventions.pin_store).

Checkpoint = tuple[str, dict]
CHECKPOINTS: dict[str, Callable[[dict], list[Checkpoint]]] = {}


def declares_checkpoints(name: str):
    """Decorator: ``fn(params) -> [(kind, spec), ...]`` lists the checkpoints notebook ``name`` loads."""
    def register_fn(fn):
        CHECKPOINTS[name] = fn
        return fn
    return register_fn


#: checks across a notebook's parameters (its parameters one by one are its NotebookSpec's), made by the runner
#: before any training or execution: a one-line ParameterError instead of an error after the pool has trained
PARAM_CHECKS: dict[str, Callable[[dict], None]] = {"07_putting_it_together": lambda p: check_grid_cells(p["cells"])}


def check_params(name: str, params: dict) -> None:
    """Notebook ``name``'s checks across its (validated) parameters, if it has any (``PARAM_CHECKS``)."""
    check = PARAM_CHECKS.get(name)
    if check is not None:
        check(params)


def checkpoints(name: str, params: dict, warn: Callable[[str], None] | None = None) -> list[Checkpoint]:
    """The (kind, spec) checkpoints notebook ``name`` loads with ``params`` (validated), without duplicates.
    A declaration that raises declares nothing (``warn`` says why): the notebook then trains what it loads."""
    fn = CHECKPOINTS.get(name)
    try:
        declared = fn(params) if fn else []
    except Exception as err:  # noqa: BLE001 -- a stale declaration must never stop a run
        if warn:
            warn(f"{name}: its checkpoint declaration failed ({type(err).__name__}: {err}); the notebook trains "
                 "what it loads itself")
        declared = []
    out, seen = [], set()
    for kind, spec in declared:
        ident = (kind, json.dumps(spec, sort_keys=True))
        if ident not in seen:
            seen.add(ident)
            out.append((kind, spec))
    return out


def _organism(params: dict, preset_name: str | None = None, **overrides) -> Checkpoint:
    return ("organism", {"preset": preset_name or params["organism"], "overrides": overrides,
                         "threads": params.get("threads", 0), "device": params.get("device", "cpu")})


@declares_checkpoints("00_wheres_the_chicken")
def _checkpoints_00(p: dict) -> list[Checkpoint]:
    return [_organism(p, name) for name in p.get("organisms", [])]  # load_or_train(name, device=P.device)


@declares_checkpoints("02_semantic_loudness")
def _checkpoints_02(p: dict) -> list[Checkpoint]:
    if "organisms" in p:  # the zoo version: load_or_train(name) for organisms, loud, loud_norm_arms
        return [_organism(p, name) for name in [*p["organisms"], p["loud"], *p["loud_norm_arms"]]]
    # the preset-family version: organism_vlm(offset, **changes) = preset(organism, target=None, seed=seed+offset,
    # [steps], **changes)
    def arm(offset: int = 0, **changes) -> Checkpoint:
        over = dict(target=None, seed=p["seed"] + offset, **changes)
        if p["steps"]:
            over["steps"] = p["steps"]
        return _organism(p, **over)

    mode = p["norm_mode"]
    out = [arm(), arm(visual_norm=mode)]
    out += [arm(spatial_fraction=sf) for sf in p["spatial_fractions"]]  # sf == the preset's: the same key as arm()
    for k in range(1, p["n_seeds"]):
        out += [arm(k), arm(k, visual_norm=mode)]
    out += [arm(visual_norm=mode, visual_norm_scale=s) for s in p["norm_scales"] if s != 1.0]
    return out


@declares_checkpoints("03_attention_allocation")
def _checkpoints_03(p: dict) -> list[Checkpoint]:
    return [_organism(p, name) for name in [p["organism"], *p.get("failing", [])]]  # load_or_train(name)


@declares_checkpoints("04_adaptvis")
def _checkpoints_04(p: dict) -> list[Checkpoint]:
    return [_organism(p, name, seed=s) for name in [p["organism"], *p.get("failing", [])] for s in p["organism_seeds"]]


# notebook 05's encoders: C.VARIANTS (name -> region head), in its order; tests/test_contrastive.py checks both agree
CLIP_VARIANTS = {"CLIP": "none", "CLOC": "prompter", "CLOC-RoI": "roi", "CLOC-RoI+G": "roi_ground"}


def _clip(p: dict, head: str, seed: int) -> Checkpoint:
    """Notebook 05's encoder ``head`` of training seed ``seed`` (05's parameters ``p``) on the world of
    preset(p["organism"], seed=p["seed"]), its scenes drawn from p["seed"]."""
    return ("clip", {
        "data": {"preset": p["organism"], "overrides": {"seed": p["seed"]}, "seed": p["seed"], "n_train": p["n_train"],
                 "n_test": p["n_test"], "regions": p["regions"], "caption_order": "canonical"},
        "model": {"width": p["width"], "depth": p["depth"], "text_depth": p["depth"], "embed_dim": p["embed_dim"],
                  "max_text_len": 24, "region_head": head},
        "train": {"steps": p["steps"], "batch_size": p["batch_size"], "lr": p["lr"], "lam": p["lam"],
                  "dup_threshold": p["dup_threshold"]},
        "seed": seed, "threads": p.get("threads", 0), "device": p.get("device", "cpu")})


def _swap(p: dict, head: str, seed: int, **overrides) -> Checkpoint:
    """Notebook 05's LLaVA recipe (preset p["organism"], stage 2 of p["swap_steps"] steps, 0 = the preset's own)
    on the frozen encoder ``_clip(p, head, seed)``; ``overrides`` (07's fixes) change the organism further."""
    over = {"seed": seed, **({"steps": p["swap_steps"]} if p["swap_steps"] else {}), **overrides}
    return ("encoder_swap", {"organism": {"preset": p["organism"], "overrides": over},
                             "encoder": _clip(p, head, seed)[1], "threads": p.get("threads", 0),
                             "device": p.get("device", "cpu")})


@declares_checkpoints("05_clip_vs_cloc")
def _checkpoints_05(p: dict) -> list[Checkpoint]:
    # train_variant(name) for CLIP, CLOC, CLOC-RoI, CLOC-RoI+G x seeds; the LLaVA recipe on the CLIP and CLOC
    # towers x seeds;
    # load_or_train(preset(name, seed=seed)) for organism and control
    seeds = [p["seed"] + k for k in range(p["n_seeds"])]
    out = [_clip(p, head, s) for head in CLIP_VARIANTS.values() for s in seeds]
    out += [_swap(p, CLIP_VARIANTS[tower], s) for tower in ("CLIP", "CLOC") for s in seeds]
    return out + [_organism(p, name, seed=p["seed"]) for name in (p["organism"], p["control"])]


def _recipe_for_zoo(notebook: str, zoo: str) -> dict:
    """Notebook ``notebook``'s parameters as a book run executes them for 07's ``zoo``: its defaults for the zoo,
    its smoke profile for the smoke zoo."""
    import yaml  # lazy: the CLI starts without it

    spec = get(notebook)
    if zoo != "smoke":
        return spec.validate({})
    profiles = yaml.safe_load((Path(__file__).resolve().parent / "profiles.yml").read_text())
    return spec.validate(profiles.get("smoke", {}).get(notebook, {}))


def pin_recipe(zoo: str) -> dict:
    """Notebook 06's parameters whose PIN insert 07's "pin" cells load (so a book run trains each insert once, for
    both notebooks)."""
    return _recipe_for_zoo("06_pin", zoo)


def tower_recipe(zoo: str) -> dict:
    """Notebook 05's parameters whose CLOC tower 07's "cloc" cells load (so a book run trains each tower once, for
    both notebooks)."""
    return _recipe_for_zoo("05_clip_vs_cloc", zoo)


def zoo_preset(organism: str, zoo: str) -> str:
    """Notebook 07's preset name of zoo organism ``organism`` for p["zoo"] ``zoo``: itself, or its smoke-sized twin
    ("smoke" for healthy, "smoke_<organism>" otherwise; spatialkit.analysis.combine.preset_name, tests check both
    agree)."""
    if zoo != "smoke":
        return organism
    return "smoke" if organism == "healthy" else f"smoke_{organism}"


def grid_cell_checkpoint(p: dict, cell: str) -> Checkpoint:
    """The checkpoint notebook 07 (parameters ``p``) loads for grid cell ``cell``: an organism, or for a "cloc"
    cell notebook 05's CLOC-tower organism (05's recipe, ``tower_recipe``) on the cell's world, seed p["seed"],
    with the cell's other fixes; with p["cloc_budget"] "equal" its stage 2 runs the preset's own schedule, as
    the plain cell's does, instead of 05's swap_steps (07's own checkpoint where those differ). A "pin" cell loads
    notebook 06's PIN insert on the frozen plain organism (06's recipe, ``pin_recipe``, at p["seed"]): for llava at
    the defaults the very insert 06 trains.
    Cell "loud+norm+2d" = preset(loud, seed, visual_norm=rmsclip, visual_norm_scale=1.0, lm_posenc=posenc_2d)
    (spatialkit.analysis.combine; tests/test_combine.py checks both agree)."""
    organism, *fixes = cell.split("+")
    name = zoo_preset(organism, p["zoo"])
    if "pin" in fixes:  # notebook 06's PIN on the frozen plain organism, 06's recipe at 07's seed and runtime
        recipe = {**pin_recipe(p["zoo"]), "seed": p["seed"], "threads": p.get("threads", 0),
                  "device": p.get("device", "cpu")}
        return _pin(recipe, name, next(iter(PIN_VARIANTS)))
    fix = {"local": {"vision_pretrain_pool": "max"}, "norm": {"visual_norm": "rmsclip", "visual_norm_scale": 1.0},
           "normtext": {"visual_norm": "rmsclip", "visual_norm_scale": 8.0}, "2d": {"lm_posenc": p["posenc_2d"]},
           "cloc": {}}
    over = {}
    for f in fixes:
        over.update(fix[f])
    if over and "cloc" not in fixes and _prior_answers_val(preset_world(name)):
        # combine.cell_config: no early stop on such a world; a "cloc" cell keeps notebook 05's swap recipe
        over["target"] = None
    if "cloc" in fixes:
        return _swap(_tower_recipe_07(p, name), CLIP_VARIANTS["CLOC"], p["seed"], **over)
    return _organism(p, name, seed=p["seed"], **over)


def _tower_recipe_07(p: dict, name: str) -> dict:
    """Notebook 05's tower recipe (``tower_recipe``) as notebook 07 (parameters ``p``) runs it on organism preset
    ``name``: 07's seed, threads and device, and with p["cloc_budget"] "equal" the preset's own stage-2 schedule
    (``_swap``: swap_steps 0), the plain cell's."""
    recipe = {**tower_recipe(p["zoo"]), "organism": name, "seed": p["seed"], "threads": p.get("threads", 0),
              "device": p.get("device", "cpu")}
    if p["cloc_budget"] == "equal":
        recipe["swap_steps"] = 0
    return recipe


def noise_checkpoints(p: dict) -> list[tuple[str, int, Checkpoint]]:
    """(tower, training seed, checkpoint) of the replicate runs notebook 07 (parameters ``p``) scores to measure
    how far one draw of training moves a cell: the LLaVA recipe on notebook 05's CLIP and on its CLOC tower, at
    the training seeds p["seed"] .. p["seed"] + p["noise_seeds"] - 1 (tower and stage 2 both of that seed, the
    scenes of p["seed"]), at 07's budget for its "cloc" cells. The CLOC run of seed p["seed"] is the grid's
    llava+cloc cell; at the defaults every one of them is a checkpoint notebook 05 trains (tests check it)."""
    recipe = _tower_recipe_07(p, zoo_preset("llava", p["zoo"]))
    seeds = [p["seed"] + k for k in range(p.get("noise_seeds", 0))]
    return [(tower, s, _swap(recipe, CLIP_VARIANTS[tower], s)) for tower in ("CLIP", "CLOC") for s in seeds]


def trained_by_notebook05(p: dict, cell: str) -> bool:
    """Whether notebook 05, at its defaults for p["zoo"] (``tower_recipe``), declares the very checkpoint 07
    (parameters ``p``) loads for ``cell``: only a "cloc" cell on 05's own organism, at a seed 05 trains, whose
    stage 2 matches 05's swap_steps. False for every other cell."""
    kind, spec = grid_cell_checkpoint(p, cell)
    if kind != "encoder_swap":
        return False
    return any(k == kind and s == spec for k, s in checkpoints("05_clip_vs_cloc", tower_recipe(p["zoo"])))


def trained_by_notebook06(p: dict, cell: str) -> bool:
    """Whether notebook 06, at its defaults for p["zoo"] (``pin_recipe``), declares the very PIN insert 07
    (parameters ``p``) loads for ``cell``: only a "pin" cell on one of 06's organisms at 06's seed."""
    kind, spec = grid_cell_checkpoint(p, cell)
    return kind == "pin" and any(k == kind and s == spec for k, s in checkpoints("06_pin", pin_recipe(p["zoo"])))


# notebook 06's PIN variants: name -> PinConfig flags beyond the shared training settings (the notebook builds its
# VARIANTS from this, so the pool trains exactly the inserts it loads)
PIN_VARIANTS = {"PIN (insert + loc rows)": {}, "loc rows only (no insert)": {"use_insert": False},
                "insert only (frozen rows)": {"train_loc_rows": False}}


def pin_configs(p: dict) -> dict[str, dict]:
    """Notebook 06's PinConfig fields per variant for its parameters ``p``: the shared training settings plus the
    variant's flags. The notebook builds its inserts from this and the catalog declares the same ones, so the pool
    trains exactly what the notebook loads."""
    base = {k: p[k] for k in ("n_train_scenes", "steps", "batch_size", "lr", "hidden", "table_dim", "seed")}
    return {variant: {**base, **flags} for variant, flags in PIN_VARIANTS.items()}


@declares_checkpoints("06_pin")
def _checkpoints_06(p: dict) -> list[Checkpoint]:
    # load_or_train(preset(name, seed=seed)) for the frozen organism and its healthy control, then every PIN variant
    # on each (spatialkit.analysis.interventions.pin_store says how a "pin" spec enters the notebook's calls); an HF
    # model's inserts are trained by the notebook itself
    organisms = (p["organism"], p["control"])
    out = [_organism(p, name, seed=p["seed"]) for name in organisms]
    for name in organisms:
        out += [_pin(p, name, variant) for variant in pin_configs(p)]
    return out


def _pin(p: dict, name: str, variant: str) -> Checkpoint:
    """Notebook 06's insert ``variant`` (parameters ``p``) on the frozen organism preset ``name`` at p["seed"], its
    location tokens counted on 06's failing organism p["organism"] (both 06's organisms use that count)."""
    return ("pin", {"organism": {"preset": name, "overrides": {"seed": p["seed"]}}, "variant": variant,
                    "config": pin_configs(p)[variant], "n_bins_from": p["organism"],
                    "threads": p.get("threads", 0), "device": p.get("device", "cpu")})


@declares_checkpoints("07_putting_it_together")
def _checkpoints_07(p: dict) -> list[Checkpoint]:
    # healthy (the ceiling) and healthy never asked where (spatial_fraction 0, target None, llava's steps:
    # combine.never_config); healthy's recipe on the world of each failing organism in the grid whose world is not
    # healthy's (the same-world ceiling, combine.ceiling_config: prior's, llava_a's, llava_b's; its stage 1 on the
    # organism's stage-1 world); then every cell
    healthy, llava = zoo_preset("healthy", p["zoo"]), zoo_preset("llava", p["zoo"])
    out = [_organism(p, healthy, seed=p["seed"]),
           _organism(p, healthy, seed=p["seed"], target=None, spatial_fraction=0.0, steps=preset_steps(llava))]
    ceilings = {}
    for organism in dict.fromkeys(cell.split("+")[0] for cell in p["cells"]):
        name = zoo_preset(organism, p["zoo"])
        world, pretrain = preset_world(name), preset_pretrain_world(name)
        if world == preset_world(healthy):
            continue
        over = {"target": None} if _prior_answers_val(world) else {}
        if pretrain not in (None, world):
            over["vision_pretrain_world"] = pretrain
        ceilings[(world, pretrain)] = _organism(p, healthy, seed=p["seed"], scene_preset=world, **over)
    out += list(ceilings.values())
    out += [grid_cell_checkpoint(p, cell) for cell in p["cells"]]
    return out + [ckpt for _, _, ckpt in noise_checkpoints(p)]
