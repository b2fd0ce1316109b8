"""Screenshots of every plugin widget at work, for the README: ``make screenshots`` (runs under xvfb).

Opens the "Synthetic CCTA phantom" sample, then drives each widget as a user would and saves the whole napari
window to ``docs/screenshots/<widget>.png``:

- ``train.png``: the Train widget after a stage-1 run on the open layers (live loss and Dice curves);
- ``segment.png``: S and Y from the Segment widget over the CT;
- ``compare.png``: S | Y | ground truth side by side in grid mode; ``difference.png``: the TP/FP/FN layer of Y
  against the ground truth, 2D and ``difference_3d.png`` in 3D;
- ``slice_dice.png``: the slice-wise Dice chart and the metric summary.

Models: ``--stage1``/``--stage2`` checkpoints when given, else the bundled demo weights when they are built
(``make demo-weights``); otherwise this script trains quick ones through the Train widget (stage 1 on the
sample, stage 2 on a second phantom with another seed, since stage 2 must learn from a volume stage 1 never
saw). That takes several minutes on a CPU and gives weak models: the screenshots then show the widgets
working, not good segmentations.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_seg2refine._compare import CompareWidget
from napari_seg2refine._layers import CT, GT, Y_VS_GT, S, Y, image_kwargs, labels_kwargs
from napari_seg2refine._segment import SegmentWidget
from napari_seg2refine._slice_dice import SliceDiceWidget
from napari_seg2refine._train import LAYERS, TrainWidget
from seg2refine_core.inference.roles import BUNDLED
from seg2refine_core.io.volume import Volume

OUT = Path(__file__).resolve().parent / "screenshots"
WINDOW = (1560, 960)


def wait(widget, timeout_s: float = 1800) -> str:
    """Process Qt events until the widget's job has ended; returns its status."""
    app = QApplication.instance()
    start = time.monotonic()
    while widget.job is None or not widget.job.ended:
        app.processEvents()
        time.sleep(0.05)
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{type(widget).__name__} did not finish in {timeout_s} s")
    settle()
    return widget.job.status


def settle(seconds: float = 0.5) -> None:
    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def show_only(docks: dict, name: str) -> None:
    for key, dock in docks.items():
        dock.setVisible(key == name)
    settle()


