"""Scenes: sprites, colours, backgrounds, ``SceneConfig`` and its presets, layout and rasterisation.

Every scene is a pure function of its seed; the rules (margin, depth, on, one-object) and every option string
are stated once, in the ``spatialkit.world`` package docstring.
"""

from __future__ import annotations
import functools
import hashlib
from dataclasses import dataclass, replace
from typing import Iterable, Sequence
import numpy as np

from spatialkit.common.params import check_number
import pandas as pd



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


RELATIONS_ON = ("on", "under")  # A rests on B / B rests on A (the on rule)


ANSWER_WORD = {
    "left of": "left", "right of": "right", "above": "above", "below": "below",
    "in front of": "in front", "behind": "behind",
    "left": "left", "right": "right", "top": "top", "bottom": "bottom",
    "on": "on", "under": "under",
}


WHERE_TWO_OPTIONS = ("left", "right", "above", "below")


WHERE_ONE_OPTIONS = RELATIONS_ONE


DEPTH_OPTIONS = ("in front", "behind")


ON_UNDER_OPTIONS = RELATIONS_ON


WHATSUP_A_OPTIONS = ("left", "right", "on", "under")        # WhatsUp Controlled-A's four options


WHATSUP_B_OPTIONS = ("left", "right", "in front", "behind")  # WhatsUp Controlled-B's ("front" is "in front" here)


TASKS = ("presence", "identity", "color", "count", "where_one", "where_two", "depth")


WHATSUP_TASKS = ("on_under", "whatsup_a", "whatsup_b")  # asked only when named (tasks= or SceneConfig.tasks)


ALL_TASKS = TASKS + WHATSUP_TASKS


FAMILY = {"presence": "what", "identity": "what", "color": "what", "count": "what",
          "where_one": "where", "where_two": "where", "depth": "where",
          "on_under": "where", "whatsup_a": "where", "whatsup_b": "where"}


OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above",
            "in front of": "behind", "behind": "in front of", "on": "under", "under": "on"}


