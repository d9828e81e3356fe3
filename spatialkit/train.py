"""Training the model organism: config, presets, a pre-rendered example pool, and a seeded trainer.

    cfg = preset("quick", spatial_fraction=0.0)     # OrganismConfig (validated)
    model, vocab, metrics = train(cfg)               # deterministic on CPU for a given config

Examples come from the scene world (``spatialkit.scenes``): per training scene a caption, and its WhereBench
"what" and "where" questions. ``spatial_fraction`` is the share of each batch drawn from the where-questions
(0 = the "global caption / what only" regime the blog blames), ``caption_fraction`` the share of captions,
the rest are what-questions. A fixed system prompt is prepended to ``system_prompt_fraction`` of the batches.

Two stages when ``vision_pretrain_steps`` > 0 (the presets): first the vision encoder alone learns which
content words each image's caption contains (``pretrain_vision``; cached and shared between organisms that
differ only later), then the VQA stage below, with the encoder frozen when ``vision_lr_scale`` is 0.
With ``packed`` an image's questions share one LM row (``assemble_packed``), computed exactly as if alone.

Sequence layout (``TokenKind`` per position): [system words?] [<img> x N] [prompt words] <ans> [answer] <eos>;
the loss is next-token cross-entropy on the answer words and <eos> only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F

from spatialkit.models import ANS, CAPTION_PROMPT, EOS, IMG, PAD, SYSTEM_PROMPT, ModelConfig, TinyVLM, Vocab, to_pixels
from spatialkit.vlm import TokenKind

FAMILIES = ("caption", "what", "where")

@dataclass(frozen=True)
class OrganismConfig:
    """Everything that determines a trained organism (its hash keys the checkpoint store)."""

    # model
    image_size: int = 48
    patch_size: int = 8
    vision_dim: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_posenc: str = "sincos2d"
    vision_stem: str = "conv"  # "linear" (plain ViT patchify) | "conv" (two 3x3 stride-2 convs, then patchify)
    # LayerNorm on the patch embeddings before the APE is added: content then has norm sqrt(d), comparable to the
    # sincos table's sqrt(d/2). Without it the position code is ~5x louder than content and colours/kinds are
    # learned several times slower (measured with a probe; see the organism notebook).
    vision_embed_norm: bool = True
    lm_dim: int = 64
    lm_layers: int = 2
    lm_heads: int = 4
    lm_posenc: str = "rope1d"
    lm_attention: str = "causal"  # "causal" (LLaVA / Qwen-VL) | "prefix" (PaliGemma: image + prompt see each other)
    visual_norm: str = "none"  # "none" | "rmsclip" (Qi et al.'s +Normalize) | "target"
    visual_norm_scale: float = 1.0
    loc_grid: int = 4  # coordinate tokens loc0 .. loc{loc_grid^2 - 1} in the vocabulary (unused by default)
    # data
    scene_preset: str = "organism"  # a spatialkit.scenes.PRESETS name (image_size is taken from this config)
    bench_seed: int = 0  # WhereBench seed: training scenes come from its train seeds, never from val/test
    n_train_scenes: int = 4000
    n_val: int = 300
    n_test: int = 1000
    spatial_fraction: float = 0.5
    caption_fraction: float = 0.1
    system_prompt_fraction: float = 0.25
    # stage 1 (0 = off): pretrain the vision encoder alone on an image-level objective (which content words the
    # image's caption contains, from per-patch word logits pooled over the patches) before the VQA stage, as
    # real VLMs start from a CLIP encoder trained on a global objective. Nothing in its target says where
    # anything is.
    vision_pretrain_steps: int = 0
    # how stage 1 pools the per-patch word logits into image-level ones: "max" (multiple-instance learning: a
    # word is in the caption if some patch shows it, so each patch learns to describe what *it* covers) or
    # "mean" (of the patch tokens, then a linear head: CLIP-like global pooling)
    vision_pretrain_pool: str = "max"
    # the vision encoder's learning rate in the VQA stage, relative to ``lr`` (0 = frozen, as in LLaVA's stage 1)
    vision_lr_scale: float = 1.0
    # optimisation
    steps: int = 3000
    batch_size: int = 128
    # questions drawn per sampled scene: the batch holds batch_size / examples_per_image distinct images and the
    # vision encoder runs once per image (a step costs less; same number of supervised answers)
    examples_per_image: int = 1
    # pack an image's questions into one LM row, [system?][image][q1 <ans> a1 <eos>][q2 ...]...: each question
    # sees the image and itself only (a block mask) at the positions it would have alone, so every question is
    # computed exactly as in its own row, and the image's tokens pass through the LM once, not once per question
    packed: bool = False
    lr: float = 1e-3  # peak of the one-cycle schedule
    lr_schedule: str = "onecycle"  # "onecycle" | "constant"
    warmup_frac: float = 0.2
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # bookkeeping
    seed: int = 0
    eval_every: int = 250
    target: float | None = 0.97  # stop early once every trained family reaches this val accuracy

    def __post_init__(self):
        validate(self)

    def replace(self, **changes) -> "OrganismConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OrganismConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown OrganismConfig fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.image_size // self.patch_size,) * 2

    def model_config(self, vocab_size: int) -> ModelConfig:
        names = {f.name for f in fields(ModelConfig)}
        return ModelConfig(vocab_size=vocab_size, max_len=max_sequence_length(self),
                           **{k: v for k, v in self.to_dict().items() if k in names and k != "max_len"})


def _check_int(cfg, name, low, high):
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ValueError(f"OrganismConfig.{name} must be an int in [{low}, {high}], got {v!r}")


def _check_float(cfg, name, low, high):
    v = getattr(cfg, name)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not low <= v <= high:
        raise ValueError(f"OrganismConfig.{name} must be a number in [{low}, {high}], got {v!r}")


def _check_choice(cfg, name, choices):
    v = getattr(cfg, name)
    if v not in choices:
        raise ValueError(f"OrganismConfig.{name} must be one of {tuple(choices)}, got {v!r}")


def validate(cfg: OrganismConfig) -> None:
    """ValueError naming the field and its allowed range for the first bad value."""
    from spatialkit.models import LM_POSENCS, VISION_POSENCS

    for name, low, high in [("image_size", 16, 512), ("patch_size", 2, 64), ("vision_dim", 8, 1024),
                            ("vision_layers", 1, 24), ("vision_heads", 1, 32), ("lm_dim", 8, 1024),
                            ("lm_layers", 1, 24), ("lm_heads", 1, 32), ("loc_grid", 1, 32),
                            ("n_train_scenes", 10, 1_000_000), ("n_val", 10, 100_000), ("n_test", 10, 100_000),
                            ("steps", 1, 10_000_000), ("vision_pretrain_steps", 0, 10_000_000), ("batch_size", 1, 65_536),
                            ("examples_per_image", 1, 64), ("seed", 0, 2**31 - 1),
                            ("eval_every", 1, 10_000_000)]:
        _check_int(cfg, name, low, high)
    for name, low, high in [("spatial_fraction", 0.0, 1.0), ("caption_fraction", 0.0, 1.0),
                            ("system_prompt_fraction", 0.0, 1.0), ("lr", 1e-6, 1.0), ("warmup_frac", 0.0, 0.9),
                            ("weight_decay", 0.0, 1.0), ("vision_lr_scale", 0.0, 10.0), ("grad_clip", 0.0, 1e6), ("visual_norm_scale", 1e-3, 1e3)]:
        _check_float(cfg, name, low, high)
    _check_choice(cfg, "vision_posenc", VISION_POSENCS)
    _check_choice(cfg, "vision_stem", ("linear", "conv"))
    if not isinstance(cfg.vision_embed_norm, bool):
        raise ValueError(f"OrganismConfig.vision_embed_norm must be True or False, got {cfg.vision_embed_norm!r}")
    _check_choice(cfg, "lm_posenc", LM_POSENCS)
    _check_choice(cfg, "lm_attention", ("causal", "prefix"))
    _check_choice(cfg, "vision_pretrain_pool", ("max", "mean"))
    _check_choice(cfg, "visual_norm", ("none", "rmsclip", "target"))
    from spatialkit import scenes

    _check_choice(cfg, "scene_preset", tuple(scenes.PRESETS))
    _check_int(cfg, "bench_seed", 0, 2**31 - 1)
    _check_choice(cfg, "lr_schedule", ("onecycle", "constant"))
    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"OrganismConfig.image_size ({cfg.image_size}) must be a multiple of patch_size ({cfg.patch_size})")
    if cfg.vision_stem == "conv" and cfg.patch_size % 4:
        raise ValueError(f"OrganismConfig.patch_size ({cfg.patch_size}) must be a multiple of 4 with vision_stem='conv'")
    for dim, heads in (("vision_dim", "vision_heads"), ("lm_dim", "lm_heads")):
        d, h = getattr(cfg, dim), getattr(cfg, heads)
        if d % h or (d // h) % 4:
            raise ValueError(f"OrganismConfig.{dim} ({d}) must be divisible by {heads} ({h}) with a head size "
                             "that is a multiple of 4 (2D rotary encodings)")
    if not isinstance(cfg.packed, bool):
        raise ValueError(f"OrganismConfig.packed must be True or False, got {cfg.packed!r}")
    if cfg.packed and cfg.lm_attention == "prefix":
        raise ValueError("OrganismConfig.packed=True needs lm_attention='causal' (a prefix-LM's image tokens see the "
                         "question, so questions sharing an image cannot share its tokens)")
    if cfg.spatial_fraction + cfg.caption_fraction > 1.0 + 1e-9:
        raise ValueError(f"OrganismConfig.spatial_fraction + caption_fraction must be <= 1, got "
                         f"{cfg.spatial_fraction} + {cfg.caption_fraction}")
    if cfg.target is not None:
        _check_float(cfg, "target", 0.0, 1.0)


# Named presets (measured with benchmarks/bench_organism.py; see the README's performance section).
# All train on the "organism_easy" scene world (5 kinds x 4 colours, larger sprites, one background), in two
# stages like LLaVA: (1) the ViT alone learns which caption words each image has (max-pooled per-patch logits,
# 2000 steps), (2) it is frozen and the projector + LM learn the questions, 4 questions per image packed into
# one LM row. What made the difference (issue 3): the LM's fan-in init (the 0.02 init kept it on a plateau), the
# stage-1 encoder (kinds were learned ~10x slower through the LM), max- rather than mean-pooling in stage 1
# (mean-pooled features spread "there is a car" over every patch: two-object where 0.30, chance 0.25, with the
# encoder frozen), and drawing an image's questions without replacement. Colour -- which object has which colour --
# is learned last (a late jump after ~2000 steps).
# "default": 5000 steps (early stop at 97% val); "quick": 2000 steps (the notebooks' organism); "smoke": seconds.
_EASY = dict(scene_preset="organism_easy", vision_stem="linear", n_train_scenes=8000, vision_pretrain_steps=2000,
             vision_lr_scale=0.0, packed=True, examples_per_image=4, batch_size=64)
PRESETS: dict[str, dict] = {
    "default": dict(_EASY, steps=5000, eval_every=500),
    "quick": dict(_EASY, steps=2000, n_val=200, n_test=400, eval_every=500, target=0.95),
    "smoke": dict(steps=20, batch_size=16, n_train_scenes=60, n_val=30, n_test=30, eval_every=10,
                  vision_layers=1, lm_layers=1, vision_dim=32, lm_dim=32, target=None, examples_per_image=2,
                  vision_pretrain_steps=4, vision_lr_scale=0.0, packed=True),
}


def preset(name: str = "default", **overrides) -> OrganismConfig:
    """The named preset with ``overrides`` applied (validated)."""
    if name not in PRESETS:
        raise ValueError(f"organism preset must be one of {tuple(PRESETS)}, got {name!r}")
    return OrganismConfig(**{**PRESETS[name], **overrides})


# --------------------------------------------------------------------------------------------------
# the scene world -> an example pool


def scene_config(cfg: OrganismConfig):
    """The SceneConfig of the organism's world: the scene preset at the organism's image size."""
    from spatialkit import scenes

    return dataclasses.replace(scenes.PRESETS[cfg.scene_preset], image_size=cfg.image_size)


def tasks_for(scene_cfg) -> tuple[str, ...]:
    """The scene world's tasks, without depth when the world cannot show depth (no occlusion, no ground)."""
    from spatialkit import scenes

    has_depth = scene_cfg.occlusion or scene_cfg.ground
    return tuple(t for t in scenes.TASKS if t != "depth" or has_depth)


