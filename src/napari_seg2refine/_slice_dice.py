"""Slice-wise Dice widget: Dice of S and of Y against the ground truth along z, in step with the viewer.

The chart plots each axial slice's Dice (``metrics.slice_dice``; slices where both masks are empty are
undefined and left out). A vertical line follows the viewer's current z slice; clicking the chart moves the
viewer there. Below it a summary gives Dice, HD95 (mm, with the ground-truth layer's spacing) and B0 of each
mask, computed with ``compare.mask_summary`` in a thread worker. The ground-truth chooser starts empty until a
ground-truth layer exists (it never offers S or Y as the ground truth by itself); Compute is disabled, saying what
is missing, until there is a ground truth and an S or Y layer other than it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFormLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ._jobs import Job
from ._layer_combo import LayerCombo, show_missing
from ._layers import GT, S, Y
from ._plot import FOREGROUND, LINE_COLOURS, make_canvas, style_axes, style_legend
from ._scroll import scroll_page

COMPUTE_TIP = "Dice per axial slice of S and Y against the ground truth, and Dice, HD95, B0 of each"


def summarize(masks: dict[str, np.ndarray], gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, dict]:
    """Worker body: ``mask_summary`` of each mask (key "S"/"Y") against ``gt``."""
    from seg2refine_core.evaluation.compare import mask_summary

    return {key: mask_summary(mask, gt, spacing) for key, mask in masks.items()}


def _mm(value: float) -> str:
    return f"{value:.2f}" if np.isfinite(value) else "∞"


def format_summary(summaries: dict[str, dict]) -> str:
    """An HTML table: one row per mask with Dice, HD95 (mm) and B0 (ground truth's B0 in the header)."""
    if not summaries:
        return ""
    b0_ref = next(iter(summaries.values()))["b0_ref"]
    rows = "".join(
        f"<tr><td><b>{key}</b></td><td>{s['dice']:.3f}</td><td>{_mm(s['hd95_mm'])}</td><td>{s['b0_pred']}</td></tr>"
        for key, s in summaries.items()
    )
    return (
        f'<table cellspacing="6"><tr><th></th><th>Dice</th><th>HD95 (mm)</th><th>B0 (GT {b0_ref})</th></tr>'
        f"{rows}</table>"
    )


class SliceDiceWidget(QWidget):
    """Dock widget: S, Y and ground-truth choosers, a Compute button, the chart and the metric summary."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self._busy = False
        self.summaries: dict[str, dict] = {}
        self._gt_layer: Any = None
        self.s_combo = LayerCombo(napari_viewer, Labels, preferred=S, optional=True)
        self.y_combo = LayerCombo(napari_viewer, Labels, preferred=Y, optional=True)
        self.gt_combo = LayerCombo(napari_viewer, Labels, preferred=GT)
        self.compute_button = QPushButton("Compute")
        self.compute_button.clicked.connect(self.compute)
        self.canvas, self.figure, (self.ax,) = make_canvas(1, height=3.4)
        self.canvas.setMinimumHeight(260)
        self.canvas.mpl_connect("button_press_event", self._clicked)
        self.cursor = self.ax.axvline(0, color=FOREGROUND, linewidth=1, linestyle="--", visible=False)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        form = QFormLayout()
        form.addRow("S", self.s_combo)
        form.addRow("Y", self.y_combo)
        form.addRow("Ground truth", self.gt_combo)
        layout = QVBoxLayout(scroll_page(self))
        layout.addLayout(form)
        layout.addWidget(self.compute_button)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.summary)
        self._draw_empty()
        napari_viewer.dims.events.current_step.connect(self._follow_slice)
        for combo in (self.s_combo, self.y_combo, self.gt_combo):
            combo.changed.connect(self._update_button)
        self._update_button()

    def _masks(self) -> dict[str, Any]:
        gt = self.gt_combo.layer()
        masks = {key: combo.layer() for key, combo in (("S", self.s_combo), ("Y", self.y_combo))}
        return {key: layer for key, layer in masks.items() if layer is not None and layer is not gt}

    def missing(self) -> tuple[str, str] | None:
        """What Compute lacks: (short, sentence), or None when it can run."""
        gt = self.gt_combo.layer()
        if gt is None:
            return "no ground truth", f"Choose a ground-truth layer (a '{GT}' layer opens with an ImageCAS label)"
        if not self._masks():
            return "no S or Y", f"Choose an S or Y layer other than '{gt.name}' (run Segment to make '{S}', '{Y}')"
        return None

    def _update_button(self) -> None:
        show_missing(self.compute_button, "Compute", self.missing(), COMPUTE_TIP)
        if self._busy:
            self.compute_button.setEnabled(False)

    def _ended(self, status: str) -> None:
        self._busy = False
        self._update_button()

    def _draw_empty(self) -> None:
        self.ax.set_xlabel("axial slice z")
        self.ax.set_ylabel("Dice")
        self.ax.set_ylim(-0.03, 1.03)
        self.ax.set_title("Slice-wise Dice vs ground truth", fontsize=9, color=FOREGROUND)
        self.canvas.draw_idle()

    def compute(self) -> None:
        """Compute the per-slice Dice and the summary of S and Y against the ground truth."""
        missing = self.missing()
        if missing is not None:
            show_error(f"Slice-wise Dice: {missing[1]}")
            return
        gt, masks = self.gt_combo.layer(), self._masks()
        wrong = [layer.name for layer in masks.values() if layer.data.shape != gt.data.shape]
        if wrong:
            show_error(f"Slice-wise Dice: {', '.join(wrong)} differ(s) in shape from '{gt.name}' {gt.data.shape}")
            return
        self._gt_layer = gt
        arrays = {key: np.asarray(layer.data) for key, layer in masks.items()}
        ref, spacing = np.asarray(gt.data), tuple(float(s) for s in gt.scale)
        self._busy = True
        self.compute_button.setEnabled(False)
        self.job = Job(
            lambda progress, should_stop: summarize(arrays, ref, spacing),
            "Slice-wise Dice", on_result=self._show, on_end=self._ended,
        )

    def _show(self, summaries: dict[str, dict]) -> None:
        self.summaries = summaries
        self.ax.clear()
        style_axes(self.ax)
        self.cursor = self.ax.axvline(0, color=FOREGROUND, linewidth=1, linestyle="--", label="current slice")
        depth = 0
        for key, s in summaries.items():
            values = s["slice_dice"]
            depth = len(values)
            z = np.flatnonzero(~np.isnan(values))
            self.ax.plot(
                z, values[z], "-o", markersize=2.5, linewidth=1.2, color=LINE_COLOURS[key],
                label=f"{key}  (Dice {s['dice']:.3f})",
            )
        self.ax.set_xlim(-0.5, max(depth - 0.5, 0.5))
        style_legend(self.ax, loc="best")
        self._draw_empty()
        self.summary.setText(format_summary(summaries))
        self._follow_slice()

    def current_slice(self) -> int | None:
        """The viewer's current axial slice as an index into the ground-truth layer."""
        if self._gt_layer is None or self._gt_layer not in self.viewer.layers:
            return None
        return int(round(float(self._gt_layer.world_to_data(self.viewer.dims.point)[0])))

    def _follow_slice(self, *_: Any) -> None:
        z = self.current_slice()
        if z is None or not self.summaries:
            return
        self.cursor.set_xdata([z, z])
        self.cursor.set_visible(True)
        self.canvas.draw_idle()

    def go_to_slice(self, z: int) -> None:
        """Move the viewer to axial slice ``z`` of the ground-truth layer."""
        if self._gt_layer is None:
            return
        depth = self._gt_layer.data.shape[0]
        z = min(max(int(z), 0), depth - 1)
        world = self._gt_layer.data_to_world((z, 0, 0))
        self.viewer.dims.set_point(0, float(world[0]))

    def _clicked(self, event: Any) -> None:
        if event.inaxes is self.ax and event.xdata is not None:
            self.go_to_slice(int(round(event.xdata)))
