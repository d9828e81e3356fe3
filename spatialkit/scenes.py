"""The spatial-scene world: procedural scenes, what/where questions, WhereBench, WhatsUp files.

No image data set can be downloaded here, so spatialkit draws its own. Everything is a pure function
of a seed (``np.random.default_rng(seed)``, never a global RNG) and every pixel is rasterised in
NumPy with elementary float operations (no fonts, no anti-aliasing, no PIL drawing), so the same
seed gives byte-identical images and questions on any machine.

Scene model
-----------
Objects are sprites (``KINDS``) with a colour (``COLORS``) and, for chicks and ducks, an optional
accessory (``ACCESSORIES``: the blog's "purple ribbon" and "blue bonnet"). Each object gets a depth
value; the depth rank (0 = nearest) sets the draw order, so nearer objects really hide farther
ones. With ``SceneConfig.ground`` the scene is a ground plane seen from the front: nearer objects are
also larger (``depth_scale``) and stand lower in the image, so "in front of"/"behind" are visible
from size, height and occlusion. Ground truth per object: kind, colour, full box, visible mask
(``Scene.mask``), depth rank; ``Scene.instance`` is the visible-object id map.

Relations (only asked where the geometry is unambiguous)
--------------------------------------------------------
Let ``c(A)`` be the centre of A's full box, ``d = c(A) - c(B)`` and ``s`` the mean side of the two
boxes. **Margin rule** (``relation_2d``): A is *left of* B iff ``d.x <= -margin*s`` and
``|d.x| >= dominance*|d.y|``; *right of*, *above* (image y grows downwards) and *below* are the
same rule along the other sign/axis. Otherwise the pair has no 2D relation and no where-question is
generated for it. Defaults: ``margin = 0.25``, ``dominance = 1.5``.

**Depth rule** (``relation_depth``): A is *in front of* B iff A's depth rank is smaller and the depth
is visible: either A hides at least ``min_hidden`` (10 %) of B's full silhouette (occlusion), or
(ground-plane scenes only) A's bottom edge is lower than B's by at least ``margin*s`` and A is not
smaller than B (perspective). Otherwise no depth question is generated.

**One-object rule** (``where_in_image``): with ``d = c(A) - image centre`` and ``H`` the image side,
the answer is "left"/"right"/"top"/"bottom" iff ``|d| >= where_margin*H`` on the dominant axis and
that axis dominates the other by ``dominance``; otherwise no question.

Questions and exact option strings
----------------------------------
Every question is multiple choice; ``Question.answer`` is the index of the gold option, and
``make_questions`` shuffles the option order with the caller's RNG.

========== ============================================== ===============================================
task       text                                           options
========== ============================================== ===============================================
presence   "Is there a {kind} in the image?"              "yes", "no"
identity   "Which object is in the image?"                4 kind names (1 present, 3 absent)
color      "What color is the {ref}?"                     4 colour names (``COLORS`` keys)
count      "How many objects are in the image?"           4 consecutive numbers as digits, e.g. "2"
where_one  "Where is the {ref} in the image?"             "left", "right", "top", "bottom"
where_two  "Where is the {ref A} relative to the {ref B}?" "left", "right", "above", "below"
depth      "Is the {ref A} in front of or behind the {ref B}?"  "in front", "behind"
========== ============================================== ===============================================

``Question.relation`` holds the full relation ("left of", "right of", "above", "below",
"in front of", "behind"; for where_one the option word itself); ``ANSWER_WORD`` maps relation →
option word. ``{ref}`` is the kind name ("dog house" for ``doghouse``), with the colour and then the
accessory added only when needed to single the object out ("the chick with the purple ribbon").

Distractors (``SceneConfig.distractors``) are small pebbles and flowers painted on the background:
they are not objects, never counted and never asked about.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

KINDS = ("chick", "cup", "ball", "duck", "box", "tree", "car", "doghouse", "ring")
NAMES = {k: ("dog house" if k == "doghouse" else k) for k in KINDS}  # how a kind is written in text
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (245, 210, 40),
    "purple": (150, 60, 190),
    "orange": (250, 140, 30),
    "white": (240, 240, 240),
    "brown": (130, 80, 40),
}
ACCESSORIES = ("purple ribbon", "blue bonnet")
WEARS_ACCESSORIES = ("chick", "duck")  # kinds with a head to put a ribbon/bonnet on
BACKGROUNDS = ("gray", "cream", "slate", "sky", "dusk", "wood", "tiles", "speckle")
PLAIN_BACKGROUNDS = ("gray", "cream", "slate")

RELATIONS_2D = ("left of", "right of", "above", "below")
RELATIONS_DEPTH = ("in front of", "behind")
RELATIONS_ONE = ("left", "right", "top", "bottom")  # one-object "where is the X in the image"
ANSWER_WORD = {
    "left of": "left", "right of": "right", "above": "above", "below": "below",
    "in front of": "in front", "behind": "behind",
    "left": "left", "right": "right", "top": "top", "bottom": "bottom",
}
WHERE_TWO_OPTIONS = ("left", "right", "above", "below")
WHERE_ONE_OPTIONS = RELATIONS_ONE
DEPTH_OPTIONS = ("in front", "behind")
TASKS = ("presence", "identity", "color", "count", "where_one", "where_two", "depth")
FAMILY = {"presence": "what", "identity": "what", "color": "what", "count": "what",
          "where_one": "where", "where_two": "where", "depth": "where"}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
            "in front of": "behind", "behind": "in front of"}


# ------------------------------------------------------------------------------------------------
# Configuration
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. Every field has a default; bad values raise ``ValueError`` naming the field.

    Sizes are fractions of the image side. ``min_size``/``max_size`` bound the height of the nearest
    object; an object at depth value z (0 near .. 1 far) is ``1 - depth_scale*z`` times that.
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 3
    kinds: tuple[str, ...] = KINDS
    colors: tuple[str, ...] = tuple(COLORS)
    distractors: int = 0
    occlusion: bool = True           # allow overlaps (nearer hides farther); False: boxes never touch
    backgrounds: tuple[str, ...] = BACKGROUNDS
    ground: bool = True              # perspective ground plane: nearer = larger and lower
    min_size: float = 0.28
    max_size: float = 0.42
    depth_scale: float = 0.4
    accessory_prob: float = 0.3
    min_visible: float = 0.4         # every object keeps at least this fraction of its pixels visible
    margin: float = 0.25             # relation margin, in units of the mean object side
    dominance: float = 1.5           # the relation axis must dominate the other by this factor
    where_margin: float = 0.15       # one-object rule, in units of the image side
    min_hidden: float = 0.1          # occlusion evidence for depth questions
    unique_kinds: bool = True        # no two objects of one kind, so "the cup" is always unambiguous

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> None:
            raise ValueError(f"SceneConfig.{name} = {getattr(self, name)!r} is invalid; allowed: {allowed}")

        def is_int(v: object) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        def subset(name: str, universe: Sequence[str]) -> None:
            value = getattr(self, name)
            if isinstance(value, str) or not value or any(v not in universe for v in value) \
                    or len(set(value)) != len(value):
                bad(name, f"a non-empty tuple of distinct names from {list(universe)}")

        if not is_int(self.image_size) or not 16 <= self.image_size <= 1024:
            bad("image_size", "int in [16, 1024]")
        subset("kinds", KINDS)
        subset("colors", tuple(COLORS))
        subset("backgrounds", BACKGROUNDS)
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "colors", tuple(self.colors))
        object.__setattr__(self, "backgrounds", tuple(self.backgrounds))
        limit = len(self.kinds) if self.unique_kinds else 12
        if not is_int(self.min_objects) or not 1 <= self.min_objects <= limit:
            bad("min_objects", f"int in [1, {limit}] (at most the number of kinds when unique_kinds)")
        if not is_int(self.max_objects) or not self.min_objects <= self.max_objects <= limit:
            bad("max_objects", f"int in [min_objects={self.min_objects}, {limit}]")
        if not is_int(self.distractors) or not 0 <= self.distractors <= 20:
            bad("distractors", "int in [0, 20]")
        for name in ("occlusion", "ground", "unique_kinds"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "True or False")
        ranges = {"min_size": (0.05, 0.9), "max_size": (self.min_size, 0.9), "depth_scale": (0.0, 0.8),
                  "accessory_prob": (0.0, 1.0), "min_visible": (0.05, 1.0), "margin": (0.0, 5.0),
                  "dominance": (1.0, 10.0), "where_margin": (0.0, 0.45), "min_hidden": (0.01, 0.9)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                bad(name, f"number in [{low:g}, {high:g}]")


PRESETS: dict[str, SceneConfig] = {
    # Easy world for training a tiny VLM fast: two well-separated objects, plain backgrounds, no
    # perspective (so above/below is as frequent as left/right), no accessories.
    "organism": SceneConfig(image_size=48, min_objects=2, max_objects=2, occlusion=False, ground=False,
                            backgrounds=PLAIN_BACKGROUNDS, min_size=0.3, max_size=0.4, depth_scale=0.0,
                            accessory_prob=0.0),
    # Easier organism world for the quick/default tiny VLMs (issue 3's learning bars): 5 visually distinct
    # kinds x 4 saturated colours, larger sprites, one plain background. 5 kinds is the fewest that keeps the
    # identity question (it needs 3 absent kinds as distractors with 2 objects).
    "organism_easy": SceneConfig(image_size=48, min_objects=2, max_objects=2, kinds=("ball", "box", "tree", "car", "cup"),
                                 colors=("red", "green", "blue", "yellow"), occlusion=False, ground=False,
                                 backgrounds=("gray",), min_size=0.36, max_size=0.44, depth_scale=0.0,
                                 accessory_prob=0.0),
    # The book's world: 2-3 objects with occlusion and perspective, all backgrounds, some clutter.
    "book": SceneConfig(image_size=128, min_objects=2, max_objects=3, distractors=2),
    # Free 2D layout with occlusion: depth only from draw order, for 2D-vs-depth comparisons.
    "flat": SceneConfig(image_size=64, min_objects=2, max_objects=3, ground=False, depth_scale=0.0),
}


# ------------------------------------------------------------------------------------------------
# Sprites: each kind is a list of primitives in unit box coordinates (u right, v down), painted in
# order. Roles name a colour slot; "body" is the object's colour.
# ------------------------------------------------------------------------------------------------

ROLES = ("body", "shade", "light", "dark", "beak", "white", "window", "wheel", "trunk",
         "ribbon", "bonnet", "outline")
_ROLE = {r: i for i, r in enumerate(ROLES)}
_FIXED_ROLE_RGB = {
    "dark": (30, 30, 30), "beak": (235, 120, 10), "white": (245, 245, 245), "window": (170, 215, 240),
    "wheel": (45, 45, 45), "trunk": (105, 65, 30), "ribbon": (150, 60, 190), "bonnet": (50, 90, 230),
    "outline": (20, 20, 20),
}
ASPECT = {"chick": 0.9, "cup": 1.15, "ball": 1.0, "duck": 1.35, "box": 1.0, "tree": 0.8,
          "car": 1.8, "doghouse": 1.0, "ring": 0.95}
_HEAD = {"chick": (0.56, 0.36, 0.23), "duck": (0.72, 0.32, 0.17)}  # (u, v, radius) of the head


def _sprite(kind: str) -> list[tuple]:
    E, P, R, A, H = "ellipse", "poly", "rect", "annulus", "halfellipse"
    if kind == "chick":
        return [(R, 0.36, 0.86, 0.42, 1.0, "beak"), (R, 0.56, 0.86, 0.62, 1.0, "beak"),
                (E, 0.48, 0.66, 0.42, 0.29, "body"), (E, 0.56, 0.36, 0.23, 0.23, "body"),
                (E, 0.38, 0.68, 0.2, 0.13, "shade"), (P, ((0.5, 0.15), (0.56, 0.06), (0.6, 0.15)), "shade"),
                (E, 0.64, 0.32, 0.045, 0.05, "dark"), (P, ((0.76, 0.33), (0.96, 0.39), (0.76, 0.45)), "beak")]
    if kind == "duck":
        return [(P, ((0.02, 0.42), (0.22, 0.58), (0.1, 0.72)), "body"),
                (E, 0.45, 0.7, 0.42, 0.25, "body"), (R, 0.64, 0.36, 0.78, 0.62, "body"),
                (E, 0.72, 0.32, 0.17, 0.17, "body"), (E, 0.43, 0.66, 0.24, 0.12, "shade"),
                (E, 0.76, 0.28, 0.035, 0.045, "dark"), (E, 0.9, 0.37, 0.1, 0.05, "beak")]
    if kind == "cup":
        return [(A, 0.79, 0.5, 0.19, 0.22, 0.55, "body"),
                (P, ((0.05, 0.12), (0.73, 0.12), (0.66, 0.96), (0.12, 0.96)), "body"),
                (E, 0.39, 0.13, 0.34, 0.08, "light"), (E, 0.39, 0.13, 0.28, 0.05, "shade"),
                (R, 0.13, 0.88, 0.65, 0.96, "shade")]
    if kind == "ball":
        return [(E, 0.5, 0.5, 0.49, 0.49, "body"), (E, 0.5, 0.5, 0.49, 0.12, "white"),
                (E, 0.33, 0.27, 0.1, 0.07, "light")]
    if kind == "box":
        return [(R, 0.03, 0.3, 0.75, 0.98, "body"), (P, ((0.03, 0.3), (0.28, 0.03), (0.98, 0.03), (0.75, 0.3)), "light"),
                (P, ((0.75, 0.3), (0.98, 0.03), (0.98, 0.74), (0.75, 0.98)), "shade"),
                (R, 0.35, 0.3, 0.43, 0.98, "shade")]
    if kind == "tree":
        return [(R, 0.41, 0.58, 0.59, 1.0, "trunk"), (E, 0.5, 0.34, 0.4, 0.32, "body"),
                (E, 0.28, 0.52, 0.26, 0.18, "body"), (E, 0.72, 0.52, 0.26, 0.18, "body"),
                (E, 0.62, 0.3, 0.12, 0.1, "light"), (E, 0.35, 0.55, 0.12, 0.07, "shade")]
    if kind == "car":
        return [(P, ((0.22, 0.46), (0.33, 0.12), (0.7, 0.12), (0.83, 0.46)), "body"),
                (R, 0.02, 0.44, 0.98, 0.8, "body"),
                (P, ((0.3, 0.44), (0.37, 0.2), (0.49, 0.2), (0.49, 0.44)), "window"),
                (P, ((0.53, 0.44), (0.53, 0.2), (0.66, 0.2), (0.74, 0.44)), "window"),
                (E, 0.25, 0.79, 0.12, 0.21, "wheel"), (E, 0.75, 0.79, 0.12, 0.21, "wheel"),
                (E, 0.25, 0.79, 0.05, 0.09, "light"), (E, 0.75, 0.79, 0.05, 0.09, "light"),
                (R, 0.9, 0.5, 0.98, 0.58, "light")]
    if kind == "doghouse":
        return [(R, 0.12, 0.42, 0.88, 1.0, "body"), (P, ((0.0, 0.48), (0.5, 0.03), (1.0, 0.48)), "shade"),
                (R, 0.36, 0.68, 0.64, 1.0, "dark"), (E, 0.5, 0.68, 0.14, 0.13, "dark")]
    if kind == "ring":
        return [(A, 0.5, 0.6, 0.46, 0.38, 0.62, "body"),
                (P, ((0.5, 0.0), (0.64, 0.12), (0.5, 0.28), (0.36, 0.12)), "white"),
                (A, 0.5, 0.6, 0.46, 0.38, 0.9, "light")]
    raise ValueError(f"unknown kind {kind!r}; allowed: {list(KINDS)}")


def _accessory(kind: str, accessory: str) -> list[tuple]:
    hu, hv, hr = _HEAD[kind]
    if accessory == "purple ribbon":  # a bow under the head
        nv = hv + hr * 0.95
        return [("poly", ((hu - 0.2, nv - 0.08), (hu, nv), (hu - 0.2, nv + 0.08)), "ribbon"),
                ("poly", ((hu + 0.2, nv - 0.08), (hu, nv), (hu + 0.2, nv + 0.08)), "ribbon"),
                ("ellipse", hu, nv, 0.05, 0.05, "ribbon")]
    if accessory == "blue bonnet":  # a cap over the head with a brim
        return [("halfellipse", hu, hv - 0.04, hr * 1.15, hr * 1.05, "bonnet"),
                ("rect", hu - hr * 1.35, hv - 0.07, hu + hr * 1.35, hv - 0.01, "bonnet")]
    raise ValueError(f"unknown accessory {accessory!r}; allowed: {list(ACCESSORIES)}")


def _inside(prim: tuple, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of the pixel centres (u, v) inside one primitive."""
    shape = prim[0]
    if shape == "ellipse" or shape == "halfellipse" or shape == "annulus":
        cu, cv, ru, rv = prim[1:5]
        r2 = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2
        if shape == "ellipse":
            return r2 <= 1.0
        if shape == "halfellipse":
            return (r2 <= 1.0) & (v <= cv)
        return (r2 <= 1.0) & (r2 >= prim[5] ** 2)
    if shape == "rect":
        u0, v0, u1, v1 = prim[1:5]
        return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)
    if shape == "poly":  # convex polygon: inside every edge's half-plane (either orientation)
        pts = prim[1]
        area2 = sum(pts[i][0] * pts[i - 1][1] - pts[i - 1][0] * pts[i][1] for i in range(len(pts)))
        sign = 1.0 if area2 < 0 else -1.0
        inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
        for i in range(len(pts)):
            (x1, y1), (x2, y2) = pts[i - 1], pts[i]
            inside &= sign * ((x2 - x1) * (v - y1) - (y2 - y1) * (u - x1)) >= 0.0
        return inside
    raise ValueError(f"unknown primitive {shape!r}")


