"""The seeded two-stage trainer of the model organism.

    cfg = preset("quick", spatial_fraction=0.0)     # OrganismConfig (validated; see config.py)
    model, vocab, metrics = train(cfg)               # deterministic on CPU for a given config

Examples come from the scene world (``spatialkit.world``, see data.py): per training scene a caption, and its
WhereBench "what" and "where" questions, mixed per batch by ``cfg.data``'s fractions.

Two stages when ``cfg.optim.vision_pretrain_steps`` > 0 (the presets): first the vision encoder alone learns
which content words each image's caption contains (``pretrain_vision``; cached and shared between organisms that
differ only later, keyed by ``VISION_STAGE_FIELDS``), then the VQA stage below, with the encoder frozen when
``cfg.optim.vision_lr_scale`` is 0. With ``cfg.optim.packed`` an image's questions share one LM row
(``assemble_packed``), computed exactly as if alone.

Sequence layout (``TokenKind`` per position): [system words?] [<img> x N] [prompt words] <ans> [answer] <eos>;
the loss is next-token cross-entropy on the answer words and <eos> only.
"""

from __future__ import annotations
import contextlib
import math
import time
import numpy as np
import torch
import torch.nn.functional as F
from spatialkit.models.organism.model import TinyVLM, Vocab, to_pixels
from spatialkit.models.vlm import TokenKind
from spatialkit.common.fingerprint import fingerprint
from spatialkit.models.organism.config import OrganismConfig
from spatialkit.models.organism.data import Pool, assemble, assemble_packed, build_pool, build_vocab, caption_word_bags, sample_batch, wherebench
from spatialkit.common import checkpoints
from tqdm.auto import tqdm
from spatialkit.models.organism import OrganismVLM, accuracy_by_family, evaluate
from spatialkit.models.organism.model import state_dict_sha256



def lr_at(cfg: OrganismConfig, step: int, steps: int | None = None) -> float:
    """One-cycle over ``steps`` (default ``cfg.optim.steps``): linear warm-up to ``lr`` over ``warmup_frac`` of
    the steps, then cosine down to lr/100."""
    o = cfg.optim
    if o.lr_schedule == "constant":
        return o.lr
    steps = o.steps if steps is None else steps
    warm = max(1, int(o.warmup_frac * steps))
    if step < warm:
        return o.lr * (0.04 + 0.96 * step / warm)
    progress = (step - warm) / max(1, steps - warm)
    return o.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


# the fields (section.field) that determine the stage-1 vision encoder (its checkpoint key): organisms that
# differ only in the LM, the projector or the VQA mix share one pretrained encoder
VISION_STAGE_FIELDS = ("model.image_size", "model.patch_size", "model.vision_dim", "model.vision_layers",
                       "model.vision_heads", "model.vision_posenc", "model.vision_stem", "model.vision_embed_norm",
                       "data.loc_grid", "data.scene_preset", "data.bench_seed", "data.n_train_scenes", "seed",
                       "optim.vision_pretrain_steps", "optim.vision_pretrain_pool", "optim.vision_pretrain_labels", "optim.batch_size", "optim.lr",
                       "optim.lr_schedule", "optim.warmup_frac", "optim.weight_decay", "optim.grad_clip")


def _field(cfg: OrganismConfig, path: str):
    obj = cfg
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def stage1_config(cfg: OrganismConfig) -> OrganismConfig:
    """The organism whose world stage 1 trains on: ``cfg`` itself, or, with ``optim.vision_pretrain_world``
    naming another scene world, ``cfg`` on that world -- whose stage-1 encoder is then the one that world's
    organisms train (same ``VISION_STAGE_FIELDS``, same key), so it is shared, not trained twice."""
    world = cfg.optim.vision_pretrain_world
    if world is None or world == cfg.data.scene_preset:  # its own world: its own pool and vocabulary serve
        return cfg
    return cfg.replace(scene_preset=world, vision_pretrain_world=None)


def vision_stage_config(cfg: OrganismConfig) -> dict:
    stage1 = stage1_config(cfg)
    return {"stage": "vision_pretrain", **{path: _field(stage1, path) for path in VISION_STAGE_FIELDS}}


