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

**On rule** (``rests_on``, ``relation_on``): compare the two full silhouettes column by column; in a
column x let ``low_A(x)`` be A's lowest pixel row and ``top_B(x)`` B's highest. A *rests on* B iff (1)
the columns where both have pixels number at least ``on_overlap`` (50 %) of the narrower silhouette's
columns, (2) ``top_B(x) - low_A(x) >= 1`` in every such column (A lies wholly above B there, so neither
hides the other) and (3) ``top_B(x) - low_A(x) = 1`` in at least one (they touch: no gap). A is *on* B
iff A rests on B, *under* B iff B rests on A; no on/under question when neither holds, or when the
margin rule makes the pair left/right of each other.

**WhatsUp rules** (the four-way questions of WhatsUp Controlled-A and -B). ``relation_whatsup_a``:
"on"/"under" by the on rule, else "left of"/"right of" by the margin rule, else no question (above/below
pairs that do not touch are not asked). ``relation_whatsup_b``: "in front of"/"behind" by the depth rule
when the margin rule does not make the pair left/right; "left of"/"right of" by the margin rule when the
full silhouettes do not overlap at all and the depth rule gives nothing; otherwise no question.

Layouts (``SceneConfig.layout``)
--------------------------------
"free" (the default, every preset before the organism zoo): independent positions, rejection sampled.
The others draw exactly two objects (A, then B) on a flat image and then a goal, then re-draw sizes and
positions until the goal holds (so a goal is never rarer for some pair of kinds); A is the nearer
(depth rank 0) and the listing order is shuffled. "whatsup_a": half the scenes A rests on B (on rule,
and A above B by the margin rule; their boxes may overlap where the silhouettes are transparent), the
rest A left of B by the margin rule with the boxes 1 px apart. "whatsup_b" (needs occlusion): half the
scenes A hides ``2*min_hidden`` .. ``1 - min_visible`` of B's silhouette and is not left/right of it,
the rest side by side as in "whatsup_a". "prior": A and B in a margin-rule relation with boxes apart;
when their kinds are listed in ``prior_relations`` (triples such as ``("ball", "left of", "cup")``; a
reversed pair takes the opposite relation, ``prior_relation``) the relation is the prior one with
probability ``relation_prior`` and otherwise one of the other three ``RELATIONS_2D`` uniformly; an
unlisted pair takes any of the four uniformly. Since A and B are drawn alike, every relation is
symmetric in the kinds except through the prior.

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
on_under   "Is the {ref A} on or under the {ref B}?"      "on", "under"
whatsup_a  "Is the {ref A} left of, right of, on or under  "left", "right", "on", "under" (WhatsUp A)
           the {ref B}?"
whatsup_b  "Is the {ref A} left of, right of, in front of  "left", "right", "in front", "behind"
           or behind the {ref B}?"                        (WhatsUp B's "front" is "in front" here)
========== ============================================== ===============================================

``TASKS`` (presence .. depth) is the default task list; the ``WHATSUP_TASKS`` (on_under, whatsup_a,
whatsup_b) are asked only when named, in ``tasks=`` or in a world's ``SceneConfig.tasks`` (the default of
``make_questions`` and ``build_wherebench`` for that world). ``ALL_TASKS`` is both.

``Question.relation`` holds the full relation ("left of", "right of", "above", "below",
"in front of", "behind", "on", "under"; for where_one the option word itself); ``ANSWER_WORD`` maps
relation → option word. ``{ref}`` is the kind name ("dog house" for ``doghouse``), with the colour and then the
accessory added only when needed to single the object out ("the chick with the purple ribbon").

Distractors (``SceneConfig.distractors``) are small pebbles and flowers painted on the background:
they are not objects, never counted and never asked about.

Blind answerer, balance and priors
----------------------------------
``blind_answers``/``blind_accuracy`` score an answerer that sees only the question text and options
(most frequent train gold of the same text among the options, then of the task, ties to the first
option). The organism-zoo worlds ``organism_whatsup_a``/``_b`` are balanced by construction (symmetric
layouts, and ``build_wherebench`` balances labels within every exact question text), so it sits within
a few points of chance on every task they ask; they do not ask ``count`` (two objects, always: count
would be answerable blind). ``organism_prior`` is unbalanced on purpose: its where_two relations follow
the kinds in ~87 % of scenes, the blind answerer's where_two accuracy is the prior's strength, and
``build_wherebench(prior="counter")`` gives held-out where_two items that all contradict the prior
(labels and gold positions balanced; ``prior="consistent"`` the others; ``prior_status`` tags an item).
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
            if "on_under" in wanted:
                rel = relation_on(objs[i], objs[j], cfg.on_overlap, cfg.margin, cfg.dominance)
                if rel is not None:
                    word = ANSWER_WORD[rel]
                    out.append(_mc(rng, f"Is the {scene.ref(i)} on or under the {scene.ref(j)}?", word,
                                   [w for w in ON_UNDER_OPTIONS if w != word], "on_under", (i, j), rel))
            if "whatsup_a" in wanted:
                rel = relation_whatsup_a(scene, i, j)
                if rel is not None:
                    word = ANSWER_WORD[rel]
                    out.append(_mc(rng, f"Is the {scene.ref(i)} left of, right of, on or under the {scene.ref(j)}?",
                                   word, [w for w in WHATSUP_A_OPTIONS if w != word], "whatsup_a", (i, j), rel))
            if "whatsup_b" in wanted:
                rel = relation_whatsup_b(scene, i, j)
                if rel is not None:
                    word = ANSWER_WORD[rel]
                    out.append(_mc(rng, f"Is the {scene.ref(i)} left of, right of, in front of or behind the "
                                        f"{scene.ref(j)}?", word, [w for w in WHATSUP_B_OPTIONS if w != word],
                                   "whatsup_b", (i, j), rel))
    return out