def camera_of(viewer):
    """``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def shoot(viewer, name: str) -> Path:
    path = OUT / f"{name}.png"
    settle()
    viewer.screenshot(str(path), canvas_only=False)
    print(f"wrote {path}")
    return path


def set_layers_visible(viewer, names: set[str]) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in names


def train_stage1(viewer, train: TrainWidget, out: Path, epochs: int, samples: int) -> str:
    """A stage-1 run on the sample layers through the Train widget; returns its best checkpoint."""
    train.source.setCurrentText(LAYERS)
    train.stage.setCurrentIndex(train.stage.findData("stage1"))
    train.width.setValue(8)
    train.epochs.setValue(epochs)
    train.batch.setValue(8)
    train.lr.setValue(3e-3)
    train.samples.setValue(samples)
    train.out_edit.setText(str(out))
    train.start_button.click()
    if wait(train) != "done":
        sys.exit("stage-1 training failed")
    return train.summary["best"]


def train_stage2(viewer, train: TrainWidget, stage1: str, out: Path) -> str:
    """A stage-2 run on a second phantom (another seed: stage 2 must see volumes stage 1 never saw)."""
    from seg2refine_core.data.phantom import make_phantom

    other = make_phantom(shape=(64, 128, 128), spacing=(1.5, 0.7, 0.7), seed=1)
    volume = Volume.from_array(other.image, other.spacing, other.affine)
    ct2 = viewer.add_image(other.image, **image_kwargs(volume, "CT (seed 1)"), visible=False)
    gt2 = viewer.add_labels(other.label, **labels_kwargs(volume, "ground truth (seed 1)"), visible=False)
    train.ct_combo.select(ct2.name)
    train.gt_combo.select(gt2.name)
    train.stage.setCurrentIndex(train.stage.findData("stage2"))
    train.stage1_model.add(stage1)
    train.width.setValue(4)
    train.epochs.setValue(3)
    train.batch.setValue(2)
    train.samples.setValue(16)
    train.patch.setValue(32)
    train.out_edit.setText(str(out))
    train.start_button.click()
    if wait(train) != "done":
        sys.exit("stage-2 training failed")
    viewer.layers.remove(ct2)
    viewer.layers.remove(gt2)
    return train.summary["best"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1", help="stage-1 checkpoint (default: bundled, else a quick training run)")
    parser.add_argument("--stage2", help="stage-2 checkpoint (default: bundled, else a quick training run)")
    parser.add_argument("--train-dir", type=Path, help="keep the quick training runs here (default: temporary)")
    args = parser.parse_args(argv)
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"  # no info toasts over the canvas
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="Seg2Refine")
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample("napari-seg2refine", "phantom")
    canvas = getattr(viewer, "canvas", None)
    (canvas.overlays.scale_bar if canvas is not None else viewer.scale_bar).visible = True
    train, segment = TrainWidget(viewer), SegmentWidget(viewer)
    compare, slice_dice = CompareWidget(viewer), SliceDiceWidget(viewer)
    docks = {
        name: viewer.window.add_dock_widget(widget, name=title, area="right")
        for name, widget, title in (
            ("train", train, "Train"), ("segment", segment, "Segment"),
            ("compare", compare, "Compare S and Y"), ("slice_dice", slice_dice, "Slice-wise Dice"),
        )
    }
    gt = viewer.layers[GT].data
    busiest = int(np.argmax(gt.sum(axis=(1, 2))))
    viewer.dims.set_current_step(0, busiest)

    show_only(docks, "train")
    chosen = {
        stage: given or (str(BUNDLED[stage]) if BUNDLED[stage].is_file() else None)
        for stage, given in (("stage1", args.stage1), ("stage2", args.stage2))
    }
    need_models = not all(chosen.values())
    with tempfile.TemporaryDirectory(prefix="seg2refine-screenshots-") as tmp:
        runs = args.train_dir or Path(tmp)
        # a short run only for the picture when models are at hand; a longer one when they must be made here
        stage1 = train_stage1(viewer, train, runs / "stage1", epochs=10 if need_models else 3,
                              samples=96 if need_models else 32)
        shoot(viewer, "train")
        if need_models:
            chosen = {"stage1": stage1, "stage2": train_stage2(viewer, train, stage1, runs / "stage2")}
        for stage, path in chosen.items():
            segment.models[stage].add(path)
        run_segment(viewer, segment, docks)

    show_only(docks, "compare")
    compare.grid_button.click()
    shoot(viewer, "compare")
    compare.overlay_button.click()
    compare.diff_button.click()
    wait(compare)
    set_layers_visible(viewer, {CT, Y_VS_GT})
    shoot(viewer, "difference")
    viewer.dims.ndisplay = 3
    set_layers_visible(viewer, {Y_VS_GT})
    viewer.reset_view()
    camera_of(viewer).angles = (-20, 30, 140)
    shoot(viewer, "difference_3d")
    viewer.dims.ndisplay = 2
    viewer.reset_view()

    show_only(docks, "slice_dice")
    set_layers_visible(viewer, {CT, S, Y})
    slice_dice.compute_button.click()
    wait(slice_dice)
    slice_dice.go_to_slice(busiest)
    shoot(viewer, "slice_dice")
    viewer.close()
    return 0


def run_segment(viewer, segment: SegmentWidget, docks: dict) -> None:
    show_only(docks, "segment")
    segment.mode.setCurrentText("stage 1 + stage 2")
    segment.run_button.click()
    if wait(segment) != "done":
        sys.exit("segmentation failed")
    set_layers_visible(viewer, {CT, S, Y})
    shoot(viewer, "segment")


if __name__ == "__main__":
    sys.exit(main())