def wherebench(cfg: OrganismConfig):
    """The held-out WhereBench (val / test splits) the organism is measured on."""
    from spatialkit import scenes

    sc = scene_config(cfg)
    return scenes.build_wherebench(seed=cfg.bench_seed, n_train=0, n_val=cfg.n_val, n_test=cfg.n_test, config=sc,
                                   tasks=tasks_for(sc))


def build_vocab(cfg: OrganismConfig) -> Vocab:
    """Deterministic vocabulary: the organism's templates + the scene world's words (kinds, colours, relations,
    accessories) + every word of the captions/questions/options of a fixed set of sample scenes."""
    from spatialkit import scenes

    sc = scene_config(cfg)
    texts = list(scenes.NAMES.values()) + list(scenes.COLORS) + list(scenes.RELATIONS_2D) + list(scenes.RELATIONS_DEPTH)
    texts += [SYSTEM_PROMPT, CAPTION_PROMPT]
    for seed in range(200):
        scene = scenes.render_scene(10_000_000 + seed, sc)
        texts.append(scene.caption())
        texts += [scene.region_caption(i) for i in range(len(scene.objects))]
        for q in scenes.make_questions(scene, np.random.default_rng(seed), tasks=scenes.TASKS):
            texts.append(q.text)
            texts += list(q.options)
    return Vocab.build(texts, loc_grid=cfg.loc_grid)