LAYOUTS = ("free", "whatsup_a", "whatsup_b", "prior")


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
    layout: str = "free"             # one of LAYOUTS; "free" = independent positions (every pre-existing preset)
    tasks: tuple[str, ...] | None = None  # the world's default task list (None = TASKS)
    on_overlap: float = 0.5          # on rule: shared columns, as a fraction of the narrower silhouette's
    relation_prior: float = 0.0      # layout "prior": probability that a listed pair takes its prior relation
    prior_relations: tuple[tuple[str, str, str], ...] = ()  # (kind A, relation, kind B), relations from RELATIONS_2D
    # WhereBench balances the labels within every exact question text (build_wherebench's balance_text), so that
    # the question's words cannot predict the answer (e.g. "the car" predicting left/right: wide sprites rarely
    # stack). On for the organism worlds the zoo is scored on; off for the older worlds (their benches unchanged).
    balance_text: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> None:
            raise ValueError(f"parameter 'SceneConfig.{name}' = {getattr(self, name)!r} is invalid; allowed: {allowed}")

        def subset(name: str, universe: Sequence[str]) -> None:
            value = getattr(self, name)
            if isinstance(value, str) or not value or any(v not in universe for v in value) \
                    or len(set(value)) != len(value):
                bad(name, f"a non-empty tuple of distinct names from {list(universe)}")

        def number(name: str, low: float, high: float, kind: type = float, note: str = "") -> None:
            check_number(f"SceneConfig.{name}", getattr(self, name), low, high, kind, note=note)

        number("image_size", 16, 1024, int)
        subset("kinds", KINDS)
        subset("colors", tuple(COLORS))
        subset("backgrounds", BACKGROUNDS)
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "colors", tuple(self.colors))
        object.__setattr__(self, "backgrounds", tuple(self.backgrounds))
        limit = len(self.kinds) if self.unique_kinds else 12
        number("min_objects", 1, limit, int, note="at most the number of kinds when unique_kinds")
        number("max_objects", self.min_objects, limit, int, note="from min_objects")
        number("distractors", 0, 20, int)
        for name in ("occlusion", "ground", "unique_kinds", "balance_text"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "True or False")
        ranges = {"min_size": (0.05, 0.9), "max_size": (self.min_size, 0.9), "depth_scale": (0.0, 0.8),
                  "accessory_prob": (0.0, 1.0), "min_visible": (0.05, 1.0), "margin": (0.0, 5.0),
                  "dominance": (1.0, 10.0), "where_margin": (0.0, 0.45), "min_hidden": (0.01, 0.9)}
        for name, (low, high) in ranges.items():
            number(name, low, high)

        self._check_world_options(bad)

    def _check_world_options(self, bad) -> None:
        """The layout / task-list / prior fields (all default to the pre-existing behaviour)."""
        for name, (low, high) in {"on_overlap": (0.05, 1.0), "relation_prior": (0.0, 1.0)}.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                bad(name, f"float in [{low:g}, {high:g}]")
        if self.layout not in LAYOUTS:
            bad("layout", f"one of {list(LAYOUTS)}")
        if self.layout != "free" and (self.min_objects != 2 or self.max_objects != 2 or self.ground):
            bad("layout", f"'free', or {self.layout!r} with min_objects = max_objects = 2 and ground=False")
        if self.layout == "whatsup_b" and not self.occlusion:
            bad("layout", "'whatsup_b' only with occlusion=True (its front/behind comes from occlusion)")
        if self.tasks is not None:
            if isinstance(self.tasks, str) or not self.tasks or any(t not in ALL_TASKS for t in self.tasks) \
                    or len(set(self.tasks)) != len(self.tasks):
                bad("tasks", f"None or a non-empty tuple of distinct names from {list(ALL_TASKS)}")
            object.__setattr__(self, "tasks", tuple(self.tasks))
        try:
            triples = tuple(tuple(t) for t in self.prior_relations)
        except TypeError:
            triples = None
        if triples is None or isinstance(self.prior_relations, str) \
                or any(len(t) != 3 or t[0] not in self.kinds or t[2] not in self.kinds or t[0] == t[2]
                       or t[1] not in RELATIONS_2D for t in triples) \
                or len({frozenset((t[0], t[2])) for t in triples}) != len(triples):
            bad("prior_relations", f"a tuple of (kind, relation, other kind): kinds from kinds, relations from "
                                   f"{list(RELATIONS_2D)}, each pair of kinds at most once")
        object.__setattr__(self, "prior_relations", triples)
        if self.layout == "prior" and not triples:
            bad("layout", "'prior' only with prior_relations")


_EASY_KINDS = ("ball", "box", "tree", "car", "cup")


_EASY_COLORS = ("red", "green", "blue", "yellow")


# The prior world's pairing: each of the 10 pairs of the easy kinds has one relation, 5 horizontal and 5 vertical
# (so every where_two label stays equally frequent), e.g. the ball usually left of the cup.
PRIOR_EASY = (("ball", "left of", "cup"), ("ball", "above", "box"), ("tree", "left of", "ball"),
              ("car", "below", "ball"), ("box", "left of", "tree"), ("box", "above", "car"),
              ("cup", "left of", "box"), ("tree", "above", "cup"), ("car", "left of", "tree"),
              ("cup", "above", "car"))


