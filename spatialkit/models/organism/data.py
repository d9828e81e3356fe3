"""The organism's data: its scene world, vocabulary, and a pre-rendered, pre-tokenised example pool.

Everything here reads ``cfg.data`` (world, splits, training mix, ``loc_grid``), ``cfg.model.image_size`` and
``cfg.optim``'s batching (``batch_size``, ``examples_per_image``). Per training scene the pool holds a caption and
its WhereBench "what" and "where" questions. ``spatial_fraction`` is the share of each batch drawn from the
where-questions (0 = the "global caption / what only" regime the blog blames), ``caption_fraction`` the share
of captions, the rest are what-questions (``sample_batch``). A fixed system prompt is prepended to
``system_prompt_fraction`` of the batches. ``assemble_packed`` puts an image's questions in one LM row, each
computed exactly as if alone.

Sequence layout (``TokenKind`` per position): [system words?] [<img> x N] [prompt words] <ans> [answer] <eos>;
the loss is next-token cross-entropy on the answer words and <eos> only.
"""

from __future__ import annotations
import dataclasses
from dataclasses import dataclass, field
import numpy as np
import torch
from spatialkit.models.organism.model import ANS, CAPTION_PROMPT, EOS, IMG, PAD, SYSTEM_PROMPT, Vocab, default_max_len
from spatialkit.models.vlm import TokenKind
from typing import TYPE_CHECKING
from spatialkit import world as scenes
from itertools import islice

if TYPE_CHECKING:  # annotations only: config imports this module
    from spatialkit.models.organism.config import OrganismConfig


FAMILIES = ("caption", "what", "where")



def scene_config(cfg: OrganismConfig):
    """The SceneConfig of the organism's world: the scene preset at the organism's image size."""

    return dataclasses.replace(scenes.PRESETS[cfg.data.scene_preset], image_size=cfg.model.image_size)


def tasks_for(scene_cfg) -> tuple[str, ...]:
    """The scene world's tasks: its ``SceneConfig.tasks`` when set (the organism-zoo worlds: WhatsUp mirrors,
    prior world), else ``TASKS`` without depth when the world cannot show depth (no occlusion, no ground)."""

    if scene_cfg.tasks is not None:
        return tuple(scene_cfg.tasks)
    has_depth = scene_cfg.occlusion or scene_cfg.ground
    return tuple(t for t in scenes.TASKS if t != "depth" or has_depth)


PRIOR_SPLITS = ("consistent", "counter")  # wherebench(cfg, prior=...) on a world with prior_relations


def wherebench(cfg: OrganismConfig, prior: str | None = None, n_train: int = 0):
    """The held-out WhereBench (val / test splits) the organism is measured on.

    ``prior`` (worlds with ``prior_relations``, e.g. the "prior" organism's ``organism_prior``): None = the world
    as drawn (its where_two relations follow the kinds in ~87.5 % of the items: accuracy there is mostly the
    prior's); "consistent" / "counter" = val/test where_two items restricted to those whose relation is / is not
    the prior one of their kinds (``build_wherebench(prior=...)``; every other task as drawn). Measure an
    organism on both to see whether it reads the image or the prior (``prior_benches``). The trainer's val split
    (early stop) is always the world as drawn. ``n_train`` > 0 also fills the train split (disjoint seeds; the
    blind answerer ``spatialkit.world.blind_accuracy`` learns from it).
    """

    sc = scene_config(cfg)
    return scenes.build_wherebench(seed=cfg.data.bench_seed, n_train=n_train, n_val=cfg.data.n_val,
                                   n_test=cfg.data.n_test, config=sc, tasks=tasks_for(sc), prior=prior)


def prior_benches(cfg: OrganismConfig, n_train: int = 0) -> dict:
    """{"natural", "consistent", "counter"} -> ``wherebench(cfg, prior=...)`` for a world with prior relations
    ({"natural"} only otherwise)."""
    benches = {"natural": wherebench(cfg, n_train=n_train)}
    if scene_config(cfg).prior_relations:
        benches.update({p: wherebench(cfg, prior=p, n_train=n_train) for p in PRIOR_SPLITS})
    return benches


