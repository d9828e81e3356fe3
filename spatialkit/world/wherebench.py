"""WhereBench: seeded train/val/test splits of balanced questions, prior-consistent / counter-prior splits,
and answerers that never look at the image (``prior_baselines``, ``blind_accuracy``).
"""

from __future__ import annotations
from dataclasses import dataclass, field
from typing import Iterable, Sequence
import numpy as np
from spatialkit.common.params import check_number
from spatialkit.world.questions import Question, make_questions
from spatialkit.world.scene import PRESETS, NAMES, RELATIONS_2D, RELATIONS_DEPTH, RELATIONS_ONE, Scene, SceneConfig, TASKS, render_scene
from spatialkit.world.scene import ALL_TASKS, RELATIONS_ON, prior_relation
from collections import Counter
import pandas as pd



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
            "count": tuple(str(k) for k in range(config.min_objects, config.max_objects + 1)),
            "on_under": RELATIONS_ON, "whatsup_a": ("left of", "right of") + RELATIONS_ON,
            "whatsup_b": ("left of", "right of") + RELATIONS_DEPTH}[task]


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
    prior: str | None = None  # val/test where_two items restricted to "consistent" / "counter" prior ones

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
    if task in ("on_under", "whatsup_a", "whatsup_b") and config.max_objects < 2:
        return "needs max_objects >= 2"
    if task in ("on_under", "whatsup_a") and config.layout != "whatsup_a":
        return "needs layout='whatsup_a' (only it rests one object on another)"
    if task == "whatsup_b" and not (config.occlusion or config.ground):
        return "needs occlusion=True or ground=True (otherwise depth is invisible)"
    return None


def build_wherebench(seed: int = 0, n_train: int = 2000, n_val: int = 400, n_test: int = 400,
                     config: SceneConfig = PRESETS["book"], tasks: Sequence[str] | None = None,
                     per_scene: int = 2, prior: str | None = None, balance_text: bool | None = None) -> WhereBench:
    """A fixed benchmark with disjoint train/val/test scene seeds and balanced answers.

    Each split gets ``n // len(tasks)`` items per task (the remainder goes to the first tasks);
    within a task every label (``task_labels``: relations, yes/no, colours, kinds, counts) gets an
    equal quota (filled by rejection: questions
    whose label quota is full are skipped); then the gold option is moved to position
    ``(label's index + number of earlier items of the same task and label) mod n_options``, so gold
    indices cycle within every stratum and are uniform over each task. At most ``per_scene`` items come from one scene.

    ``tasks`` defaults to ``config.tasks``, else ``TASKS``. ``prior`` ("consistent" | "counter", for worlds with
    ``prior_relations``) keeps in the val and test splits only the where_two items whose relation is (is not)
    the prior one of their kinds (``prior_status``); other tasks and the train split follow the world as drawn.
    ``balance_text`` (default: the config's ``balance_text``, on for the organism worlds ``organism_easy``,
    ``organism_whatsup_a``/``_b``, off otherwise, which keeps every older bench as it was) also balances the labels within each exact question text: an item is taken
    only while its label is among the least frequent ones of its text so far, so per text the label counts
    differ by at most one and no answerer that reads only the text can beat chance by more than
    (number of texts) / (items of the task), e.g. 20 / 400 = 5 points on where_two, 1.25 on color.
    """
    if balance_text is None:
        balance_text = config.balance_text
    tasks = tuple(config.tasks or TASKS) if tasks is None else tasks
    if prior not in (None, "consistent", "counter") or (prior is not None and not config.prior_relations):
        raise ValueError(f"build_wherebench: prior = {prior!r} is invalid; allowed: None, or 'consistent' / "
                         "'counter' for a config with prior_relations")
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        check_number(name, value, 0, 1_000_000, int)
    check_number("seed", seed, 0, None, int)
    if not tasks or any(t not in ALL_TASKS for t in tasks) or len(set(tasks)) != len(tasks):
        raise ValueError(f"build_wherebench: tasks = {tasks!r} is invalid; allowed: distinct items from {list(ALL_TASKS)}")
    unsupported = [t for t in tasks if task_problem(t, config)]
    if unsupported:
        raise ValueError("build_wherebench: tasks = " + repr(tuple(tasks)) + " is invalid for this config: "
                         + "; ".join(f"{t} {task_problem(t, config)}" for t in unsupported))
    check_number("per_scene", per_scene, 1, None, int)
    splits, tried = {}, {}
    for split, n in zip(SPLITS, (n_train, n_val, n_test)):
        keep = prior if split != "train" else None
        splits[split], tried[split] = _fill_split(seed, split, n, config, tuple(tasks), per_scene, keep,
                                                  bool(balance_text))
    return WhereBench(config, splits, seed, tried, prior)


