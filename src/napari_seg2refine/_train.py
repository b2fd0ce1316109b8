"""Train widget: a stage-1 (``train_stage1``) or stage-2 (``train_stage2``) run from a folder or the open layers.

Data: a dataset folder (ImageCAS, ASOCA or generic layout), or the open CT and ground-truth layers as a one-case
dataset (written to a temporary ImageCAS-style folder for the run, the case named by a hash of the CT's voxels;
with a single case there is no validation, so "best" is the lowest training loss). A folder is split by the
official table (ImageCAS ``.xlsx`` / ``.csv`` and a fold) or, without one, by a seeded hold-out with the
validation and test shares set here (stage 2: the validation share of the stage-1 model's unseen cases; its test
cases stay those of the stage-1 run). The main hyper-parameters, the augmentation preset, the stage-1 training crop,
the canonical target spacing (derived from the training cases, or fixed), the output folder and Resume are exposed;
everything else takes the core config's defaults (DataLoader workers are 0 inside napari; torch's CPU threads one per
idle core, :func:`seg2refine_core.devices.torch_threads`). Stage 2 trains on S from the chosen stage-1 model, which
must not have been trained on the same cases (the core refuses otherwise). Loss (per step for stage 1, per epoch) and
validation Dice are plotted live; when the run ends its best checkpoint is registered, so the Segment widget offers it
at once.

Every value the widget starts with, and the tooltip of each hyper-parameter, comes from the stage's config dataclass
(:mod:`seg2refine_core.training.configs`), as the command line's options do, so the two cannot drift apart.
The worker posts typed messages (:class:`StepLoss`, :class:`EpochEnded`) that the widget plots.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from seg2refine_core.training.configs import Stage1TrainConfig, Stage2TrainConfig
from seg2refine_core.training.demo_weights import DemoWeightsConfig
from seg2refine_core.training.options import option_default, option_help, option_spec

from ._jobs import Job, JobStatus
from ._layer_combo import LayerCombo
from ._layers import CT, GT, VOLUME_KEY
from ._model_chooser import DeviceCombo, ModelChooser
from ._plot import FOREGROUND, LINE_COLOURS, make_canvas, style_axes, style_legend
from ._registry import registry
from ._scroll import scroll_page

FOLDER, LAYERS = "dataset folder", "open layers (CT + ground truth)"
DERIVED, FIXED = "from the training cases", "fixed"


@dataclass(frozen=True)
class StepLoss:
    """Worker message: the training loss after optimisation step ``step`` (stage 1)."""

    step: int
    loss: float


@dataclass(frozen=True)
class EpochEnded:
    """Worker message: the record of an epoch that has ended (loss, validation Dice, ...; see the core trainers)."""

    record: dict[str, Any]


def layers_case_id(image: np.ndarray) -> str:
    """The case id of a volume trained from the layers: ``layers-`` + a short hash of its voxels.

    The same volume always gets the same id (so a run can be resumed, and stage 2 recognises the case its stage-1
    model was trained on); different volumes get different ids.
    """
    digest = hashlib.blake2b(np.ascontiguousarray(image).view(np.uint8), digest_size=5).hexdigest()
    return f"layers-{digest}"


def write_layers_case(folder: Path, image: Any, label: Any) -> str:
    """Write the CT and ground-truth layers as ``<folder>/<id>.img.nii.gz`` + ``<id>.label.nii.gz``; returns the id."""
    from seg2refine_core.io.volume import write_volume

    like = image.metadata.get(VOLUME_KEY)
    image_data = np.asarray(image.data, dtype=np.float32)
    label_data = (np.asarray(label.data) > 0).astype(np.uint8)
    geometry: dict[str, Any] = (
        {"like": like} if like is not None and tuple(like.shape) == image_data.shape
        else {"spacing": tuple(float(s) for s in image.scale)}
    )
    case_id = layers_case_id(image_data)
    write_volume(folder / f"{case_id}.img.nii.gz", image_data, **geometry)
    write_volume(folder / f"{case_id}.label.nii.gz", label_data, **geometry)
    return case_id


#: per stage: its config class, the config fields behind the widget's learning-rate and samples-per-epoch boxes,
#: and the loss and Dice series of its epoch records.
STAGES: dict[str, dict[str, Any]] = {
    "stage1": {
        "config": Stage1TrainConfig, "lr": ("lr",), "samples": "samples_per_epoch",
        "loss": [("train_loss", "train loss")], "dice": [("val_dice", "val Dice")],
    },
    "stage2": {
        "config": Stage2TrainConfig, "lr": ("lr_g", "lr_d"), "samples": "patches_per_epoch",
        "loss": [("g_loss", "G loss"), ("d_loss", "D loss")],
        "dice": [("val_dice_y", "val Dice of Y"), ("val_dice_s", "val Dice of S")],
    },
}


def learning_rate_tip() -> str:
    """The learning-rate tooltip: which default each path uses and why, with the numbers of the configs."""
    stage1, stage2 = option_default(Stage1TrainConfig, "lr"), option_default(Stage2TrainConfig, "lr_g")
    demo = option_default(DemoWeightsConfig, "stage1_lr")
    return (
        f"Adam learning rate. Stage 1 starts at {rate_text(stage1)}, the paper's, decayed by a cosine to 1% over the "
        f"run. The bundled demo weights were trained at {rate_text(demo)} ('seg2refine train demo'): at "
        f"{rate_text(stage1)} SFANet of width 16 barely learned within a CPU budget of a few thousand slices, so a "
        f"short CPU run needs a larger rate. Stage 2 starts at {rate_text(stage2)} for both G and D, constant "
        "(pix2pix/Vox2Vox)."
    )


def rate_text(value: float) -> str:
    """A learning rate as people write it: 1e-4, 2.5e-4."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def train(
    stage: str, options: dict[str, Any], data: str | Path | tuple[Any, Any], progress: Any, should_stop: Any,
    post: Any,
) -> dict:
    """Worker body: build the stage's training config from ``options`` and run its training on ``data``.

    ``data`` is a dataset folder, or the (CT, ground truth) layers: then a temporary one-case folder made from
    them, with no validation or test split. Epoch records are posted as :class:`EpochEnded`, stage-1 step losses as
    :class:`StepLoss`.
    """
    from seg2refine_core.training.stage1 import Stage1Trainer
    from seg2refine_core.training.stage2 import Stage2Trainer

    trainer_class = {"stage1": Stage1Trainer, "stage2": Stage2Trainer}[stage]
    on_step = (lambda step, loss: post(StepLoss(int(step), float(loss)))) if stage == "stage1" else None

    def run(folder: Path, split: dict[str, Any]) -> dict:
        from seg2refine_core.devices import torch_threads

        config = trainer_class.config_class(data=folder, **{**options, **split})
        with torch_threads(config.threads):
            return trainer_class(config, progress, should_stop, lambda record: post(EpochEnded(record)),
                                 on_step).run()

    if not isinstance(data, tuple):
        return run(Path(data), {})
    from seg2refine_core.errors import Seg2RefineError

    with tempfile.TemporaryDirectory(prefix="seg2refine-layers-") as tmp:
        case_id = write_layers_case(Path(tmp), *data)
        try:
            return run(Path(tmp), {"split": None, "val_fraction": 0.0, "test_fraction": 0.0})
        except Seg2RefineError as err:  # name the layers, not the temporary folder
            raise type(err)(str(err).replace(tmp, f"the open layers (case {case_id})")) from None