def resolve_device(device="cpu") -> torch.device:
    """A torch device; "auto" = cuda when present, else cpu."""
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def runtime_facts(device="cpu") -> dict:
    """What trained weights depend on although no config field holds it: torch's CPU thread count changes how
    matmul and reduction kernels split their sums (1 and 2 threads train different weights from the same seed),
    and the torch version changes kernels. Part of every organism / vision-stage checkpoint key. Training on a
    GPU adds its device type ("cuda"); CPU keys hold no device entry (they predate GPU training)."""
    facts = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if resolve_device(device).type != "cpu":
        facts["device"] = resolve_device(device).type
    return facts


def vision_checkpoint_config(cfg: OrganismConfig, device="cpu") -> dict:
    """The stage-1 encoder's checkpoint key: its own fields (shared by organisms that differ only later) plus
    the runtime facts."""
    return {**vision_stage_config(cfg), "runtime": runtime_facts(device)}


def vision_code_version() -> str:
    return fingerprint("spatialkit.models.organism.train")


def vision_checkpoint_folder(cfg: OrganismConfig, device="cpu"):
    """The store folder of ``cfg``'s stage-1 encoder trained on ``device`` with this process's thread count."""

    return checkpoints.checkpoint_dir("vision", checkpoints.config_key(vision_checkpoint_config(cfg, device),
                                                                       vision_code_version()))


def pretrained_vision(model: TinyVLM, cfg: OrganismConfig, pool: Pool, vocab: Vocab, progress: bool,
                      cache: bool, device="cpu") -> float:
    """Stage 1 into ``model.vision`` (from the checkpoint store when ``cache`` and present); its final loss.
    ``pool``/``vocab`` are ``cfg``'s; on another stage-1 world (``stage1_config``) that world's are built, only
    when stage 1 has to train."""
    stage1 = stage1_config(cfg)

    def pretrain():
        if stage1 is cfg:
            return pretrain_vision(model, cfg, pool, vocab, progress, device)
        stage1_vocab = build_vocab(stage1)
        return pretrain_vision(model, stage1, build_pool(stage1, stage1_vocab), stage1_vocab, progress, device)

    if not cache:
        return pretrain()[-1]

    def do_pretrain():
        losses = pretrain()
        return model.vision.state_dict(), {"final_loss": losses[-1], "steps": len(losses)}

    state, metrics, _ = checkpoints.load_or_train("vision", vision_checkpoint_config(cfg, device), vision_code_version(),
                                                  do_pretrain)
    model.vision.load_state_dict(state)
    return metrics["final_loss"]


def train_vision_stage(cfg: OrganismConfig, *, progress: bool = False, device="cpu") -> float:
    """Stage 1 alone, into the checkpoint store (unless there): what ``train(cfg, cache_vision=True)`` would load.
    Its final loss."""
    device = resolve_device(device)
    cfg = stage1_config(cfg)  # the world stage 1 trains on (the same key either way)
    vocab = build_vocab(cfg)
    pool = build_pool(cfg, vocab)
    model = TinyVLM(cfg.model_config(len(vocab))).to(device)
    return pretrained_vision(model, cfg, pool, vocab, progress, True, device)


