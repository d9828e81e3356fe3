"""Relations from geometry (margin rule, depth rule, on rule, WhatsUp mirrors) and the multiple-choice
what/where questions asked about a scene. The rules and option strings: ``spatialkit.world``'s docstring.
"""

from __future__ import annotations
from dataclasses import dataclass, replace
from typing import Sequence
import numpy as np
from spatialkit.common.params import check_number
from spatialkit.world.scene import KINDS, ANSWER_WORD, COLORS, DEPTH_OPTIONS, FAMILY, NAMES, Scene, SceneObject, TASKS, WHERE_ONE_OPTIONS, WHERE_TWO_OPTIONS, _article, where_in_image
from spatialkit.world.scene import ALL_TASKS, ON_UNDER_OPTIONS, WHATSUP_A_OPTIONS, WHATSUP_B_OPTIONS, rests_on



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


def relation_on(a: SceneObject, b: SceneObject, overlap: float = 0.5, margin: float = 0.25,
                dominance: float = 1.5) -> str | None:
    """"on" if A rests on B, "under" if B rests on A (the on rule, ``rests_on``), else None; also None when
    the margin rule makes the pair left/right of each other (never two true options)."""
    if relation_2d(a, b, margin, dominance) in ("left of", "right of"):
        return None
    if rests_on(a, b, overlap):
        return "on"
    if rests_on(b, a, overlap):
        return "under"
    return None


def relation_whatsup_a(scene: Scene, i: int, j: int) -> str | None:
    """WhatsUp Controlled-A's relation of object i to j: "on"/"under" by the on rule, else "left of"/"right of"
    by the margin rule, else None."""
    cfg, a, b = scene._cfg, scene.objects[i], scene.objects[j]
    on = relation_on(a, b, cfg.on_overlap, cfg.margin, cfg.dominance)
    if on is not None:
        return on
    rel = relation_2d(a, b, cfg.margin, cfg.dominance)
    return rel if rel in ("left of", "right of") else None


def relation_whatsup_b(scene: Scene, i: int, j: int) -> str | None:
    """WhatsUp Controlled-B's relation of object i to j: "in front of"/"behind" by the depth rule when the margin
    rule does not make them left/right; "left of"/"right of" by the margin rule when their full silhouettes do
    not overlap at all and the depth rule gives nothing; else None."""
    cfg, a, b = scene._cfg, scene.objects[i], scene.objects[j]
    rel = relation_2d(a, b, cfg.margin, cfg.dominance)
    side = rel if rel in ("left of", "right of") else None
    depth = relation_depth(scene, i, j)
    if depth is not None:
        return depth if side is None else None
    if side is not None and not (scene.full_mask(i) & scene.full_mask(j)).any():
        return side
    return None


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
        check_number("index", index, 0, len(self.options) - 1, int)
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
    and one depth question per ordered pair whose relation is unambiguous, and (when asked for) one
    on_under / whatsup_a / whatsup_b question per ordered pair their rule answers. ``tasks`` defaults to
    the world's ``SceneConfig.tasks``, else ``TASKS`` (which never includes the ``WHATSUP_TASKS``).
    """
    for f in families:
        if f not in ("what", "where"):
            raise ValueError(f"families = {families!r} is invalid; allowed: items from ['what', 'where']")
    cfg, objs, n = scene._cfg, scene.objects, scene.image.shape[0]
    wanted = [t for t in (tasks or cfg.tasks or TASKS) if FAMILY.get(t) in families]
    for t in tasks or ():
        if t not in ALL_TASKS:
            raise ValueError(f"tasks = {tasks!r} is invalid; allowed: items from {list(ALL_TASKS)}")
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
    # two-object tasks, in the order their questions are drawn (the rng sequence depends on it):
    # (task, relation of object i to object j or None, question template, options)
    pair_tasks = (
        ("where_two", lambda i, j: relation_2d(objs[i], objs[j], cfg.margin, cfg.dominance),
         "Where is the {a} relative to the {b}?", WHERE_TWO_OPTIONS),
        ("depth", lambda i, j: relation_depth(scene, i, j),
         "Is the {a} in front of or behind the {b}?", DEPTH_OPTIONS),
        ("on_under", lambda i, j: relation_on(objs[i], objs[j], cfg.on_overlap, cfg.margin, cfg.dominance),
         "Is the {a} on or under the {b}?", ON_UNDER_OPTIONS),
        ("whatsup_a", lambda i, j: relation_whatsup_a(scene, i, j),
         "Is the {a} left of, right of, on or under the {b}?", WHATSUP_A_OPTIONS),
        ("whatsup_b", lambda i, j: relation_whatsup_b(scene, i, j),
         "Is the {a} left of, right of, in front of or behind the {b}?", WHATSUP_B_OPTIONS),
    )
    for i in range(len(objs)):
        for j in range(len(objs)):
            if i == j:
                continue
            for task, relation, template, options in pair_tasks:
                if task not in wanted:
                    continue
                rel = relation(i, j)
                if rel is not None:
                    word = ANSWER_WORD[rel]
                    text = template.format(a=scene.ref(i), b=scene.ref(j))
                    out.append(_mc(rng, text, word, [w for w in options if w != word], task, (i, j), rel))
    return out
