"""A matplotlib canvas for dock widgets, styled to sit in napari's dark theme with readable text."""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

BACKGROUND = "#262930"
FOREGROUND = "#f0f1f2"
GRID = "#4a4f5c"
#: line colours of S and Y, matching their mask colours
LINE_COLOURS = {"S": "#ff8c1a", "Y": "#00e5ff", "loss": "#ff8c1a", "val": "#00e5ff", "step": "#8a8f9c"}


def make_canvas(nrows: int = 1, height: float = 3.0) -> tuple[FigureCanvasQTAgg, Figure, list[Any]]:
    """A canvas with ``nrows`` stacked axes (shared x), dark background and light text."""
    figure = Figure(figsize=(4.0, height), facecolor=BACKGROUND, layout="constrained")
    canvas = FigureCanvasQTAgg(figure)
    axes = list(figure.subplots(nrows, 1, sharex=True, squeeze=False)[:, 0])
    for ax in axes:
        style_axes(ax)
    return canvas, figure, axes


def style_axes(ax: Any) -> None:
    """Dark face, light ticks, labels and spines, a faint grid."""
    ax.set_facecolor(BACKGROUND)
    ax.tick_params(colors=FOREGROUND, labelsize=8)
    ax.xaxis.label.set_color(FOREGROUND)
    ax.yaxis.label.set_color(FOREGROUND)
    ax.title.set_color(FOREGROUND)
    for spine in ax.spines.values():
        spine.set_color(FOREGROUND)
    ax.grid(True, color=GRID, linewidth=0.5)


def style_legend(ax: Any, **kwargs: Any) -> None:
    """A legend with light text on the dark face (only when the axes hold labelled artists)."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        legend = ax.legend(facecolor=BACKGROUND, edgecolor=GRID, fontsize=8, **kwargs)
        for text in legend.get_texts():
            text.set_color(FOREGROUND)
