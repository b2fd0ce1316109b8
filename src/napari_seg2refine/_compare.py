"""Compare widget: S and Y side by side in napari's grid mode, and a TP/FP/FN difference layer.

Side by side: each grid tile shows the CT under one mask (S, Y, and the ground truth when there is one); the CT
layer is shown again under each further mask as a copy sharing the same array. Grid tiles share the camera and
the slice, so zoom, pan and z stay in step. "Overlay" turns the grid off, removes the copies and restores the
layer order and visibility.

Difference: ``compare.difference_map`` of Y against the ground truth (layer "Y vs ground truth") or, without
one, against S ("Y vs S"): TP light green, FP blue, FN brown (the paper's Fig. 6 colours).

The S and Y choosers start empty until an S or Y layer exists (they never offer the ground truth as S or Y by
themselves); a button whose inputs are missing is disabled and says what is missing, its tooltip how to get it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFormLayout, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ._jobs import Job
from ._layer_combo import LayerCombo, show_missing
from ._layers import CT, DIFFERENCE_COLOURS, GT, Y_VS_GT, Y_VS_S, S, Y, difference_colormap, put_labels
from ._scroll import scroll_page

TILE_COPY = "CT under {}"
COPY_KEY = "seg2refine_grid_copy"
GRID_SPACING = 0.03  # gap between tiles, as a fraction of a tile
GRID_TIP = "Grid view: CT under S | CT under Y (| CT under ground truth)"
DIFF_TIP = "Y against the ground truth (or against S without one): TP / FP / FN"


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
        self.grid_button.clicked.connect(self.side_by_side)
        self.overlay_button = QPushButton("Overlay")
        self.overlay_button.setToolTip("Back to one view with all layers overlaid")
        self.overlay_button.clicked.connect(self.overlay)
        self.diff_button = QPushButton("Difference layer")
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
        for combo in (self.ct_combo, self.s_combo, self.y_combo, self.gt_combo):
            combo.changed.connect(self._update_buttons)
        self._update_buttons()

    def _masks(self) -> list[Any]:
        masks = [m for m in (self.s_combo.layer(), self.y_combo.layer(), self.gt_combo.layer()) if m is not None]
        return list(dict.fromkeys(masks))

    def side_by_side_missing(self) -> tuple[str, str] | None:
        """What "Side by side" lacks: (short, sentence), or None when it can run."""
        if self.ct_combo.layer() is None:
            return "no CT", "Open or choose a CT image layer"
        if not self._masks():
            return "no mask", f"Choose an S, Y or ground-truth layer (run Segment to make '{S}' and '{Y}')"
        return None

    def difference_missing(self) -> tuple[str, str] | None:
        """What "Difference layer" lacks: (short, sentence), or None when it can run."""
        y, gt, s = self.y_combo.layer(), self.gt_combo.layer(), self.s_combo.layer()
        if y is None:
            return "no Y", f"Choose a Y layer (run Segment to make '{Y}')"
        if gt is None and s is None:
            return "no ground truth or S", "Choose a ground-truth layer, or an S layer to compare Y with"
        ref, ref_name = (gt, "the ground truth") if gt is not None else (s, "S")
        if ref is y:
            return f"Y is {ref_name}", f"Y and {ref_name} are the same layer '{y.name}': choose another"
        return None

    def _update_buttons(self) -> None:
        show_missing(self.grid_button, "Side by side", self.side_by_side_missing(), GRID_TIP)
        show_missing(self.diff_button, "Difference layer", self.difference_missing(), DIFF_TIP)

    def side_by_side(self) -> None:
        """Grid mode with one tile per mask, each tile the CT under that mask."""
        missing = self.side_by_side_missing()
        if missing is not None:
            show_error(f"Compare: {missing[1]}")
            return
        ct, masks = self.ct_combo.layer(), self._masks()
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
        missing = self.difference_missing()
        if missing is not None:
            show_error(f"Compare: {missing[1]}")
            return
        y, gt, s = self.y_combo.layer(), self.gt_combo.layer(), self.s_combo.layer()
        ref = gt if gt is not None else s
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
