"""PIN (Dorkenwald et al., CVPR 2024): a Positional Insert that unlocks localisation in a frozen VLM.

    pin, metrics = load_or_train_pin(vlm, PinConfig(steps=300))   # trains only the insert (+ see below)
    with pin.applied(vlm):                                        # insert added to the visual tokens
        boxes = predict_boxes(vlm, images, prompts, readout=pin.readout_weight())
    # on exit the model is exactly the frozen model again (also when the body raised)

The insert is a fixed 2D sinusoidal table over the visual token grid passed through a small MLP; its output,
one vector per grid cell and the same for every image, is **added to the visual tokens**. It is trained with
next-token cross-entropy on the location tokens of "a {object} located at <ans> x1 y1 x2 y2", each coordinate
one of the organism's ``loc`` tokens (a 16-bin grid, as the paper's 16x16), while every weight of the VLM stays
frozen.

Where the insert goes. The paper adds it to the frozen vision encoder's output, before the connector (Flamingo's
Perceiver resampler, BLIP-2's Q-Former). We add it through ``VLM.visual_hook``, i.e. to the visual tokens as the
LM receives them, *after* the organism's projector: that is the one hook point every model kind of
``spatialkit.models.vlm`` shares, so the context manager works unchanged on the HF models. For the organism the only
difference is the projector, a frozen per-token 2-layer MLP (no mixing across tokens, unlike a resampler), so
"after" can express any per-position offset "before" could express additively. (LLaVA's projector is per-token too;
Qwen's merger mixes each 2x2 patch group into one token, so there "after" is one insert vector per merged token.)

Every model access goes through the ``VLM`` interface (``prepare``, ``visual_tokens``, ``visual_hook``,
``append_tokens``, ``lm_hidden``, ``output_embeddings``, ``location_token_ids``, ``score_options``), so the same
code trains and evaluates PIN on the organism and on a frozen Hugging Face VLM: there the location tokens are the
tokenizer's one-token spellings of the bin numbers (``HFVLM.location_token_ids``), and the training data must be
given (``location_set`` of a scene world at the model's image size). PIN's own parameters are kept in float32
(master weights) also for a bfloat16 model; they are cast to the model's dtype where they meet it.

The one extra trainable piece (counted honestly in ``trainable_parameters``). The organism's vocabulary holds
the ``loc`` tokens but the organism never produced them: their output rows in ``lm_head`` were only ever pushed
down. A frozen LM cannot put probability on a token whose unembedding row carries no information, so PIN here
also trains **the output rows of the location tokens** (n_loc x d numbers). They live in this module, never in the
frozen model: with the insert removed (and the ordinary ``lm_head``) the model is bit-identical to the frozen one.
``PinConfig(train_loc_rows=False)`` trains the insert alone against the frozen rows (the strict "nothing extra"
variant); ``PinConfig(use_insert=False)`` trains the rows alone (a control: how much localisation the frozen
model's states already carry without any insert).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from spatialkit.common import checkpoints
from spatialkit.common.boxes import box_iou
from spatialkit.common.params import check_number
from spatialkit.common.fingerprint import fingerprint
from spatialkit.models.organism.adapter import loc_token_ids  # noqa: F401  (a vocabulary's loc ids, kept here for callers)
from spatialkit.models.organism.model import state_dict_sha256
from spatialkit.models.posenc import sincos_2d
from spatialkit.models.vlm import VLM, Batch, VisualTokens
from spatialkit import world as scenes
from itertools import islice
from tqdm.auto import tqdm
from spatialkit.models.organism import scene_config
from spatialkit.models.evaluate import _render

__all__ = ["PinConfig", "PositionalInsert", "Pin", "train_pin", "load_or_train_pin", "LocationSet", "location_set", "location_batch",
           "box_to_bins", "bins_to_box", "box_iou", "predict_boxes", "predicted_ious", "what_scores", "frozen",
           "pin_code_version", "split_seeds", "data_sha256", "default_location_set", "pin_key", "pin_folder"]


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class PinConfig:
    """Everything that determines a trained insert (with the frozen model's identity, it keys the cache)."""

    n_train_scenes: int = 1000  # training scenes (every object of a scene is one example)
    steps: int = 300
    batch_size: int = 64
    lr: float = 3e-3  # AdamW, cosine decay to lr/100
    table_dim: int = 64  # width of the fixed sinusoidal grid table
    hidden: int = 64  # width of the insert MLP
    theta: float = 100.0  # sinusoid base: a 6x6 grid needs short wavelengths to tell cells apart
    use_insert: bool = True  # False: no insert at all (the loc-rows-only control)
    train_loc_rows: bool = True  # False: the loc tokens' output rows stay frozen
    seed: int = 0

    def __post_init__(self):
        for name, low, high in [("n_train_scenes", 1, 1_000_000), ("steps", 1, 10_000_000), ("batch_size", 1, 65_536),
                                ("table_dim", 4, 4096), ("hidden", 1, 65_536), ("seed", 0, 2**31 - 1)]:
            check_number(f"PinConfig.{name}", getattr(self, name), low, high, int)
        if self.table_dim % 4:
            raise ValueError(f"PinConfig.table_dim must be a multiple of 4 (2D sinusoids), got {self.table_dim}")
        for name, low, high in [("lr", 1e-6, 1.0), ("theta", 1.0, 1e6)]:
            check_number(f"PinConfig.{name}", getattr(self, name), low, high)
        if not self.use_insert and not self.train_loc_rows:
            raise ValueError("PinConfig: use_insert=False and train_loc_rows=False leaves nothing to train")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# the insert


class PositionalInsert(nn.Module):
    """Fixed 2D sinusoidal table over the visual grid -> Linear-GELU-Linear -> one vector per grid cell.

    The last layer starts at zero, so an untrained insert adds exactly nothing (training starts from the frozen
    model's own behaviour). ``forward(grid)`` -> (h*w, out_dim) in raster order, the same for every image.
    """

    def __init__(self, out_dim: int, table_dim: int = 64, hidden: int = 64, theta: float = 100.0):
        super().__init__()
        self.table_dim, self.theta = table_dim, theta
        self.mlp = nn.Sequential(nn.Linear(table_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def table(self, grid: tuple[int, int]) -> torch.Tensor:
        return sincos_2d(grid[0], grid[1], self.table_dim, self.theta).to(self.mlp[0].weight)

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        return self.mlp(self.table(grid))


class Pin(nn.Module):
    """A trained (or fresh) insert plus the location tokens' output rows, for one frozen organism.

    ``loc_rows`` (n_loc, d) start as a copy of the frozen ``lm_head`` rows of the loc tokens; they are a
    parameter only when ``config.train_loc_rows`` (else a buffer).
    """

    def __init__(self, vlm, config: PinConfig = PinConfig()):
        super().__init__()
        self.config = config
        lm_head = vlm.output_embeddings().weight
        self.register_buffer("loc_ids", vlm.location_token_ids().to(lm_head.device), persistent=False)
        with torch.random.fork_rng(devices=[]):  # the insert's init depends on the seed only
            torch.manual_seed(config.seed)
            self.insert = (PositionalInsert(lm_head.shape[1], config.table_dim, config.hidden, config.theta)
                           if config.use_insert else None)
        # float32 master weights also for a bfloat16/float16 model (cast where they meet the model)
        dtype = torch.promote_types(lm_head.dtype, torch.float32)
        rows = lm_head.detach()[self.loc_ids].clone().to(dtype)
        if config.train_loc_rows:
            self.loc_rows = nn.Parameter(rows)
        else:
            self.register_buffer("loc_rows", rows)
        self.to(device=lm_head.device, dtype=dtype)

    # -- what PIN adds ------------------------------------------------------------------------------
    def insert_for(self, grids: Sequence[tuple[int, int]]) -> torch.Tensor:
        """(sum h*w, d): the insert for every image of a batch, raster order, concatenated like VisualTokens."""
        per_grid = {g: self.insert(g) for g in set(grids)}
        return torch.cat([per_grid[g] for g in grids], 0)

    def add_to(self, vt: VisualTokens) -> VisualTokens:
        if self.insert is None:
            return vt
        return vt.replace(tokens=vt.tokens + self.insert_for(vt.grids).to(vt.tokens.dtype))

    @contextlib.contextmanager
    def applied(self, vlm):
        """Context manager: every forward of ``vlm`` inside sees the insert added to its visual tokens.

        Goes through ``vlm.visual_hook``, which removes the insert on exit, also when the body raises.
        """
        with vlm.visual_hook(self.add_to):
            yield vlm

    def readout_weight(self, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """The frozen unembedding with the loc tokens' rows replaced by PIN's (differentiable in ``loc_rows``)."""
        return lm_head_weight.detach().index_copy(0, self.loc_ids, self.loc_rows.to(lm_head_weight.dtype))

    def readout_logits(self, hidden: torch.Tensor, lm_head_weight: torch.Tensor) -> torch.Tensor:
        """Float32 logits (N, V) of final hidden states (N, d), read with :meth:`readout_weight`, without copying
        the (V, d) unembedding (1 GiB for a 7B model's vocabulary) or computing its gradient: the frozen rows'
        logits, then the loc tokens' columns recomputed from ``loc_rows`` (gradients reach ``loc_rows`` only)."""
        logits = F.linear(hidden, lm_head_weight.detach()).float()
        loc = F.linear(hidden.float(), self.loc_rows.float())
        return logits.index_copy(1, self.loc_ids, loc)

    def trainable_parameters(self) -> dict[str, int]:
        """Trainable numbers per piece: {'insert': ..., 'loc_rows': ...} (0 where frozen or absent)."""
        insert = sum(p.numel() for p in self.insert.parameters()) if self.insert is not None else 0
        rows = self.loc_rows.numel() if isinstance(self.loc_rows, nn.Parameter) else 0
        return {"insert": insert, "loc_rows": rows}


@contextlib.contextmanager
def frozen(module: nn.Module):
    """``requires_grad=False`` on every parameter of ``module`` inside, restored on exit (also on error)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# --------------------------------------------------------------------------------------------------
# data: "a {object} located at <ans> x1 y1 x2 y2" on the coarse grid


def box_to_bins(box, image_size: int, n_bins: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), x1/y1 exclusive -> bins of its first and last pixel on each axis."""
    x0, y0, x1, y1 = box
    cell = image_size / n_bins
    return (int(x0 // cell), int(y0 // cell), int((x1 - 1) // cell), int((y1 - 1) // cell))


def bins_to_box(bins, image_size: int, n_bins: int) -> tuple[float, float, float, float]:
    """Bins -> pixel box from the first bin's low edge to the last bin's high edge (corners sorted)."""
    bx0, by0, bx1, by1 = (int(b) for b in bins)
    bx0, bx1 = min(bx0, bx1), max(bx0, bx1)
    by0, by1 = min(by0, by1), max(by0, by1)
    cell = image_size / n_bins
    return (bx0 * cell, by0 * cell, (bx1 + 1) * cell, (by1 + 1) * cell)


@dataclass
class LocationSet:
    """One example per object: the scene image, the prompt, the gold box (pixels) and its bins."""

    images: np.ndarray  # (S, H, W, 3) uint8, one per scene
    image_index: np.ndarray  # (E,) which image each example uses
    prompts: list[str]  # (E,) "a red chick located at"
    boxes: np.ndarray  # (E, 4) float pixel boxes (full object extent)
    bins: np.ndarray  # (E, 4) long gold loc bins
    image_size: int
    n_bins: int

    def __len__(self) -> int:
        return len(self.prompts)


def location_set(scene_config, seeds: Sequence[int], n_bins: int) -> LocationSet:
    """Render ``seeds`` and make one location example per object."""

    images, index, prompts, boxes = [], [], [], []
    for slot, seed in enumerate(seeds):
        scene = scenes.render_scene(int(seed), scene_config)
        images.append(scene.image)
        for i, obj in enumerate(scene.objects):
            index.append(slot)
            prompts.append(f"{scene.region_caption(i)} located at")
            boxes.append(obj.box)
    size = scene_config.image_size
    bins = np.array([box_to_bins(b, size, n_bins) for b in boxes], dtype=np.int64)
    return LocationSet(np.stack(images), np.array(index), prompts, np.array(boxes, dtype=np.float64), bins, size,
                       n_bins)


def split_seeds(bench_seed: int, split: str, n: int) -> list[int]:
    """The first ``n`` scene seeds of a WhereBench split (train / val / test never share a scene)."""
    return list(islice(scenes.scene_seeds(bench_seed, split), n))


def data_sha256(data: LocationSet) -> str:
    """sha256 of everything a location set holds (images, prompts, boxes, bins): it keys the trained inserts."""
    h = hashlib.sha256()
    for array in (data.images, data.image_index, data.boxes, data.bins):
        array = np.ascontiguousarray(array)
        h.update(f"{array.dtype}|{array.shape}|".encode())
        h.update(array.tobytes())
    h.update("\n".join(data.prompts).encode())
    h.update(f"|{data.image_size}|{data.n_bins}".encode())
    return h.hexdigest()


def default_location_set(vlm, config: PinConfig) -> LocationSet:
    """The organism's own training scenes (``config.n_train_scenes`` of its world's train split). A model without
    an organism config (an HF VLM) has no world of its own: pass ``data`` to :func:`train_pin` instead."""
    organism = getattr(vlm, "config", None)
    if organism is None or not hasattr(organism, "data"):
        raise ValueError(f"{vlm.name} has no scene world of its own: pass data=location_set(scene_config, seeds, "
                         f"n_bins) to train_pin / load_or_train_pin")
    return location_set(scene_config(organism), split_seeds(organism.data.bench_seed, "train", config.n_train_scenes),
                        len(vlm.location_token_ids()))


def location_batch(vlm: VLM, images, prompts: Sequence[str], bins: np.ndarray | None = None
                   ) -> tuple[Batch, torch.Tensor | None]:
    """The prompts prepared with their images and, given gold ``bins`` (E, 4), the four loc tokens appended as
    the answer ("... located at <ans> x1 y1 x2 y2"): (batch, targets). ``targets`` (B, L) hold the gold loc token
    at the positions that predict one (the answer's last token predicts nothing), -100 elsewhere; None without
    ``bins``."""
    batch = vlm.prepare(images, prompts)
    if bins is None:
        return batch, None
    answers = vlm.location_token_ids().cpu()[torch.as_tensor(np.asarray(bins), dtype=torch.long)]
    batch = vlm.append_tokens(batch, answers.tolist())
    ids = batch.inputs["input_ids"]
    k, last = answers.shape[1], batch.last_index()
    rows = torch.arange(ids.shape[0], device=ids.device)
    targets = torch.full_like(ids, -100)
    for j in range(k):  # the j-th answer token sits at last - (k - 1) + j; the position before predicts it
        position = last - (k - 1) + j
        targets[rows, position - 1] = ids[rows, position]
    return batch, targets


# --------------------------------------------------------------------------------------------------
# training


def _lr(cfg: PinConfig, step: int) -> float:
    warm = max(1, cfg.steps // 10)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * min(1.0, progress))))


def train_pin(vlm, config: PinConfig = PinConfig(), *, data: LocationSet | None = None, progress: bool = True,
              log_every: int = 10, encode_batch_size: int = 256) -> tuple[Pin, dict]:
    """Train PIN on a frozen VLM: (Pin in eval mode, metrics with the loss curve).

    Only PIN's own parameters reach the optimizer; the model runs under ``frozen`` (no gradients, weights
    untouched). The frozen visual tokens of the training images are computed once (``encode_batch_size`` images
    at a time): the insert is added after them. ``data``: the training examples; None = the organism's own
    (:func:`default_location_set`; an HF VLM must be given them). Deterministic on CPU for a given (model, data,
    config): seeded init and a seeded numpy batch sampler.
    """
    model = vlm.model
    if data is None:
        data = default_location_set(vlm, config)
    if data.n_bins != len(vlm.location_token_ids()):
        raise ValueError(f"the location set has {data.n_bins} bins but {vlm.name} has "
                         f"{len(vlm.location_token_ids())} location tokens")
    pin = Pin(vlm, config)
    params = [p for p in pin.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, betas=(0.9, 0.98), weight_decay=0.0)
    was_training = model.training
    model.eval()
    losses, history = [], []
    rng = np.random.default_rng([config.seed, 6])
    per_image, grids = [], []
    with frozen(model), torch.no_grad():  # frozen visual tokens of every training image, once
        for i in range(0, len(data.images), encode_batch_size):
            chunk = data.images[i: i + encode_batch_size]  # any prompt: only the image reaches visual_tokens
            vt = vlm.visual_tokens(vlm.prepare(chunk, [data.prompts[0]] * len(chunk)))
            per_image += vt.per_image()
            grids += vt.grids
    try:
        with frozen(model):
            for step in tqdm(range(config.steps), desc="train PIN", disable=not progress, mininterval=2.0):
                for group in opt.param_groups:
                    group["lr"] = _lr(config, step)
                idx = rng.integers(0, len(data), size=config.batch_size)
                scenes_of = data.image_index[idx]
                vt = pin.add_to(VisualTokens(tokens=torch.cat([per_image[i] for i in scenes_of]),
                                             grids=[grids[i] for i in scenes_of]))
                batch, tgt = location_batch(vlm, data.images[scenes_of], [data.prompts[i] for i in idx], data.bins[idx])
                hidden = vlm.lm_hidden(batch, vt.tokens)
                has_target = tgt != -100
                logits = pin.readout_logits(hidden[has_target], vlm.output_embeddings().weight)
                loss = F.cross_entropy(logits, tgt[has_target])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                if (step + 1) % log_every == 0 or step + 1 == config.steps:
                    history.append({"step": step + 1, "loss": float(np.mean(losses[-log_every:]))})
    finally:
        model.train(was_training)
    pin.eval()
    metrics = {"history": history, "first_loss": losses[0], "final_loss": float(np.mean(losses[-log_every:])),
               "trainable": pin.trainable_parameters(), "optimizer_params": sum(p.numel() for p in params),
               "n_examples": len(data)}
    return pin, metrics


def pin_code_version() -> str:
    """The fingerprint of this module's import closure (the organism's code included): a change to either
    retrains the cached inserts."""
    return fingerprint("spatialkit.analysis.interventions.pin")


STORE_KIND = "pin"  # the checkpoint store's kind (folder prefix) of trained inserts


def pin_key(vlm, config: PinConfig, data: LocationSet, *, model_sha256: str | None = None) -> dict:
    """The checkpoint key of PIN trained with ``config`` on ``data`` for the frozen ``vlm``: the config, the
    model's weights (``model_sha256``, else computed: for a 7B model that reads its ~15 GB once), the training
    data (:func:`data_sha256`) and what the model makes of one example (its prepared token ids and visual grid:
    the tokenizer, chat template and image processor)."""
    probe = vlm.prepare(data.images[data.image_index[:1]], data.prompts[:1])
    return {"pin": config.to_dict(), "model": vlm.name, "model_sha256": model_sha256 or state_dict_sha256(vlm.model),
            "data_sha256": data_sha256(data), "prompt_ids": probe.inputs["input_ids"][0].tolist(),
            "grids": [list(g) for g in probe.grids], "location_ids": vlm.location_token_ids().tolist()}


def pin_folder(vlm, config: PinConfig, data: LocationSet, *, model_sha256: str | None = None):
    """The store folder that holds (or will hold) what :func:`load_or_train_pin` loads for the same arguments."""
    return checkpoints.checkpoint_dir(STORE_KIND, checkpoints.config_key(pin_key(vlm, config, data,
                                                                                 model_sha256=model_sha256),
                                                                         pin_code_version()))


def load_or_train_pin(vlm, config: PinConfig = PinConfig(), *, data: LocationSet | None = None,
                      allow_train: bool = True, progress: bool = True, encode_batch_size: int = 256,
                      model_sha256: str | None = None) -> tuple[Pin, dict]:
    """PIN for this frozen model, data and config from the checkpoint store (atomic, sha256-checked), else trained.

    The key: :func:`pin_key` (the config, the model's weights, the training data and what the model makes of one
    example); its folder: :func:`pin_folder`. ``data``: as in :func:`train_pin`.
    """
    if data is None:
        data = default_location_set(vlm, config)
    key = pin_key(vlm, config, data, model_sha256=model_sha256)
    built: dict = {}

    def do_train():
        pin, metrics = train_pin(vlm, config, data=data, progress=progress, encode_batch_size=encode_batch_size)
        built["pin"] = pin
        return pin.state_dict(), metrics

    state, metrics, _ = checkpoints.load_or_train(STORE_KIND, key, pin_code_version(), do_train,
                                                  allow_train=allow_train)
    if "pin" in built:
        return built["pin"], metrics
    pin = Pin(vlm, config)
    pin.load_state_dict({k: v.to(vlm.device) for k, v in state.items()}, strict=True)
    return pin.eval(), metrics


# --------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def predict_boxes(vlm, data: LocationSet, readout: torch.Tensor | None = None, *, batch_size: int = 256) -> np.ndarray:
    """Greedy decoding of the four coordinates, each restricted to the loc tokens: (E, 4) predicted bins.

    Runs through the VLM's visual hooks (so inside ``pin.applied(vlm)`` the insert is there). ``readout``: the
    unembedding to read logits with (``pin.readout_weight(...)``); None = the frozen ``lm_head``.
    """
    weight = vlm.output_embeddings().weight if readout is None else readout
    loc_ids = vlm.location_token_ids()
    out = np.zeros((len(data), 4), dtype=np.int64)
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        prompts = data.prompts[sl]
        batch, _ = location_batch(vlm, data.images[data.image_index[sl]], prompts)
        visual = vlm.visual_tokens(batch).tokens  # through active hooks (the insert, inside pin.applied)
        bins = np.zeros((len(prompts), 0), dtype=np.int64)
        for _ in range(4):  # re-run the short sequence with the coordinates chosen so far (no cache needed)
            step = batch
            if bins.shape[1]:  # the chosen loc tokens after <ans>
                step = vlm.append_tokens(batch, loc_ids.cpu()[torch.from_numpy(bins)].tolist())
            hidden = vlm.lm_hidden(step, visual)
            h = hidden[torch.arange(len(prompts), device=hidden.device), step.last_index()]
            logits = F.linear(h, weight[loc_ids])  # restricted to the loc tokens
            bins = np.concatenate([bins, logits.argmax(-1).cpu().numpy()[:, None]], 1)
        out[sl] = bins
    return out


def predicted_ious(data: LocationSet, bins: np.ndarray) -> np.ndarray:
    """IoU of each decoded predicted box with the gold pixel box."""
    pred = np.array([bins_to_box(b, data.image_size, data.n_bins) for b in bins])
    return box_iou(pred, data.boxes)


@torch.no_grad()
def what_scores(vlm, items, scene_config, *, batch_size: int = 256) -> torch.Tensor:
    """(n_items, K) option log-likelihoods of WhereBench items (through active hooks), for bit-identity checks.

    Ragged option lists are padded with -inf (as ``score_options`` does per batch).
    """

    k_max = max(len(it.question.options) for it in items)
    out = torch.full((len(items), k_max), float("-inf"))
    for start in range(0, len(items), batch_size):
        chunk = items[start: start + batch_size]
        images = np.stack([_render(it.scene_seed, scene_config).image for it in chunk])
        scores = vlm.score_options(images, [it.question.text for it in chunk], [list(it.question.options) for it in chunk])
        out[start: start + len(chunk), : scores.shape[1]] = scores.cpu()
    return out
