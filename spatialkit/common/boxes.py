"""Axis-aligned boxes (x0, y0, x1, y1): the one IoU that CLIP/CLOC grounding and PIN both score with."""

from __future__ import annotations

import numpy as np
import torch


def box_iou(a, b):
    """Row-wise IoU of two (N, 4) sets of (x0, y0, x1, y1) boxes; inverted boxes count as empty.

    Torch in, torch out (in the inputs' dtype, e.g. CLIP's float32 predictions); anything else (NumPy
    arrays, lists) is read as float64 and the result is a float64 NumPy array.
    """
    numpy_out = not (isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor))
    if numpy_out:
        a = torch.from_numpy(np.asarray(a, dtype=np.float64).reshape(-1, 4))
        b = torch.from_numpy(np.asarray(b, dtype=np.float64).reshape(-1, 4))
    ix = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    iy = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = ix * iy

    def area(x):
        return (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)

    iou = inter / (area(a) + area(b) - inter).clamp(min=1e-12)
    return iou.numpy() if numpy_out else iou
