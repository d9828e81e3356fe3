"""spatialkit.present.plots helpers that change how a figure is drawn, not what it shows."""

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import seaborn as sns  # noqa: E402
import seaborn.matrix  # noqa: E402

from spatialkit.present.plots import unlabelled_heatmap  # noqa: E402


def _pixels(fig) -> np.ndarray:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60)
    plt.close(fig)
    buffer.seek(0)
    return plt.imread(buffer)


def _grid(draw):
    """A figure of twelve small heatmaps, some annotated, drawn by ``draw(data, ax, **kwargs)``."""
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(2, 6, figsize=(12, 4))
    for i, ax in enumerate(axes.flat):
        values = rng.normal(size=(4, 4))
        draw(values, ax, cmap="mako", cbar=i == 0, square=True, annot=i % 2 == 0, fmt=".1f")
        ax.plot(1.5, 1.5, "r*")
    return fig


def test_unlabelled_heatmap_draws_what_seaborn_draws_without_a_figure_draw_per_panel(monkeypatch):
    seaborns = _pixels(_grid(lambda v, ax, **kw: sns.heatmap(v, ax=ax, xticklabels=False, yticklabels=False, **kw)))
    draws = []
    real_draw = seaborn.matrix._draw_figure
    monkeypatch.setattr(seaborn.matrix, "_draw_figure", lambda figure: draws.append(figure) or real_draw(figure))
    ours = _pixels(_grid(lambda v, ax, **kw: unlabelled_heatmap(v, ax=ax, **kw)))
    assert draws == []  # seaborn's overlap check never ran
    assert seaborn.matrix._draw_figure is not real_draw  # the test's own spy is back in place ...
    monkeypatch.undo()
    assert seaborn.matrix._draw_figure is real_draw  # ... and seaborn's after it
    np.testing.assert_array_equal(ours, seaborns)


def test_seaborn_is_restored_when_drawing_fails():
    real_draw = seaborn.matrix._draw_figure
    fig, ax = plt.subplots()
    try:
        with pytest.raises((KeyError, ValueError)):  # matplotlib's error for an unknown colormap
            unlabelled_heatmap(np.zeros((2, 2)), ax=ax, cmap="no-such-colormap")
    finally:
        plt.close(fig)
    assert seaborn.matrix._draw_figure is real_draw
