"""Report figures as PNG (matplotlib, Agg): slice-wise Dice along z (like the paper's Fig. 3) and a projection of
true positives, false positives (blue) and false negatives (brown) for S and Y (the colours of Figs. 6-8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from seg2refine_core.evaluation.compare import FALSE_NEGATIVE as FN
from seg2refine_core.evaluation.compare import FALSE_POSITIVE as FP
from seg2refine_core.evaluation.compare import TRUE_POSITIVE as TP
from seg2refine_core.evaluation.compare import difference_map
from seg2refine_core.io.atomic import atomic_path

#: RGB colours of the difference classes: TP light grey, FP blue, FN brown (paper Figs. 6-8).
DIFF_COLOURS = {TP: (0.85, 0.85, 0.85), FP: (0.12, 0.35, 0.95), FN: (0.60, 0.33, 0.12)}
CURVE_COLOURS = {"S": "#d62728", "Y": "#1f77b4"}


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=110)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def plot_slice_dice(curves: Mapping[str, np.ndarray], path: str | Path, title: str = "Slice-wise Dice") -> Path:
    """Per-slice Dice of each named prediction (e.g. ``{"S": ..., "Y": ...}``) along z on one plot.

    Undefined slices (NaN: no vessel in prediction nor ground truth) are left out; the legend gives each mean.
    """
    plt, fig = _figure(8.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    for name, values in curves.items():
        values = np.asarray(values, dtype=float)
        z = np.flatnonzero(np.isfinite(values))
        mean = float(np.nanmean(values)) if z.size else float("nan")
        ax.plot(z, values[z], ".-", lw=1.0, ms=3, color=CURVE_COLOURS.get(name), label=f"{name} (mean {mean:.3f})")
    ax.set_xlabel("axial slice z")
    ax.set_ylabel("Dice")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(title)
    return _save(fig, plt, path)


def _projection(diff: np.ndarray, axis: int) -> np.ndarray:
    """Project a difference map along ``axis`` to RGB: TP over FN over FP over a black background.

    A ray shows brown only where the prediction missed the vessel entirely along it, blue only where it added
    something with no true vessel voxel on the ray.
    """
    rgb = np.zeros((*np.delete(diff.shape, axis), 3), dtype=float)
    for label in (FP, FN, TP):
        rgb[(diff == label).any(axis=axis)] = DIFF_COLOURS[label]
    return rgb


def plot_overlay(
    gt: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    spacing: Sequence[float],
    path: str | Path,
    scores: Mapping[str, str] | None = None,
) -> Path:
    """Axial and coronal projections of the ground truth and of each prediction's TP/FP/FN map against it.

    ``gt`` and predictions are (z, y, x) masks; ``spacing`` (sz, sy, sx) mm sets the aspect ratio.
    """
    sz, sy, sx = (float(s) for s in spacing)
    columns = [("ground truth", difference_map(gt, gt))] + [
        (f"{name} vs ground truth" + (f"\n{scores[name]}" if scores and name in scores else ""),
         difference_map(mask, gt)) for name, mask in predictions.items()
    ]
    plt, fig = _figure(4.0 * len(columns), 7.5)
    for col, (title, diff) in enumerate(columns):
        views = ((0, sy / sx, "axial (top view)"), (1, sz / sx, "coronal (front view)"))
        for row, (axis, aspect, label) in enumerate(views):
            ax = fig.add_subplot(2, len(columns), row * len(columns) + col + 1)
            image = _projection(diff, axis)
            ax.imshow(image[::-1] if axis == 1 else image, aspect=aspect, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=10)
            if col == 0:
                ax.set_ylabel(label)
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(color=DIFF_COLOURS[TP], label="true positive"),
                        Patch(color=DIFF_COLOURS[FP], label="false positive"),
                        Patch(color=DIFF_COLOURS[FN], label="false negative")],
               loc="lower center", ncol=3, frameon=False)
    fig.patch.set_facecolor("white")
    return _save(fig, plt, path)
