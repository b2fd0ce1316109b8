"""Compare widget: S and Y side by side in napari's grid mode, and a TP/FP/FN difference layer.

Side by side: each grid tile shows the CT under one mask (S, Y, and the ground truth when there is one); the CT
layer is shown again under each further mask as a copy sharing the same array. Grid tiles share the camera and
the slice, so zoom, pan and z stay in step. "Overlay" turns the grid off, removes the copies and restores the
layer order and visibility.

Difference: ``compare.difference_map`` of Y against the ground truth (layer "Y vs ground truth") or, without
one, against S ("Y vs S"): TP light green, FP blue, FN brown (the paper's Fig. 6 colours).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ._jobs import Job
from ._layer_combo import LayerCombo
from ._layers import CT, DIFFERENCE_COLOURS, GT, Y_VS_GT, Y_VS_S, S, Y, difference_colormap, put_labels
from ._scroll import scroll_page

TILE_COPY = "CT under {}"
COPY_KEY = "seg2refine_grid_copy"
GRID_SPACING = 0.03  # gap between tiles, as a fraction of a tile


def grid_of(viewer: Any) -> Any:
    """The viewer's grid settings (``viewer.canvas.grid`` from napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def legend_html() -> str:
    """Coloured squares naming the difference labels."""
    names = {1: "TP", 2: "FP", 3: "FN"}
    return " ".join(
        f'<span style="color:{DIFFERENCE_COLOURS[k]}; font-size:14pt">■</span> {names[k]}' for k in (1, 2, 3)
    )


class CompareWidget(QWidget):
    """Dock widget: CT, S, Y and ground-truth choosers; Side by side / Overlay; Difference layer."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self._saved: dict[str, Any] | None = None
        self.ct_combo = LayerCombo(napari_viewer, Image, preferred=CT)
        self.s_combo = LayerCombo(napari_viewer, Labels, preferred=S)
        self.y_combo = LayerCombo(napari_viewer, Labels, preferred=Y)
        self.gt_combo = LayerCombo(napari_viewer, Labels, preferred=GT, optional=True)
        self.grid_button = QPushButton("Side by side")
        self.grid_button.setToolTip("Grid view: CT under S | CT under Y (| CT under ground truth)")
        self.grid_button.clicked.connect(self.side_by_side)
        self.overlay_button = QPushButton("Overlay")
        self.overlay_button.setToolTip("Back to one view with all layers overlaid")
        self.overlay_button.clicked.connect(self.overlay)
        self.diff_button = QPushButton("Difference layer")
        self.diff_button.setToolTip("Y against the ground truth (or against S without one): TP / FP / FN")
        self.diff_button.clicked.connect(self.difference)
        self.legend = QLabel(legend_html())
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("CT", self.ct_combo)
        form.addRow("S", self.s_combo)
        form.addRow("Y", self.y_combo)
        form.addRow("Ground truth", self.gt_combo)
        views = QHBoxLayout()
        views.addWidget(self.grid_button)
        views.addWidget(self.overlay_button)
        layout = QVBoxLayout(scroll_page(self))
        layout.addLayout(form)
        layout.addLayout(views)
        layout.addWidget(self.diff_button)
        layout.addWidget(self.legend)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def side_by_side(self) -> None:
        """Grid mode with one tile per mask, each tile the CT under that mask."""
        ct = self.ct_combo.layer()
        masks = [m for m in (self.s_combo.layer(), self.y_combo.layer(), self.gt_combo.layer()) if m is not None]
        masks = list(dict.fromkeys(masks))
        if ct is None or not masks:
            show_error("Compare: side by side needs a CT image layer and at least one mask layer")
            return
        if self._saved is not None:
            self.overlay()
        layers = self.viewer.layers
        self._saved = {"order": list(layers), "visible": {id(layer): layer.visible for layer in layers}}
        bases = [ct] + [self._ct_copy(ct, mask.name) for mask in masks[1:]]
        tiles = [layer for pair in zip(bases, masks, strict=True) for layer in pair]
        for position, layer in enumerate(tiles):
            layers.move(layers.index(layer), position)
        for layer in layers:
            layer.visible = layer in tiles
        grid = grid_of(self.viewer)
        grid.stride = 2
        grid.shape = (1, len(masks))
        if hasattr(grid, "spacing"):
            grid.spacing = GRID_SPACING
        grid.enabled = True
        self.viewer.reset_view()
        self.status.setText(" | ".join(mask.name for mask in masks))

    def _ct_copy(self, ct: Any, mask_name: str) -> Any:
        return self.viewer.add_image(
            ct.data, name=TILE_COPY.format(mask_name), scale=ct.scale, translate=ct.translate,
            units=ct.units, contrast_limits=ct.contrast_limits, colormap=ct.colormap,
            metadata={**ct.metadata, COPY_KEY: True},
        )

    def overlay(self) -> None:
        """Leave grid mode: remove the CT copies, restore the layer order and visibility."""
        grid_of(self.viewer).enabled = False
        layers = self.viewer.layers
        for layer in [layer for layer in layers if layer.metadata.get(COPY_KEY)]:
            layers.remove(layer)
        if self._saved is not None:
            order = [layer for layer in self._saved["order"] if layer in layers]
            for position, layer in enumerate(order):
                layers.move(layers.index(layer), position)
            for layer in layers:
                layer.visible = self._saved["visible"].get(id(layer), layer.visible)
            self._saved = None
        self.viewer.reset_view()
        self.status.setText("overlay")

    def difference(self) -> None:
        """Add or update the difference layer of Y against the ground truth (or S)."""
        y, gt, s = self.y_combo.layer(), self.gt_combo.layer(), self.s_combo.layer()
        ref = gt if gt is not None else s
        if y is None or ref is None or ref is y:
            show_error("Compare: the difference needs a Y layer and a ground truth or S layer")
            return
        if y.data.shape != ref.data.shape:
            show_error(f"Compare: '{y.name}' {y.data.shape} and '{ref.name}' {ref.data.shape} differ in shape")
            return
        name = Y_VS_GT if gt is not None else Y_VS_S
        pred, reference = np.asarray(y.data), np.asarray(ref.data)

        def compute(progress: Any, should_stop: Any) -> np.ndarray:
            from seg2refine_core.evaluation.compare import difference_map

            return difference_map(pred, reference)

        def show(diff: np.ndarray) -> None:
            put_labels(self.viewer, diff, y, name, difference_colormap())
            counts = np.bincount(diff.ravel(), minlength=4)
            self.status.setText(f"{name}: TP {counts[1]}, FP {counts[2]}, FN {counts[3]} voxels")

        self.job = Job(compute, "Difference", on_result=show)
