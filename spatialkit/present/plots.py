"""Figures shared by notebooks: attention heat maps over an image with the named objects' boxes."""

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
