"""Figures shared by notebooks: attention heat maps over an image with the named objects' boxes; the what-vs-where
plane and gain heatmaps of notebook 07; heatmaps without tick labels (notebook 01's similarity grids)."""

from __future__ import annotations
from typing import Sequence
from unittest import mock
import numpy as np
import torch



def plot_overlay(ax, image: np.ndarray, amap: torch.Tensor | np.ndarray, *, boxes: Sequence = (), title: str = "",
                 alpha: float = 0.55, cmap: str = "magma"):
    """The image with an attention map (h, w) stretched over it (nearest cells, no smoothing) and boxes.

    Returns the map's image handle (for a colorbar: ``fig.colorbar(handle, ax=ax)``)."""
    import matplotlib.patches as patches  # plotting only when drawing

    height, width = image.shape[:2]
    ax.imshow(image, extent=(0, width, height, 0))
    handle = ax.imshow(np.asarray(amap, dtype=np.float64), extent=(0, width, height, 0), alpha=alpha, cmap=cmap,
                       interpolation="nearest")
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="cyan", linewidth=1.5))
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    return handle


def unlabelled_heatmap(data, *, ax, **kwargs):
    """``seaborn.heatmap(data, ax=ax, xticklabels=False, yticklabels=False, **kwargs)``, the same drawing.

    After every heatmap seaborn draws the whole figure to see whether its tick labels overlap (and rotates them if
    so). Without tick labels there is nothing to check, and a figure of many small heatmaps (notebook 01 draws
    dozens) would redraw itself once per panel: most of that notebook's figure time. That draw is skipped here."""
    import seaborn as sns  # plotting only when drawing
    import seaborn.matrix  # plotting only when drawing

    kwargs.update(xticklabels=False, yticklabels=False)
    if not hasattr(seaborn.matrix, "_draw_figure"):  # another seaborn: draw as it does
        return sns.heatmap(data, ax=ax, **kwargs)
    with mock.patch.object(seaborn.matrix, "_draw_figure", lambda figure: None):
        return sns.heatmap(data, ax=ax, **kwargs)