PRESETS: dict[str, SceneConfig] = {
    # Easy world for training a tiny VLM fast: two well-separated objects, plain backgrounds, no
    # perspective (so above/below is as frequent as left/right), no accessories.
    "organism": SceneConfig(image_size=48, min_objects=2, max_objects=2, occlusion=False, ground=False,
                            backgrounds=PLAIN_BACKGROUNDS, min_size=0.3, max_size=0.4, depth_scale=0.0,
                            accessory_prob=0.0),
    # Easier organism world for the quick/default tiny VLMs (what >= 95 %, two-object where >= 90 % in minutes on a CPU): 5 visually distinct
    # kinds x 4 saturated colours, larger sprites, one plain background. 5 kinds is the fewest that keeps the
    # identity question (it needs 3 absent kinds as distractors with 2 objects). No count question (two objects
    # always: a blind answerer gets it right every time), and its benches balance labels per question text.
    "organism_easy": SceneConfig(image_size=48, min_objects=2, max_objects=2, kinds=("ball", "box", "tree", "car", "cup"),
                                 colors=("red", "green", "blue", "yellow"), occlusion=False, ground=False,
                                 backgrounds=("gray",), min_size=0.36, max_size=0.44, depth_scale=0.0,
                                 accessory_prob=0.0, balance_text=True,
                                 tasks=("presence", "identity", "color", "where_one", "where_two")),
    # The book's world: 2-3 objects with occlusion and perspective, all backgrounds, some clutter.
    "book": SceneConfig(image_size=128, min_objects=2, max_objects=3, distractors=2),
    # Free 2D layout with occlusion: depth only from draw order, for 2D-vs-depth comparisons.
    "flat": SceneConfig(image_size=64, min_objects=2, max_objects=3, ground=False, depth_scale=0.0),
    # The organism zoo's WhatsUp mirrors: organism_easy's kinds, colours and background at 48 px, two objects, no
    # count (two objects always would make it answerable blind), sprites a bit smaller (0.28-0.36) so that even
    # the car fits beside another object. Controlled-A: half the scenes one object rests on the other.
    "organism_whatsup_a": SceneConfig(image_size=48, min_objects=2, max_objects=2, kinds=_EASY_KINDS,
                                      colors=_EASY_COLORS, occlusion=False, ground=False, backgrounds=("gray",),
                                      min_size=0.28, max_size=0.36, depth_scale=0.0, accessory_prob=0.0,
                                      balance_text=True, layout="whatsup_a", tasks=("presence", "identity", "color", "where_one",
                                                                 "where_two", "on_under", "whatsup_a")),
    # Controlled-B: half the scenes the nearer object hides part of the farther one (front/behind by occlusion).
    "organism_whatsup_b": SceneConfig(image_size=48, min_objects=2, max_objects=2, kinds=_EASY_KINDS,
                                      colors=_EASY_COLORS, occlusion=True, ground=False, backgrounds=("gray",),
                                      min_size=0.28, max_size=0.36, depth_scale=0.0, accessory_prob=0.0,
                                      balance_text=True, layout="whatsup_b", tasks=("presence", "identity", "color", "where_one",
                                                                 "where_two", "depth", "whatsup_b")),
    # Prior-driven world: every pair of kinds has a prior relation (PRIOR_EASY), taken in 87.5 % of the scenes
    # (otherwise one of the other three): relations follow identity, like a language prior. Build its held-out
    # splits with build_wherebench(prior="consistent" | "counter").
    "organism_prior": SceneConfig(image_size=48, min_objects=2, max_objects=2, kinds=_EASY_KINDS,
                                  colors=_EASY_COLORS, occlusion=False, ground=False, backgrounds=("gray",),
                                  min_size=0.28, max_size=0.36, depth_scale=0.0, accessory_prob=0.0,
                                  layout="prior", relation_prior=0.875, prior_relations=PRIOR_EASY,
                                  tasks=("presence", "identity", "color", "where_one", "where_two")),
}


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


def prior_relation(config: SceneConfig, kind_a: str, kind_b: str) -> str | None:
    """The prior relation of a ``kind_a`` object to a ``kind_b`` one under ``config.prior_relations`` (a listed
    triple, or the opposite of the reversed one), None for an unlisted pair."""
    for a, rel, b in config.prior_relations:
        if (a, b) == (kind_a, kind_b):
            return rel
        if (b, a) == (kind_a, kind_b):
            return OPPOSITE[rel]
    return None