def _path_row(edit: QLineEdit, button: QToolButton) -> QHBoxLayout:
    row = QHBoxLayout()
    row.addWidget(edit, 1)
    row.addWidget(button)
    return row


class TrainWidget(QWidget):
    """Dock widget: data, stage, hyper-parameters, output folder, Resume; Start/Stop; live curves."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.running_stage = "stage1"
        self.steps: list[tuple[int, float]] = []
        self.records: list[dict[str, Any]] = []
        self.summary: dict[str, Any] | None = None

        self.source = QComboBox()
        self.source.addItems([FOLDER, LAYERS])
        self.source.currentTextChanged.connect(self._source_changed)
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("ImageCAS / ASOCA / images+labels folder")
        self.data_browse = QToolButton()
        self.data_browse.setText("…")
        self.data_browse.clicked.connect(lambda: self._pick_folder(self.data_edit, "Dataset folder"))
        self.split_edit = QLineEdit()
        self.split_edit.setPlaceholderText("none: seeded hold-out")
        self.split_edit.setToolTip("official split table (ImageCAS .xlsx or .csv); empty: the shares below")
        self.split_browse = QToolButton()
        self.split_browse.setText("…")
        self.split_browse.clicked.connect(self._pick_split)
        self.fold = self._int_spin(1, 4)
        self.val_fraction = self._share_spin()
        self.test_fraction = self._share_spin()
        self.crop = self._int_spin(0, 4096)
        self.crop.setValue(option_default(Stage1TrainConfig, "crop") or 0)  # None: whole slices
        self.crop.setToolTip("stage 1: train on random square crops of this side (multiple of 16); smaller crops "
                             "use less memory per slice")
        self.crop.setSingleStep(16)
        self.crop.setSpecialValueText("whole slices")
        self.ct_combo = LayerCombo(napari_viewer, Image, preferred=CT)
        self.gt_combo = LayerCombo(napari_viewer, Labels, preferred=GT)
        self.stage = QComboBox()
        self.stage.addItem("stage 1 (SFANet)", "stage1")
        self.stage.addItem("stage 2 (Attention-GAN)", "stage2")
        self.stage.currentIndexChanged.connect(self._stage_changed)
        self.variant = QComboBox()
        self.variant.addItems(list(option_spec(Stage1TrainConfig, "variant").choices))
        self.variant.setCurrentText(option_default(Stage1TrainConfig, "variant"))
        self.variant.setToolTip("stage 1: " + option_help(Stage1TrainConfig, "variant"))
        self.stage1_model = ModelChooser("stage1")
        self.stage1_model.setToolTip("stage 2: the stage-1 model whose S the refiner learns to correct")
        self.patch = self._int_spin(32, 512)
        self.patch.setValue(option_default(Stage2TrainConfig, "patch_size")[0])
        self.patch.setToolTip("stage 2: cubic patch side in voxels (multiple of 16), for training and validation")
        self.patch.setSingleStep(16)
        self.width = self._int_spin(1, 256)
        self.epochs = self._int_spin(1, 10000)
        self.batch = self._int_spin(1, 1024)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-6, 1.0)
        self.lr.setSingleStep(1e-4)
        self.lr.setToolTip(learning_rate_tip())
        self.samples = self._int_spin(0, 10_000_000)
        self.samples.setSpecialValueText("all slices")
        self.augment = QComboBox()
        self.augment.addItems(list(option_spec(Stage1TrainConfig, "augment").choices))
        self.target = QComboBox()
        self.target.addItems([DERIVED, FIXED])
        self.target.currentTextChanged.connect(self._target_changed)
        self.target_spacing = []
        # a fixed spacing starts at the bundled weights' (the demo-weights recipe)
        for axis, value in zip("zyx", option_default(DemoWeightsConfig, "target_spacing"), strict=True):
            spin = QDoubleSpinBox()
            spin.setRange(0.05, 20.0)
            spin.setDecimals(2)
            spin.setSingleStep(0.1)
            spin.setValue(value)
            spin.setToolTip(f"target voxel size along {axis} (mm)")
            self.target_spacing.append(spin)
        self.device = DeviceCombo()
        self.compile = QCheckBox("torch.compile")
        self.compile.setChecked(option_default(Stage1TrainConfig, "compile"))
        self.compile.setToolTip("stage 1: " + option_help(Stage1TrainConfig, "compile"))
        self.out_edit = QLineEdit()
        self.out_browse = QToolButton()
        self.out_browse.setText("…")
        self.out_browse.clicked.connect(lambda: self._pick_folder(self.out_edit, "Output folder"))
        self.resume = QCheckBox("Resume the run in the output folder")
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        self.canvas, self.figure, (self.loss_ax, self.dice_ax) = make_canvas(2, height=4.2)
        self.canvas.setMinimumHeight(300)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Data", self.source)
        form.addRow("Folder", _path_row(self.data_edit, self.data_browse))
        form.addRow("Split table", _path_row(self.split_edit, self.split_browse))
        shares = QHBoxLayout()
        for label, widget in (("fold", self.fold), ("val", self.val_fraction), ("test", self.test_fraction)):
            shares.addWidget(QLabel(label))
            shares.addWidget(widget, 1)
        form.addRow("Split", shares)
        form.addRow("CT layer", self.ct_combo)
        form.addRow("Ground truth", self.gt_combo)
        form.addRow("Stage", self.stage)
        form.addRow("Variant", self.variant)
        form.addRow("Stage-1 model", self.stage1_model)
        form.addRow("Patch side", self.patch)
        form.addRow("Width", self.width)
        form.addRow("Epochs", self.epochs)
        form.addRow("Batch size", self.batch)
        form.addRow("Learning rate", self.lr)
        form.addRow("Samples/epoch", self.samples)
        form.addRow("Augmentation", self.augment)
        form.addRow("Target spacing", self.target)
        target_row = QHBoxLayout()
        for spin in self.target_spacing:
            target_row.addWidget(spin, 1)
        form.addRow("z y x (mm)", target_row)
        form.addRow("Crop", self.crop)
        device_row = QHBoxLayout()
        device_row.addWidget(self.device, 1)
        device_row.addWidget(self.compile)
        form.addRow("Device", device_row)
        form.addRow("Output", _path_row(self.out_edit, self.out_browse))
        form.addRow(self.resume)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(scroll_page(self))
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.status)
        self._source_changed()
        self._stage_changed()
        self._target_changed()
        self._draw()

    @staticmethod
    def _int_spin(low: int, high: int) -> QSpinBox:
        spin = QSpinBox()
        spin.setRange(low, high)
        return spin

    @staticmethod
    def _share_spin() -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(0.0, 0.9)
        spin.setSingleStep(0.05)
        spin.setDecimals(2)
        return spin

    def _pick_split(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Split table", self.split_edit.text(),
                                              "Split tables (*.xlsx *.xlsm *.csv)")
        if path:
            self.split_edit.setText(path)

    def _pick_folder(self, edit: QLineEdit, title: str) -> None:
        folder = QFileDialog.getExistingDirectory(self, title, edit.text())
        if folder:
            edit.setText(folder)

    def _source_changed(self, *_: Any) -> None:
        folder = self.source.currentText() == FOLDER
        for widget in (self.data_edit, self.data_browse, self.split_edit, self.split_browse, self.fold,
                       self.val_fraction):
            widget.setEnabled(folder)
        self.test_fraction.setEnabled(folder and self.stage.currentData() == "stage1")
        for widget in (self.ct_combo, self.gt_combo):
            widget.setEnabled(not folder)

    def _target_changed(self, *_: Any) -> None:
        for spin in self.target_spacing:
            spin.setEnabled(self.target.currentText() == FIXED)

    def _stage_changed(self, *_: Any) -> None:
        """Enable the chosen stage's options and load its config's defaults and help (and its output folder)."""
        stage = self.stage.currentData()
        self.variant.setEnabled(stage == "stage1")
        self.stage1_model.setEnabled(stage == "stage2")
        self.patch.setEnabled(stage == "stage2")
        self.crop.setEnabled(stage == "stage1")
        self.compile.setEnabled(stage == "stage1")
        self._source_changed()
        spec = STAGES[stage]
        config = spec["config"]
        explained = {"fold": self.fold, "val_fraction": self.val_fraction, "width": self.width,
                     "epochs": self.epochs, "batch_size": self.batch, spec["samples"]: self.samples}
        if stage == "stage1":
            explained["test_fraction"] = self.test_fraction
        for name, box in explained.items():
            box.setToolTip(f"{'stage 1' if stage == 'stage1' else 'stage 2'}: {option_help(config, name)}")
        self.samples.setMinimum(0 if stage == "stage1" else 1)
        for name, box in {**explained, spec["lr"][0]: self.lr}.items():
            value = option_default(config, name)
            box.setValue(0 if value is None else value)  # samples None: all slices
        self.augment.setCurrentText(option_default(config, "augment"))
        self.augment.setToolTip(option_help(config, "augment"))
        self.target.setCurrentText(DERIVED if option_default(config, "target_spacing") is None else FIXED)
        self.target.setToolTip(option_help(config, "target_spacing"))
        self.out_edit.setText(str(Path.cwd() / "runs" / f"napari-{stage}"))

    def options(self) -> dict[str, Any]:
        """The chosen stage's training-config keyword arguments set in the widget, except ``data`` (for the open
        layers, :func:`train` replaces the split options)."""
        common = {
            "out": Path(self.out_edit.text().strip()),
            "width": int(self.width.value()),
            "epochs": int(self.epochs.value()),
            "batch_size": int(self.batch.value()),
            "device": self.device.currentText(),
            "resume": self.resume.isChecked(),
            "num_workers": 0,
            "command": "napari Train widget",
            "split": Path(self.split_edit.text().strip()) if self.split_edit.text().strip() else None,
            "fold": int(self.fold.value()),
            "val_fraction": float(self.val_fraction.value()),
            "augment": self.augment.currentText(),
            "target_spacing": (tuple(float(spin.value()) for spin in self.target_spacing)
                               if self.target.currentText() == FIXED else None),
        }
        if self.stage.currentData() == "stage1":
            crop = int(self.crop.value())
            return {
                **common, "variant": self.variant.currentText(), "lr": float(self.lr.value()),
                "samples_per_epoch": int(self.samples.value()) or None,
                "test_fraction": float(self.test_fraction.value()), "crop": (crop, crop) if crop else None,
                "compile": self.compile.isChecked(),
            }
        side = int(self.patch.value())
        return {
            **common, "stage1": self.stage1_model.path(),
            "patch_size": (side, side, side), **dict.fromkeys(STAGES["stage2"]["lr"], float(self.lr.value())),
            "patches_per_epoch": int(self.samples.value()),
        }

    def start(self) -> None:
        """Start a training run with the widget's settings."""
        if self.job is not None and self.job.running:
            return
        if not self.out_edit.text().strip():
            show_error("Train: choose an output folder")
            return
        data: str | tuple[Any, Any] = self.data_edit.text().strip()
        if self.source.currentText() == LAYERS:
            ct, gt = self.ct_combo.layer(), self.gt_combo.layer()
            if ct is None or gt is None or ct.data.shape != gt.data.shape or ct.ndim != 3:
                show_error("Train: choose a 3D CT layer and a ground-truth labels layer of the same shape")
                return
            data = (ct, gt)
        elif not data:
            show_error("Train: choose a dataset folder")
            return
        stage, options = self.stage.currentData(), self.options()
        self.running_stage = stage
        self.steps, self.records, self.summary = [], [], None
        self._draw()
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText("starting…")
        self.job = Job(
            lambda progress, should_stop, post: train(stage, options, data, progress, should_stop, post),
            f"Train {stage}", on_result=self._finished, on_end=self._ended,
            handlers={StepLoss: self._step, EpochEnded: self._epoch},
        )

    def stop(self) -> None:
        """Ask the run to stop; the core saves a resumable ``last`` checkpoint."""
        if self.job is not None:
            self.job.stop()
            self.status.setText("stopping…")

    def _epoch(self, message: EpochEnded) -> None:
        record = message.record
        self.records.append(record)
        spec = STAGES[self.running_stage]
        parts = [f"{label} {_fmt(record.get(key))}" for key, label in spec["loss"] + spec["dice"]]
        self.status.setText(f"epoch {record['epoch']}: " + ", ".join(parts))
        self._draw()

    def _step(self, message: StepLoss) -> None:
        self.steps.append((message.step, message.loss))
        self._draw()

    def _draw(self) -> None:
        for ax in (self.loss_ax, self.dice_ax):
            ax.clear()
            style_axes(ax)
        spec = STAGES[self.running_stage]
        epochs = [r["epoch"] for r in self.records]
        if self.steps:
            # steps on the epoch axis: step k of n per epoch sits at k / n
            per_epoch = max(s for s, _ in self.steps) / max(epochs) if epochs else None
            if per_epoch:
                x = np.array([s for s, _ in self.steps]) / per_epoch
                self.loss_ax.plot(x, [v for _, v in self.steps], color=LINE_COLOURS["step"], linewidth=0.8,
                                  label="step loss")
        for ax, series in ((self.loss_ax, spec["loss"]), (self.dice_ax, spec["dice"])):
            for i, (key, label) in enumerate(series):
                points = [(r["epoch"], r[key]) for r in self.records if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), "-o" if i == 0 else "--s", markersize=3,
                            color=LINE_COLOURS["loss" if ax is self.loss_ax else "val"] if i == 0 else "#e6e6e6",
                            label=label)
        if self.records and not self.dice_ax.get_lines():
            self.dice_ax.text(0.5, 0.5, "no validation cases", ha="center", va="center", color=FOREGROUND,
                              transform=self.dice_ax.transAxes, fontsize=9)
        self.loss_ax.set_ylabel("loss")
        self.loss_ax.set_title(f"Training {self.running_stage}: loss and validation Dice", fontsize=9, color=FOREGROUND)
        self.dice_ax.set_ylabel("val Dice")
        self.dice_ax.set_xlabel("epoch")
        self.dice_ax.set_ylim(-0.03, 1.03)
        self.dice_ax.set_xlim(0, max(epochs + [1]) + 0.5)
        style_legend(self.loss_ax, loc="upper right")
        style_legend(self.dice_ax, loc="lower right")
        self.canvas.draw_idle()

    def _finished(self, summary: dict) -> None:
        self.summary = summary
        best = Path(summary["best"]) if summary.get("best") else None  # None: stopped before a first epoch
        text = "stopped" if summary.get("stopped") else "finished"
        done = f"{text} after {summary['epochs_done']} epoch(s)"
        if best is None or not best.is_file():
            self.status.setText(f"{done}; no best checkpoint yet")
            return
        label = f"{Path(summary['run_dir']).name}/best (epoch {summary['best_epoch']})"
        item = registry.add(self.running_stage, best, label)
        show_info(f"Train: {text}; {item.label} is now selectable in the Segment widget")
        self.status.setText(
            f"{done}; best: epoch {summary['best_epoch']}, {summary['best_metric']} "
            f"{_fmt(summary.get('best_value'))}\n{item.path}"
        )

    def _ended(self, status: JobStatus) -> None:
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if status != JobStatus.DONE:
            self.status.setText(status.value)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and math.isfinite(value) else "—"