def max_sequence_length(cfg: OrganismConfig) -> int:
    h, w = cfg.grid
    return 32 + h * w + 64  # system prompt (< 32 words) + image + prompt, <ans>, answer, <eos>


@dataclass
class Pool:
    """Pre-rendered, pre-tokenised training examples (built once per training run)."""

    images: np.ndarray  # (S, H, W, 3) uint8
    image_index: np.ndarray  # (E,) which image each example uses
    tails: np.ndarray  # (E, T) prompt <ans> answer <eos>, PAD-filled
    targets: np.ndarray  # (E, T) the token each tail position must predict, -100 where no loss
    family: np.ndarray  # (E,) index into FAMILIES
    by_family: dict[str, np.ndarray] = field(default_factory=dict)
    by_image_family: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (image, family) -> rows


def encode_tail(vocab: Vocab, prompt: str, answer: str | None) -> tuple[list[int], list[int]]:
    """Token ids of ``prompt <ans> answer <eos>`` and the per-position next-token targets (-100 = no loss)."""
    ids = vocab.encode(prompt) + [vocab[ANS]]
    targets = [-100] * len(ids)
    if answer is not None:
        ans = vocab.encode(answer) + [vocab[EOS]]
        targets = targets[:-1] + ans + [-100]
        ids = ids + ans
    return ids, targets