def pretrain_vision(model: TinyVLM, cfg: OrganismConfig, pool: Pool, vocab: Vocab, progress: bool,
                    device="cpu") -> list[float]:
    """Train ``model.vision`` alone for ``cfg.optim.vision_pretrain_steps`` on "which caption words does this image
    have" (binary cross-entropy of pooled per-patch word logits, see ``vision_pretrain_pool``; the head is
    thrown away). Returns the losses. The encoder is re-initialised from its own seed first, so the result
    depends on ``VISION_STAGE_FIELDS`` only (not on the LM built around it); torch's global RNG is untouched.

    Why: the gradient that teaches the encoder what a ball looks like otherwise has to come back through the
    LM's attention, which at first looks nowhere in particular -- kinds were the organism's bottleneck. The
    objective is global (pooled, position-free) like CLIP's, so any spatial skill is still learned in stage 2.
    """

    m, o = cfg.model, cfg.optim
    bags = caption_word_bags(pool, vocab, phrases=o.vision_pretrain_labels == "phrases")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed + 1_000_003)
        fresh = type(model.vision)(m.image_size, m.patch_size, m.vision_dim, m.vision_layers, m.vision_heads,
                                   m.vision_posenc, stem=m.vision_stem, embed_norm=m.vision_embed_norm)
        fresh.apply(TinyVLM._init)
        head = torch.nn.Linear(m.vision_dim, bags.shape[1])
    device = resolve_device(device)
    head, bags = head.to(device), bags.to(device)
    model.vision.load_state_dict(fresh.state_dict())
    params = list(model.vision.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=o.lr, betas=(0.9, 0.98), weight_decay=o.weight_decay)
    rng = np.random.default_rng([cfg.seed, 23])
    losses = []
    for step in tqdm(range(o.vision_pretrain_steps), desc="pretrain vision", disable=not progress, mininterval=2.0):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step, o.vision_pretrain_steps)
        images = rng.integers(0, len(pool.images), size=o.batch_size)
        patches = model.vision(to_pixels(pool.images[images]).to(device))  # (B, N, d)
        logits = head(patches).amax(1) if o.vision_pretrain_pool == "max" else head(patches.mean(1))
        loss = F.binary_cross_entropy_with_logits(logits, bags[torch.from_numpy(images).to(device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses


def packed_hidden(model: TinyVLM, visual: torch.Tensor, ids, kind, pos, mask, attention_fn=None,
                  only: torch.Tensor | None = None) -> torch.Tensor:
    """Final hidden states of packed LM rows (``assemble_packed``'s ids, kind, pos, mask) with ``visual`` (U, N, d),
    one image per row: every question sits at the positions it would have alone in its own row. ``only``: as in
    ``TinyVLM.hidden`` (just ``hidden[only]``, computed with less work)."""
    positions = model.positions(kind)  # (B, L, 3) of the plain layout, re-indexed to each tail's own
    positions = positions.gather(1, pos[..., None].expand(-1, -1, 3).clamp(max=positions.shape[1] - 1))
    positions = torch.where(kind[..., None] == TokenKind.PAD, 0, positions)
    return model.hidden(None, ids, kind, visual=visual.flatten(0, 1), positions=positions, attn_mask=mask,
                        attention_fn=attention_fn, only=only)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (None: leave it). On a CPU shared with other jobs one
    thread is often several times faster than oversubscribed two."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train(cfg: OrganismConfig, *, progress: bool = True, fail_at_step: int | None = None, cache_vision: bool = False,
          threads: int | None = None, device="cpu") -> tuple[TinyVLM, Vocab, dict]:
    """Train an organism from scratch: (model in eval mode, vocab, metrics).

    Deterministic on CPU for a given config (seeded init, seeded numpy sampler, no dropout). Evaluates on the
    val split every ``eval_every`` steps and stops early once every trained family reaches ``target``.
    ``fail_at_step`` raises inside the loop (tests use it to simulate a run killed midway). ``threads`` sets
    torch's thread count for the run. ``cache_vision`` takes the stage-1 vision encoder from the checkpoint
    store (and stores it) -- the same weights, without paying for them again. ``device`` ("cpu", "cuda", "auto")
    is where both stages train (the model is initialised on the CPU, so a seed gives one init everywhere); the
    model comes back on it.
    """
    with torch_threads(threads):
        return _train(cfg, progress, fail_at_step, cache_vision, resolve_device(device))


def _train(cfg: OrganismConfig, progress: bool, fail_at_step: int | None,
           cache_vision: bool, device: torch.device = torch.device("cpu")) -> tuple[TinyVLM, Vocab, dict]:


    t0 = time.perf_counter()
    bench = wherebench(cfg)
    vocab = build_vocab(cfg)
    pool = build_pool(cfg, vocab)
    t_data = time.perf_counter() - t0

    torch.manual_seed(cfg.seed)
    model = TinyVLM(cfg.model_config(len(vocab))).to(device)
    o, d = cfg.optim, cfg.data
    pretrain_loss = (pretrained_vision(model, cfg, pool, vocab, progress, cache_vision, device)
                     if o.vision_pretrain_steps else None)
    t_pretrain = time.perf_counter() - t0 - t_data
    groups = []
    for is_vision in (False, True):
        named = [(n, p) for n, p in model.named_parameters() if n.startswith("vision.") == is_vision]
        scale = o.vision_lr_scale if is_vision else 1.0
        groups += [{"params": [p for n, p in named if p.dim() >= 2], "weight_decay": o.weight_decay, "lr_scale": scale},
                   {"params": [p for n, p in named if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    frozen_features = None
    if o.vision_lr_scale == 0:
        model.vision.requires_grad_(False)
        with torch.no_grad():  # the encoder's output for every pool image, computed once (~1 s per 1000 images)
            frozen_features = torch.cat([model.vision(to_pixels(pool.images[i: i + 256]).to(device))
                                         for i in range(0, len(pool.images), 256)])
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=o.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng(cfg.seed)
    n_img = cfg.model.grid[0] * cfg.model.grid[1]
    trained = [f for f in ("what", "where") if f != "where" or d.spatial_fraction > 0]
    if d.caption_fraction + d.spatial_fraction >= 1.0:
        trained = [f for f in trained if f != "what"]
    vlm = OrganismVLM(model, vocab, cfg, device=device)
    history, losses, eval_times, stopped_early = [], [], [], False
    bar = tqdm(range(o.steps), desc="train organism", disable=not progress, mininterval=2.0)
    step = 0
    for step in bar:
        if fail_at_step is not None and step == fail_at_step:
            raise RuntimeError(f"simulated failure at step {step}")
        model.train()
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step) * group["lr_scale"]
        idx = sample_batch(cfg, pool, rng)
        # the system prompt is drawn per batch, not per row: a batch is padded to its longest row, so mixing
        # rows with and without the ~17-word prompt would make every step pay for it
        with_system = np.full(len(idx), rng.random() < d.system_prompt_fraction)
        # encode each distinct image once, then hand every row its image's visual tokens
        images, which = np.unique(pool.image_index[idx], return_inverse=True)
        if frozen_features is not None:  # frozen encoder: its outputs were computed once, only the projector runs
            tokens = model.projector(frozen_features[torch.from_numpy(images).to(device)])
        else:
            tokens = model.encode_image(to_pixels(pool.images[images]).to(device))  # (U, N, d)
        # the loss reads the final states at the answer positions only (about 1 in 7): the LM's last block
        # computes just those (``only``; the same forward, 1.3x faster steps, benchmarks/bench_step.py)
        if o.packed:  # one LM row per distinct image, holding all of its questions
            groups = [np.flatnonzero(which == u) for u in range(len(images))]
            ids, kind, tgt, pos, mask = (t.to(device) for t in assemble_packed(
                vocab, n_img, [idx[g] for g in groups], pool.tails, pool.targets, bool(with_system[0])))
            has_target = tgt != -100
            hidden = packed_hidden(model, tokens, ids, kind, pos, mask, only=has_target)
        else:
            ids, kind, tgt = (t.to(device) for t in assemble(vocab, n_img, pool.tails[idx], pool.targets[idx],
                                                             with_system))
            has_target = tgt != -100
            hidden = model.hidden(None, ids, kind, only=has_target,
                                  visual=tokens[torch.from_numpy(which.reshape(-1)).to(device)].flatten(0, 1))
        loss = F.cross_entropy(model.lm_head(hidden), tgt[has_target])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % o.eval_every == 0 or step + 1 == o.steps:
            model.eval()
            acc = accuracy_by_family(evaluate(vlm, bench, "val"))
            history.append({"step": step + 1, "loss": float(np.mean(losses[-o.eval_every:])), **acc})
            eval_times.append(time.perf_counter() - t0)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", **{k: f"{v:.2f}" for k, v in acc.items()})
            if o.target is not None and trained and all(acc.get(f, 0.0) >= o.target for f in trained):
                stopped_early = step + 1 < o.steps
                break
    bar.close()
    model.requires_grad_(True)  # undo the stage-2 freeze: later users (PIN, exercises) expect a normal module
    model.eval()

    # everything but "timing" is deterministic for a given config (the determinism test compares it)
    metrics = {"history": history, "steps_run": step + 1, "stopped_early": stopped_early,
               "timing": {"total_s": time.perf_counter() - t0, "data_s": t_data, "vision_pretrain_s": t_pretrain,
                          "at_eval_s": eval_times},
               "vision_pretrain_final_loss": pretrain_loss,
               "final_loss": losses[-1] if losses else None, "state_sha256": state_dict_sha256(model),
               "n_examples": int(len(pool.family)), "n_scenes": int(len(pool.images))}
    return model, vocab, metrics
