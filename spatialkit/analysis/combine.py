"""Fixes alone and together on failing organisms: the grid behind notebook 07 ("putting it together").

A *cell* is a failing organism preset with a set of training-time fixes, written ``"loud+norm+2d"``; every trained
cell is also measured with AdaptVis (inference-time, free) on top. The fixes:

* ``2d``     a 2D position code in the LM (``lm_posenc`` = ``mrope`` or ``rope2d``; Qwen2-VL's (t, h, w) ids)
* ``norm``   +Normalize trained in (``visual_norm: rmsclip`` at scale 1, Qi et al. 2025)
* ``normtext`` +Normalize trained in at the text tokens' norm (``rmsclip`` at scale ``TEXT_NORM_SCALE``: on loud
             the ``loud_norm_text`` preset, notebook 02's arm); never with ``norm`` (both set the visual norm)
* ``local``  a localized (max-pooled, per-patch) stage-1 encoder instead of the global mean-pooled one
* ``cloc``   the stage-1 encoder replaced by notebook 05's CLOC tower (region-text contrastive + grounding, Chen et
             al. 2025), frozen, under the organism's stage 2 (``spatialkit.models.encoder_swap``): the same
             checkpoints notebook 05 trains, with 05's stage-2 steps (``spatialkit.models.tower_store``); llava and
             prior only, never with ``local`` (both replace the stage-1 encoder)
* ``pin``    notebook 06's PIN insert (Dorkenwald et al. 2024), trained on the frozen plain organism for box outputs,
             applied to its visual tokens while it answers (``pin_store``; what an insert does to the rest of a
             model's answers when it is left on); alone (AdaptVis on top is measured anyway), never retrained
* AdaptVis   (Chen et al. 2025) the answer row's image-attention temperature, α1/α2/β tuned on the val split

    cfg = cell_config("loud+norm+2d")                     # preset("loud", visual_norm="rmsclip", ..., lm_posenc="mrope")
    sets = item_sets(cfg, n_items=600, n_tune=300)        # what / where_one / where_two (/ counter) items
    run = score_cell(vlm, sets, alphas=(0.5, 1, 2))       # option scores at the answer row, per α
    df = cell_results(run, adaptvis=tune_adaptvis(run, ...))   # one row per item x method, ``correct``

Scoring: every option of the organism's WhereBench questions is one word, so an option's log-likelihood is the
answer row's (the ``<ans>`` token's) log-probability of that word, exactly ``evaluate``'s ``score_options``; under
``scaling_vis`` that row is the row AdaptVis scales. One plain prefill plus that one row per α gives every α's
scores, and AdaptVis with any (α1, α2, β) is a per-item choice among them (the gate reads the unscaled pass's
confidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from spatialkit.models.organism import preset
from spatialkit import world as scenes
from spatialkit.models.organism import scene_config, tasks_for
from spatialkit.analysis.interventions.adaptvis import scaled_answer_logits
from spatialkit.common.stats import bootstrap_ci
from spatialkit.common.stats import bootstrap_diff_ci, seed_item_bootstrap

#: the failing organisms a cell starts from, and the healthy control (the ceiling): llava_a / llava_b are the
#: LLaVA recipe on the WhatsUp Controlled-A / -B mirrors, judged on on/under and on front/behind
FAILING = ("llava", "loud", "prior", "llava_a", "llava_b")
HEALTHY = "healthy"
NEVER = "never"  # healthy's recipe never asked where (never_config)
#: the same-world ceiling of a failing organism that trains on another world than healthy's is healthy's recipe on
#: that world (ceiling_config), named "healthy_<organism>" (ceiling_cell): prior's, llava_a's and llava_b's
CONTROLS = (HEALTHY, NEVER, *(f"{HEALTHY}_{o}" for o in FAILING))  # cells that are not a failing organism + fixes
#: fixes in their canonical order inside a cell name: training-time fixes, then PIN (an insert trained on the frozen
#: organism, applied while it answers)
FIX_ORDER = ("local", "cloc", "norm", "normtext", "2d", "pin")
#: +Normalize's scale at this LM's text-token norm (the ``loud_norm_text`` preset's ``visual_norm_scale``)
TEXT_NORM_SCALE = 8.0
TOWER_FIXES = ("cloc",)  # fixes that swap the vision tower: the cell loads a tower_store checkpoint, not a preset
#: fixes added to the frozen plain organism, not trained into it: the cell loads notebook 06's PIN insert for the
#: organism (a pin_store checkpoint) and applies it to the visual tokens while the cell answers
INSERT_FIXES = ("pin",)
POSENC_2D = ("mrope", "rope2d")
FIX_LABELS = {"local": "localized stage 1", "cloc": "CLOC tower", "norm": "+Normalize",
              "normtext": "+Normalize (text norm)", "2d": "2D position code",
              "pin": "PIN insert", "adaptvis": "AdaptVis"}
# a fix that is already part of an organism's recipe is not a fix there
NOT_APPLICABLE = {("loud", "local"): "loud's stage 1 is already the localized (max-pooled) one",
                  ("loud", "cloc"): "the CLOC tower replaces the LLaVA recipe's frozen encoder (llava, prior); loud's "
                                    "failure is its loud projected tokens"}
#: fixes that cannot go together, and why
EXCLUSIVE = {("local", "cloc"): "both replace the stage-1 encoder", ("norm", "normtext"): "both set the visual norm"}
METRICS = ("what", "where_one", "where_two", "counter", "on_under", "depth")
WHERE_TASKS = ("where_one", "where_two")
#: the WhatsUp mirrors' own relations (on/under; front/behind by occlusion), each a metric of its own; their
#: four-way mixed questions ("whatsup_a" / "whatsup_b") repeat left/right and are not scored here
MIRROR_TASKS = ("on_under", "depth")


def fix_overrides(fix: str, posenc_2d: str = "mrope") -> dict:
    """The preset overrides that train ``fix`` into an organism."""
    if fix == "2d":
        if posenc_2d not in POSENC_2D:
            raise ValueError(f"posenc_2d must be one of {POSENC_2D}, got {posenc_2d!r}")
        return {"lm_posenc": posenc_2d}
    if fix == "norm":
        return {"visual_norm": "rmsclip", "visual_norm_scale": 1.0}
    if fix == "normtext":
        return {"visual_norm": "rmsclip", "visual_norm_scale": TEXT_NORM_SCALE}
    if fix == "local":
        return {"vision_pretrain_pool": "max"}
    if fix in ("cloc", "pin"):  # a tower swap / an insert, not a preset change: the catalog's grid_cell_checkpoint
        return {}
    raise ValueError(f"unknown training fix {fix!r}; known: {', '.join(FIX_ORDER)}")


def parse_cell(cell: str) -> tuple[str, tuple[str, ...]]:
    """``"loud+2d+norm"`` -> ("loud", ("norm", "2d")): the organism and its fixes in canonical order."""
    organism, *fixes = str(cell).split("+")
    if organism not in FAILING:
        raise ValueError(f"cell {cell!r}: organism must be one of {FAILING}, got {organism!r}")
    unknown = [f for f in fixes if f not in FIX_ORDER]
    if unknown or len(set(fixes)) != len(fixes):
        raise ValueError(f"cell {cell!r}: fixes must be distinct, from {FIX_ORDER}; got {fixes}")
    for f in fixes:
        if (organism, f) in NOT_APPLICABLE:
            raise ValueError(f"cell {cell!r}: {NOT_APPLICABLE[(organism, f)]}")
    for pair, why in EXCLUSIVE.items():
        if set(pair) <= set(fixes):
            raise ValueError(f"cell {cell!r}: {' and '.join(pair)}: {why}")
    if set(fixes) & set(INSERT_FIXES) and len(fixes) > 1:
        raise ValueError(f"cell {cell!r}: PIN's insert trains on the frozen failing organism (notebook 06's recipe), "
                         "so it goes with no training-time fix (AdaptVis on top is measured anyway)")
    return organism, tuple(f for f in FIX_ORDER if f in fixes)


def is_tower_cell(cell: str) -> bool:
    """Whether ``cell`` swaps the vision tower (loads notebook 05's swapped organism, not a preset)."""
    return cell not in CONTROLS and any(f in TOWER_FIXES for f in parse_cell(cell)[1])


def is_insert_cell(cell: str) -> bool:
    """Whether ``cell`` is the frozen plain organism with notebook 06's PIN insert applied (``INSERT_FIXES``)."""
    return cell not in CONTROLS and any(f in INSERT_FIXES for f in parse_cell(cell)[1])


def cell_name(organism: str, fixes: Iterable[str]) -> str:
    fixes = tuple(f for f in FIX_ORDER if f in set(fixes))
    return "+".join((organism, *fixes))


def cell_overrides(cell: str, posenc_2d: str = "mrope") -> tuple[str, dict]:
    """(preset name, overrides) of a cell: the failing organism's preset plus each fix's overrides."""
    organism, fixes = parse_cell(cell)
    over: dict = {}
    for f in fixes:
        over.update(fix_overrides(f, posenc_2d))
    return organism, over


ZOOS = ("zoo", "smoke")  # the zoo presets, or their smoke-sized twins (smoke_llava, ...; healthy -> smoke)


def preset_name(organism: str, zoo: str = "zoo") -> str:
    """The preset of ``organism`` (a failing one or "healthy") in ``zoo``."""
    if zoo not in ZOOS:
        raise ValueError(f"zoo must be one of {ZOOS}, got {zoo!r}")
    if zoo == "zoo":
        return organism
    return "smoke" if organism == HEALTHY else f"smoke_{organism}"


def cell_config(cell: str, posenc_2d: str = "mrope", seed: int = 0, zoo: str = "zoo"):
    """The ``OrganismConfig`` a cell trains (``preset(organism, seed=seed, **overrides)``); a tower cell
    (``is_tower_cell``) has none: it loads a ``tower_store`` checkpoint (its spec: the catalog's
    ``grid_cell_checkpoint``)."""

    if is_tower_cell(cell):
        raise ValueError(f"cell {cell!r} swaps the vision tower: load it with tower_store.load_swapped(spec)")
    if is_insert_cell(cell):
        raise ValueError(f"cell {cell!r} is the frozen organism with PIN's insert: load it with "
                         "pin_store.load_insert(spec)")
    organism, over = cell_overrides(cell, posenc_2d)
    if over and prior_answers_val(world_of(organism, zoo)):
        # a fix cell on a world whose val the prior answers trains its whole schedule (no early stop on that val);
        # the plain cell keeps its preset (notebooks 00-04 load the same checkpoint; it never reaches the stop)
        over["target"] = None
    return preset(preset_name(organism, zoo), seed=seed, **over)


def healthy_config(seed: int = 0, zoo: str = "zoo"):
    """The ceiling: the healthy organism (the quick recipe under its zoo name)."""

    return preset(preset_name(HEALTHY, zoo), seed=seed)


def world_of(organism: str, zoo: str = "zoo") -> str:
    """The scene world (``data.scene_preset``) of a failing organism's preset in ``zoo``."""
    if organism not in FAILING:
        raise ValueError(f"organism must be one of {FAILING}, got {organism!r}")
    return preset(preset_name(organism, zoo)).data.scene_preset


def prior_answers_val(world: str) -> bool:
    """Whether ``world``'s relations follow the object kinds (``prior_relations``): its val items, drawn as the
    world draws them, are then mostly answered by the prior, so a val accuracy reached there does not show that
    the model reads where from the image, and an early stop on it would stop a model before it has (see
    ``cell_config`` and ``ceiling_config``)."""
    return bool(scenes.PRESETS[world].prior_relations)


def where_metrics(world: str) -> tuple[str, ...]:
    """The where-measurements of ``world``'s items: one- and two-object relations, and a WhatsUp mirror's own
    relation (``MIRROR_TASKS``)."""
    tasks = tasks_for(scenes.PRESETS[world])
    return WHERE_TASKS + tuple(t for t in MIRROR_TASKS if t in tasks)


#: how the book names each judged metric to a reader
METRIC_WORDS = {"counter": "counter-prior where_two", "on_under": "on/under", "depth": "front/behind"}


def judged_metric(organism: str, zoo: str = "zoo") -> str:
    """The where-measurement a failing organism is judged on, from its world: counter-prior where_two where the
    relations follow the kinds (the as-drawn items are mostly answered by the prior), a WhatsUp mirror's own
    relation (on_under, depth), else two-object relations (where_two)."""
    world = world_of(organism, zoo)
    if prior_answers_val(world):
        return "counter"
    mirror = [t for t in where_metrics(world) if t in MIRROR_TASKS]
    return mirror[0] if mirror else "where_two"


def check_grid(cells: Sequence[str]) -> list[str]:
    """The failing organisms of a grid (in ``FAILING`` order), after checking ``cells``: every cell parses, and
    every organism in it has its plain cell and at least one fix cell (AdaptVis alone can be tuned to plain
    attention, leaving no fix to rank). A one-line ValueError naming the parameter otherwise."""
    parsed = [parse_cell(c) for c in cells]
    organisms = [o for o in FAILING if any(p[0] == o for p in parsed)]
    missing = [o for o in organisms if (o, ()) not in parsed]
    if missing:
        raise ValueError(f"parameter 'cells' must hold the plain cell of every failing organism it fixes; missing: "
                         f"{missing}")
    unfixed = [o for o in organisms if not any(p[0] == o and p[1] for p in parsed)]
    if unfixed:
        raise ValueError(f"parameter 'cells' must hold at least one fix cell beside the plain cell of every organism "
                         f"in it (e.g. '{unfixed[0]}+2d'); only a plain cell: {unfixed}")
    return organisms


def ceiling_cell(organism: str, zoo: str = "zoo") -> str:
    """The control whose accuracy is ``organism``'s ceiling: healthy when the organism lives in healthy's world,
    else ``healthy_<organism>``, healthy's recipe on the organism's own world (``ceiling_config``)."""
    same = world_of(organism, zoo) == healthy_config(0, zoo).data.scene_preset
    return HEALTHY if same else f"{HEALTHY}_{organism}"


def ceiling_config(organism: str, seed: int = 0, zoo: str = "zoo"):
    """The config of ``ceiling_cell(organism)``: the healthy organism's recipe (preset, schedule) with
    ``organism``'s scene world. Why: a ceiling measured on another world's items is not a ceiling for this
    organism's items (prior's counter-prior items exist only in its world), and on its own world healthy's recipe
    -- a localized stage 1, a schedule long enough to learn where -- shows what this world allows. On a world whose
    val items the prior answers (``prior_answers_val``) it trains its whole schedule: no early stop."""

    world, healthy = world_of(organism, zoo), healthy_config(seed, zoo)
    if world == healthy.data.scene_preset:
        return healthy
    over = {"target": None} if prior_answers_val(world) else {}
    pretrain_world = preset(preset_name(organism, zoo)).optim.vision_pretrain_world
    if pretrain_world not in (None, world):  # stage 1 on the world the organism's own stage 1 trains on
        over["vision_pretrain_world"] = pretrain_world
    return healthy.replace(scene_preset=world, **over)


# the fields that set how long an organism trains and what its early stop reads, not what it learns or from what
SCHEDULE_FIELDS = ("optim.steps", "optim.target", "optim.eval_every", "optim.warmup_frac", "optim.lr_schedule",
                   "data.n_val", "data.n_test")


def recipe_differences(cfg, other) -> dict[str, tuple]:
    """The fields ("section.field") in which two organism configs differ: {field: (cfg's value, other's)}."""

    def flat(d: Mapping, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
        return out

    a, b = flat(cfg.to_dict()), flat(other.to_dict())
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def same_recipe(cfg, other) -> bool:
    """Whether two organism configs differ at most in their schedule (``SCHEDULE_FIELDS``): the same model, world,
    objectives and seed, trained for another number of steps or stopped by another rule. Why: a fix cell that is
    its ceiling's own recipe on a shorter schedule (``llava+local`` and healthy) is not a fix of another kind, so
    its gap to the ceiling measures the schedule, not a limit of the fix."""
    return set(recipe_differences(cfg, other)) <= set(SCHEDULE_FIELDS)


def ceiling_recipe_arms(configs: Mapping[str, object], organism: str, zoo: str = "zoo") -> set[tuple[str, str]]:
    """The plain (cell, "plain") arms of ``organism`` that are its ceiling's own recipe (``same_recipe``; tower
    cells never are: they swap the encoder). ``configs``: each trained cell's OrganismConfig, the ceiling's
    (``ceiling_cell``) among them. Notebook 07 leaves these arms out of "a fix of another kind"."""
    ceiling = configs[ceiling_cell(organism, zoo)]
    return {(cell, "plain") for cell, cfg in configs.items()
            if cell.split("+")[0] == organism and not is_tower_cell(cell) and same_recipe(cfg, ceiling)}


def never_config(seed: int = 0, zoo: str = "zoo"):
    """The healthy recipe never asked a where-question (``spatial_fraction`` 0, ``target`` None: no early stop):
    an organism that never learned a relation, for AdaptVis to steer. It trains the failing organisms' budget
    (llava's steps): healthy's own longer schedule is there to let it learn where, which this one never sees."""

    steps = preset(preset_name(FAILING[0], zoo)).optim.steps
    return preset(preset_name(HEALTHY, zoo), seed=seed, target=None, spatial_fraction=0.0, steps=steps)


def fix_label(fixes: Sequence[str], adaptvis: bool = False) -> str:
    """"none", "2D position code", "+Normalize + AdaptVis", ..."""
    parts = [FIX_LABELS[f] for f in fixes] + (["AdaptVis"] if adaptvis else [])
    return " + ".join(parts) if parts else "none"


# --------------------------------------------------------------------------------------------------- items

@dataclass
class ItemSet:
    """Held-out multiple-choice items of one world, grouped by metric, with their images (rendered once)."""

    world: object
    items: dict[str, dict[str, list]] = field(default_factory=dict)  # split -> metric -> WhereBench items
    images: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def count(self, split: str = "test") -> dict[str, int]:
        return {m: len(v) for m, v in self.items.get(split, {}).items()}


def item_sets(cfg, n_items: int, n_tune: int, n_counter: int = 0) -> ItemSet:
    """What / where_one / where_two items of ``cfg``'s world (and a WhatsUp mirror's own relation, on_under or
    depth) on the test split (``n_items`` in all, balanced over the world's tasks) and the val split (``n_tune``,
    for choosing AdaptVis' settings and the best fix), plus ``n_counter`` counter-prior where_two items per split
    when the world has prior relations."""

    sc = scene_config(cfg)
    tasks = tuple(t for t in tasks_for(sc) if t not in ("whatsup_a", "whatsup_b"))  # see MIRROR_TASKS
    bench = scenes.build_wherebench(seed=cfg.data.bench_seed, n_train=0, n_val=n_tune, n_test=n_items, config=sc,
                                    tasks=tasks)
    out = ItemSet(world=sc)
    for split in ("val", "test"):
        groups: dict[str, list] = {"what": [], **{t: [] for t in (*WHERE_TASKS, *MIRROR_TASKS)}}
        for it in bench.splits[split]:
            key = "what" if it.question.family == "what" else it.question.task
            if key in groups:
                groups[key].append(it)
        out.items[split] = {k: v for k, v in groups.items() if v}
    if n_counter and sc.prior_relations:
        counter = scenes.build_wherebench(seed=cfg.data.bench_seed, n_train=0, n_val=n_counter, n_test=n_counter,
                                          config=sc, tasks=("where_two",), prior="counter")
        for split in ("val", "test"):
            out.items[split]["counter"] = list(counter.splits[split])
    for split, groups in out.items.items():
        out.images[split] = {k: np.stack([scenes.render_scene(it.scene_seed, sc).image for it in v])
                             for k, v in groups.items()}
    return out


# ------------------------------------------------------------------------------------------------- scoring

def option_ids(vlm, items) -> tuple[torch.Tensor, bool]:
    """((N, K) vocabulary id of each option's first word, -1 padding ragged lists; whether every option is one
    word)."""
    rows, single = [], True
    for it in items:
        ids = [vlm.vocab.encode(o) for o in it.question.options]
        single &= all(len(i) == 1 for i in ids)
        rows.append([i[0] for i in ids])
    k = max(len(r) for r in rows)
    return torch.tensor([r + [-1] * (k - len(r)) for r in rows], dtype=torch.long), single


@torch.no_grad()
def answer_row_scores(vlm, images, items, alpha: float = 1.0, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N, K), confidence (N,)): each option's log-likelihood as the answer (-inf pads ragged option
    lists) with the answer row's image logits scaled by ``alpha`` (ScalingVis; 1 = plain), and the AdaptVis gate's
    confidence (max softmax probability over the vocabulary at the answer row, rounded to 2 decimals).

    One-word options (the zoo's worlds): the answer row's log-probability of the word, exactly ``score_options``.
    Longer options (e.g. "dog house" on the default world): ``score_options``' plain score with its first word's
    term replaced by the scaled answer row's (the later words' rows are left unscaled)."""

    scores, conf = answer_row_scores_per_alpha(vlm, images, items, (alpha,), batch_size)
    return scores[float(alpha)], conf


@torch.no_grad()
def answer_row_scores_per_alpha(vlm, images, items, alphas: Sequence[float],
                                batch_size: int = 256) -> tuple[dict[float, np.ndarray], np.ndarray]:
    """``answer_row_scores`` for several α at once: ({α: scores (N, K)}, confidence (N,)). Per batch one plain
    prefill (vision tower and whole prompt: the confidence, α = 1 and the longer options' plain score), then
    per other α only the answer row, rerun alone over a copy of its cache with the image logits scaled
    (``scaled_answer_logits``): no earlier row attends to the answer row, so ScalingVis changes nothing
    before it. The same numbers as a whole scaled forward per α, up to the order of float sums (the padded
    batch's attention against one row's; tests/test_combine.py); ``benchmarks/bench_grid_scoring.py`` times
    both."""

    alphas = tuple(dict.fromkeys(float(a) for a in alphas))
    if not alphas or not len(items) or len(images) != len(items):
        raise ValueError(f"answer_row_scores: need at least one α and one item, and one image per item; got "
                         f"{len(alphas)} α, {len(items)} items, {len(images)} images")
    ids, single = option_ids(vlm, items)
    scores: dict[float, list] = {a: [] for a in alphas}
    conf = []
    for start in range(0, len(items), batch_size):
        chunk = items[start: start + batch_size]
        imgs = images[start: start + batch_size]
        prefill = vlm.prefill(imgs, [it.question.text for it in chunk])
        plain = prefill.first_logits.float().log_softmax(-1).cpu()
        cid = ids[start: start + batch_size]
        full = None
        if not single:
            full = vlm.score_options(imgs, [it.question.text for it in chunk],
                                     [list(it.question.options) for it in chunk]).float().cpu()
        for a in alphas:
            if a == 1.0:
                last = plain
            else:
                last = scaled_answer_logits(vlm, prefill, a).float().log_softmax(-1).cpu()
            s = last.gather(1, cid.clamp(min=0))
            if full is not None:
                s = full - plain.gather(1, cid.clamp(min=0)) + s
            s[cid < 0] = float("-inf")
            scores[a].append(s.numpy())
        conf.append(np.floor(plain.exp().max(-1).values.numpy() * 100 + 0.5) / 100)
    return {a: np.concatenate(v) for a, v in scores.items()}, np.concatenate(conf)


@dataclass
class CellRun:
    """Per split and metric: gold indices, and per α the option scores; the unscaled confidence."""

    gold: dict[tuple[str, str], np.ndarray]
    chance: dict[tuple[str, str], np.ndarray]
    scores: dict[tuple[str, str, float], np.ndarray]
    confidence: dict[tuple[str, str], np.ndarray]
    alphas: tuple[float, ...]

    def correct(self, split: str, metric: str, alpha: float = 1.0) -> np.ndarray:
        return (self.scores[(split, metric, alpha)].argmax(1) == self.gold[(split, metric)]).astype(float)

    def adaptvis_correct(self, split: str, metric: str, alpha1: float, alpha2: float, beta: float) -> np.ndarray:
        """Per item: AdaptVis' answer is right (α1 where the unscaled confidence < β, else α2)."""
        use1 = self.confidence[(split, metric)] < beta
        return np.where(use1, self.correct(split, metric, alpha1), self.correct(split, metric, alpha2))


def score_cell(vlm, sets: ItemSet, alphas: Sequence[float] = (1.0,), batch_size: int = 256) -> CellRun:
    """Scores of every item of ``sets`` under every α (1 always included): one forward per α and metric
    (``answer_row_scores_per_alpha``)."""
    alphas = tuple(sorted({1.0, *map(float, alphas)}))
    gold, chance, scores, conf = {}, {}, {}, {}
    for split, groups in sets.items.items():
        for metric, items in groups.items():
            gold[(split, metric)] = np.array([it.question.answer for it in items])
            chance[(split, metric)] = np.array([1.0 / len(it.question.options) for it in items])
            per_alpha, conf[(split, metric)] = answer_row_scores_per_alpha(vlm, sets.images[split][metric], items,
                                                                           alphas, batch_size)
            for a in alphas:
                scores[(split, metric, a)] = per_alpha[a]
    return CellRun(gold, chance, scores, conf, alphas)


def tune_adaptvis(run: CellRun, alpha1s: Sequence[float], alpha2s: Sequence[float], betas: Sequence[float],
                  metrics: Sequence[str] = WHERE_TASKS) -> dict:
    """The (α1, α2, β) with the best mean accuracy on the val split's ``metrics`` items (ties: the first, in the
    order plain settings first). α1 = α2 = 1 (plain) is always a candidate, so tuning never loses on val."""
    metrics = [m for m in metrics if ("val", m) in run.gold]
    best, best_acc = {"alpha1": 1.0, "alpha2": 1.0, "beta": 0.5}, -1.0
    for a1 in (1.0, *alpha1s):
        for a2 in (1.0, *alpha2s):
            for b in betas:
                if a1 not in run.alphas or a2 not in run.alphas:
                    raise ValueError(f"α {a1} / {a2} was not scored; score_cell(alphas=...) must include it")
                acc = float(np.mean(np.concatenate([run.adaptvis_correct("val", m, a1, a2, b) for m in metrics])))
                if acc > best_acc + 1e-12:
                    best, best_acc = {"alpha1": float(a1), "alpha2": float(a2), "beta": float(b)}, acc
    return {**best, "val_accuracy": best_acc}


def adaptvis_is_plain(settings: dict) -> bool:
    """True when tuned AdaptVis settings are plain attention (α1 = α2 = 1, whatever β): the "+ AdaptVis" arm is
    then its cell unchanged, so it is no fix -- a claim that AdaptVis does not help would hold by construction,
    and a "combination" with it would be the cell alone."""
    return float(settings["alpha1"]) == 1.0 and float(settings["alpha2"]) == 1.0


def cell_results(run: CellRun, cell: str, adaptvis: dict | None = None) -> pd.DataFrame:
    """One row per (split, metric, item, method): ``correct`` (0/1), ``chance``; methods "plain" and, with
    ``adaptvis`` settings, "adaptvis". ``cell`` is a grid cell or one of ``CONTROLS`` (its own organism)."""
    organism, fixes = (cell, ()) if cell in CONTROLS else parse_cell(cell)
    frames = []
    for (split, metric), gold in run.gold.items():
        methods = {"plain": run.correct(split, metric)}
        if adaptvis is not None:
            methods["adaptvis"] = run.adaptvis_correct(split, metric, adaptvis["alpha1"], adaptvis["alpha2"],
                                                       adaptvis["beta"])
        for method, correct in methods.items():
            frames.append(pd.DataFrame({"cell": cell, "organism": organism, "fixes": "+".join(fixes),
                                        "n_fixes": len(fixes) + (method == "adaptvis"), "method": method,
                                        "split": split, "metric": metric, "item": np.arange(len(gold)),
                                        "correct": correct, "chance": run.chance[(split, metric)]}))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------- summaries

def arm_label(fixes: str, method: str) -> str:
    """A grid arm's label: the fixes of a cell (``"norm+2d"``) plus the inference method."""
    return fix_label(tuple(f for f in fixes.split("+") if f), adaptvis=(method == "adaptvis"))


def summarize(results: pd.DataFrame, *, seed: int, n_boot: int, split: str = "test") -> pd.DataFrame:
    """Accuracy with a bootstrap CI per (organism, arm, metric) on ``split``: columns organism, cell, method,
    arm, n_fixes, metric, mean, low, high, n."""

    rows = []
    sub = results[results.split == split]
    for (organism, cell, method, metric), g in sub.groupby(["organism", "cell", "method", "metric"], sort=False):
        e = bootstrap_ci(g.correct.to_numpy(float), seed=seed, n_boot=n_boot)
        rows.append({"organism": organism, "cell": cell, "method": method, "arm": arm_label(g.fixes.iloc[0], method),
                     "n_fixes": int(g.n_fixes.iloc[0]), "metric": metric, "mean": e.mean, "low": e.low,
                     "high": e.high, "n": e.n})
    return pd.DataFrame(rows)


def paired(results: pd.DataFrame, a: tuple[str, str], b: tuple[str, str], metric: str, split: str = "test"):
    """(correct of arm a, correct of arm b) on the same items; an arm is (cell, method)."""
    def get(arm):
        g = results[(results.cell == arm[0]) & (results.method == arm[1]) & (results.metric == metric)
                    & (results.split == split)].sort_values("item")
        return g.correct.to_numpy(float)

    xa, xb = get(a), get(b)
    if xa.size == 0 or xa.shape != xb.shape:
        raise ValueError(f"arms {a} and {b} have no common {metric} items on {split}")
    return xa, xb


def gains(results: pd.DataFrame, *, seed: int, n_boot: int, split: str = "test") -> pd.DataFrame:
    """Every arm against its organism's plain failing cell, per metric (paired bootstrap CI on the same items):
    columns organism, cell, method, arm, n_fixes, metric, gain, low, high."""

    rows = []
    sub = results[results.split == split]
    for (organism, cell, method, metric), g in sub.groupby(["organism", "cell", "method", "metric"], sort=False):
        if cell == organism and method == "plain":
            continue
        a, b = paired(results, (cell, method), (organism, "plain"), metric, split)
        e = bootstrap_diff_ci(a, b, seed=seed, n_boot=n_boot)
        rows.append({"organism": organism, "cell": cell, "method": method, "arm": arm_label(g.fixes.iloc[0], method),
                     "n_fixes": int(g.n_fixes.iloc[0]), "metric": metric, "gain": e.mean, "low": e.low,
                     "high": e.high})
    return pd.DataFrame(rows)


def single_fix_changes(results: pd.DataFrame, organisms: Sequence[str], metric: str = "what", *, seed: int,
                       n_boot: int, split: str = "test", exclude: Iterable[tuple[str, str]] = ()) -> dict:
    """Each single fix's ``metric`` change against its organism's plain cell, paired on ``split``'s items:
    ``{arm label: {organism: ((cell, method), Estimate)}}``. A single fix is one training-time fix (its cell,
    plain) or AdaptVis alone (the plain cell with AdaptVis); arms in ``exclude`` (AdaptVis tuned to plain
    attention, ``adaptvis_is_plain``: the cell unchanged, so no fix) are left out. Labels follow ``FIX_ORDER``,
    AdaptVis last; organisms keep the order given."""
    left_out = set(map(tuple, exclude))
    sub = results[(results.split == split) & (results.metric == metric) & (results.n_fixes == 1)
                  & results.organism.isin(list(organisms))]
    arms = sub[["organism", "cell", "method", "fixes"]].drop_duplicates()
    order = {label: i for i, label in enumerate(FIX_LABELS[f] for f in FIX_ORDER)}
    changes: dict[str, dict] = {}
    for r in sorted(arms.itertuples(), key=lambda r: (order.get(arm_label(r.fixes, r.method), len(order)),
                                                      list(organisms).index(r.organism))):
        if (r.cell, r.method) in left_out:
            continue
        a, b = paired(results, (r.cell, r.method), (r.organism, "plain"), metric, split)
        changes.setdefault(arm_label(r.fixes, r.method), {})[r.organism] = (
            (r.cell, r.method), bootstrap_diff_ci(a, b, seed=seed, n_boot=n_boot))
    return changes


def best_arm(results: pd.DataFrame, organism: str, metric: str, n_fixes: Iterable[int], split: str = "val",
             exclude: Iterable[tuple[str, str]] = ()):
    """The (cell, method) of ``organism`` with the highest ``metric`` accuracy on ``split`` among arms with a
    number of fixes in ``n_fixes`` (chosen on val, reported on test, so the choice is not fitted to the test
    items), leaving out the (cell, method) arms in ``exclude`` (e.g. AdaptVis arms tuned to plain attention,
    ``adaptvis_is_plain``); None when there is no such arm."""
    wanted = set(n_fixes)
    left_out = set(map(tuple, exclude))
    sub = results[(results.organism == organism) & (results.metric == metric) & (results.split == split)
                  & results.n_fixes.isin(wanted)]
    if left_out:
        sub = sub[[(c, m) not in left_out for c, m in zip(sub.cell, sub.method)]]
    if sub.empty:
        return None
    acc = sub.groupby(["cell", "method"], sort=False).correct.mean()
    return tuple(acc.idxmax())


# ------------------------------------------------------------------------------------- training noise

def training_noise(correct: Mapping[tuple[str, int], Mapping[str, np.ndarray]], metrics: Sequence[str], *,
                   seed: int, n_boot: int) -> pd.DataFrame:
    """How far one draw of training moves a cell: replicate runs of one recipe that differ only in their training
    seed, scored on the same test items. ``correct[(recipe, training_seed)][metric]`` is a 0/1 array per item
    (the same items, in the same order, for every seed of a recipe).

    One row per (recipe, metric): ``seeds`` (how many), ``per_seed`` (each seed's accuracy, in seed order),
    ``range`` (the largest minus the smallest), the first seed's accuracy with the usual item-only CI
    (``first_*``, ``bootstrap_ci``: what a single-run cell reports), the mean over seeds with a CI that resamples
    seeds and items (``all_*``, ``seed_item_bootstrap``) and ``width_ratio``, the second CI's width over the
    first's. With fewer than two seeds there is no spread to measure: ValueError."""
    recipes: dict[str, list[int]] = {}
    for recipe, s in correct:
        recipes.setdefault(recipe, []).append(s)
    rows = []
    for recipe, seeds in recipes.items():
        seeds = sorted(seeds)
        if len(seeds) < 2:
            raise ValueError(f"recipe {recipe!r} has {len(seeds)} training seed(s); a spread needs at least 2")
        for metric in metrics:
            stacked = np.stack([np.asarray(correct[recipe, s][metric], dtype=float) for s in seeds])
            per_seed = stacked.mean(axis=1)
            first = bootstrap_ci(stacked[0], seed=seed, n_boot=n_boot)
            both = seed_item_bootstrap(stacked, seed=seed, n_boot=n_boot)
            first_width = first.high - first.low
            rows.append({"recipe": recipe, "metric": metric, "seeds": len(seeds),
                         "per_seed": [float(x) for x in per_seed], "range": float(per_seed.max() - per_seed.min()),
                         "first_mean": first.mean, "first_low": first.low, "first_high": first.high,
                         "all_mean": both.mean, "all_low": both.low, "all_high": both.high,
                         "width_ratio": (both.high - both.low) / first_width if first_width > 0 else float("nan"),
                         "n_items": stacked.shape[1]})
    return pd.DataFrame(rows)