@functools.lru_cache(maxsize=8192)
def sprite_labels(kind: str, accessory: str | None, w: int, h: int, flip: bool) -> np.ndarray:
    """(h, w) int8 map of role ids (index into ``ROLES``), -1 where the sprite is transparent.

    Sprites of 14 px and more get a 1-pixel dark outline so they stand out on any background.
    Cached: a scene only pays for sizes it has not seen before. Treat the result as read-only.
    """
    u = ((np.arange(w) + 0.5) / w)[None, :]
    v = ((np.arange(h) + 0.5) / h)[:, None]
    labels = np.full((h, w), -1, dtype=np.int8)
    prims = _sprite(kind) + (_accessory(kind, accessory) if accessory else [])
    for prim in prims:
        labels[_inside(prim, u, v)] = _ROLE[prim[-1]]
    if min(w, h) >= 14:
        solid = labels >= 0
        core = solid.copy()
        core[1:, :] &= solid[:-1, :]
        core[:-1, :] &= solid[1:, :]
        core[:, 1:] &= solid[:, :-1]
        core[:, :-1] &= solid[:, 1:]
        core[0, :] = core[-1, :] = False
        core[:, 0] = core[:, -1] = False
        labels[solid & ~core] = _ROLE["outline"]
    if flip:
        labels = labels[:, ::-1]
    labels = np.ascontiguousarray(labels)
    labels.setflags(write=False)
    return labels


