"""Everything that determines a trained organism: ``OrganismConfig``, in three sections, and the named presets.

    cfg = preset("quick", spatial_fraction=0.0)              # a preset (presets.yml) with flat overrides
    cfg.model.lm_posenc, cfg.data.spatial_fraction, cfg.optim.steps, cfg.seed
    cfg = OrganismConfig(model=ModelConfig(lm_posenc="mrope"), data=DataConfig(n_val=50),
                         optim=OptimConfig(steps=100), seed=1)
    cfg.replace(steps=10, **{"model.lm_dim": 32}, data={"n_val": 50})   # flat, dotted, or a section's changes

The sections nest; no field is declared twice:

* ``model``: ``ModelConfig`` itself (defined beside ``TinyVLM`` in model.py, nanoGPT-style, with the one set of
  architecture defaults). Its ``vocab_size`` and ``max_len`` stay None here: ``model_config(vocab_size)`` derives
  them when the model is built (the size of the organism's ``Vocab``; ``max_sequence_length``).
* ``data``: ``DataConfig``, the scene world and the training mix (which examples, in what proportions).
* ``optim``: ``OptimConfig``, the two training stages (steps, batch, learning rate and schedule, stage-1 vision
  pretraining, packing, evaluation and early stop).
* ``seed`` seeds everything (init, sampler, stage 1).

A flat name (``steps``, ``lm_posenc``, ...) belongs to exactly one section, so ``preset`` and ``replace`` route
it there; an unknown name is an error (as is an ambiguous one, should a later field name appear in two
sections: write it dotted, ``"optim.steps"``). Reading ``cfg.steps`` works too (a read-only view kept for the
notebooks); code reads the sections. Every section checks its fields on construction (``knob`` in
model.py, through ``spatialkit.common.params.Param``): a bad value is a one-line ``ValueError`` naming the
section, the field and what is allowed. ``to_dict()`` is nested (it keys the checkpoint store).

Examples come from the scene world (``spatialkit.world``): per training scene a caption, and its WhereBench
"what" and "where" questions. ``spatial_fraction`` is the share of each batch drawn from the where-questions
(0 = the "global caption / what only" regime the blog blames), ``caption_fraction`` the share of captions,
the rest are what-questions. A fixed system prompt is prepended to ``system_prompt_fraction`` of the batches.
Two stages when ``vision_pretrain_steps`` > 0 (the presets), see ``spatialkit.models.organism.train``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path

from spatialkit.models.organism.data import FAMILIES, max_sequence_length  # noqa: F401  (FAMILIES re-exported)
from spatialkit.models.organism.model import ModelConfig, check_fields, knob
import yaml
from spatialkit import world as scenes
from spatialkit.common.params import Param


@dataclass(frozen=True)
class DataConfig:
    """The scene world and the training mix."""

    scene_preset: str = "organism"  # a spatialkit.world.PRESETS name (its image size is the model's image_size)
    bench_seed: int = knob(0, 0, 2**31 - 1)  # WhereBench seed: training scenes come from its train seeds only
    n_train_scenes: int = knob(4000, 10, 1_000_000)
    n_val: int = knob(300, 10, 100_000)
    n_test: int = knob(1000, 10, 100_000)
    spatial_fraction: float = knob(0.5, 0.0, 1.0)  # share of where-questions per batch
    caption_fraction: float = knob(0.1, 0.0, 1.0)  # share of captions; the rest are what-questions
    system_prompt_fraction: float = knob(0.25, 0.0, 1.0)  # share of batches with the system prompt
    loc_grid: int = knob(4, 1, 32)  # coordinate tokens loc0 .. loc{loc_grid^2 - 1} in the vocabulary (unused by default)

    def __post_init__(self):
        check_fields(self)

        Param("scene_preset", str, "organism", choices=tuple(scenes.PRESETS)).coerce(self.scene_preset, "DataConfig")
        if self.spatial_fraction + self.caption_fraction > 1.0 + 1e-9:
            raise ValueError(f"DataConfig.spatial_fraction + caption_fraction must be <= 1, got "
                             f"{self.spatial_fraction} + {self.caption_fraction}")


@dataclass(frozen=True)
class OptimConfig:
    """The training stages: optimisation, stage-1 vision pretraining, batching, evaluation and early stop."""

    steps: int = knob(3000, 1, 10_000_000)
    batch_size: int = knob(128, 1, 65_536)
    # questions drawn per sampled scene: the batch holds batch_size / examples_per_image distinct images and the
    # vision encoder runs once per image (a step costs less; same number of supervised answers)
    examples_per_image: int = knob(1, 1, 64)
    # pack an image's questions into one LM row, [system?][image][q1 <ans> a1 <eos>][q2 ...]...: each question
    # sees the image and itself only (a block mask) at the positions it would have alone, so every question is
    # computed exactly as in its own row, and the image's tokens pass through the LM once, not once per question
    packed: bool = knob(False)
    lr: float = knob(1e-3, 1e-6, 1.0)  # peak of the one-cycle schedule
    lr_schedule: str = knob("onecycle", choices=("onecycle", "constant"))
    warmup_frac: float = knob(0.2, 0.0, 0.9)
    weight_decay: float = knob(0.01, 0.0, 1.0)
    grad_clip: float = knob(1.0, 0.0, 1e6)
    # stage 1 (0 = off): pretrain the vision encoder alone on an image-level objective (which content words the
    # image's caption contains, from per-patch word logits pooled over the patches) before the VQA stage, as
    # real VLMs start from a CLIP encoder trained on a global objective. Nothing in its target says where
    # anything is.
    vision_pretrain_steps: int = knob(0, 0, 10_000_000)
    # how stage 1 pools the per-patch word logits into image-level ones: "max" (multiple-instance learning: a
    # word is in the caption if some patch shows it, so each patch learns to describe what *it* covers) or
    # "mean" (of the patch tokens, then a linear head: CLIP-like global pooling)
    vision_pretrain_pool: str = knob("max", choices=("max", "mean"))
    # stage 1's labels: "words" (each content word of the caption: kinds, colours) or "phrases" (those words plus
    # each colour-noun phrase, "yellow ball", as one more label, as CLIP's captions pair attributes with nouns).
    # With a mean-pooled stage 1 the phrases are what ties a colour to its object in the global feature: the
    # llava organism's colour accuracy went from 0.62 to 0.99 and its where stayed near 0.5 (README, "The zoo")
    vision_pretrain_labels: str = knob("words", choices=("words", "phrases"))
    # the scene world stage 1 trains on (a spatialkit.world.PRESETS name; None: the organism's own scene_preset).
    # Naming another world's preset makes this organism's stage-1 encoder that world's organisms' own (the same
    # checkpoint key: shared, trained once); the VQA stage still trains on scene_preset.
    vision_pretrain_world: str | None = knob(None, kind=str, choices=tuple(scenes.PRESETS), optional=True)
    # the vision encoder's learning rate in the VQA stage, relative to ``lr`` (0 = frozen, as in LLaVA's stage 1)
    vision_lr_scale: float = knob(1.0, 0.0, 10.0)
    eval_every: int = knob(250, 1, 10_000_000)
    # stop early once every trained family reaches this val accuracy (None: never)
    target: float | None = knob(0.97, 0.0, 1.0, optional=True)

    def __post_init__(self):
        check_fields(self)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig}
_TOP = ("seed",)  # OrganismConfig's own fields besides the sections
_DERIVED = ("vocab_size", "max_len")  # ModelConfig fields that model_config() fills in


def _names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def _route(name: str) -> tuple[str | None, str]:
    """(section, field) of a flat or dotted name; (None, name) for a whole section or a top-level field."""
    if "." in name:
        section, _, key = name.partition(".")
        if section not in SECTIONS or key not in _names(SECTIONS[section]):
            raise ValueError(f"unknown OrganismConfig field {name!r}; sections: "
                             + "; ".join(f"{s}: {', '.join(_names(c))}" for s, c in SECTIONS.items()))
        return section, key
    if name in SECTIONS or name in _TOP:
        return None, name
    owners = [s for s, c in SECTIONS.items() if name in _names(c)]
    if len(owners) > 1:
        raise ValueError(f"OrganismConfig field {name!r} is ambiguous (in sections {owners}): write it dotted, "
                         f"e.g. {owners[0] + '.' + name!r}")
    if not owners:
        raise ValueError(f"unknown OrganismConfig field {name!r}; top level: {', '.join((*SECTIONS, *_TOP))}; "
                         + "; ".join(f"{s}: {', '.join(_names(c))}" for s, c in SECTIONS.items()))
    return owners[0], name


@dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines a trained organism (its ``to_dict()`` keys the checkpoint store): the sections
    ``model`` (``ModelConfig``), ``data`` (``DataConfig``), ``optim`` (``OptimConfig``) and ``seed``. A section
    may be given as a dict of its fields."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = knob(0, 0, 2**31 - 1)

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise ValueError(f"OrganismConfig.{name} must be a {cls.__name__} or a dict of its fields, "
                                 f"got {type(value).__name__}")
        check_fields(self)
        for name in _DERIVED:
            if getattr(self.model, name) is not None:
                raise ValueError(f"OrganismConfig.model.{name} is derived when the model is built "
                                 f"(model_config()); leave it None, got {getattr(self.model, name)!r}")
        if self.optim.packed and self.model.lm_attention == "prefix":
            raise ValueError("OrganismConfig.optim.packed=True needs model.lm_attention='causal' (a prefix-LM's "
                             "image tokens see the question, so questions sharing an image cannot share its tokens)")

    def __getattr__(self, name: str):
        """Read-only flat view for notebooks written before the sections: ``cfg.steps`` is ``cfg.optim.steps``.
        Code in spatialkit reads the sections."""
        if name.startswith("__") or name in SECTIONS:  # copy/pickle probes, or a section not set yet
            raise AttributeError(name)
        try:
            section, key = _route(name)
        except ValueError:
            section = None
        if section is None:
            raise AttributeError(f"'OrganismConfig' object has no attribute {name!r}")
        return getattr(getattr(self, section), key)

    def replace(self, **changes) -> "OrganismConfig":
        """A copy with ``changes`` (validated): flat field names (routed to their section), dotted ones
        (``"optim.steps"``), ``seed``, or a section as a whole (a ``ModelConfig``/... ) or as a dict of changes."""
        whole: dict = {}
        per: dict[str, dict] = {s: {} for s in SECTIONS}

        def put(section: str, key: str, value, given: str) -> None:
            if key in per[section]:
                raise ValueError(f"OrganismConfig field {section}.{key} given twice (last as {given!r})")
            per[section][key] = value

        for name, value in changes.items():
            section, key = _route(name)
            if section is not None:
                put(section, key, value, name)
            elif key in SECTIONS and isinstance(value, dict):
                for sub, v in value.items():
                    put(*_route(f"{key}.{sub}"), v, f"{key}={{{sub!r}: ...}}")
            else:
                whole[key] = value
        sections = {}
        for s in SECTIONS:
            base = whole.pop(s, getattr(self, s))
            if not isinstance(base, SECTIONS[s]):
                raise ValueError(f"OrganismConfig.{s} must be a {SECTIONS[s].__name__} or a dict of changes, "
                                 f"got {type(base).__name__}")
            sections[s] = dataclasses.replace(base, **per[s]) if per[s] else base
        return dataclasses.replace(self, **sections, **whole)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OrganismConfig":
        """The inverse of ``to_dict`` (nested; a missing section or field takes its default)."""
        unknown = set(d) - set(SECTIONS) - set(_TOP)
        if unknown:
            raise ValueError(f"unknown OrganismConfig fields {sorted(unknown)}; known: {[*SECTIONS, *_TOP]}")
        for s, c in SECTIONS.items():
            extra = set(d.get(s, {})) - set(_names(c))
            if extra:
                raise ValueError(f"unknown OrganismConfig.{s} fields {sorted(extra)}; known: {list(_names(c))}")
        return cls(**{k: dict(v) if k in SECTIONS else v for k, v in d.items()})

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The ``ModelConfig`` a ``TinyVLM`` is built from: ``model`` with ``vocab_size`` and ``max_len`` filled in."""
        return dataclasses.replace(self.model, vocab_size=vocab_size, max_len=max_sequence_length(self))


