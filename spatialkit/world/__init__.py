"""The spatial-scene world: procedurally drawn scenes with ground truth, their what/where questions, and
WhereBench, the balanced benchmark built from them.

- ``scene``       sprites, scene configs, layout, rendering (pure functions of a seed)
- ``questions``   relations from geometry (margin rule, depth rule) and multiple-choice questions
- ``wherebench``  splits, balanced items, prior baselines

May import: ``spatialkit.common`` only. Imports no model code (the world is what models are measured on).
The public names of the three modules are re-exported here: ``from spatialkit import world as W``.

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

from spatialkit.world.scene import *  # noqa: F401,F403
from spatialkit.world.questions import *  # noqa: F401,F403
from spatialkit.world.wherebench import *  # noqa: F401,F403