def _column_extent(o: SceneObject) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of ``o.box``: has silhouette pixels, top row, bottom row (image rows; rows meaningless where empty)."""
    sil = o.silhouette()
    has = sil.any(axis=0)
    top = np.argmax(sil, axis=0) + o.box[1]
    bottom = sil.shape[0] - 1 - np.argmax(sil[::-1], axis=0) + o.box[1]
    return has, top, bottom


def _shared_columns(a: SceneObject, b: SceneObject):
    """(A's extent, B's extent, slice into A's columns, slice into B's columns, shared mask) over the common x range."""
    x0, x1 = max(a.box[0], b.box[0]), min(a.box[2], b.box[2])
    ea, eb = _column_extent(a), _column_extent(b)
    if x1 <= x0:
        return ea, eb, slice(0, 0), slice(0, 0), np.zeros(0, dtype=bool)
    sa, sb = slice(x0 - a.box[0], x1 - a.box[0]), slice(x0 - b.box[0], x1 - b.box[0])
    return ea, eb, sa, sb, ea[0][sa] & eb[0][sb]


def rests_on(a: SceneObject, b: SceneObject, overlap: float = 0.5) -> bool:
    """The on rule (module docstring): A's full silhouette rests on top of B's, touching, over at least
    ``overlap`` of the narrower silhouette's columns, with no pixel of A at or below B's top in those columns."""
    (ha, _, bottom_a), (hb, top_b, _), sa, sb, shared = _shared_columns(a, b)
    n_shared = int(shared.sum())
    if n_shared == 0 or n_shared < overlap * min(int(ha.sum()), int(hb.sum())):
        return False
    gap = top_b[sb][shared] - bottom_a[sa][shared]  # rows from A's lowest pixel down to B's highest, per column
    return bool(gap.min() == 1)  # >= 1 everywhere (A wholly above B) and == 1 somewhere (they touch)


def _apart(a: SceneObject, b: SceneObject) -> bool:
    """Boxes at least one pixel apart (as in the occlusion=False free layout)."""
    return a.box[2] < b.box[0] or b.box[2] < a.box[0] or a.box[3] < b.box[1] or b.box[3] < a.box[1]


def _hidden_fraction(near: SceneObject, far: SceneObject) -> float:
    """Fraction of ``far``'s full silhouette that ``near``'s silhouette covers."""
    x0, y0 = max(near.box[0], far.box[0]), max(near.box[1], far.box[1])
    x1, y1 = min(near.box[2], far.box[2]), min(near.box[3], far.box[3])
    sil_far = far.silhouette()
    if x1 <= x0 or y1 <= y0:
        return 0.0
    cover = near.silhouette()[y0 - near.box[1]:y1 - near.box[1], x0 - near.box[0]:x1 - near.box[0]]
    part = sil_far[y0 - far.box[1]:y1 - far.box[1], x0 - far.box[0]:x1 - far.box[0]]
    return float((cover & part).sum()) / max(int(sil_far.sum()), 1)


def _pair_layout(rng: np.random.Generator, cfg: SceneConfig) -> list[SceneObject]:
    """Two objects in a chosen relation (layouts "whatsup_a", "whatsup_b", "prior"; module docstring).

    The kinds and looks are drawn first, then the goal (which depends only on the kinds' roles, never on which
    kind is which, except through ``prior_relations``); then sizes and positions are re-drawn until the goal
    holds, so no goal is rarer for some pair of kinds. The first-drawn object (A) is the nearer one (depth 0).
    """
    from spatialkit.world.questions import relation_2d  # questions imports this module

    n = cfg.image_size
    picks = rng.choice(len(cfg.kinds), size=2, replace=not cfg.unique_kinds)
    kinds = [cfg.kinds[int(k)] for k in picks]
    looks = []
    for kind in kinds:
        color = cfg.colors[int(rng.integers(0, len(cfg.colors)))]
        accessory = None
        if kind in WEARS_ACCESSORIES and rng.random() < cfg.accessory_prob:
            accessory = ACCESSORIES[int(rng.integers(0, len(ACCESSORIES)))]
        looks.append((kind, color, accessory, bool(rng.random() < 0.5)))
    if cfg.layout == "whatsup_a":
        goal = "on" if rng.random() < 0.5 else "left of"
    elif cfg.layout == "whatsup_b":
        goal = "in front of" if rng.random() < 0.5 else "left of"
    else:  # "prior"
        prior = prior_relation(cfg, kinds[0], kinds[1])
        if prior is not None and rng.random() < cfg.relation_prior:
            goal = prior
        else:
            pool = [r for r in RELATIONS_2D if r != prior]
            goal = pool[int(rng.integers(0, len(pool)))]

    def make(k: int, x0: int, y0: int, w: int, h: int) -> SceneObject:
        kind, color, accessory, flip = looks[k]
        return SceneObject(kind, color, (x0, y0, x0 + w, y0 + h), k, accessory, flip)

    for _ in range(400):
        (wa, ha), (wb, hb) = (_object_size(k, rng.uniform(cfg.min_size, cfg.max_size) * n, n) for k in kinds)
        for _try in range(25):
            xb, yb = int(rng.integers(0, n - wb + 1)), int(rng.integers(0, n - hb + 1))
            b = make(1, xb, yb, wb, hb)
            if goal == "on":  # A rests on B: centred over B's middle half, lowered until it touches
                lo = max(0, xb + (wb - wa) // 2 - wb // 4)
                hi = min(n - wa, xb + (wb - wa) // 2 + wb // 4)
                if hi < lo:
                    continue
                xa = int(rng.integers(lo, hi + 1))
                a = make(0, xa, 0, wa, ha)
                (_, _, bottom_a), (_, top_b, _), sa, sb, shared = _shared_columns(a, b)
                if not shared.any():
                    continue
                ya = int((top_b[sb][shared] - bottom_a[sa][shared]).min()) - 1
                if ya < 0:
                    continue
                a = make(0, xa, ya, wa, ha)
                if rests_on(a, b, cfg.on_overlap) and relation_2d(a, b, cfg.margin, cfg.dominance) == "above":
                    return [(a, b)[int(k)] for k in rng.permutation(2)]  # index says nothing
            elif goal == "in front of":  # A hides part of B, without being left/right of it
                xa = xb + (wb - wa) // 2 + int(round(rng.uniform(-0.5, 0.5) * wb))
                ya = yb + (hb - ha) // 2 + int(round(rng.uniform(-0.7, 0.7) * hb))
                if not (0 <= xa <= n - wa and 0 <= ya <= n - ha):
                    continue
                a = make(0, xa, ya, wa, ha)
                if 2 * cfg.min_hidden <= _hidden_fraction(a, b) <= 1 - cfg.min_visible \
                        and relation_2d(a, b, cfg.margin, cfg.dominance) not in ("left of", "right of"):
                    return [(a, b)[int(k)] for k in rng.permutation(2)]  # index says nothing
            else:  # a margin-rule relation, boxes apart
                a = make(0, int(rng.integers(0, n - wa + 1)), int(rng.integers(0, n - ha + 1)), wa, ha)
                if _apart(a, b) and relation_2d(a, b, cfg.margin, cfg.dominance) == goal:
                    return [(a, b)[int(k)] for k in rng.permutation(2)]  # index says nothing
    raise RuntimeError(f"could not lay out a {kinds[0]} {goal} a {kinds[1]} in 10000 tries; make objects smaller "
                       f"(SceneConfig.max_size={cfg.max_size})")


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
    check_number("seed", seed, 0, None, int)
    rng = np.random.default_rng(int(seed))
    background = config.backgrounds[int(rng.integers(0, len(config.backgrounds)))]
    objects = _layout(rng, config) if config.layout == "free" else _pair_layout(rng, config)
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
    check_number("image_size", image_size, 32, 1024, int)
    check_number("hidden", hidden, 0.0, 0.8)
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


def object_table(scenes: Sequence[Scene]) -> "pandas.DataFrame":  # noqa: F821
    """One row per object of every scene: ground truth plus how much of it is visible."""

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


def scene_digest(scene: Scene) -> str:
    """sha256 of a scene's pixels, instance map and ground truth: equal digests = identical scenes."""
    h = hashlib.sha256()
    h.update(scene.image.tobytes())
    h.update(scene.instance.tobytes())
    h.update(repr((scene.objects, scene.background, scene.seed)).encode())
    return h.hexdigest()


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