def _fill_split(seed, split, n, config, tasks, per_scene, prior=None, balance_text=False) -> tuple[list[Item], int]:
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
    by_text: dict[tuple[str, str], dict[str, int]] = {}  # balance_text: label counts per (task, text)
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
            if prior is not None and prior_status(scene, q) not in (None, prior):
                continue
            if balance_text:
                labels = task_labels(q.task, config)
                if prior is not None and prior_status(scene, q) is not None:  # only the labels the filter keeps
                    rel = prior_relation(config, *(scene.objects[k].kind for k in q.objects))
                    labels = [l for l in labels if (l == rel) == (prior == "consistent")]
                per_text = by_text.setdefault((q.task, q.text), dict.fromkeys(labels, 0))
                if per_text[key[1]] > min(per_text.values()):
                    continue
                per_text[key[1]] += 1
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


def prior_baselines(bench: WhereBench, split: str = "test") -> dict[str, np.ndarray]:
    """Per-item 0/1 correctness of answerers that never look at the image.

    "first option": always picks option 0. "train prior": per task, the gold option text seen most
    often in the train split (ties broken alphabetically). "chance": the expected accuracy 1/#options.
    On a balanced benchmark all three sit at chance.
    """

    prior: dict[str, Counter] = {}
    for it in bench.splits["train"]:
        prior.setdefault(it.question.task, Counter())[it.question.gold] += 1
    items = bench.splits[split]
    first = np.array([it.question.answer == 0 for it in items], dtype=np.float64)
    guess = {t: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for t, c in prior.items()}
    train_prior = np.array([guess.get(it.question.task) == it.question.gold for it in items], dtype=np.float64)
    chance = np.array([1.0 / len(it.question.options) for it in items])
    return {"first option": first, "train prior": train_prior, "chance": chance}


def prior_status(scene: Scene, question: Question) -> str | None:
    """"consistent" / "counter" for a where_two question whose two kinds have a prior relation in the scene's
    config (``prior_relations``): is the gold relation the prior one? None for every other question."""
    if question.task != "where_two" or scene.config is None or not scene.config.prior_relations:
        return None
    i, j = question.objects
    rel = prior_relation(scene.config, scene.objects[i].kind, scene.objects[j].kind)
    if rel is None:
        return None
    return "consistent" if question.relation == rel else "counter"


def blind_answers(bench: WhereBench, split: str = "test") -> np.ndarray:
    """Per-item 0/1 correctness of the blind answerer: it sees only the question text and its options.

    Learned on the train split: for each option, how often it was the gold answer of the same question text
    (within the task, which the text and option words name) and, second, of the task; it picks the option
    with the highest (text count, task count), ties to the first option. On a world where the text says
    nothing about the answer it sits at chance; on a prior world it reads off the prior.
    """

    by_text: dict[tuple[str, str], Counter] = {}
    by_task: dict[str, Counter] = {}
    for it in bench.splits["train"]:
        q = it.question
        by_text.setdefault((q.task, q.text), Counter())[q.gold] += 1
        by_task.setdefault(q.task, Counter())[q.gold] += 1
    out = []
    for it in bench.splits[split]:
        q = it.question
        text, task = by_text.get((q.task, q.text), Counter()), by_task.get(q.task, Counter())
        pick = max(range(len(q.options)), key=lambda k: (text[q.options[k]], task[q.options[k]], -k))
        out.append(pick == q.answer)
    return np.array(out, dtype=np.float64)


def blind_accuracy(bench: WhereBench, split: str = "test") -> dict[str, dict[str, float]]:
    """The blind answerer (``blind_answers``) per task of ``split``: ``{task: {"accuracy", "chance", "n"}}``,
    chance = mean 1/#options. Within a few points of chance on a balanced world; on a prior world the
    where_two accuracy is the prior's strength."""
    correct = blind_answers(bench, split)
    out: dict[str, dict[str, float]] = {}
    for task in dict.fromkeys(it.question.task for it in bench.splits[split]):
        rows = [k for k, it in enumerate(bench.splits[split]) if it.question.task == task]
        out[task] = {"accuracy": float(correct[rows].mean()),
                     "chance": float(np.mean([1.0 / len(bench.splits[split][k].question.options) for k in rows])),
                     "n": len(rows)}
    return out
