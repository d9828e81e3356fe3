"""A linear "where" probe of a frozen vision encoder: does its patch output say where each object is?

    out = probe_where(features, scenes, kinds, train=train_idx, test=test_idx, seed=0)
    out["point_hit"].mean(), out["relation_correct"].mean()      # per test object / per test pair, 0/1

``features`` (S, P, d) are an encoder's final patch tokens of S scenes (P = g * g patches in raster order,
patch side = image side / g, which need not be a whole number of pixels: a VLM's processor may resize the
scene); ``scenes`` the ``spatialkit.world.Scene`` objects they show (boxes and the visible-pixel ``instance``
map). Any VLM's own visual tokens (those its LM receives, per image with their grid) come from
:func:`visual_patch_features`::

    feats, grid = visual_patch_features(vlm, [s.image for s in scenes], size=224)
    out = probe_where(feats, scenes, kinds, train=train_idx, test=test_idx)

One linear layer (multinomial logistic regression, L2-regularised, fitted full-batch with L-BFGS on
standardised features) is trained on the **train** scenes' patches to name what each patch shows: background
or one of ``kinds`` (the label of a patch is the majority of its pixels in the ``instance`` map). The frozen
encoder is never touched. Read out on the **test** scenes:

* ``patch_correct`` (per test patch): the probe's label is right;
* ``point_hit`` (per object whose kind occurs once in its scene): "where is the {kind}?" answered by the patch
  with the highest probability of that kind -- a hit when that patch's centre lies inside the object's box.
  ``point_chance`` is the same for a patch drawn uniformly (the share of patch centres inside the box);
* ``relation_correct`` (per ordered pair of distinct-kind objects with an unambiguous 2D relation,
  ``spatialkit.world.relation_2d``): each kind's location is the probability-weighted mean patch centre (its
  probabilities renormalised over the patches); the predicted relation of A to B is the dominant axis of the
  offset and its sign (left of / right of / above / below), compared with the gold one. Chance is 1/4.

An encoder whose every patch carries the whole image's content ("there is a car", as a globally pooled
objective teaches) gives every patch the same kind probabilities: the pointer lands anywhere and the
relation is a coin toss, whatever the encoder knows about *what* is there.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from spatialkit.models.vlm import VLM
from spatialkit.world import relation_2d, relation_depth

RELATIONS = ("left of", "right of", "above", "below")


def patch_labels(scenes: Sequence, kinds: Sequence[str], grid: int) -> np.ndarray:
    """(S, g*g) int: per patch 0 = background or 1 + index in ``kinds`` of the object covering most of its
    pixels (majority vote over the patch's pixels of each scene's visible ``instance`` map; ties go to the lower
    label). Pixel (y, x) of an n-px scene lies in patch (floor(y g / n), floor(x g / n)): when g does not divide
    n, patches are a pixel wider or narrower, as when a processor resizes the scene to g whole patches."""
    kinds = list(kinds)
    out = np.zeros((len(scenes), grid * grid), dtype=np.int64)
    for s, scene in enumerate(scenes):
        inst = np.asarray(scene.instance).astype(np.int64)
        size = inst.shape[0]
        if inst.shape != (size, size) or size < grid:
            raise ValueError(f"scene {s}: the instance map must be square and at least {grid} px, got {inst.shape}")
        n_values = len(scene.objects) + 1
        label = np.zeros(n_values, dtype=np.int64)
        label[1:] = [1 + kinds.index(o.kind) for o in scene.objects]
        cell = np.arange(size) * grid // size  # patch row (= column) of each pixel row (column)
        patch = (cell[:, None] * grid + cell[None, :]).reshape(-1)
        counts = np.bincount(patch * n_values + inst.reshape(-1), minlength=grid * grid * n_values)
        out[s] = label[counts.reshape(grid * grid, n_values).argmax(1)]
    return out


def _enlarged(image, size: int | None) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"images must be HxWx3 arrays or RGB PIL images, got shape {array.shape}")
    if size is None or array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array.astype(np.uint8)).resize((size, size), Image.NEAREST))


def _visual_batches(vlm: VLM, images: Sequence, index: Sequence[int], size: int | None, batch_size: int,
                    prompt: str, desc: str | None):
    """Yield (image index, (h, w), tokens (h*w, d) on the model's device) for ``images[index]``, in order."""
    index = list(index)
    starts = range(0, len(index), batch_size)
    if desc is not None:
        from tqdm.auto import tqdm  # only when a progress bar is asked for

        starts = tqdm(starts, desc=desc, leave=False)
    for start in starts:
        chunk = index[start:start + batch_size]
        part = [_enlarged(images[i], size) for i in chunk]
        tokens = vlm.visual_tokens(vlm.prepare(part, [prompt] * len(part)))
        for i, g, t in zip(chunk, tokens.grids, tokens.per_image()):
            yield i, (int(g[0]), int(g[1])), t.detach()


def _pca_basis(vlm: VLM, images: Sequence, index: Sequence[int], dims: int, size, batch_size: int, prompt: str,
               desc: str | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(mean (d,), components (d, dims)) of the visual tokens of ``images[index]`` (float64 sums of x and x xᵀ
    accumulated batch by batch on the model's device), or None when the width d is at most ``dims``."""
    total = outer = None
    count = 0
    for _, _, t in _visual_batches(vlm, images, index, size, batch_size, prompt, desc):
        if total is None:
            if t.shape[-1] <= dims:
                return None
            total = torch.zeros(t.shape[-1], dtype=torch.float64, device=t.device)
            outer = torch.zeros(t.shape[-1], t.shape[-1], dtype=torch.float64, device=t.device)
        x = t.double()
        total += x.sum(0)
        outer += x.T @ x
        count += x.shape[0]
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
    return mean, vectors[:, -dims:].flip(-1).contiguous()  # the top ``dims`` directions, largest first


@torch.no_grad()
def visual_patch_features(vlm: VLM, images: Sequence, *, size: int | None = None, batch_size: int = 8,
                          prompt: str = "Describe the image.", progress: bool = False, dims: int | None = None,
                          fit_on: Sequence[int] | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
    """Any VLM's own visual tokens per image, as its LM receives them: ``(features, (h, w))``.

    ``features`` (S, h*w, d) float32 on the CPU, raster order, from :meth:`VLM.visual_tokens` (after the vision
    tower and its projector/merger, through any active ``visual_hook``; extra per-token levels such as
    Qwen3-VL's DeepStack features are not included). ``images``: HxWx3 uint8 arrays or PIL images, enlarged
    first to ``size`` x ``size`` pixels by nearest neighbour when ``size`` is given (the scene's geometry is
    unchanged, so :func:`probe_where` reads it with the scene's own boxes and instance map; the model's
    processor may resize again). ``prompt`` is only the text the model's input format needs beside the image.
    Every image must give the same grid (a ValueError names the first that does not).

    **Bounded memory** (``dims``): a real VLM's tokens are wide (LLaVA-1.5-7B: 576 tokens x 4096 per image, so
    2,000 scenes take 19 GB in float32 and the probe's float64 fit several times that). With ``dims`` given and
    smaller than the width d, each token is reduced to its first ``dims`` principal components before it is
    stored: a PCA fitted on the tokens of ``images[fit_on]`` (default: all; pass the probe's training scenes, so
    nothing of the test scenes enters the fit), from float64 sums of x and x xᵀ accumulated batch by batch on the
    model's device, then a second pass projects every image's centred tokens, batch by batch, before they reach
    the CPU. The stored features are then (S, h*w, dims) and at most one batch of full-width tokens exists at a
    time (plus the d x d sums on the device). A linear probe on the top principal components is the full probe
    restricted to the directions where the tokens vary most; on a tiny LLaVA (64 wide) the probe's patch accuracy
    on 32 components is 1.4 points from the full width's (tests/test_where_probe_vlm.py allows 3). When
    d <= ``dims`` nothing is reduced: the features, and the probe's answer, are exactly the unbounded ones.
    """
    if len(images) == 0:
        raise ValueError("images must hold at least one image")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
        raise ValueError(f"dims must be None or an int >= 1, got {dims!r}")
    desc = f"visual tokens of {vlm.name}" if progress else None
    basis = None
    if dims is not None:
        fit_on = range(len(images)) if fit_on is None else list(fit_on)
        if len(fit_on) == 0 or not all(0 <= int(i) < len(images) for i in fit_on):
            raise ValueError(f"fit_on must hold image indices in [0, {len(images)}), got {fit_on!r}")
        basis = _pca_basis(vlm, images, fit_on, dims, size, batch_size, prompt,
                           None if desc is None else f"PCA of the visual tokens of {vlm.name}")
    out, grid = None, None  # filled in place: a real VLM's tokens of a few thousand scenes take gigabytes
    for i, g, t in _visual_batches(vlm, images, range(len(images)), size, batch_size, prompt, desc):
        if basis is not None:
            t = (t.double() - basis[0]) @ basis[1]
        if grid is None:
            grid = g
            out = torch.empty((len(images), g[0] * g[1], t.shape[-1]), dtype=torch.float32)
        elif g != grid:
            raise ValueError(f"image {i} gives a {g[0]}x{g[1]} grid of visual tokens, image 0 a "
                             f"{grid[0]}x{grid[1]} one: give images of one size")
        out[i] = t.float().cpu()
    return out, grid


def fit_linear_probe(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, l2: float = 1e-3, max_iter: int = 200,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression on ``x`` (n, d) -> (weight (C, d), bias (C,), mean, std): features are
    standardised with the training mean/std, the loss is mean cross-entropy + ``l2`` * |W|^2, minimised with
    full-batch L-BFGS from zero (deterministic: ``seed`` only seeds torch around the fit)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        opt.step(closure)
    return w.detach(), b.detach(), mean, std


def _relation_of(dx: float, dy: float) -> str:
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def probe_where(features: torch.Tensor | np.ndarray, scenes: Sequence, kinds: Sequence[str], *,
                train: Sequence[int], test: Sequence[int], l2: float = 1e-3, max_iter: int = 200,
                seed: int = 0) -> dict:
    """Fit the patch probe on ``train`` scenes, read it out on ``test`` scenes (module docstring).

    Returns per-item 0/1 arrays ``patch_correct``, ``point_hit``, ``relation_correct``, the matching
    ``point_chance`` (per object) and ``patch_majority`` (per test patch: the most frequent training label
    is right), plus ``train_patch_accuracy`` (float) and ``probs`` (test scenes, P, 1 + n_kinds).
    """
    feats = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features).float()
    if feats.dim() != 3 or feats.shape[0] != len(scenes):
        raise ValueError(f"features must be (n_scenes={len(scenes)}, P, d), got {tuple(feats.shape)}")
    n_patches = feats.shape[1]
    grid = int(round(n_patches ** 0.5))
    if grid * grid != n_patches:
        raise ValueError(f"{n_patches} patches are not a square grid")
    train, test = list(train), list(test)
    if not train or not test or set(train) & set(test):
        raise ValueError("train and test must be non-empty and disjoint scene indices")
    kinds = list(kinds)
    n_classes = 1 + len(kinds)
    labels = patch_labels(scenes, kinds, grid)
    y_train = torch.from_numpy(labels[train].reshape(-1))
    w, b, mean, std = fit_linear_probe(feats[train].reshape(-1, feats.shape[2]), y_train, n_classes, l2=l2,
                                       max_iter=max_iter, seed=seed)

    def predict(index):
        z = (feats[index].double() - mean) / std
        return (z @ w.T + b).softmax(-1).float()  # (n, P, C)

    train_acc = float((predict(train).argmax(-1).reshape(-1) == y_train).float().mean())
    probs = predict(test)
    majority = int(np.bincount(labels[train].reshape(-1), minlength=n_classes).argmax())
    patch_correct = (probs.argmax(-1).numpy() == labels[test]).astype(float).reshape(-1)
    patch_majority = (labels[test] == majority).astype(float).reshape(-1)

    size = np.asarray(scenes[test[0]].instance).shape[0]
    step = size / grid
    centres = (np.arange(grid) + 0.5) * step
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx.reshape(-1), cy.reshape(-1)  # raster order, like the patches
    hits, chance, relations = [], [], []
    for row, s in enumerate(test):
        scene = scenes[s]
        kinds_here = [o.kind for o in scene.objects]
        unique = [i for i, o in enumerate(scene.objects) if kinds_here.count(o.kind) == 1]
        where = {}
        for i in unique:
            o = scene.objects[i]
            p = probs[row, :, 1 + kinds.index(o.kind)].double().numpy()
            x0, y0, x1, y1 = o.box
            inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
            hits.append(float(inside[int(p.argmax())]))
            chance.append(float(inside.mean()))
            weights = p / max(p.sum(), 1e-12)
            where[i] = (float(weights @ cx), float(weights @ cy))
        for i in unique:
            for j in unique:
                if i == j:
                    continue
                gold = relation_2d(scene.objects[i], scene.objects[j])
                if gold is None:
                    continue
                dx, dy = where[i][0] - where[j][0], where[i][1] - where[j][1]
                relations.append(float(_relation_of(dx, dy) == gold))
    return {"patch_correct": patch_correct, "patch_majority": patch_majority, "point_hit": np.array(hits),
            "point_chance": np.array(chance), "relation_correct": np.array(relations),
            "train_patch_accuracy": train_acc, "probs": probs, "grid": grid}


def overlap_depth(maps: torch.Tensor | np.ndarray, scenes: Sequence, kinds: Sequence[str],
                  index: Sequence[int]) -> np.ndarray:
    """Front/behind read off a patch map, per pair: 1 right, 0 wrong, 0.5 a tie (a coin's expected score).

    ``maps`` holds one row per scene of ``index`` (``scenes[index[r]]`` is row r): either class probabilities
    (n, P, 1 + n_kinds), such as :func:`probe_where`'s ``probs``, or class labels (n, P), such as
    :func:`patch_labels` (the true majority-visible label of each patch: what the patch grid itself can carry).
    Each pair of objects of distinct kinds whose front/behind the world states (``relation_depth``) and whose
    boxes share at least one patch centre is read on those shared patches: the object whose kind has more
    probability (or more patches) there is called the nearer one, since an occluder is what such a patch
    shows. Pairs without a shared patch centre are left out.

    Why: when a frozen encoder's patches are coarse next to the objects, the overlap of an occluding pair
    covers a patch or two, and whatever reads front/behind downstream (a probe, an LM) can only use what those
    patches show. Reading the true labels the same way gives the grid's own limit.
    """
    maps = torch.as_tensor(np.asarray(maps) if not isinstance(maps, torch.Tensor) else maps)
    index, kinds = list(index), list(kinds)
    if not index:
        raise ValueError("index must hold at least one scene index")
    if maps.dim() not in (2, 3) or maps.shape[0] != len(index):
        raise ValueError(f"maps must be (len(index)={len(index)}, P[, C]), got {tuple(maps.shape)}")
    if maps.dim() == 3 and maps.shape[2] != 1 + len(kinds):
        raise ValueError(f"maps holds {maps.shape[2]} classes per patch; background + {len(kinds)} kinds are "
                         f"{1 + len(kinds)}")
    if not all(0 <= int(i) < len(scenes) for i in index):
        raise ValueError(f"index must hold scene indices in [0, {len(scenes)})")
    grid = int(round(maps.shape[1] ** 0.5))
    if grid * grid != maps.shape[1]:
        raise ValueError(f"{maps.shape[1]} patches are not a square grid")
    size = np.asarray(scenes[index[0]].instance).shape[0]
    centres = (np.arange(grid) + 0.5) * size / grid
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx.reshape(-1), cy.reshape(-1)

    def inside(o):
        x0, y0, x1, y1 = o.box
        return (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)

    out = []
    for row, s in enumerate(index):
        scene, m = scenes[s], maps[row].double().numpy()
        for i in range(len(scene.objects)):
            for j in range(i + 1, len(scene.objects)):
                a, b = scene.objects[i], scene.objects[j]
                gold = relation_depth(scene, i, j)
                shared = inside(a) & inside(b)
                if a.kind == b.kind or gold is None or not shared.any():
                    continue
                ka, kb = 1 + kinds.index(a.kind), 1 + kinds.index(b.kind)
                if maps.dim() == 3:
                    mass_a, mass_b = m[shared, ka].sum(), m[shared, kb].sum()
                else:
                    mass_a, mass_b = (m[shared] == ka).sum(), (m[shared] == kb).sum()
                if mass_a == mass_b:
                    out.append(0.5)
                else:
                    out.append(float((mass_a > mass_b) == (gold == "in front of")))
    return np.array(out, dtype=float)
