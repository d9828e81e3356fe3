"""Where the answer token looks: a last-row attention probe and its summaries (Chen et al., ICML 2025).

    batch = vlm.prepare(images, prompts)
    record = measure(vlm, batch)             # post-softmax attention of the last prompt token, every layer/head
    kind_shares(record)                      # (layers, B, 3): share on system / image / text keys
    maps = image_maps(record)                # per item (layers, h, w): attention on each visual token
    attention_in_box(maps[0], cell_coverage(box_mask(boxes, (H, W)), grid))   # share of image attention in a box

Why a probe and not ``output_attentions``: eager attention materialises every layer's (B, H, L, L) matrix,
which at a few thousand tokens is gigabytes. The probe sits in ``vlm.attention_hook``: every layer still
computes its output with fused SDPA (``call.sdpa()``), and the probe additionally computes softmax(q·kᵀ·scale +
mask) for the chosen query rows only, from the call's q and k (already rotated, Qwen3-VL: already normed), in
O(rows · L) memory. It records only on the prefill call (query length = prompt length), so it can stay on
during generation.
"""

from __future__ import annotations
from typing import Sequence
import numpy as np
import torch



def plot_overlay(ax, image: np.ndarray, amap: torch.Tensor | np.ndarray, *, boxes: Sequence = (), title: str = "",
                 alpha: float = 0.55, cmap: str = "magma"):
    """The image with an attention map (h, w) stretched over it (nearest cells, no smoothing) and boxes.

    Returns the map's image handle (for a colorbar: ``fig.colorbar(handle, ax=ax)``)."""
    import matplotlib.patches as patches

    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0))
    handle = ax.imshow(np.asarray(amap, dtype=np.float64), extent=(0, width, height, 0), alpha=alpha, cmap=cmap,
                       interpolation="nearest")
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", linewidth=1.5))
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return handle
