"""Explorers that keep working in the static book, with no kernel.

Python callbacks die with the kernel, so an explorer here pre-renders every frame as a PNG and links
the control to a ``Stack`` of image widgets on the client side (``jslink``). The widget state saved in
the executed notebook is all the static page needs.
"""

from __future__ import annotations

import io
from typing import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt


def figure_png(fig, *, dpi: int = 90, close: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes (and close it, so it is not shown twice)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        plt.close(fig)
    return buf.getvalue()


def frame_explorer(frames: Sequence[bytes], labels: Sequence[str], *, description: str = "frame", width: str = "640px") -> widgets.Widget:
    """A slider over pre-rendered PNG frames, linked client-side (works in the static book).

    ``frames``: PNG bytes per position; ``labels``: one caption per frame.
    """
    if len(frames) == 0 or len(frames) != len(labels):
        raise ValueError(f"frame_explorer needs as many labels as frames (got {len(frames)} frames, {len(labels)} labels)")
    images = [widgets.Image(value=png, format="png", layout=widgets.Layout(width=width)) for png in frames]
    captions = [widgets.HTML(value=f"<b>{label}</b>") for label in labels]
    image_stack = widgets.Stack(images, selected_index=0)
    caption_stack = widgets.Stack(captions, selected_index=0)
    slider = widgets.IntSlider(value=0, min=0, max=len(frames) - 1, step=1, description=description, continuous_update=True)
    widgets.jslink((slider, "value"), (image_stack, "selected_index"))
    widgets.jslink((slider, "value"), (caption_stack, "selected_index"))
    box = widgets.VBox([slider, caption_stack, image_stack])
    box.add_class("spatialkit-explorer")
    return box


def tab_explorer(frames: Sequence[bytes], labels: Sequence[str], *, width: str = "640px") -> widgets.Widget:
    """Tabs over pre-rendered PNG frames (tab switching is client-side, so it works statically)."""
    if len(frames) == 0 or len(frames) != len(labels):
        raise ValueError("tab_explorer needs as many labels as frames, at least one")
    tab = widgets.Tab([widgets.Image(value=png, format="png", layout=widgets.Layout(width=width)) for png in frames])
    for i, label in enumerate(labels):
        tab.set_title(i, label)
    tab.add_class("spatialkit-explorer")
    return tab