def unordered_caption(scene, rng: np.random.Generator) -> str:
    """A global caption naming the objects in random order. (``Scene.caption`` lists them left to right,
    which would smuggle horizontal-order supervision into the "caption only" regime.)"""
    parts = [scene.region_caption(int(i)) for i in rng.permutation(len(scene.objects))]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def build_pool(cfg: OrganismConfig, vocab: Vocab) -> Pool:
    """Render the training scenes once (WhereBench *train* seeds, disjoint from val/test): per scene one
    caption example and every question the scene supports (``make_questions``)."""
    from itertools import islice

    from spatialkit import scenes

    sc = scene_config(cfg)
    tasks = tasks_for(sc)
    rng = np.random.default_rng([cfg.seed, 11])
    images, rows = [], []
    for slot, seed in enumerate(islice(scenes.scene_seeds(cfg.bench_seed, "train"), cfg.n_train_scenes)):
        scene = scenes.render_scene(seed, sc)
        images.append(scene.image)
        rows.append((slot, "caption", CAPTION_PROMPT, unordered_caption(scene, rng)))
        for q in scenes.make_questions(scene, rng, tasks=tasks):
            rows.append((slot, q.family, q.text, q.gold))
    encoded = [encode_tail(vocab, prompt, answer) for _, _, prompt, answer in rows]
    width = max(len(ids) for ids, _ in encoded)
    tails = np.full((len(rows), width), vocab[PAD], dtype=np.int64)
    targets = np.full((len(rows), width), -100, dtype=np.int64)
    for i, (ids, tg) in enumerate(encoded):
        tails[i, : len(ids)], targets[i, : len(tg)] = ids, tg
    family = np.array([FAMILIES.index(r[1]) for r in rows])
    pool = Pool(np.stack(images), np.array([r[0] for r in rows]), tails, targets, family)
    pool.by_family = {f: np.flatnonzero(family == i) for i, f in enumerate(FAMILIES)}
    for row, (slot, fam) in enumerate(zip(pool.image_index.tolist(), family.tolist())):
        pool.by_image_family.setdefault((slot, fam), []).append(row)
    pool.by_image_family = {k: np.array(v) for k, v in pool.by_image_family.items()}
    return pool


