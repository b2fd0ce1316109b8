"""Segment widget: run stage 1 (S) and/or stage 2 (Y) on a CT layer with the core's
:class:`~seg2refine_core.inference.predictor.Predictor`.

Models: the bundled demo weights, a checkpoint picked from disk, or any checkpoint registered in this session
(e.g. by the Train widget), chosen with :class:`._model_chooser.ModelChooser`. The work runs in a thread worker with a
napari progress bar and a Stop button, with torch's CPU threads at one per idle core
(:func:`seg2refine_core.devices.torch_threads`); results become the labels layers "S (stage 1)" and "Y (refined)" on
the CT's grid (re-running replaces them).

Each model maps the layer into the canonical space its checkpoint records: a layer read from a file keeps the file's
affine (its voxel order and spacing); a layer without one is taken in the canonical orientation (LPS) with its
layer scale as voxel size, said once in a notification (:func:`seg2refine_core.data.canonical.layer_volume`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.io.volume import Volume

from ._jobs import Job, JobStatus
from ._layer_combo import LayerCombo
from ._layers import CT, VOLUME_KEY, S, Y, put_labels
from ._model_chooser import DeviceCombo, ModelChooser
from ._scroll import scroll_page

MODES = {"stage 1 + stage 2": ("stage1", "stage2"), "stage 1": ("stage1",), "stage 2": ("stage2",)}


def segment(
    volume: Volume,
    checkpoints: dict[str, str | None],
    device: str,
    threshold: float,
    batch_size: int | None,
    s_mask: np.ndarray | None,
    progress: Any,
    should_stop: Any,
) -> Any:
    """Worker body: a Predictor with the chosen ``checkpoints`` (role → path, None = bundled) segments ``volume``."""
    from seg2refine_core.devices import torch_threads
    from seg2refine_core.inference.predictor import BUNDLED_CHOICE, Predictor

    choices = {role: BUNDLED_CHOICE if path is None else path for role, path in checkpoints.items()}
    with torch_threads(None):
        predictor = Predictor.from_checkpoints(
            choices.get("stage1"), choices.get("stage2"), device=device, threshold=threshold, batch_size=batch_size
        )
        return predictor.predict_volume(volume, s_mask=s_mask, progress=progress, should_stop=should_stop)


def layer_volume(layer: Image) -> Volume:
    """The CT layer as a core :class:`Volume`: its voxels (float32 HU) with the source file's geometry when the
    reader recorded it; otherwise :func:`seg2refine_core.data.canonical.layer_volume` (canonical LPS orientation,
    the layer's scale as spacing in mm), whose one-line notice is shown once as a napari notification."""
    data = np.asarray(layer.data, dtype=np.float32)
    source = layer.metadata.get(VOLUME_KEY)
    if isinstance(source, Volume) and source.shape == data.shape:
        return replace(source, array=data)
    from seg2refine_core.data.canonical import layer_volume as canonical_layer_volume
    from seg2refine_core.data.canonical import notices_to

    with notices_to(show_info):
        return canonical_layer_volume(data, tuple(float(s) for s in layer.scale), name=f"layer {layer.name!r}")


class SegmentWidget(QWidget):
    """Dock widget: CT layer, models, device, stages; Run/Stop; S and Y labels layers as results."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.image_combo = LayerCombo(napari_viewer, Image, preferred=CT)
        self.models = {role: ModelChooser(role) for role in ("stage1", "stage2")}
        self.mode = QComboBox()
        self.mode.addItems(list(MODES))
        self.device = DeviceCombo()
        self.device_label = self.device.resolved_label()
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
        try:
            volume = layer_volume(layer)
        except Seg2RefineError as err:
            show_error(str(err))
            return
        self._source = layer
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText("running…")
        args = (
            volume, {role: self.models[role].checkpoint() for role in stages},
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

    def _ended(self, status: JobStatus) -> None:
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if status != JobStatus.DONE:
            self.status.setText(status.value)