def plot_tradeoff_plane(points, *, ceiling=None, panel: str = "organism", x: str = "where", y: str = "what",
                        label: str = "arm", base: str = "none", chance: dict | None = None, axes=None,
                        height: float = 3.6, ceiling_label: str | dict = "healthy (ceiling)",
                        ncols: int | None = None):
    """The what-vs-where plane: one panel per ``panel`` value, each arm a point with its 95% CIs as error bars
    and an arrow from the panel's ``base`` arm (the failing organism) to every other arm; ``ceiling`` (a dict
    with ``x``/``y`` estimates, e.g. the healthy organism, or {panel: such a dict} when each panel has its own
    ceiling; a panel missing from it gets none) is drawn as a star with its CI box.

    ``points``: a DataFrame with columns ``panel``, ``label``, and per axis ``{x}``, ``{x}_low``, ``{x}_high``,
    ``{y}``, ``{y}_low``, ``{y}_high`` (fractions). ``chance``: {"x": level, "y": level} dotted lines (a level
    may be {panel: level} when the panels' measurements have different chance levels). ``ncols``: panels per row
    (default: all in one row).
    ``ceiling_label``: the star's legend label, or {panel: label} (panels not in it get "healthy (ceiling)").
    Every arm gets its own colour (a qualitative palette) and its own marker, so arms stay apart when two
    colours are close. Returns the matplotlib axes (one per panel)."""
    import matplotlib.pyplot as plt  # plotting only when drawing
    import seaborn as sns  # plotting only when drawing

    if ncols is not None and (not isinstance(ncols, int) or ncols < 1):
        raise ValueError(f"ncols must be a positive int (panels per row), got {ncols!r}")
    panels = list(dict.fromkeys(points[panel]))
    spares = []  # grid cells without a panel: the legend goes into the first one
    if axes is None:
        ncols = min(ncols or len(panels), len(panels))
        nrows = -(-len(panels) // ncols)
        _, grid = plt.subplots(nrows, ncols, figsize=(height * 1.25 * ncols, height * nrows), squeeze=False)
        spares = list(grid.flat[len(panels):])
        for spare in spares:
            spare.axis("off")
        axes = list(grid.flat[:len(panels)])
    labels = list(dict.fromkeys(points[label]))
    # a qualitative palette (tab10, then tab20 up to 20 arms, evenly spaced hues beyond) and a marker per arm:
    # neighbouring arms differ in marker as well as colour
    palette = "tab10" if len(labels) <= 10 else "tab20" if len(labels) <= 20 else "husl"
    colors = dict(zip(labels, sns.color_palette(palette, max(len(labels), 3))))
    marker_cycle = "osD^vPX<>hp*"
    markers = {name: marker_cycle[i % len(marker_cycle)] for i, name in enumerate(labels)}
    for ax, name in zip(axes, panels):
        g = points[points[panel] == name]
        origin = g[g[label] == base]
        for _, r in g.iterrows():
            ax.errorbar(r[x], r[y], xerr=[[r[x] - r[f"{x}_low"]], [r[f"{x}_high"] - r[x]]],
                        yerr=[[r[y] - r[f"{y}_low"]], [r[f"{y}_high"] - r[y]]], fmt=markers[r[label]], ms=6,
                        capsize=2, mec="black", mew=0.4,
                        color=colors[r[label]], label=r[label], zorder=3)
            if len(origin) and r[label] != base:
                o = origin.iloc[0]
                ax.annotate("", xy=(r[x], r[y]), xytext=(o[x], o[y]),
                            arrowprops=dict(arrowstyle="->", color=colors[r[label]], lw=1.2, alpha=0.8))
        panel_ceiling = ceiling.get(name) if ceiling is not None and x not in ceiling else ceiling
        if panel_ceiling is not None:
            cx, cy = panel_ceiling[x], panel_ceiling[y]
            ax.add_patch(plt.Rectangle((cx.low, cy.low), cx.high - cx.low, cy.high - cy.low, color="gold", alpha=0.3))
            star = ceiling_label.get(name, "healthy (ceiling)") if isinstance(ceiling_label, dict) else ceiling_label
            ax.plot(cx.mean, cy.mean, marker="*", ms=14, color="goldenrod", ls="", label=star, zorder=4)
        if chance:
            level = {k: (v.get(name) if isinstance(v, dict) else v) for k, v in chance.items()}
            if level.get("x") is not None:
                ax.axvline(level["x"], color="gray", ls=":", lw=1)
            if level.get("y") is not None:
                ax.axhline(level["y"], color="gray", ls=":", lw=1)
        ax.set(title=str(name), xlabel=f"{x} accuracy", ylabel=f"{y} accuracy")
    handles, names = [], []
    for ax in axes:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    if spares:
        spares[0].legend(handles, names, fontsize=7, loc="center")
    else:
        axes[-1].legend(handles, names, fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return axes


def plot_gain_heatmap(table, *, ax=None, title: str = "", cmap: str = "RdBu", limit: float | None = None,
                      annot=None):
    """A diverging heatmap of gains (in percentage points; rows = arms, columns = measurements), centred on 0.

    ``table``: a DataFrame of gains as fractions; ``annot``: an optional DataFrame of strings (same shape) shown
    in the cells, else the gain in points. Missing cells stay blank."""
    import matplotlib.pyplot as plt  # plotting only when drawing
    import seaborn as sns  # plotting only when drawing

    values = 100 * table.astype(float)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.3 * values.shape[1] + 3, 0.45 * values.shape[0] + 1.5))
    lim = limit if limit is not None else max(5.0, float(np.nanmax(np.abs(values.to_numpy()))) if values.size else 5.0)
    sns.heatmap(values, ax=ax, cmap=cmap, center=0.0, vmin=-lim, vmax=lim, linewidths=0.5,
                annot=annot if annot is not None else True, fmt="" if annot is not None else "+.0f",
                cbar_kws={"label": "gain (pp)"}, annot_kws={"fontsize": 7})
    ax.set(title=title, xlabel="", ylabel="")
    ax.grid(False)
    return ax