@functools.lru_cache(maxsize=64)
def _palette(color: str) -> np.ndarray:
    """(len(ROLES), 3) uint8 colours of the role slots for an object of ``color``."""
    base = np.array(COLORS[color], dtype=np.float64)
    rows = []
    for role in ROLES:
        if role == "body":
            rgb = base
        elif role == "shade":
            rgb = base * 0.65
        elif role == "light":
            rgb = base * 0.5 + 127.5
        elif role == "white" and color == "white":  # keep the ball's band / ring's gem visible
            rgb = base * 0.72
        else:
            rgb = np.array(_FIXED_ROLE_RGB[role], dtype=np.float64)
        rows.append(np.floor(rgb + 0.5))
    pal = np.array(rows, dtype=np.uint8)
    pal.setflags(write=False)
    return pal


# ------------------------------------------------------------------------------------------------
# Backgrounds and distractors
# ------------------------------------------------------------------------------------------------

def _lerp_rows(top: tuple, bottom: tuple, n: int) -> np.ndarray:
    t = (np.arange(n) / max(n - 1, 1))[:, None]
    return np.floor(np.array(top, float) * (1 - t) + np.array(bottom, float) * t + 0.5)


def _background(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n, 3) uint8 background (a fresh array). Textured ones draw from ``rng``; the others do not
    and are cached."""
    if name in ("wood", "speckle"):
        return _draw_background(name, n, rng)
    return _fixed_background(name, n).copy()


@functools.lru_cache(maxsize=64)
def _fixed_background(name: str, n: int) -> np.ndarray:
    img = _draw_background(name, n, None)
    img.setflags(write=False)
    return img


def _draw_background(name: str, n: int, rng: np.random.Generator | None) -> np.ndarray:
    img = np.empty((n, n, 3), dtype=np.uint8)
    if name in ("gray", "cream", "slate"):
        img[:] = {"gray": (160, 160, 160), "cream": (225, 215, 190), "slate": (85, 95, 110)}[name]
    elif name in ("sky", "dusk"):
        top, bottom = {"sky": ((150, 195, 235), (190, 200, 170)), "dusk": ((70, 60, 110), (175, 130, 120))}[name]
        img[:] = _lerp_rows(top, bottom, n)[:, None, :].astype(np.uint8)
    elif name == "wood":  # horizontal planks with grain, the blog's wooden table
        plank = max(n // 6, 2)
        rows = np.arange(n)
        shade = rng.integers(-18, 19, size=n // plank + 1)[rows // plank]
        grain = rng.integers(-6, 7, size=n)
        base = np.array((175, 125, 80)) + (shade + grain)[:, None]
        base[rows % plank == 0] -= 45  # gaps between planks
        img[:] = np.clip(base, 0, 255)[:, None, :].astype(np.uint8)
    elif name == "tiles":
        tile = max(n // 8, 2)
        ij = (np.arange(n) // tile)
        check = (ij[:, None] + ij[None, :]) % 2
        img[:] = np.where(check[:, :, None] == 1, np.array((200, 200, 195)), np.array((170, 175, 180))).astype(np.uint8)
    elif name == "speckle":
        noise = rng.integers(-14, 15, size=(n, n, 1))
        img[:] = np.clip(np.array((150, 170, 150)) + noise, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown background {name!r}; allowed: {list(BACKGROUNDS)}")
    return img


_DISTRACTOR_RGB = ((120, 120, 115), (95, 90, 85), (200, 190, 200), (150, 140, 110))


def _paint_distractors(img: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Small muted pebbles and four-petal flowers on the background (not objects)."""
    n = img.shape[0]
    for _ in range(count):
        size = max(int(rng.integers(max(n // 16, 2), max(n // 9, 3) + 1)), 2)
        x0, y0 = int(rng.integers(0, n - size + 1)), int(rng.integers(0, n - size + 1))
        u = ((np.arange(size) + 0.5) / size)[None, :]
        v = ((np.arange(size) + 0.5) / size)[:, None]
        if rng.random() < 0.5:
            shape = ((u - 0.5) / 0.5) ** 2 + ((v - 0.55) / 0.35) ** 2 <= 1.0
        else:
            shape = (((u - 0.5) / 0.18) ** 2 + ((v - 0.5) / 0.5) ** 2 <= 1.0) | \
                    (((u - 0.5) / 0.5) ** 2 + ((v - 0.5) / 0.18) ** 2 <= 1.0)
        rgb = np.array(_DISTRACTOR_RGB[int(rng.integers(0, len(_DISTRACTOR_RGB)))], dtype=np.uint8)
        img[y0:y0 + size, x0:x0 + size][shape] = rgb


# ------------------------------------------------------------------------------------------------
# Scenes
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SceneObject:
    kind: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive, full (unoccluded) extent
    depth: int                      # depth rank, 0 = nearest to the viewer (drawn last)
    accessory: str | None = None    # "purple ribbon" | "blue bonnet" | None
    flip: bool = False              # sprite mirrored (faces left)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2

    @property
    def size(self) -> float:
        """Mean side of the box: the unit of the relation margin."""
        x0, y0, x1, y1 = self.box
        return ((x1 - x0) + (y1 - y0)) / 2

    def silhouette(self) -> np.ndarray:
        """(h, w) bool: the full sprite shape inside ``box`` (visible or not)."""
        x0, y0, x1, y1 = self.box
        return sprite_labels(self.kind, self.accessory, x1 - x0, y1 - y0, self.flip) >= 0


@dataclass
class Scene:
    image: np.ndarray                 # (H, W, 3) uint8
    objects: tuple[SceneObject, ...]
    instance: np.ndarray              # (H, W) int16: 1 + index of the visible object, 0 = background
    background: str
    seed: int
    config: SceneConfig | None = None

    def mask(self, i: int) -> np.ndarray:
        """(H, W) bool: the visible pixels of object i."""
        return self.instance == i + 1

    def full_mask(self, i: int) -> np.ndarray:
        """(H, W) bool: all pixels object i would cover if nothing hid it."""
        out = np.zeros(self.instance.shape, dtype=bool)
        x0, y0, x1, y1 = self.objects[i].box
        out[y0:y1, x0:x1] = self.objects[i].silhouette()
        return out

    def visible_fraction(self, i: int) -> float:
        return float(self.mask(i).sum()) / max(int(self.objects[i].silhouette().sum()), 1)

    def ref(self, i: int) -> str:
        """Shortest unambiguous noun phrase for object i: kind, + colour, + accessory if needed."""
        o = self.objects[i]
        others = [p for j, p in enumerate(self.objects) if j != i and p.kind == o.kind]
        if not others:
            return NAMES[o.kind]
        if all(p.color != o.color for p in others):
            return f"{o.color} {NAMES[o.kind]}"
        if o.accessory:
            return f"{NAMES[o.kind]} with the {o.accessory}"
        return f"{o.color} {NAMES[o.kind]}"

    def region_caption(self, i: int, with_position: bool = False) -> str:
        """E.g. "a yellow chick with a purple ribbon" (+ " on the left" with ``with_position``)."""
        o = self.objects[i]
        text = f"{_article(o.color)} {o.color} {NAMES[o.kind]}"
        if o.accessory:
            text += f" with a {o.accessory}"
        if with_position:
            where = where_in_image(o, self.image.shape[0], self._cfg.where_margin, self._cfg.dominance)
            if where is not None:
                text += f" {_POSITION_PHRASE[where]}"
        return text

    def caption(self) -> str:
        """Objects from left to right, e.g. "a red chick and a blue cup"."""
        order = sorted(range(len(self.objects)), key=lambda i: (self.objects[i].center[0], i))
        parts = [self.region_caption(i) for i in order]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    @property
    def _cfg(self) -> SceneConfig:
        return self.config if self.config is not None else SceneConfig()


_POSITION_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_size(kind: str, height: float, n: int) -> tuple[int, int]:
    h = max(int(round(height)), 4)
    w = max(int(round(height * ASPECT[kind])), 4)
    if w > n - 2:  # very wide sprites (car) at big sizes: shrink both sides
        h = max(int(round(h * (n - 2) / w)), 4)
        w = n - 2
    return w, min(h, n - 2)


def _place(rng, cfg: SceneConfig, w: int, h: int, z: float, n: int) -> tuple[int, int]:
    """Top-left corner for a w×h sprite at depth value z."""
    x0 = int(rng.integers(0, n - w + 1))
    if cfg.ground:
        # The bottom edge stands on a ground plane seen from above: z=0 at the image bottom, z=1 at 35 %.
        bottom = n * (1.0 - 0.65 * z) - rng.uniform(0.0, 0.06) * n
        y0 = min(max(int(round(bottom)) - h, 0), n - h)
    else:
        y0 = int(rng.integers(0, n - h + 1))
    return x0, y0


def _layout(rng: np.random.Generator, cfg: SceneConfig) -> list[SceneObject]:
    """Sample objects and non-conflicting positions (rejection sampling, bounded)."""
    n = cfg.image_size
    for _ in range(100):
        count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        kinds = rng.choice(len(cfg.kinds), size=count, replace=not cfg.unique_kinds)
        z = np.sort(rng.random(count))  # index in this order = depth rank (0 nearest)
        placed: list[SceneObject] = []
        cover = np.zeros((n, n), dtype=bool)  # pixels covered by nearer objects
        for rank in range(count):
            kind = cfg.kinds[int(kinds[rank])]
            color = cfg.colors[int(rng.integers(0, len(cfg.colors)))]
            accessory = None
            if kind in WEARS_ACCESSORIES and rng.random() < cfg.accessory_prob:
                accessory = ACCESSORIES[int(rng.integers(0, len(ACCESSORIES)))]
            flip = bool(rng.random() < 0.5)
            height = rng.uniform(cfg.min_size, cfg.max_size) * (1.0 - cfg.depth_scale * z[rank]) * n
            w, h = _object_size(kind, height, n)
            for _try in range(20):
                x0, y0 = _place(rng, cfg, w, h, float(z[rank]), n)
                obj = SceneObject(kind, color, (x0, y0, x0 + w, y0 + h), rank, accessory, flip)
                if _fits(obj, placed, cover, cfg):
                    placed.append(obj)
                    cover[y0:y0 + h, x0:x0 + w] |= obj.silhouette()
                    break
        if len(placed) >= cfg.min_objects:
            # Re-rank depth densely (dropped objects leave gaps) and shuffle the listing order, so
            # an object's index says nothing about its depth.
            placed = [replace(o, depth=r) for r, o in enumerate(placed)]
            order = rng.permutation(len(placed))
            return [placed[int(k)] for k in order]
    raise RuntimeError(f"could not lay out {cfg.min_objects} objects in 100 tries; make objects smaller "
                       f"(SceneConfig.max_size={cfg.max_size}) or allow occlusion")


def _fits(obj: SceneObject, placed: list[SceneObject], cover: np.ndarray, cfg: SceneConfig) -> bool:
    x0, y0, x1, y1 = obj.box
    if not cfg.occlusion:  # boxes must keep a 1-pixel gap
        return all(x1 < p.box[0] or p.box[2] < x0 or y1 < p.box[1] or p.box[3] < y0 for p in placed)
    sil = obj.silhouette()
    visible = int((sil & ~cover[y0:y1, x0:x1]).sum())
    # Objects are placed nearest first, so ``cover`` is everything that will be drawn over this one.
    return visible >= cfg.min_visible * int(sil.sum())


def compose(objects: Sequence[SceneObject], background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paint objects far → near onto a copy of ``background``; return (image, instance map)."""
    image = background.copy()
    instance = np.zeros(image.shape[:2], dtype=np.int16)
    for i in sorted(range(len(objects)), key=lambda k: -objects[k].depth):
        o = objects[i]
        x0, y0, x1, y1 = o.box
        labels = sprite_labels(o.kind, o.accessory, x1 - x0, y1 - y0, o.flip)
        solid = labels >= 0
        image[y0:y1, x0:x1][solid] = _palette(o.color)[labels[solid]]
        instance[y0:y1, x0:x1][solid] = i + 1
    return image, instance


def render_scene(seed: int, config: SceneConfig = SceneConfig()) -> Scene:
    """Draw the scene of ``seed`` under ``config``. Same (seed, config) → byte-identical scene."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"render_scene: seed = {seed!r} is invalid; allowed: int >= 0")
    rng = np.random.default_rng(int(seed))
    background = config.backgrounds[int(rng.integers(0, len(config.backgrounds)))]
    objects = _layout(rng, config)
    canvas = _background(background, config.image_size, rng)
    _paint_distractors(canvas, config.distractors, rng)
    image, instance = compose(objects, canvas)
    return Scene(image, tuple(objects), instance, background, int(seed), config)


def render_batch(seeds: Iterable[int], config: SceneConfig = SceneConfig()) -> tuple[np.ndarray, list[Scene]]:
    """Render many scenes: ((B, H, W, 3) uint8 images, list of scenes)."""
    scenes = [render_scene(int(s), config) for s in seeds]
    n = config.image_size
    images = np.stack([s.image for s in scenes]) if scenes else np.zeros((0, n, n, 3), np.uint8)
    return images, scenes


def chick_and_cup(image_size: int = 128, background: str = "wood", hidden: float = 0.35) -> Scene:
    """The blog's scene: a cup on a wooden table, a chick with a purple ribbon in front of it and a
    chick with a blue bonnet behind it, partly hidden by the cup. ``hidden`` slides the bonnet chick
    behind the cup, in chick widths (0 = it only touches the cup's edge; more = more of it hidden).
    """
    if not 32 <= image_size <= 1024:
        raise ValueError(f"chick_and_cup: image_size = {image_size!r} is invalid; allowed: int in [32, 1024]")
    if not 0.0 <= hidden <= 0.8:
        raise ValueError(f"chick_and_cup: hidden = {hidden!r} is invalid; allowed: number in [0, 0.8]")
    n = image_size
    cfg = SceneConfig(image_size=n, min_objects=1, max_objects=3, unique_kinds=False, backgrounds=(background,))

    def box(kind: str, height: float, left: float, bottom: float) -> tuple[int, int, int, int]:
        w, h = _object_size(kind, height * n, n)
        x0 = int(round(left * n))
        y1 = int(round(bottom * n))
        return (x0, y1 - h, x0 + w, y1)

    cup = SceneObject("cup", "white", box("cup", 0.42, 0.34, 0.8), 1)
    # The bonnet chick stands farther back (smaller, higher), its right part behind the cup's left side.
    back_w = _object_size("chick", 0.27 * n, n)[0]
    back = SceneObject("chick", "yellow", box("chick", 0.27, (cup.box[0] + hidden * back_w - back_w) / n + 0.04, 0.62),
                       2, "blue bonnet")
    # The ribbon chick is nearer (larger, lower) and overlaps the cup's lower right.
    front = SceneObject("chick", "yellow", box("chick", 0.36, 0.44, 0.98), 0, "purple ribbon", flip=True)
    objects = (front, cup, back)
    canvas = _background(background, n, np.random.default_rng(0))
    image, instance = compose(objects, canvas)
    return Scene(image, objects, instance, background, 0, cfg)


# ------------------------------------------------------------------------------------------------
# Relations
# ------------------------------------------------------------------------------------------------

def relation_2d(a: SceneObject, b: SceneObject, margin: float = 0.25, dominance: float = 1.5) -> str | None:
    """Where A is relative to B in the image plane, or None when the geometry is ambiguous.

    A is "left of" B iff centre(A).x <= centre(B).x - margin*s and |dx| >= dominance*|dy|, with s the
    mean side of the two boxes (likewise "right of", "above", "below"; image y grows downwards).
    """
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = ax - bx, ay - by
    s = (a.size + b.size) / 2
    if abs(dx) >= margin * s and abs(dx) >= dominance * abs(dy) and dx != 0:
        return "left of" if dx < 0 else "right of"
    if abs(dy) >= margin * s and abs(dy) >= dominance * abs(dx) and dy != 0:
        return "above" if dy < 0 else "below"
    return None


def relation_depth(scene: Scene, i: int, j: int) -> str | None:
    """"in front of" / "behind" for object i relative to j, or None when depth is not visible.

    Visible means: the nearer object hides at least ``min_hidden`` of the farther one's silhouette,
    or (ground-plane scenes) the nearer one's bottom edge is lower by margin*s and it is not smaller.
    """
    cfg = scene._cfg
    a, b = scene.objects[i], scene.objects[j]
    if a.depth == b.depth:
        return None
    near, far = (i, j) if a.depth < b.depth else (j, i)
    answer = "in front of" if near == i else "behind"
    far_full = scene.full_mask(far)
    hidden = int((far_full & (scene.instance == near + 1)).sum())
    if hidden >= cfg.min_hidden * int(far_full.sum()):
        return answer
    on, of = scene.objects[near], scene.objects[far]
    s = (on.size + of.size) / 2
    if cfg.ground and on.box[3] - of.box[3] >= cfg.margin * s and on.size >= of.size:
        return answer
    return None


def where_in_image(o: SceneObject, image_size: int, where_margin: float = 0.15,
                   dominance: float = 1.5) -> str | None:
    """"left"/"right"/"top"/"bottom" for one object, or None when ambiguous (see module docstring)."""
    cx, cy = o.center
    dx, dy = cx - image_size / 2, cy - image_size / 2
    if abs(dx) >= where_margin * image_size and abs(dx) >= dominance * abs(dy):
        return "left" if dx < 0 else "right"
    if abs(dy) >= where_margin * image_size and abs(dy) >= dominance * abs(dx):
        return "top" if dy < 0 else "bottom"
    return None


# ------------------------------------------------------------------------------------------------
# Questions
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Question:
    text: str
    options: tuple[str, ...]
    answer: int                      # index of the gold option
    family: str                      # "what" | "where"
    task: str                        # one of TASKS
    objects: tuple[int, ...] = ()    # indices into scene.objects the question is about
    relation: str | None = None      # gold relation for where questions

    @property
    def gold(self) -> str:
        return self.options[self.answer]

    def with_answer_at(self, index: int, rng: np.random.Generator | None = None) -> "Question":
        """Same question with the gold option moved to ``index`` (other options keep their order,
        or are shuffled with ``rng``)."""
        if not 0 <= index < len(self.options):
            raise ValueError(f"index = {index} is invalid; allowed: int in [0, {len(self.options) - 1}]")
        others = [o for k, o in enumerate(self.options) if k != self.answer]
        if rng is not None:
            others = [others[int(k)] for k in rng.permutation(len(others))]
        options = others[:index] + [self.gold] + others[index:]
        return replace(self, options=tuple(options), answer=index)

    def label(self) -> str:
        """The stratum used for balancing: the relation for where questions, else the gold option."""
        return self.relation if self.relation is not None else self.gold


def _mc(rng, text: str, gold: str, distractors: Sequence[str], task: str,
        objects: tuple[int, ...] = (), relation: str | None = None) -> Question:
    options = [gold, *distractors]
    order = rng.permutation(len(options))
    options = [options[int(k)] for k in order]
    return Question(text, tuple(options), options.index(gold), FAMILY[task], task, objects, relation)


def _pick(rng, pool: Sequence[str], k: int) -> list[str]:
    return [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)]


def make_questions(scene: Scene, rng: np.random.Generator, families: Sequence[str] = ("what", "where"),
                   tasks: Sequence[str] | None = None) -> list[Question]:
    """All questions the scene supports (option order shuffled with ``rng``).

    what: one presence (yes/no with equal probability), one identity, one colour (random object),
    one count question. where: one where_one per object with an unambiguous position, one where_two
    and one depth question per ordered pair whose relation is unambiguous.
    """
    for f in families:
        if f not in ("what", "where"):
            raise ValueError(f"families = {families!r} is invalid; allowed: items from ['what', 'where']")
    wanted = [t for t in (tasks or TASKS) if FAMILY.get(t) in families]
    for t in tasks or ():
        if t not in TASKS:
            raise ValueError(f"tasks = {tasks!r} is invalid; allowed: items from {list(TASKS)}")
    cfg, objs, n = scene._cfg, scene.objects, scene.image.shape[0]
    present = sorted({o.kind for o in objs}, key=KINDS.index)
    absent = [k for k in cfg.kinds if k not in present] or [k for k in KINDS if k not in present]
    out: list[Question] = []
    if "presence" in wanted:
        ask_present = rng.random() < 0.5 or not absent
        kind = _pick(rng, present, 1)[0] if ask_present else _pick(rng, absent, 1)[0]
        out.append(_mc(rng, f"Is there {_article(NAMES[kind])} {NAMES[kind]} in the image?",
                       "yes" if ask_present else "no", ["no" if ask_present else "yes"], "presence"))
    if "identity" in wanted and len(absent) >= 3:
        i = int(rng.integers(0, len(objs)))
        out.append(_mc(rng, "Which object is in the image?", NAMES[objs[i].kind],
                       [NAMES[k] for k in _pick(rng, absent, 3)], "identity", (i,)))
    if "color" in wanted:
        i = int(rng.integers(0, len(objs)))
        others = [c for c in cfg.colors if c != objs[i].color] or [c for c in COLORS if c != objs[i].color]
        out.append(_mc(rng, f"What color is the {scene.ref(i)}?", objs[i].color,
                       _pick(rng, others, min(3, len(others))), "color", (i,)))
    if "count" in wanted:
        count = len(objs)
        start = int(rng.integers(max(0, count - 3), count + 1))
        numbers = [str(k) for k in range(start, start + 4)]
        out.append(_mc(rng, "How many objects are in the image?", str(count),
                       [x for x in numbers if x != str(count)], "count"))
    if "where_one" in wanted:
        for i, o in enumerate(objs):
            where = where_in_image(o, n, cfg.where_margin, cfg.dominance)
            if where is not None:
                out.append(_mc(rng, f"Where is the {scene.ref(i)} in the image?", where,
                               [w for w in WHERE_ONE_OPTIONS if w != where], "where_one", (i,), where))
    for i in range(len(objs)):
        for j in range(len(objs)):
            if i == j:
                continue
            if "where_two" in wanted:
                rel = relation_2d(objs[i], objs[j], cfg.margin, cfg.dominance)
                if rel is not None:
                    word = ANSWER_WORD[rel]
                    out.append(_mc(rng, f"Where is the {scene.ref(i)} relative to the {scene.ref(j)}?", word,
                                   [w for w in WHERE_TWO_OPTIONS if w != word], "where_two", (i, j), rel))
            if "depth" in wanted:
                rel = relation_depth(scene, i, j)
                if rel is not None:
                    word = ANSWER_WORD[rel]
                    out.append(_mc(rng, f"Is the {scene.ref(i)} in front of or behind the {scene.ref(j)}?",
                                   word, [w for w in DEPTH_OPTIONS if w != word], "depth", (i, j), rel))
    return out


# ------------------------------------------------------------------------------------------------
# WhereBench
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    scene_seed: int      # the scene is re-rendered from this seed and the bench's config
    question: Question


SPLITS = ("train", "val", "test")


def task_labels(task: str, config: SceneConfig) -> tuple[str, ...]:
    """Every label (``Question.label()``) a task can have under ``config``: the balancing strata."""
    return {"where_two": RELATIONS_2D, "where_one": RELATIONS_ONE, "depth": RELATIONS_DEPTH,
            "presence": ("yes", "no"), "color": config.colors,
            "identity": tuple(NAMES[k] for k in config.kinds),
            "count": tuple(str(k) for k in range(config.min_objects, config.max_objects + 1))}[task]


def scene_seeds(seed: int, split: str) -> Iterable[int]:
    """Endless scene seeds of a split; splits never share a seed (residues mod 3 differ)."""
    offset = SPLITS.index(split)
    k = 0
    while True:
        yield seed * 1_000_000_007 + 3 * k + offset
        k += 1


@dataclass
class WhereBench:
    config: SceneConfig
    splits: dict[str, list[Item]]
    seed: int = 0
    scenes_tried: dict[str, int] = field(default_factory=dict)  # scenes rendered to fill each split

    def scenes(self, split: str) -> list[Scene]:
        """The scene of every item of ``split``, aligned with ``splits[split]`` (rendered once per seed)."""
        cache: dict[int, Scene] = {}
        out = []
        for item in self.splits[split]:
            if item.scene_seed not in cache:
                cache[item.scene_seed] = render_scene(item.scene_seed, self.config)
            out.append(cache[item.scene_seed])
        return out

    def stats(self) -> "pandas.DataFrame":  # noqa: F821
        """One row per (split, task, label, gold index): the counts behind the balance claims."""
        import pandas as pd

        rows = []
        for split, items in self.splits.items():
            for it in items:
                q = it.question
                rows.append((split, q.family, q.task, q.label(), q.answer, len(q.options)))
        df = pd.DataFrame(rows, columns=["split", "family", "task", "label", "answer_index", "n_options"])
        return (df.groupby(list(df.columns)).size().rename("count").reset_index()
                if len(df) else df.assign(count=[]))


def task_problem(task: str, config: SceneConfig) -> str | None:
    """Why ``config`` can never produce questions of ``task`` (None when it can)."""
    if task in ("where_two", "depth") and config.max_objects < 2:
        return "needs max_objects >= 2"
    if task == "depth" and not (config.occlusion or config.ground):
        return "needs occlusion=True or ground=True (otherwise depth is invisible)"
    if task == "identity" and len(config.kinds) - config.min_objects < 3:
        return "needs at least 3 kinds absent from a scene (len(kinds) - min_objects >= 3)"
    if task == "color" and len(config.colors) < 2:
        return "needs at least 2 colors"
    return None


def build_wherebench(seed: int = 0, n_train: int = 2000, n_val: int = 400, n_test: int = 400,
                     config: SceneConfig = PRESETS["book"], tasks: Sequence[str] = TASKS,
                     per_scene: int = 2) -> WhereBench:
    """A fixed benchmark with disjoint train/val/test scene seeds and balanced answers.

    Each split gets ``n // len(tasks)`` items per task (the remainder goes to the first tasks);
    within a task every label (``task_labels``: relations, yes/no, colours, kinds, counts) gets an
    equal quota (filled by rejection: questions
    whose label quota is full are skipped); then the gold option is moved to position
    ``(label's index + number of earlier items of the same task and label) mod n_options``, so gold
    indices cycle within every stratum and are uniform over each task. At most ``per_scene`` items come from one scene.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
            raise ValueError(f"build_wherebench: {name} = {value!r} is invalid; allowed: int in [0, 1000000]")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"build_wherebench: seed = {seed!r} is invalid; allowed: int >= 0")
    if not tasks or any(t not in TASKS for t in tasks) or len(set(tasks)) != len(tasks):
        raise ValueError(f"build_wherebench: tasks = {tasks!r} is invalid; allowed: distinct items from {list(TASKS)}")
    unsupported = [t for t in tasks if task_problem(t, config)]
    if unsupported:
        raise ValueError("build_wherebench: tasks = " + repr(tuple(tasks)) + " is invalid for this config: "
                         + "; ".join(f"{t} {task_problem(t, config)}" for t in unsupported))
    if not isinstance(per_scene, int) or per_scene < 1:
        raise ValueError(f"build_wherebench: per_scene = {per_scene!r} is invalid; allowed: int >= 1")
    splits, tried = {}, {}
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        splits[split], tried[split] = _fill_split(seed, split, n, config, tuple(tasks), per_scene)
    return WhereBench(config, splits, seed, tried)


def _fill_split(seed, split, n, config, tasks, per_scene) -> tuple[list[Item], int]:
    quota: dict[tuple[str, str], int] = {}
    base, extra = divmod(n, len(tasks))
    for t_index, task in enumerate(tasks):
        n_task = base + (1 if t_index < extra else 0)
        labels = task_labels(task, config)
        lb, lx = divmod(n_task, len(labels))
        for l_index, label in enumerate(labels):
            quota[(task, label)] = lb + (1 if l_index < lx else 0)
    filled = {key: 0 for key in quota}
    # Label k starts its gold-index cycle at k, so small strata do not all start at index 0.
    label_index = {(t, l): k for t in tasks for k, l in enumerate(task_labels(t, config))}
    items: list[Item] = []
    rng = np.random.default_rng([seed, SPLITS.index(split), 7])
    max_scenes = 50 * max(n, 1) + 500
    scenes_used = 0
    for scenes_used, scene_seed in enumerate(scene_seeds(seed, split), start=1):
        if len(items) >= n or scenes_used > max_scenes:
            break
        scene = render_scene(scene_seed, config)
        questions = make_questions(scene, rng, tasks=tasks)
        taken = 0
        for k in rng.permutation(len(questions)):
            q = questions[int(k)]
            key = (q.task, q.label())
            if taken >= per_scene or filled.get(key, 0) >= quota.get(key, 0):
                continue
            q = q.with_answer_at((filled[key] + label_index[key]) % len(q.options), rng)
            filled[key] += 1
            items.append(Item(scene_seed, q))
            taken += 1
    if len(items) < n:
        missing = {f"{t}/{l}": quota[(t, l)] - filled[(t, l)] for (t, l) in quota if filled[(t, l)] < quota[(t, l)]}
        raise RuntimeError(f"WhereBench {split}: could not fill {missing} from {scenes_used} scenes; "
                           "this config rarely produces those relations (try occlusion=True or ground=True for depth)")
    # Interleave tasks instead of keeping generation order (which front-loads easy strata).
    order = rng.permutation(len(items))
    return [items[int(k)] for k in order], scenes_used


# ------------------------------------------------------------------------------------------------
# WhatsUp file format (Kamath et al. 2023): a JSON list of {"image_path", "caption_options"} with
# the correct caption first. Extra keys carry our question so a round trip is exact; real WhatsUp
# files (and the COCO/VG-QA lists [image_id, correct, wrong]) read fine without them.
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WhatsUpItem:
    image_path: str
    caption_options: tuple[str, ...]   # the correct caption first (answer index 0)
    question: Question | None = None   # present for files written by ``to_whatsup``
    scene_seed: int | None = None
    answer: int = 0

    def item(self) -> Item:
        if self.question is None or self.scene_seed is None:
            raise ValueError(f"{self.image_path}: not a spatialkit item (no question/scene_seed keys)")
        return Item(self.scene_seed, self.question)


def caption_for(scene: Scene, q: Question, option: str) -> str:
    """The statement that option ``option`` of question ``q`` makes about the scene."""
    ref = scene.ref
    if q.task == "where_two":
        rel = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}[option]
        return f"the {ref(q.objects[0])} is {rel} the {ref(q.objects[1])}"
    if q.task == "depth":
        rel = {"in front": "in front of", "behind": "behind"}[option]
        return f"the {ref(q.objects[0])} is {rel} the {ref(q.objects[1])}"
    if q.task == "where_one":
        return f"the {ref(q.objects[0])} is {_POSITION_PHRASE[option]} of the image"
    if q.task == "color":
        return f"the {ref(q.objects[0])} is {option}"
    if q.task == "count":
        return f"there {'is' if option == '1' else 'are'} {option} object{'' if option == '1' else 's'}"
    if q.task == "identity":
        return f"there is {_article(option)} {option}"
    if q.task == "presence":
        kind = q.text[len("Is there "):-len(" in the image?")]
        return f"there is {kind}" if option == "yes" else f"there is no {kind.split(' ', 1)[1]}"
    raise ValueError(f"unknown task {q.task!r}")


def _question_json(q: Question) -> dict:
    return {"text": q.text, "options": list(q.options), "answer": q.answer, "family": q.family,
            "task": q.task, "objects": list(q.objects), "relation": q.relation}


def _atomic_write(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (temp file + os.replace); return its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return hashlib.sha256(data).hexdigest()


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def to_whatsup(items: Sequence[Item], scenes: Sequence[Scene], folder: str | os.PathLike,
               name: str = "whatsup.json") -> Path:
    """Write ``images/*.png`` + ``name`` (WhatsUp JSON, correct caption first) + ``SHA256SUMS``.

    Returns the JSON path. All files are written atomically; ``from_whatsup`` verifies the sums.
    """
    if len(items) != len(scenes):
        raise ValueError(f"to_whatsup: {len(items)} items but {len(scenes)} scenes; they must align")
    folder = Path(folder)
    sums: dict[str, str] = {}
    records = []
    for item, scene in zip(items, scenes):
        if scene.seed != item.scene_seed:
            raise ValueError(f"to_whatsup: item seed {item.scene_seed} does not match scene seed {scene.seed}")
        rel = f"images/scene_{item.scene_seed}.png"
        if rel not in sums:
            sums[rel] = _atomic_write(folder / rel, _png_bytes(scene.image))
        q = item.question
        gold_first = [q.gold] + [o for k, o in enumerate(q.options) if k != q.answer]
        records.append({"image_path": rel,
                        "caption_options": [caption_for(scene, q, o) for o in gold_first],
                        "question": _question_json(q), "scene_seed": item.scene_seed})
    sums[name] = _atomic_write(folder / name, json.dumps(records, indent=1).encode())
    _atomic_write(folder / "SHA256SUMS", "".join(f"{h}  {p}\n" for p, h in sorted(sums.items())).encode())
    return folder / name


def from_whatsup(path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 verify: bool = True) -> list[WhatsUpItem]:
    """Read a WhatsUp-format JSON (ours or the original What'sUp / COCO-QA / VG-QA files).

    Relative image paths are resolved against ``image_root`` (default: the JSON's folder). With a
    ``SHA256SUMS`` file next to the JSON (written by ``to_whatsup``) the files are verified.
    """
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    if verify and (path.parent / "SHA256SUMS").exists():
        for line in (path.parent / "SHA256SUMS").read_text().splitlines():
            digest, rel = line.split("  ", 1)
            actual = hashlib.sha256((path.parent / rel).read_bytes()).hexdigest()
            if actual != digest:
                raise ValueError(f"{path.parent / rel}: sha256 {actual} does not match SHA256SUMS ({digest})")
    records = json.loads(path.read_text())
    out = []
    for k, rec in enumerate(records):
        if isinstance(rec, list):  # COCO-QA / VG-QA: [image_id, correct caption, wrong caption]
            out.append(WhatsUpItem(str(root / str(rec[0])), tuple(rec[1:])))
            continue
        if "image_path" not in rec or "caption_options" not in rec:
            raise ValueError(f"{path}: record {k} lacks 'image_path' or 'caption_options'")
        image_path = rec["image_path"]
        if not os.path.isabs(image_path):
            image_path = str(root / image_path)
        q = rec.get("question")
        question = None
        if q is not None:
            question = Question(q["text"], tuple(q["options"]), int(q["answer"]), q["family"], q["task"],
                                tuple(q["objects"]), q["relation"])
        out.append(WhatsUpItem(image_path, tuple(rec["caption_options"]), question, rec.get("scene_seed")))
    return out


def load_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 image from a file (for WhatsUp items)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).copy()


def object_table(scenes: Sequence[Scene]) -> "pandas.DataFrame":  # noqa: F821
    """One row per object of every scene: ground truth plus how much of it is visible."""
    import pandas as pd

    rows = []
    for sc in scenes:
        n_obj = len(sc.objects)
        for i, o in enumerate(sc.objects):
            x0, y0, x1, y1 = o.box
            rows.append({"seed": sc.seed, "background": sc.background, "n_objects": n_obj, "object": i,
                         "kind": o.kind, "color": o.color, "accessory": o.accessory or "none",
                         "depth": o.depth, "width": x1 - x0, "height": y1 - y0,
                         "center_x": o.center[0] / sc.image.shape[1], "center_y": o.center[1] / sc.image.shape[0],
                         "visible_fraction": sc.visible_fraction(i)})
    return pd.DataFrame(rows)


def prior_baselines(bench: WhereBench, split: str = "test") -> dict[str, np.ndarray]:
    """Per-item 0/1 correctness of answerers that never look at the image.

    "first option": always picks option 0. "train prior": per task, the gold option text seen most
    often in the train split (ties broken alphabetically). "chance": the expected accuracy 1/#options.
    On a balanced benchmark all three sit at chance.
    """
    from collections import Counter

    prior: dict[str, Counter] = {}
    for it in bench.splits["train"]:
        prior.setdefault(it.question.task, Counter())[it.question.gold] += 1
    items = bench.splits[split]
    first = np.array([it.question.answer == 0 for it in items], dtype=np.float64)
    guess = {t: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for t, c in prior.items()}
    train_prior = np.array([guess.get(it.question.task) == it.question.gold for it in items], dtype=np.float64)
    chance = np.array([1.0 / len(it.question.options) for it in items])
    return {"first option": first, "train prior": train_prior, "chance": chance}


def scene_digest(scene: Scene) -> str:
    """sha256 of a scene's pixels, instance map and ground truth: equal digests = identical scenes."""
    h = hashlib.sha256()
    h.update(scene.image.tobytes())
    h.update(scene.instance.tobytes())
    h.update(repr((scene.objects, scene.background, scene.seed)).encode())
    return h.hexdigest()

