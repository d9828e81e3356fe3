"""Notebook 01's training experiment: the same tiny ViT, one per positional encoding, on one "where" task.

Data: two-object scenes from ``spatialkit.world`` (a chick and a cup, plain backgrounds, no
occlusion). Every image carries two labels (``-1`` where the scene world's margin rules call the
geometry ambiguous, so no question is asked):

* ``relative``: where the chick is relative to the cup (``RELATIONS_2D``: left of / right of / above /
  below), a question about the *offset* between two objects;
* ``absolute``: where the chick is in the image (``RELATIONS_ONE``: left / right / top / bottom), a
  question about *absolute* position.

Model: ``spatialkit.models.organism.model.ViTEncoder`` (patch embedding, bidirectional blocks, pluggable
``spatialkit.models.posenc`` encoding) + mean pooling + one linear layer with 4 + 4 logits. Mean pooling
keeps "none" an honest bag of patches: without a positional encoding the whole network is
permutation-invariant over patches. ``encode`` runs the encoder at whatever grid the image gives, so
a model trained at one resolution can be tested at another (learned APE is interpolated, sincos and
rotary encodings are recomputed, RPE reuses its clipped offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialkit.models import posenc as pe_mod
from spatialkit import world as scenes
from spatialkit.models.organism.model import ViTEncoder
from spatialkit.common.params import check_number
from spatialkit.common.stats import seed_item_bootstrap
import pandas as pd
from spatialkit.common.stats import Estimate, percentile_interval, resample
from tqdm.auto import tqdm

TARGET, REFERENCE = "chick", "cup"
RELATIVE_LABELS = scenes.RELATIONS_2D  # chick relative to cup
ABSOLUTE_LABELS = scenes.RELATIONS_ONE  # chick in the image


def where_config(image_size: int) -> scenes.SceneConfig:
    """The scene world's easy "organism" preset, restricted to one chick and one cup, with objects a bit
    smaller (20-28 % of the side) so that pairs far enough apart to never share a patch are common."""
    return replace(scenes.PRESETS["organism"], image_size=image_size, kinds=(TARGET, REFERENCE),
                   min_size=0.2, max_size=0.28)


@dataclass
class WhereSet:
    """Images (N, 3, S, S) float in [-1, 1] and their labels (N,) long, -1 = no question."""

    images: torch.Tensor
    relative: torch.Tensor
    absolute: torch.Tensor

    @property
    def grid_size(self) -> int:
        return self.images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]


PAINT = {"background": (90, 90, 90), TARGET: (230, 40, 40), REFERENCE: (40, 80, 230)}


def make_where_set(seeds, image_size: int, *, jitter: int = 0) -> WhereSet:
    """Scenes of ``seeds`` as ``image_size`` px images, labelled with the scene world's own relation rules.

    Two choices keep the experiment about position only:

    * the objects' visible silhouettes (``Scene.mask``) are painted in flat role colours (chick red, cup
      blue, grey background), so recognising *what* is trivial and only *where* is left to learn;
    * with ``jitter = p`` (use the patch size) each scene is drawn at ``image_size - p`` px and pasted at
      a random offset in [0, p) x [0, p). Otherwise an object's phase inside its patches (is its left edge
      on a patch boundary?) tells a bag of patches where it sits near the image border, and "none" is no
      longer position-blind. The absolute label is computed from the pasted box.
    * scenes whose two boxes are less than ``jitter`` px apart (on both axes) are dropped: then no patch
      ever holds parts of both objects, so the patch contents alone cannot show how they are arranged.
    """
    inner = image_size - jitter
    cfg = where_config(inner)
    _, rendered = scenes.render_batch(seeds, cfg)
    images = np.empty((len(rendered), image_size, image_size, 3), dtype=np.uint8)
    rel, ab = [], []
    for k, scene in enumerate(rendered):
        kinds = [o.kind for o in scene.objects]
        ia, ib = kinds.index(TARGET), kinds.index(REFERENCE)
        if box_gap(scene.objects[ia], scene.objects[ib]) < jitter:
            continue
        rng = np.random.default_rng([scene.seed, jitter])
        dx, dy = (int(v) for v in rng.integers(0, jitter, size=2)) if jitter else (0, 0)
        canvas = np.full((image_size, image_size, 3), PAINT["background"], dtype=np.uint8)
        canvas[dy:dy + inner, dx:dx + inner][scene.mask(ia)] = PAINT[TARGET]
        canvas[dy:dy + inner, dx:dx + inner][scene.mask(ib)] = PAINT[REFERENCE]
        images[len(rel)] = canvas
        a, b = scene.objects[ia], scene.objects[ib]
        x0, y0, x1, y1 = a.box
        pasted = replace(a, box=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))
        r = scenes.relation_2d(a, b, cfg.margin, cfg.dominance)  # a shift does not change relations
        w = scenes.where_in_image(pasted, image_size, cfg.where_margin, cfg.dominance)
        rel.append(RELATIVE_LABELS.index(r) if r else -1)
        ab.append(ABSOLUTE_LABELS.index(w) if w else -1)
    pixels = torch.from_numpy(images[:len(rel)]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return WhereSet(pixels, torch.tensor(rel), torch.tensor(ab))


def box_gap(a: scenes.SceneObject, b: scenes.SceneObject) -> int:
    """Empty pixel rows/columns between two boxes along the axis where they are farthest apart."""
    gap_x = max(b.box[0] - a.box[2], a.box[0] - b.box[2])
    gap_y = max(b.box[1] - a.box[3], a.box[1] - b.box[3])
    return max(gap_x, gap_y)


def collect_where_set(first_seed: int, n: int, image_size: int, jitter: int = 0) -> WhereSet:
    """``n`` scenes from consecutive seeds starting at ``first_seed``, skipping those ``make_where_set`` drops."""
    parts, have, start = [], 0, first_seed
    for _ in range(1000):
        chunk = make_where_set(range(start, start + max(2 * (n - have), 64)), image_size, jitter=jitter)
        start += max(2 * (n - have), 64)
        parts.append(chunk)
        have += len(chunk)
        if have >= n:
            break
    else:
        raise RuntimeError(f"could not collect {n} scenes at image_size={image_size}, jitter={jitter}")
    cat = lambda f: torch.cat([getattr(p, f) for p in parts])[:n]
    return WhereSet(cat("images"), cat("relative"), cat("absolute"))


def where_splits(seed: int, n_train: int, n_test: int, image_size: int, unseen_size: int,
                 jitter: int = 0) -> dict[str, WhereSet]:
    """train / test at ``image_size`` and test_unseen at ``unseen_size``; disjoint scene seeds."""
    base = 10_000_000 * (seed + 1)
    return {
        "train": collect_where_set(base, n_train, image_size, jitter),
        "test": collect_where_set(base + 5_000_000, n_test, image_size, jitter),
        "test_unseen": collect_where_set(base + 7_000_000, n_test, unseen_size, jitter),
    }



@dataclass
class ShiftedWhereSet(WhereSet):
    """A translation test: each kept scene's two-object pair pasted at several absolute positions.

    ``scene`` (N,) says which scene an image comes from (0 .. n_scenes-1) and ``shift`` (N, 2) the pair's
    move (dx, dy) in pixels from the scene's own placement. ``relative`` is the same for every image of a
    scene (a translation keeps the offset between the objects); ``absolute`` is recomputed per image.
    """

    scene: torch.Tensor = None
    shift: torch.Tensor = None

    @property
    def n_scenes(self) -> int:
        return int(self.scene.max()) + 1 if len(self) else 0


def make_shifted_set(seeds, image_size: int, patch_size: int, *, min_move: int = 2) -> ShiftedWhereSet:
    """Scenes of ``seeds`` (the training world: drawn at ``image_size - patch_size`` px, kept only when the
    objects are at least a patch apart and have a relative label), each pasted at its own jittered place
    and then with the pair moved *as far as it goes* toward each of the four image corners, in whole
    patches (so every patch shows exactly the same content, only at another position on the grid).

    Every pair stays inside the image (positions a model trained on this world has seen), the relation
    between the two objects is unchanged, only absolute position changes. Scenes whose pair cannot move
    at least ``min_move`` patches along some axis are dropped (no translation to test). Per scene: 5
    images (own place, then top-left, top-right, bottom-left, bottom-right; a corner repeats a place
    when an axis has no room).
    """
    check_number("patch_size", patch_size, 1, None, int)
    check_number("min_move", min_move, 0, None, int)
    inner = image_size - patch_size
    cfg = where_config(inner)
    _, rendered = scenes.render_batch(seeds, cfg)
    images, rel, ab, scene_idx, shifts = [], [], [], [], []
    for scene in rendered:
        kinds = [o.kind for o in scene.objects]
        ia, ib = kinds.index(TARGET), kinds.index(REFERENCE)
        a, b = scene.objects[ia], scene.objects[ib]
        r = scenes.relation_2d(a, b, cfg.margin, cfg.dominance)
        if r is None or box_gap(a, b) < patch_size:
            continue
        rng = np.random.default_rng([scene.seed, patch_size])  # the same paste offset make_where_set uses
        dx, dy = (int(v) for v in rng.integers(0, patch_size, size=2))
        pix = {}
        for i in (ia, ib):
            ys, xs = np.nonzero(scene.mask(i))
            pix[i] = (ys + dy, xs + dx)
        all_y = np.concatenate([pix[ia][0], pix[ib][0]])
        all_x = np.concatenate([pix[ia][1], pix[ib][1]])
        if all_y.size == 0:
            continue
        # whole-patch moves keeping every painted pixel inside the image
        kx = (-(int(all_x.min()) // patch_size), (image_size - 1 - int(all_x.max())) // patch_size)
        ky = (-(int(all_y.min()) // patch_size), (image_size - 1 - int(all_y.max())) // patch_size)
        if max(kx[1] - kx[0], ky[1] - ky[0]) < min_move:
            continue
        k = len(set(scene_idx))
        for sx, sy in ((0, 0), (kx[0], ky[0]), (kx[1], ky[0]), (kx[0], ky[1]), (kx[1], ky[1])):
            mx, my = sx * patch_size, sy * patch_size
            canvas = np.full((image_size, image_size, 3), PAINT["background"], dtype=np.uint8)
            for i, role in ((ia, TARGET), (ib, REFERENCE)):
                canvas[pix[i][0] + my, pix[i][1] + mx] = PAINT[role]
            x0, y0, x1, y1 = a.box
            moved = replace(a, box=(x0 + dx + mx, y0 + dy + my, x1 + dx + mx, y1 + dy + my))
            w = scenes.where_in_image(moved, image_size, cfg.where_margin, cfg.dominance)
            images.append(canvas)
            rel.append(RELATIVE_LABELS.index(r))
            ab.append(ABSOLUTE_LABELS.index(w) if w else -1)
            scene_idx.append(k)
            shifts.append((mx, my))
    stack = np.stack(images) if images else np.empty((0, image_size, image_size, 3), dtype=np.uint8)
    pixels = torch.from_numpy(stack).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return ShiftedWhereSet(pixels, torch.tensor(rel, dtype=torch.long), torch.tensor(ab, dtype=torch.long),
                           scene=torch.tensor(scene_idx, dtype=torch.long),
                           shift=torch.tensor(shifts, dtype=torch.long).reshape(-1, 2))


def collect_shifted_set(first_seed: int, n_scenes: int, image_size: int, patch_size: int,
                        min_move: int = 2) -> ShiftedWhereSet:
    """``n_scenes`` scenes (5 images each) from consecutive seeds starting at ``first_seed``."""
    check_number("n_scenes", n_scenes, 1, None, int)
    parts, have, start = [], 0, first_seed
    for _ in range(1000):
        chunk = make_shifted_set(range(start, start + 2 * max(n_scenes - have, 32)), image_size, patch_size,
                                 min_move=min_move)
        start += 2 * max(n_scenes - have, 32)
        if len(chunk):
            parts.append((chunk, have))
            have += chunk.n_scenes
        if have >= n_scenes:
            break
    else:
        raise RuntimeError(f"could not collect {n_scenes} movable scenes at image_size={image_size}")
    keep = lambda ws, off: (ws.scene + off) < n_scenes
    cat = lambda f: torch.cat([getattr(ws, f)[keep(ws, off)] for ws, off in parts])
    scene = torch.cat([(ws.scene + off)[keep(ws, off)] for ws, off in parts])
    return ShiftedWhereSet(cat("images"), cat("relative"), cat("absolute"), scene=scene, shift=cat("shift"))


@torch.no_grad()
def translation_results(models, shifted: ShiftedWhereSet):
    """Per (encoding, seed, scene) rows for the translation test, in ``accuracy_table``'s layout.

    ``models`` is ``{(encoding, seed): model}``. Two "questions" per scene, both 0/1 (or a fraction):

    * ``same answer``: the relative answer is identical at every placement of the scene (1 = invariant);
    * ``accuracy``: the share of the scene's placements answered correctly (relative question);
    * ``accuracy at own place`` / ``accuracy moved``: the same at the scene's own place / the four moves.
    """

    scene = shifted.scene.numpy()
    moved = (shifted.shift != 0).any(dim=1).numpy()
    gold = shifted.relative.numpy()
    rows = []
    for (name, s), model in models.items():
        pred = predictions(model, shifted.images)[0].numpy()
        correct = (pred == gold).astype(float)
        frame = pd.DataFrame({"scene": scene, "pred": pred, "correct": correct, "moved": moved})
        per = frame.groupby("scene").agg(same=("pred", lambda p: float(p.nunique() == 1)),
                                         acc=("correct", "mean"))
        own = frame[~frame.moved].groupby("scene").correct.mean()
        away = frame[frame.moved].groupby("scene").correct.mean()
        for question, values in (("same answer", per.same), ("accuracy", per.acc),
                                 ("accuracy at own place", own), ("accuracy moved", away)):
            rows.append(pd.DataFrame({"encoding": name, "seed": s, "split": "shifted", "question": question,
                                      "item": values.index.to_numpy(), "correct": values.to_numpy()}))
    return pd.concat(rows, ignore_index=True)


def contrast(results, terms, *, seed: int = 0, n_boot: int = 1000, alpha: float = 0.05):
    """A weighted sum of accuracies, e.g. a difference or a difference of differences, with a bootstrap CI.

    ``terms``: ``[(weight, encoding, split, question), ...]`` picking groups of ``results`` (the frame of
    ``compare_encodings`` / ``translation_results``). Each replicate resamples, as ``accuracy_table``
    does, the training seeds of every encoding (once per encoding, shared by all its terms: the same
    models answer every split) and the test items of every (split, question) (once, shared by every
    encoding: all models answer the same items). So a contrast of two encodings on one test set is paired
    on items, and a model's own drop from one split to another is paired on seeds.
    """

    check_number("n_boot", n_boot, 1, None, int)
    rng = np.random.default_rng(seed)
    mats, seed_count, item_count = [], {}, {}
    for w, name, split, question in terms:
        g = results[(results.encoding == name) & (results.split == split) & (results.question == question)]
        if g.empty:
            raise ValueError(f"contrast: no results for ({name!r}, {split!r}, {question!r})")
        x = g.pivot_table(index="seed", columns="item", values="correct").to_numpy(dtype=np.float64)
        mats.append((float(w), name, (split, question), x))
        for key, count, store in ((name, x.shape[0], seed_count), ((split, question), x.shape[1], item_count)):
            if store.setdefault(key, count) != count:
                raise ValueError(f"contrast: {key!r} has {count} and {store[key]} seeds/items in different terms")
    s_idx = {k: resample(rng, n, n_boot) for k, n in seed_count.items()}
    i_idx = {k: resample(rng, n, n_boot) for k, n in item_count.items()}
    point, boots = 0.0, np.zeros(n_boot)
    for w, name, key, x in mats:
        point += w * x.mean()
        for lo in range(0, n_boot, 256):  # (seeds, chunk, items) at a time keeps memory small
            item_means = x[:, i_idx[key][lo:lo + 256]].mean(axis=2)  # (seeds, chunk)
            boots[lo:lo + 256] += w * np.take_along_axis(item_means, s_idx[name][lo:lo + 256].T, axis=0).mean(axis=0)
    n = sum(x.size for *_, x in mats)
    return Estimate(float(point), *percentile_interval(boots, alpha), int(n))

LEARNED_APE_INIT_STD = 0.02  # spatialkit.models.posenc.LearnedAPE draws its table as randn * 0.02


class WhereClassifier(nn.Module):
    """ViTEncoder + mean pool + linear: 4 relative logits and 4 absolute logits."""

    def __init__(self, posenc: str, *, image_size: int = 32, patch_size: int = 4, dim: int = 32, depth: int = 2,
                 n_heads: int = 2, theta: float = 100.0, ape_std: float | None = None):
        super().__init__()
        if posenc not in pe_mod.ENCODINGS:
            raise ValueError(f"posenc must be one of {list(pe_mod.ENCODINGS)}, got {posenc!r}")
        if ape_std is not None:
            check_number("ape_std", ape_std, 0, 100, low_open=True, note="init std of the learned APE")
            if posenc != "learned":
                raise ValueError(f"parameter 'ape_std' = {ape_std!r} is invalid with posenc {posenc!r}; allowed: None "
                                 "(ape_std scales the learned APE only)")
        self.vit = ViTEncoder(image_size=image_size, patch_size=patch_size, dim=dim, depth=depth,
                              n_heads=n_heads, posenc=posenc)
        if posenc in pe_mod.ROTARY:  # same kind, but with this experiment's theta (small grids need a small one)
            self.vit.pe = pe_mod.build(posenc, dim=dim, head_dim=dim // n_heads, n_heads=n_heads,
                                       grid=self.vit.grid, theta=theta)
        if ape_std is not None:  # the learned table's init scale: how loud the position code starts
            with torch.no_grad():  # rescale the drawn init (randn * 0.02): same directions and random stream,
                self.vit.pe.table.mul_(ape_std / LEARNED_APE_INIT_STD)  # so std 0.02 is the default model exactly
        self.posenc = posenc
        self.head = nn.Linear(dim, len(RELATIVE_LABELS) + len(ABSOLUTE_LABELS))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """ViTEncoder's forward at the grid the image gives (the stock forward is tied to its build grid)."""
        vit = self.vit
        x = vit.patch_embed(pixels)  # (B, d, h, w)
        grid = tuple(x.shape[-2:])
        x = vit.pe.add(x.flatten(2).transpose(1, 2), grid)
        positions = pe_mod.grid_positions(*grid).to(x.device) if vit.rotary else None
        for block in vit.blocks:
            x = block(x, vit.pe, positions, grid=grid)
        return vit.ln_f(x)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.encode(pixels).mean(dim=1))
        return logits[:, : len(RELATIVE_LABELS)], logits[:, len(RELATIVE_LABELS):]