def build_vocab(cfg: OrganismConfig) -> Vocab:
    """Deterministic vocabulary: the organism's templates + the scene world's words (kinds, colours, relations,
    accessories) + every word of the captions/questions/options of a fixed set of sample scenes."""

    sc = scene_config(cfg)
    texts = list(scenes.NAMES.values()) + list(scenes.COLORS) + list(scenes.RELATIONS_2D) + list(scenes.RELATIONS_DEPTH)
    texts += [SYSTEM_PROMPT, CAPTION_PROMPT]
    if sc.tasks is not None:  # a zoo world asks its own tasks (the WhatsUp ones add "on", "under", "of", "or", ",")
        texts += list(scenes.RELATIONS_ON) + list(scenes.WHATSUP_A_OPTIONS) + list(scenes.WHATSUP_B_OPTIONS)
        texts += ["left of, right of, on or under", "left of, right of, in front of or behind"]
    for seed in range(200):
        scene = scenes.render_scene(10_000_000 + seed, sc)
        texts.append(scene.caption())
        texts += [scene.region_caption(i) for i in range(len(scene.objects))]
        for q in scenes.make_questions(scene, np.random.default_rng(seed), tasks=tasks_for(sc) if sc.tasks else scenes.TASKS):
            texts.append(q.text)
            texts += list(q.options)
    return Vocab.build(texts, loc_grid=cfg.data.loc_grid)


def max_sequence_length(cfg: OrganismConfig) -> int:
    """The organism's ``ModelConfig.max_len``: ``default_max_len`` of its grid."""
    return default_max_len(cfg.model.grid)


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


    sc = scene_config(cfg)
    tasks = tasks_for(sc)
    rng = np.random.default_rng([cfg.seed, 11])
    images, rows = [], []
    for slot, seed in enumerate(islice(scenes.scene_seeds(cfg.data.bench_seed, "train"), cfg.data.n_train_scenes)):
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
    d = cfg.data
    fractions = np.array([d.caption_fraction, 1.0 - d.caption_fraction - d.spatial_fraction, d.spatial_fraction])
    available = np.array([len(pool.by_family[f]) > 0 for f in FAMILIES])
    fractions = np.where(available, np.clip(fractions, 0, None), 0.0)
    fractions = fractions / fractions.sum()
    batch_size = cfg.optim.batch_size
    fam = rng.choice(len(FAMILIES), size=batch_size, p=fractions)
    out = np.empty(batch_size, dtype=np.int64)
    if cfg.optim.examples_per_image > 1:  # groups of slots share one scene; a scene lacking the family: any scene's
        k = cfg.optim.examples_per_image
        images = np.repeat(rng.integers(0, len(pool.images), size=-(-batch_size // k)), k)[:batch_size]
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


CAPTION_FUNCTION_WORDS = ("a", "an", "and", ",", ".", "the", "with", EOS)


def caption_word_bags(pool: Pool, vocab: Vocab, phrases: bool = False) -> torch.Tensor:
    """(S, V [+ P]) multi-hot: the content words (kinds, colours, accessories) of each pool image's caption; with
    ``phrases`` also one column per colour-noun phrase ("yellow ball": a colour word and the word after it) seen
    in the pool's captions, in sorted order (stage 1's ``vision_pretrain_labels="phrases"``).

    Why phrases: a word bag says "yellow" and "ball" are in the image, not that the ball is the yellow one. A
    max-pooled stage 1 binds them anyway (each patch describes its own object); a mean-pooled one (CLIP-like)
    does not, and its organism then cannot say which object has which colour.
    """
    skip = {vocab[w] for w in CAPTION_FUNCTION_WORDS}
    colours = {vocab.index[w] for w in scenes.COLORS if w in vocab.index}
    rows = pool.by_family["caption"].tolist()
    words_of = [[t for t in pool.targets[row].tolist() if t >= 0 and t not in skip] for row in rows]
    pairs_of = [[(a, b) for a, b in zip(words, words[1:]) if a in colours] if phrases else [] for words in words_of]
    columns = {pair: len(vocab) + j for j, pair in enumerate(sorted({p for pairs in pairs_of for p in pairs}))}
    bags = torch.zeros(len(pool.images), len(vocab) + len(columns))
    for row, words, pairs in zip(rows, words_of, pairs_of):
        bags[pool.image_index[row], words + [columns[p] for p in pairs]] = 1.0
    return bags