def assemble(vocab: Vocab, n_image_tokens: int, tails: np.ndarray, targets: np.ndarray | None,
             with_system: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Rows [system?][<img> x N][tail], right-padded: (input_ids, token_kind, targets) (B, L) tensors."""
    b, t = tails.shape
    sys_ids = np.array(vocab.encode(SYSTEM_PROMPT))
    s = len(sys_ids) if with_system.any() else 0
    length = s + n_image_tokens + t
    ids = np.full((b, length), vocab[PAD], dtype=np.int64)
    kind = np.full((b, length), int(TokenKind.PAD), dtype=np.int64)
    tgt = np.full((b, length), -100, dtype=np.int64)
    tail_kind = np.where(tails == vocab[PAD], int(TokenKind.PAD), int(TokenKind.TEXT))
    for rows, offset in ((with_system, s), (~with_system, 0)):
        if not rows.any():
            continue
        if offset:
            ids[rows, :offset], kind[rows, :offset] = sys_ids, int(TokenKind.SYSTEM)
        ids[rows, offset: offset + n_image_tokens] = vocab[IMG]
        kind[rows, offset: offset + n_image_tokens] = int(TokenKind.IMAGE)
        ids[rows, offset + n_image_tokens: offset + n_image_tokens + t] = tails[rows]
        kind[rows, offset + n_image_tokens: offset + n_image_tokens + t] = tail_kind[rows]
        if targets is not None:
            tgt[rows, offset + n_image_tokens: offset + n_image_tokens + t] = targets[rows]
    last = int((kind != TokenKind.PAD).sum(1).max())  # trim all-pad columns
    return (torch.from_numpy(ids[:, :last]), torch.from_numpy(kind[:, :last]),
            torch.from_numpy(tgt[:, :last]) if targets is not None else None)


def assemble_packed(vocab: Vocab, n_image_tokens: int, groups: list[np.ndarray], tails: np.ndarray,
                    targets: np.ndarray, with_system: bool):
    """One row per image holding all its questions: (input_ids, token_kind, targets, positions, attn_mask).

    ``groups[r]`` are the ``tails`` rows packed into row r. Row layout [system?][<img> x N][tail][tail]...;
    ``positions`` (B, L) put every tail right after the image (as if alone in its row), and ``attn_mask``
    (B, 1, L, L) lets a token see the system/image prefix and the earlier tokens of its own tail only.
    """
    sys_ids = vocab.encode(SYSTEM_PROMPT) if with_system else []
    prefix = len(sys_ids) + n_image_tokens
    rows = []
    for members in groups:
        parts = []
        for i in members.tolist():
            keep = tails[i] != vocab[PAD]
            parts.append((tails[i][keep], targets[i][keep]))
        rows.append(parts)
    length = prefix + max(sum(len(t) for t, _ in parts) for parts in rows)
    b = len(rows)
    ids = np.full((b, length), vocab[PAD], dtype=np.int64)
    kind = np.full((b, length), int(TokenKind.PAD), dtype=np.int64)
    tgt = np.full((b, length), -100, dtype=np.int64)
    segment = np.full((b, length), -1, dtype=np.int64)  # 0 = shared prefix, j >= 1 = j-th tail, -1 = pad
    pos = np.tile(np.arange(length), (b, 1))
    ids[:, : len(sys_ids)], kind[:, : len(sys_ids)] = sys_ids, int(TokenKind.SYSTEM)
    ids[:, len(sys_ids): prefix], kind[:, len(sys_ids): prefix] = vocab[IMG], int(TokenKind.IMAGE)
    segment[:, :prefix] = 0
    for r, parts in enumerate(rows):
        start = prefix
        for j, (t, g) in enumerate(parts, start=1):
            end = start + len(t)
            ids[r, start:end], tgt[r, start:end], kind[r, start:end] = t, g, int(TokenKind.TEXT)
            segment[r, start:end], pos[r, start:end] = j, np.arange(prefix, prefix + len(t))
            start = end
    seg = torch.from_numpy(segment)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])  # key in prefix or in the query's tail
    mask = (causal[None] & same) | torch.eye(length, dtype=torch.bool)[None]  # pads see themselves (no NaN)
    return (torch.from_numpy(ids), torch.from_numpy(kind), torch.from_numpy(tgt), torch.from_numpy(pos),
            mask[:, None])


def sample_batch(cfg: OrganismConfig, pool: Pool, rng: np.random.Generator) -> np.ndarray:
    """Example indices for one batch: each slot picks its family by the configured fractions."""
    fractions = np.array([cfg.caption_fraction, 1.0 - cfg.caption_fraction - cfg.spatial_fraction, cfg.spatial_fraction])
    available = np.array([len(pool.by_family[f]) > 0 for f in FAMILIES])
    fractions = np.where(available, np.clip(fractions, 0, None), 0.0)
    fractions = fractions / fractions.sum()
    fam = rng.choice(len(FAMILIES), size=cfg.batch_size, p=fractions)
    out = np.empty(cfg.batch_size, dtype=np.int64)
    if cfg.examples_per_image > 1:  # groups of slots share one scene; a scene lacking the family: any scene's
        k = cfg.examples_per_image
        images = np.repeat(rng.integers(0, len(pool.images), size=-(-cfg.batch_size // k)), k)[: cfg.batch_size]
        # within one scene, its questions of a family are drawn without replacement (a repeat teaches nothing
        # new) until they run out
        drawn: dict[tuple[int, int], list] = {}
        for j, (image, f) in enumerate(zip(images.tolist(), fam.tolist())):
            rows = pool.by_image_family.get((image, f))
            if rows is None:
                out[j] = rng.choice(pool.by_family[FAMILIES[f]])
                continue
            left = drawn.get((image, f))
            if not left:
                left = drawn[(image, f)] = rng.permutation(rows).tolist()
            out[j] = left.pop()
        return out
    for i, f in enumerate(FAMILIES):
        rows = fam == i
        if rows.any():
            out[rows] = rng.choice(pool.by_family[f], size=int(rows.sum()))
    return out


def lr_at(cfg: OrganismConfig, step: int, steps: int | None = None) -> float:
    """One-cycle over ``steps`` (default ``cfg.steps``): linear warm-up to ``lr`` over ``warmup_frac`` of the
    steps, then cosine down to lr/100."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    steps = cfg.steps if steps is None else steps
    warm = max(1, int(cfg.warmup_frac * steps))
    if step < warm:
        return cfg.lr * (0.04 + 0.96 * step / warm)
    progress = (step - warm) / max(1, steps - warm)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# --------------------------------------------------------------------------------------------------
# stage 1: a global objective for the vision encoder

CAPTION_FUNCTION_WORDS = ("a", "an", "and", ",", ".", "the", "with", EOS)


def caption_word_bags(pool: Pool, vocab: Vocab) -> torch.Tensor:
    """(S, V) multi-hot: the content words (kinds, colours, accessories) of each pool image's caption.

    (Colour-noun phrases as extra labels, "green car", were tried to tie each colour to its object inside
    the encoder: at 1200 VQA steps they left colour where it was and cost where-accuracy, so they are not used.)
    """
    bags = torch.zeros(len(pool.images), len(vocab))
    skip = {vocab[w] for w in CAPTION_FUNCTION_WORDS}
    for row in pool.by_family["caption"].tolist():
        words = [t for t in pool.targets[row].tolist() if t >= 0 and t not in skip]
        bags[pool.image_index[row], words] = 1.0
    return bags


# the fields that determine the stage-1 vision encoder (its checkpoint key): organisms that differ only in the
# LM, the projector or the VQA mix share one pretrained encoder
VISION_STAGE_FIELDS = ("image_size", "patch_size", "vision_dim", "vision_layers", "vision_heads", "vision_posenc",
                       "vision_stem", "vision_embed_norm", "loc_grid", "scene_preset", "bench_seed",
                       "n_train_scenes", "seed", "vision_pretrain_steps", "vision_pretrain_pool", "batch_size", "lr",
                       "lr_schedule", "warmup_frac", "weight_decay", "grad_clip")


def vision_stage_config(cfg: OrganismConfig) -> dict:
    return {"stage": "vision_pretrain", **{name: getattr(cfg, name) for name in VISION_STAGE_FIELDS}}


def pretrained_vision(model: TinyVLM, cfg: OrganismConfig, pool: Pool, vocab: Vocab, progress: bool,
                      cache: bool) -> float:
    """Stage 1 into ``model.vision`` (from the checkpoint store when ``cache`` and present); its final loss."""
    if not cache:
        return pretrain_vision(model, cfg, pool, vocab, progress)[-1]
    from spatialkit import checkpoints
    from spatialkit.organism import code_version

    def do_pretrain():
        losses = pretrain_vision(model, cfg, pool, vocab, progress)
        return model.vision.state_dict(), {"final_loss": losses[-1], "steps": len(losses)}

    state, metrics, _ = checkpoints.load_or_train("vision", vision_stage_config(cfg), code_version(), do_pretrain)
    model.vision.load_state_dict(state)
    return metrics["final_loss"]


def pretrain_vision(model: TinyVLM, cfg: OrganismConfig, pool: Pool, vocab: Vocab, progress: bool) -> list[float]:
    """Train ``model.vision`` alone for ``cfg.vision_pretrain_steps`` on "which caption words does this image
    have" (binary cross-entropy of pooled per-patch word logits, see ``vision_pretrain_pool``; the head is
    thrown away). Returns the losses. The encoder is re-initialised from its own seed first, so the result
    depends on ``VISION_STAGE_FIELDS`` only (not on the LM built around it); torch's global RNG is untouched.

    Why: the gradient that teaches the encoder what a ball looks like otherwise has to come back through the
    LM's attention, which at first looks nowhere in particular -- kinds were the organism's bottleneck. The
    objective is global (pooled, position-free) like CLIP's, so any spatial skill is still learned in stage 2.
    """
    from tqdm.auto import tqdm

    bags = caption_word_bags(pool, vocab)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed + 1_000_003)
        fresh = type(model.vision)(cfg.image_size, cfg.patch_size, cfg.vision_dim, cfg.vision_layers, cfg.vision_heads,
                                   cfg.vision_posenc, stem=cfg.vision_stem, embed_norm=cfg.vision_embed_norm)
        fresh.apply(TinyVLM._init)
        head = torch.nn.Linear(cfg.vision_dim, bags.shape[1])
    model.vision.load_state_dict(fresh.state_dict())
    params = list(model.vision.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 23])
    losses = []
    for step in tqdm(range(cfg.vision_pretrain_steps), desc="pretrain vision", disable=not progress, mininterval=2.0):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step, cfg.vision_pretrain_steps)
        images = rng.integers(0, len(pool.images), size=cfg.batch_size)
        patches = model.vision(to_pixels(pool.images[images]))  # (B, N, d)
        logits = head(patches).amax(1) if cfg.vision_pretrain_pool == "max" else head(patches.mean(1))
        loss = F.binary_cross_entropy_with_logits(logits, bags[images])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses


