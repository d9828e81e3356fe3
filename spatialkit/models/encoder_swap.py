"""The LLaVA recipe with another vision tower: a tiny CLIP / CLOC image encoder, frozen, under an organism's LM.

    vlm, metrics = train_or_load_swapped(preset("llava", seed=0), clip_model, encoder_key="clip-seed0")
    evaluate(vlm, wherebench(vlm.config), "test")

The organism's stage 1 (``spatialkit.models.organism.train``) trains its own ViT on caption words; here that
stage is skipped and the encoder of a ``spatialkit.models.clip.TinyCLIP`` (CLIP or CLOC, trained on the same
scene world at the organism's image size) takes its place, frozen, exactly as LLaVA freezes a CLIP tower. Stage 2
is the organism's own trainer, unchanged: the projector and the LM learn the organism's captions and
what/where questions from the frozen encoder's patch tokens. So two organisms that differ only in the encoder
(CLIP's global image-text objective vs CLOC's added region-text and grounding losses) answer whether the
encoder's training objective decides whether the VLM learns *where*.

How the tower is swapped in without a second trainer: ``train`` builds its ``TinyVLM`` through the name
``spatialkit.models.organism.train.TinyVLM``; for the call it is bound to a subclass whose ``vision`` is the
wrapped CLIP encoder (``CLIPVisionTower``: organism pixels in [-1, 1] -> the CLIP encoder's [0, 1] input ->
its final patch tokens, with ``grid``). The config must have ``vision_pretrain_steps`` 0 (nothing to pretrain),
``vision_lr_scale`` 0 (frozen) and ``vision_dim`` = the encoder's width (the projector's input); ``swap_config``
sets them. Checkpoints go through the store (kind "swap"), keyed by the organism config, the encoder's key
(which encoder, from which training run) and the code of this module's import closure.
"""

from __future__ import annotations

import contextlib
import copy
import importlib

import torch
import torch.nn as nn

from spatialkit.common import checkpoints
from spatialkit.common.fingerprint import fingerprint
from spatialkit.models.clip import CLIPConfig, TinyCLIP, data_fingerprint
from spatialkit.models.organism import OrganismVLM
from spatialkit.models.organism.train import resolve_device, runtime_facts, torch_threads
from spatialkit.models.organism.config import OrganismConfig
from spatialkit.models.organism.data import build_vocab
from spatialkit.models.organism.model import TinyVLM

# the trainer's module (the package re-exports its ``train`` function under the same name)
organism_train = importlib.import_module("spatialkit.models.organism.train")


class CLIPVisionTower(nn.Module):
    """A ``TinyCLIP`` image encoder as an organism vision tower: (B, 3, H, W) pixels in [-1, 1] (``to_pixels``)
    -> (B, g*g, width) final patch tokens, raster order; ``grid`` = (g, g)."""

    def __init__(self, image_encoder: nn.Module):
        super().__init__()
        self.encoder = image_encoder
        self.grid = (image_encoder.grid, image_encoder.grid)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.encoder((pixels + 1.0) / 2.0)  # CLIP's encoder takes [0, 1] and maps it to [-1, 1] itself


def swap_config(cfg: OrganismConfig, clip_model: TinyCLIP | CLIPConfig) -> OrganismConfig:
    """``cfg`` with no stage 1, a frozen encoder and the projector's input width set to the CLIP encoder's
    (``clip_model``: the model or its config)."""
    clip_cfg = clip_model if isinstance(clip_model, CLIPConfig) else clip_model.cfg
    if clip_cfg.image_size != cfg.model.image_size:
        raise ValueError(f"the CLIP encoder was trained at {clip_cfg.image_size} px, the organism's images are "
                         f"{cfg.model.image_size} px")
    if clip_cfg.patch_size != cfg.model.patch_size:
        raise ValueError(f"CLIP patch size {clip_cfg.patch_size} != the organism's {cfg.model.patch_size}")
    return cfg.replace(vision_pretrain_steps=0, vision_lr_scale=0.0, vision_dim=clip_cfg.width,
                       vision_heads=clip_cfg.heads)


def encoder_key(tower: str, seed: int, data, train_cfg, model_cfg: CLIPConfig) -> str:
    """The name of a tiny CLIP / CLOC encoder in a swapped organism's key, as notebook 05 writes it: the tower
    ("CLIP", "CLOC"), its training seed, its training tensors' fingerprint and its training and model configs."""
    return f"{tower} seed {seed}: {data_fingerprint(data)} {train_cfg} {model_cfg}"


def checkpoint_config(cfg: OrganismConfig, clip_cfg: CLIPConfig, *, encoder_key: str, threads: int | None = None,
                      device="cpu") -> dict:
    """What the swapped organism's checkpoint key is made of (``train_or_load_swapped``'s arguments): the
    swapped organism config, the encoder's name and the runtime facts under ``threads`` torch threads."""
    with torch_threads(threads):
        return {"organism": swap_config(cfg, clip_cfg).to_dict(), "encoder": encoder_key,
                "runtime": runtime_facts(resolve_device(device))}


def checkpoint_folder(cfg: OrganismConfig, clip_cfg: CLIPConfig, *, encoder_key: str, threads: int | None = None,
                      device="cpu"):
    """The store folder that holds (or will hold) ``train_or_load_swapped``'s organism for these arguments."""
    config = checkpoint_config(cfg, clip_cfg, encoder_key=encoder_key, threads=threads, device=device)
    return checkpoints.checkpoint_dir("swap", checkpoints.config_key(config, code_version()))


def _swapped_class(image_encoder: nn.Module) -> type:
    class SwappedVLM(TinyVLM):
        def __init__(self, cfg):
            super().__init__(cfg)
            self.vision = CLIPVisionTower(copy.deepcopy(image_encoder))
    return SwappedVLM


@contextlib.contextmanager
def _trainer_builds(cls: type):
    old = organism_train.TinyVLM
    organism_train.TinyVLM = cls
    try:
        yield
    finally:
        organism_train.TinyVLM = old


def code_version() -> str:
    return fingerprint("spatialkit.models.encoder_swap")


def train_or_load_swapped(cfg: OrganismConfig, clip_model: TinyCLIP, *, encoder_key: str, threads: int | None = None,
                          device="cpu", progress: bool = True) -> tuple[OrganismVLM, dict]:
    """The organism ``swap_config(cfg, clip_model)`` trained on ``clip_model``'s frozen image encoder (stage 2
    only), from the checkpoint store when there. ``encoder_key`` names the encoder (e.g. its training
    checkpoint's config); it is part of the key. Returns (``OrganismVLM``, the trainer's metrics)."""
    dev = resolve_device(device)
    key = checkpoint_config(cfg, clip_model.cfg, encoder_key=encoder_key, threads=threads, device=dev)
    cfg = swap_config(cfg, clip_model)
    image_encoder = clip_model.image.cpu().eval()
    cls = _swapped_class(image_encoder)

    def fit():
        with _trainer_builds(cls):
            model, _, metrics = organism_train.train(cfg, progress=progress, threads=threads, device=dev)
        return {k: v.cpu() for k, v in model.state_dict().items()}, metrics

    state, metrics, _ = checkpoints.load_or_train("swap", key, code_version(), fit)
    vocab = build_vocab(cfg)
    model = cls(cfg.model_config(len(vocab)))
    model.load_state_dict(state)
    return OrganismVLM(model.to(dev).eval(), vocab, cfg, device=dev), metrics