def train_where(posenc: str, train: WhereSet, *, seed: int, steps: int = 300, batch_size: int = 64,
                lr: float = 3e-3, device: str = "cpu", **model_kw) -> tuple[WhereClassifier, list[float]]:
    """Train one classifier; the same seed gives the same initialisation and batch order on CPU."""
    check_number("steps", steps, 1, None, int)
    check_number("batch_size", batch_size, 1, None, int)
    torch.manual_seed(seed)
    model = WhereClassifier(posenc, image_size=train.grid_size, **model_kw).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    # one-cycle: 10 % warm-up (at least 2 steps, which OneCycleLR needs), then anneal; constant for tiny runs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 2 / steps)) \
        if steps >= 10 else None
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train), (batch_size,), generator=gen)
        rel_logits, abs_logits = model(train.images[idx].to(device))
        loss = F.cross_entropy(rel_logits, train.relative[idx].to(device), ignore_index=-1) + \
            F.cross_entropy(abs_logits, train.absolute[idx].to(device), ignore_index=-1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


@torch.no_grad()
def evaluate_where(model: WhereClassifier, data: WhereSet, *, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per-item correctness (0/1 float arrays) for the items that have a relative / absolute question."""
    device = next(model.parameters()).device
    rel_pred, abs_pred = [], []
    for i in range(0, len(data), batch_size):
        r, a = model(data.images[i:i + batch_size].to(device))
        rel_pred.append(r.argmax(-1).cpu())
        abs_pred.append(a.argmax(-1).cpu())
    rel_pred, abs_pred = torch.cat(rel_pred), torch.cat(abs_pred)
    out = {}
    for name, pred, gold in (("relative", rel_pred, data.relative), ("absolute", abs_pred, data.absolute)):
        keep = gold >= 0
        out[name] = (pred[keep] == gold[keep]).float().numpy()
    return out


def compare_encodings(encodings, data: dict[str, WhereSet], *, seeds, progress: bool = True, **train_kw):
    """Train every (encoding, seed) on ``data["train"]`` with the same budget; test on every other split.

    Returns (per-item results DataFrame, {(encoding, seed): model}). The frame has one row per
    (encoding, seed, split, question, item) with the gold label index and 0/1 ``correct``.
    """

    for name in encodings:
        if name not in pe_mod.ENCODINGS:
            raise ValueError(f"encodings: unknown name {name!r}; allowed: {list(pe_mod.ENCODINGS)}")
    rows, models = [], {}
    jobs = [(name, s) for name in encodings for s in seeds]
    for name, s in tqdm(jobs, desc="training", disable=not progress):
        model, _ = train_where(name, data["train"], seed=s, **train_kw)
        models[(name, s)] = model
        for split, subset in data.items():
            if split == "train":
                continue
            results = evaluate_where(model, subset)
            for question, labels in (("relative", subset.relative), ("absolute", subset.absolute)):
                gold = labels[labels >= 0].numpy()
                rows.append(pd.DataFrame({"encoding": name, "seed": s, "split": split, "question": question,
                                          "item": np.arange(gold.size), "gold": gold,
                                          "correct": results[question]}))
    return pd.concat(rows, ignore_index=True), models


def accuracy_table(results, *, by=("encoding", "split", "question"), seed: int = 0, n_boot: int = 1000):
    """Mean accuracy with the seed-and-item bootstrap CI for every group of ``results`` rows."""

    out = []
    for key, group in results.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        table = group.pivot_table(index="seed", columns=["question", "item"] if "question" not in by else "item",
                                  values="correct")
        est = seed_item_bootstrap(table.to_numpy(), seed=seed, n_boot=n_boot)
        out.append(dict(zip(by, key), accuracy=est.mean, low=est.low, high=est.high, n=est.n, estimate=est))
    return pd.DataFrame(out)


def shuffle_patches(images: torch.Tensor, patch_size: int, generator: torch.Generator) -> torch.Tensor:
    """The same images with their patch_size x patch_size blocks in a random order (one order per call)."""
    b, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    blocks = images.reshape(b, c, gh, patch_size, gw, patch_size).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, patch_size, patch_size)
    blocks = blocks[:, torch.randperm(gh * gw, generator=generator)]
    return blocks.reshape(b, gh, gw, c, patch_size, patch_size).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@torch.no_grad()
def predictions(model: WhereClassifier, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax (relative, absolute) answers for a stack of images."""
    device = next(model.parameters()).device
    rel, ab = [], []
    for i in range(0, images.shape[0], batch_size):
        r, a = model(images[i:i + batch_size].to(device))
        rel.append(r.argmax(-1).cpu())
        ab.append(a.argmax(-1).cpu())
    return torch.cat(rel), torch.cat(ab)
