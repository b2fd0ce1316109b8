"""Segment widget: run stage 1 (S) and/or stage 2 (Y) on a CT layer with ``inference.run_pipeline``.

Models: the bundled demo weights, a checkpoint picked from disk, or any checkpoint registered in this session
(e.g. by the Train widget). The work runs in a thread worker with a napari progress bar and a Stop button;
results become the labels layers "S (stage 1)" and "Y (refined)" on the CT's grid (re-running replaces them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

import seg2refine_core

from ._jobs import Job
from ._layer_combo import LayerCombo
from ._layers import CT, S, Y, put_labels
from ._registry import registry
from ._scroll import scroll_page

DEVICES = ("auto", "cuda", "mps", "cpu")
MODES = {"stage 1 + stage 2": ("stage1", "stage2"), "stage 1": ("stage1",), "stage 2": ("stage2",)}
STAGE_TITLES = {"stage1": "Stage 1 (SFANet)", "stage2": "Stage 2 (Attention-GAN)"}


def bundled_weights(stage: str) -> Path:
    """Where the demo weights for ``stage`` live inside the installed core package."""
    return Path(seg2refine_core.__file__).parent / "weights" / f"{stage}.safetensors"


class ModelCombo(QWidget):
    """Checkpoint chooser for one stage: bundled demo weights, registered checkpoints and a file picker."""

    def __init__(self, stage: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.stage = stage
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(18)
        self.browse = QToolButton()
        self.browse.setText("…")
        self.browse.setToolTip(f"Choose a {STAGE_TITLES[stage]} checkpoint (.safetensors with its .json)")
        self.browse.clicked.connect(self.pick_file)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse)
        registry.changed.connect(self.refresh)
        self.destroyed.connect(lambda *_: registry.changed.disconnect(self.refresh, missing_ok=True))
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the entries; a newly registered checkpoint becomes the selection."""
        previous = {self.combo.itemData(i) for i in range(self.combo.count())}
        current = self.combo.currentData()
        self.combo.clear()
        missing = "" if bundled_weights(self.stage).is_file() else " (not built)"
        self.combo.addItem(f"bundled demo weights{missing}", None)
        for item in registry.items(self.stage):
            self.combo.addItem(item.label, str(item.path))
            self.combo.setItemData(self.combo.count() - 1, str(item.path), Qt.ItemDataRole.ToolTipRole)
        new = [self.combo.itemData(i) for i in range(self.combo.count()) if self.combo.itemData(i) not in previous]
        choice = new[-1] if new else current
        index = self.combo.findData(choice)
        self.combo.setCurrentIndex(max(index, 0))

    def pick_file(self) -> None:
        """Ask for a checkpoint file and select it."""
        path, _ = QFileDialog.getOpenFileName(
            self, f"{STAGE_TITLES[self.stage]} checkpoint", "", "Seg2Refine checkpoints (*.safetensors *.json)"
        )
        if path:
            self.add(path)

    def add(self, path: str | Path) -> None:
        """Register ``path`` (``.json`` or ``.safetensors``) for this stage and select it."""
        item = registry.add(self.stage, path)
        self.combo.setCurrentIndex(self.combo.findData(str(item.path)))

    def checkpoint(self) -> str | None:
        """The chosen checkpoint path; None means the bundled demo weights."""
        return self.combo.currentData()


def segment(
    image: np.ndarray,
    spacing: tuple[float, float, float],
    stage1: str | None,
    stage2: str | None,
    stages: tuple[str, ...],
    device: str,
    threshold: float,
    batch_size: int | None,
    s_mask: np.ndarray | None,
    progress: Any,
    should_stop: Any,
) -> Any:
    """Worker body: load the chosen stages (None path = bundled) and run the pipeline on ``image`` (z, y, x) HU."""
    from seg2refine_core.devices import resolve_device
    from seg2refine_core.inference.pipeline import load_stage, run_pipeline

    dev = resolve_device(device)
    model1 = load_stage("stage1", stage1, dev) if "stage1" in stages else None
    model2 = load_stage("stage2", stage2, dev) if "stage2" in stages else None
    return run_pipeline(
        image, spacing, model1, model2, s_mask=s_mask, threshold=threshold, batch_size=batch_size, device=dev,
        progress=progress, should_stop=should_stop,
    )


class SegmentWidget(QWidget):
    """Dock widget: CT layer, models, device, stages; Run/Stop; S and Y labels layers as results."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.image_combo = LayerCombo(napari_viewer, Image, preferred=CT)
        self.models = {stage: ModelCombo(stage) for stage in ("stage1", "stage2")}
        self.mode = QComboBox()
        self.mode.addItems(list(MODES))
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.device_label = QLabel()
        self.device.currentTextChanged.connect(self._show_device)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.01, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.5)
        self.batch = QSpinBox()
        self.batch.setRange(0, 256)
        self.batch.setSpecialValueText("auto")
        self.batch.setValue(0)
        self.batch.setToolTip("axial slices per stage-1 batch; auto: on CPU about 256² pixels per batch, 8 on GPUs")
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("CT image", self.image_combo)
        form.addRow("Stage 1 model", self.models["stage1"])
        form.addRow("Stage 2 model", self.models["stage2"])
        form.addRow("Run", self.mode)
        device_row = QHBoxLayout()
        device_row.addWidget(self.device)
        device_row.addWidget(self.device_label, 1)
        form.addRow("Device", device_row)
        form.addRow("Threshold", self.threshold)
        form.addRow("Batch size", self.batch)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(scroll_page(self))
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self._show_device(self.device.currentText())

    def _show_device(self, name: str) -> None:
        from seg2refine_core.devices import resolve_device
        from seg2refine_core.errors import Seg2RefineError

        try:
            self.device_label.setText(f"→ {resolve_device(name)}")
        except Seg2RefineError:
            self.device_label.setText("→ not available")

    def run(self) -> None:
        """Start the chosen stages on the chosen CT layer."""
        if self.job is not None and self.job.running:
            return
        layer = self.image_combo.layer()
        if layer is None or layer.multiscale or layer.ndim != 3:
            show_error("Segment: choose a 3D CT image layer")
            return
        stages = MODES[self.mode.currentText()]
        s_mask = None
        if stages == ("stage2",):
            s_layer = self.viewer.layers[S] if S in self.viewer.layers else None
            if not isinstance(s_layer, Labels) or s_layer.data.shape != layer.data.shape:
                show_error(f"Segment: stage 2 alone needs an '{S}' labels layer of the CT's shape; run stage 1 first")
                return
            s_mask = (np.asarray(s_layer.data) > 0).astype(np.uint8)
        self._source = layer
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText("running…")
        args = (
            np.asarray(layer.data, dtype=np.float32), tuple(float(s) for s in layer.scale),
            self.models["stage1"].checkpoint(), self.models["stage2"].checkpoint(), stages,
            self.device.currentText(), float(self.threshold.value()), int(self.batch.value()) or None, s_mask,
        )
        self.job = Job(
            lambda progress, should_stop: segment(*args, progress, should_stop),
            "Segment", on_result=self._show_result, on_end=self._ended,
        )

    def stop(self) -> None:
        """Ask the running job to stop."""
        if self.job is not None:
            self.job.stop()

    def _show_result(self, result: Any) -> None:
        for name, mask in ((S, result.s_mask), (Y, result.y_mask)):
            if mask is not None:
                put_labels(self.viewer, mask, self._source, name)
        timings = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings_s.items())
        self.status.setText(f"done: {timings}")

    def _ended(self, status: str) -> None:
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if status != "done":
            self.status.setText(status)