def validate(cfg: OrganismConfig) -> None:
    """ValueError naming the field and its allowed range for the first bad value (every config is checked on
    construction; this checks ``cfg`` again, sections first)."""
    for s in SECTIONS:
        getattr(cfg, s).__post_init__()
    cfg.__post_init__()


# The named presets live in presets.yml (the one list of names; spatialkit.suite.catalog reads it as data).
PRESETS_FILE = Path(__file__).with_name("presets.yml")


def _load_presets() -> tuple[dict[str, dict], dict[str, str]]:

    presets, why = {}, {}
    for name, body in yaml.safe_load(PRESETS_FILE.read_text()).items():
        if name.startswith("_"):  # shared anchors, not a preset
            continue
        body = dict(body)
        why[name] = body.pop("why", "")
        presets[name] = body
    return presets, why


# name -> {section: {field: value}} over the sections' defaults; PRESET_WHY: name -> its one-line reason
PRESETS, PRESET_WHY = _load_presets()


def preset(name: str = "default", **overrides) -> OrganismConfig:
    """The named preset with ``overrides`` applied (validated); overrides as in ``OrganismConfig.replace``."""
    if name not in PRESETS:
        raise ValueError(f"organism preset must be one of {tuple(PRESETS)}, got {name!r}")
    cfg = OrganismConfig().replace(**PRESETS[name])
    return cfg.replace(**overrides) if overrides else cfg
