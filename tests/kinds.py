"""The five model kinds every intervention is tested on, with a small position-dependent batch for each."""

import numpy as np

MODEL_KINDS = ("organism", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava")


def random_images(family: str, n: int = 2, seed: int = 0) -> list:
    """``n`` random-pixel images at the tiny HF family's native size."""
    from spatialkit.testing import hf_tiny

    h, w = hf_tiny.image_size(family)
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def sharpen(model, factor: float = 6.0) -> None:
    """Scale q/k so random-weight attention is far from uniform (Qwen3-VL: the norms, since q_norm undoes q_proj)."""
    import torch

    with torch.no_grad():
        for layer in model.model.language_model.layers:
            attn = layer.self_attn
            parts = (attn.q_norm, attn.k_norm) if hasattr(attn, "q_norm") else (attn.q_proj, attn.k_proj)
            for part in parts:
                for p in part.parameters():
                    p.mul_(factor)


def tiny_case(kind: str):
    """(kind, vlm, batch): the smoke organism or a tiny random HF model, and two random-pixel images (every
    patch differs, so moving visual tokens changes what the LM sees) with prompts of different lengths."""
    rng = np.random.default_rng(0)
    if kind == "organism":
        from spatialkit.models.organism import load_or_train, preset

        vlm = load_or_train(preset("smoke"), progress=False)
        size = vlm.model.cfg.image_size
        images = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
        prompts = ["where is the chick ?", "what color is the cup ?"]
    else:
        from spatialkit.testing import hf_tiny

        vlm = hf_tiny.tiny_vlm(kind, seed=0)
        h, w = hf_tiny.image_size(kind, grid=(2, 3))
        images = list(rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8))
        prompts = ["where is the red cup", "what colour is the dog"]
    return kind, vlm, vlm.prepare(images, prompts)