# --------------------------------------------------------------------------------------------------
# the trainer


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (None: leave it). On a CPU shared with other jobs one
    thread is often several times faster than oversubscribed two."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train(cfg: OrganismConfig, *, progress: bool = True, fail_at_step: int | None = None, cache_vision: bool = False,
          threads: int | None = None) -> tuple[TinyVLM, Vocab, dict]:
    """Train an organism from scratch: (model in eval mode, vocab, metrics).

    Deterministic on CPU for a given config (seeded init, seeded numpy sampler, no dropout). Evaluates on the
    val split every ``eval_every`` steps and stops early once every trained family reaches ``target``.
    ``fail_at_step`` raises inside the loop (tests use it to simulate a run killed midway). ``threads`` sets
    torch's thread count for the run. ``cache_vision`` takes the stage-1 vision encoder from the checkpoint
    store (and stores it) -- the same weights, without paying for them again.
    """
    with torch_threads(threads):
        return _train(cfg, progress, fail_at_step, cache_vision)


def _train(cfg: OrganismConfig, progress: bool, fail_at_step: int | None,
           cache_vision: bool) -> tuple[TinyVLM, Vocab, dict]:
    from tqdm.auto import tqdm

    from spatialkit.organism import OrganismVLM, accuracy_by_family, evaluate

    t0 = time.perf_counter()
    bench = wherebench(cfg)
    vocab = build_vocab(cfg)
    pool = build_pool(cfg, vocab)
    t_data = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    model = TinyVLM(cfg.model_config(len(vocab)))
    pretrain_loss = pretrained_vision(model, cfg, pool, vocab, progress, cache_vision) if cfg.vision_pretrain_steps else None
    t_pretrain = time.perf_counter() - t0 - t_data
    groups = []
    for is_vision in (False, True):
        named = [(n, p) for n, p in model.named_parameters() if n.startswith("vision.") == is_vision]
        scale = cfg.vision_lr_scale if is_vision else 1.0
        groups += [{"params": [p for n, p in named if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr_scale": scale},
                   {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    frozen_features = None
    if cfg.vision_lr_scale == 0:
        model.vision.requires_grad_(False)
        with torch.no_grad():  # the encoder's output for every pool image, computed once (~1 s per 1000 images)
            frozen_features = torch.cat([model.vision(to_pixels(pool.images[i: i + 256]))
                                         for i in range(0, len(pool.images), 256)])
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(cfg.seed)
    n_img = cfg.grid[0] * cfg.grid[1]
    trained = [f for f in ("what", "where") if f != "where" or cfg.spatial_fraction > 0]
    if cfg.caption_fraction + cfg.spatial_fraction >= 1.0:
        trained = [f for f in trained if f != "what"]
    vlm = OrganismVLM(model, vocab, cfg)
    history, losses, eval_times, stopped_early = [], [], [], False
    bar = tqdm(range(cfg.steps), desc="train organism", disable=not progress, mininterval=2.0)
    step = 0
    for step in bar:
        if fail_at_step is not None and step == fail_at_step:
            raise RuntimeError(f"simulated failure at step {step}")
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step) * group["lr_scale"]
        idx = sample_batch(cfg, pool, rng)
        # the system prompt is drawn per batch, not per row: a batch is padded to its longest row, so mixing
        # rows with and without the ~17-word prompt would make every step pay for it
        with_system = np.full(len(idx), rng.random() < cfg.system_prompt_fraction)
        # encode each distinct image once, then hand every row its image's visual tokens
        images, which = np.unique(pool.image_index[idx], return_inverse=True)
        if frozen_features is not None:  # frozen encoder: its outputs were computed once, only the projector runs
            tokens = model.projector(frozen_features[torch.from_numpy(images)])
        else:
            tokens = model.encode_image(to_pixels(pool.images[images]))  # (U, N, d)
        if cfg.packed:  # one LM row per distinct image, holding all of its questions
            groups = [np.flatnonzero(which == u) for u in range(len(images))]
            ids, kind, tgt, pos, mask = assemble_packed(vocab, n_img, [idx[g] for g in groups], pool.tails,
                                                        pool.targets, bool(with_system[0]))
            positions = model.positions(kind)  # (B, L, 3) of the plain layout, re-indexed to each tail's own
            positions = positions.gather(1, pos[..., None].expand(-1, -1, 3).clamp(max=positions.shape[1] - 1))
            positions = torch.where(kind[..., None] == TokenKind.PAD, 0, positions)
            hidden = model.hidden(None, ids, kind, visual=tokens.flatten(0, 1), positions=positions, attn_mask=mask)
        else:
            ids, kind, tgt = assemble(vocab, n_img, pool.tails[idx], pool.targets[idx], with_system)
            hidden = model.hidden(None, ids, kind, visual=tokens[torch.from_numpy(which.reshape(-1))].flatten(0, 1))
        has_target = tgt != -100
        loss = F.cross_entropy(model.lm_head(hidden[has_target]), tgt[has_target])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            acc = accuracy_by_family(evaluate(vlm, bench, "val"))
            history.append({"step": step + 1, "loss": float(np.mean(losses[-cfg.eval_every:])), **acc})
            eval_times.append(time.perf_counter() - t0)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", **{k: f"{v:.2f}" for k, v in acc.items()})
            if cfg.target is not None and trained and all(acc.get(f, 0.0) >= cfg.target for f in trained):
                stopped_early = step + 1 < cfg.steps
                break
    bar.close()
    model.requires_grad_(True)  # undo the stage-2 freeze: later users (PIN, exercises) expect a normal module
    model.eval()
    from spatialkit.models import state_dict_sha256

    # everything but "timing" is deterministic for a given config (the determinism test compares it)
    metrics = {"history": history, "steps_run": step + 1, "stopped_early": stopped_early,
               "timing": {"total_s": time.perf_counter() - t0, "data_s": t_data, "vision_pretrain_s": t_pretrain,
                          "at_eval_s": eval_times},
               "vision_pretrain_final_loss": pretrain_loss,
               "final_loss": losses[-1] if losses else None, "state_sha256": state_dict_sha256(model),
               "n_examples": int(len(pool.family)), "n_scenes": int(len(pool.images))}
    return model, vocab, metrics
