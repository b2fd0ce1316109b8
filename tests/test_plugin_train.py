"""Train widget end to end on the open layers (one tiny case): stage 1, Stop then Resume, stage 2, errors.

Each run is one or two optimisation steps of a width-4 model, so the curves are real but short.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_seg2refine import _jobs, _train
from napari_seg2refine._registry import registry
from napari_seg2refine._segment import SegmentWidget
from napari_seg2refine._train import LAYERS, TrainWidget
from plugin_support import SHAPE, SPACING, add_phantom, tiny_checkpoints, wait_for_job
from seg2refine_core import devices
from seg2refine_core.data.phantom import make_phantom, write_phantom_case

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]
TIMEOUT = 240_000


@pytest.fixture
def viewer_and_widgets(make_napari_viewer):
    registry.clear()
    viewer = make_napari_viewer()
    add_phantom(viewer)
    segment = SegmentWidget(viewer)
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(segment)
    viewer.window.add_dock_widget(train)
    yield viewer, segment, train
    registry.clear()


def configure(widget: TrainWidget, out: Path, stage: str = "stage1", epochs: int = 2) -> None:
    widget.source.setCurrentText(LAYERS)
    widget.stage.setCurrentIndex(widget.stage.findData(stage))
    widget.width.setValue(4)
    widget.epochs.setValue(epochs)
    widget.batch.setValue(4 if stage == "stage1" else 1)
    widget.samples.setValue(4 if stage == "stage1" else 1)
    widget.patch.setValue(32)
    widget.device.setCurrentText("cpu")
    widget.out_edit.setText(str(out))


def test_stage1_on_the_open_layers_stop_resume_and_register(viewer_and_widgets, qtbot, tmp_path):
    viewer, segment, widget = viewer_and_widgets
    configure(widget, tmp_path / "run", epochs=50)
    assert not widget.patch.isEnabled() and widget.variant.isEnabled()
    widget.start_button.click()
    assert not widget.start_button.isEnabled() and widget.stop_button.isEnabled()
    qtbot.waitUntil(lambda: len(widget.records) >= 1, timeout=TIMEOUT)
    widget.stop_button.click()
    assert wait_for_job(qtbot, widget, TIMEOUT) == "done"
    summary = widget.summary
    assert summary["stopped"] and 1 <= summary["epochs_done"] < 50 and summary["train_cases"] == 1
    done = summary["epochs_done"]
    assert [r["epoch"] for r in widget.records] == list(range(1, done + 1))
    assert len(widget.steps) >= done  # one step per epoch (4 samples, batch 4), plus any after the last epoch
    labels = {line.get_label() for line in widget.loss_ax.get_lines()}
    assert {"step loss", "train loss"} <= labels and widget.loss_ax.get_legend() is not None
    assert widget.dice_ax.get_xlabel() == "epoch" and widget.dice_ax.get_ylabel() == "val Dice"
    assert (tmp_path / "run" / "last.safetensors").is_file()
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    viewer.dims.set_current_step(0, 2)  # the viewer is still usable
    # the best checkpoint so far is selectable in the Segment widget without a restart
    best = Path(summary["best"]).resolve()
    assert best.is_file() and best.with_suffix(".json").is_file()
    assert [item.path for item in registry.items("stage1")] == [best]
    assert segment.models["stage1"].checkpoint() == str(best)

    widget.resume.setChecked(True)
    widget.epochs.setValue(done + 1)
    widget.start_button.click()
    assert wait_for_job(qtbot, widget, TIMEOUT) == "done"
    assert widget.summary["epochs_done"] == done + 1 and not widget.summary["stopped"]
    assert [r["epoch"] for r in widget.records] == [done + 1]
    assert widget.job.pbar.n == widget.job.pbar.total
    assert "best" in widget.status.text()
    assert segment.models["stage1"].checkpoint() == str(best)


def test_stage2_refuses_the_case_its_stage1_model_was_trained_on(viewer_and_widgets, qtbot, tmp_path, monkeypatch):
    """Layers cases are named by a hash of the CT, so the core sees that stage 1 trained on this very volume."""
    viewer, segment, widget = viewer_and_widgets
    shown: list[str] = []
    monkeypatch.setattr(_jobs, "show_error", shown.append)
    stage1, _ = tiny_checkpoints(tmp_path)
    case_id = _train.layers_case_id(viewer.layers["CT"].data)
    config = json.loads(stage1.with_suffix(".json").read_text())
    config["training"]["cases"]["train"] = [case_id]
    stage1.with_suffix(".json").write_text(json.dumps(config))
    widget.stage1_model.add(stage1)
    configure(widget, tmp_path / "run2", stage="stage2", epochs=1)
    widget.start_button.click()
    assert wait_for_job(qtbot, widget, TIMEOUT) == "failed"
    assert shown[-1].startswith(f"the open layers (case {case_id}): no labelled case is left for stage 2")
    assert registry.items("stage2") == [] and widget.start_button.isEnabled()


def test_stage2_on_the_open_layers(viewer_and_widgets, qtbot, tmp_path):
    viewer, segment, widget = viewer_and_widgets
    stage1, _ = tiny_checkpoints(tmp_path)
    widget.stage1_model.add(stage1)
    configure(widget, tmp_path / "run2", stage="stage2", epochs=1)
    assert widget.patch.isEnabled() and not widget.variant.isEnabled()
    assert widget.options()["stage1"] == stage1.resolve()
    widget.start_button.click()
    assert wait_for_job(qtbot, widget, TIMEOUT) == "done"
    assert widget.summary["epochs_done"] == 1
    labels = {line.get_label() for line in widget.loss_ax.get_lines()}
    assert {"G loss", "D loss"} <= labels
    best = Path(widget.summary["best"]).resolve()
    assert segment.models["stage2"].checkpoint() == str(best)


def test_clear_errors_before_starting(viewer_and_widgets, monkeypatch, tmp_path):
    viewer, segment, widget = viewer_and_widgets
    shown: list[str] = []
    monkeypatch.setattr(_train, "show_error", shown.append)
    widget.out_edit.setText(str(tmp_path / "x"))
    widget.data_edit.setText("")
    widget.start_button.click()
    assert widget.job is None and "choose a dataset folder" in shown[-1]
    widget.source.setCurrentText(LAYERS)
    widget.gt_combo.clear()
    widget.start_button.click()
    assert widget.job is None and "ground-truth labels layer" in shown[-1]


def test_stop_before_the_first_epoch_leaves_no_best_and_no_error(viewer_and_widgets, qtbot, tmp_path, monkeypatch):
    viewer, segment, widget = viewer_and_widgets
    shown: list[str] = []
    monkeypatch.setattr(_jobs, "show_error", shown.append)
    configure(widget, tmp_path / "run3", epochs=3)
    widget.samples.setValue(16)  # four steps per epoch: the stop lands inside epoch 1
    widget.start_button.click()
    qtbot.waitUntil(lambda: len(widget.steps) >= 1, timeout=TIMEOUT)
    widget.stop_button.click()
    assert wait_for_job(qtbot, widget, TIMEOUT) == "done"
    assert widget.summary["stopped"] and widget.summary["epochs_done"] == 0
    assert "no best checkpoint yet" in widget.status.text()
    assert shown == [] and registry.items("stage1") == []
    assert (tmp_path / "run3" / "last.safetensors").is_file()


def test_stage1_from_a_folder_with_a_split_table_fold_crop_and_compile(viewer_and_widgets, qtbot, tmp_path,
                                                                        monkeypatch):
    viewer, segment, widget = viewer_and_widgets
    data = tmp_path / "cases"
    for case in (1, 2, 3):
        write_phantom_case(make_phantom(shape=SHAPE, spacing=SPACING, seed=case), data, case)
    table = tmp_path / "split.csv"
    table.write_text("FileName,Split-1,Split-2,Split-3,Split-4\n1.img.nii.gz,Training,Training,Val,Testing\n"
                     "2.img.nii.gz,Training,Val,Training,Training\n3.img.nii.gz,Val,Testing,Training,Val\n")
    configure(widget, tmp_path / "run", epochs=1)
    widget.source.setCurrentIndex(widget.source.findText(_train.FOLDER))
    assert widget.split_edit.isEnabled() and widget.test_fraction.isEnabled() and widget.crop.isEnabled()
    widget.data_edit.setText(str(data))
    widget.split_edit.setText(str(table))
    widget.fold.setValue(2)  # train 1, val 2, test 3
    widget.crop.setValue(32)
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)  # stands for it
    widget.compile.setChecked(True)
    widget.augment.setCurrentText("none")
    widget.target.setCurrentText(_train.FIXED)  # the phantoms are 2.0 x 0.7 x 0.7 mm: train on a coarser grid
    for spin, value in zip(widget.target_spacing, (2.0, 1.4, 1.4), strict=True):
        spin.setValue(value)
    threads = []
    monkeypatch.setattr(devices, "default_threads", lambda *a, **k: threads.append(1) or 1)
    widget.start_button.click()
    assert wait_for_job(qtbot, widget, TIMEOUT) == "done"
    assert threads == [1]  # the run took one thread per idle core
    summary = widget.summary
    assert summary["train_cases"] == 1 and summary["val_cases"] == 1 and summary["slice_size"] == [32, 32]
    assert summary["compiled"] and len(compiled) == 1
    last = json.loads((tmp_path / "run" / "last.json").read_text())
    assert last["canonical_space"] == {"orientation": "LPS", "spacing": [2.0, 1.4, 1.4]}
    stored = last["training"]
    assert stored["cases"] == {"train": ["1"], "val": ["2"]} and stored["config"]["fold"] == 2
    assert stored["config"]["compile"] is True and stored["config"]["augment"] == "none"
    assert stored["config"]["target_spacing"] == [2.0, 1.4, 1.4]
    # the open layers ignore the folder's split options; stage 2 has no test share or crop of its own
    widget.stage.setCurrentIndex(widget.stage.findData("stage2"))
    assert not widget.test_fraction.isEnabled() and not widget.crop.isEnabled() and not widget.compile.isEnabled()
    assert "compile" not in widget.options() and widget.val_fraction.value() == pytest.approx(0.2)
    widget.source.setCurrentText(LAYERS)
    assert not widget.split_edit.isEnabled() and not widget.val_fraction.isEnabled()


def test_defaults_and_tooltips_come_from_the_stage_configs(viewer_and_widgets):
    from seg2refine_core.data.augment import PRESETS
    from seg2refine_core.training.configs import Stage1TrainConfig, Stage2TrainConfig
    from seg2refine_core.training.demo_weights import DemoWeightsConfig
    from seg2refine_core.training.options import option_default, option_help

    viewer, segment, widget = viewer_and_widgets
    for stage, config, lr, samples in (("stage1", Stage1TrainConfig, "lr", "samples_per_epoch"),
                                       ("stage2", Stage2TrainConfig, "lr_g", "patches_per_epoch")):
        widget.stage.setCurrentIndex(widget.stage.findData(stage))
        for name, box in (("width", widget.width), ("epochs", widget.epochs), ("batch_size", widget.batch),
                          ("fold", widget.fold), ("val_fraction", widget.val_fraction), (lr, widget.lr)):
            assert box.value() == pytest.approx(option_default(config, name)), (stage, name)
            if box is not widget.lr:
                assert option_help(config, name) in box.toolTip()
        assert widget.samples.value() == (option_default(config, samples) or 0)
        assert widget.augment.currentText() == option_default(config, "augment") == "default"
        assert widget.augment.toolTip() == option_help(config, "augment")
        assert widget.options()["augment"] == "default"
    assert tuple(widget.augment.itemText(i) for i in range(widget.augment.count())) == PRESETS
    assert widget.patch.value() == option_default(Stage2TrainConfig, "patch_size")[0]
    assert widget.options()["lr_g"] == widget.options()["lr_d"] == option_default(Stage2TrainConfig, "lr_d")
    widget.stage.setCurrentIndex(widget.stage.findData("stage1"))
    assert widget.crop.value() == 0 and widget.samples.text() == "all slices"  # None: whole slices, all slices
    # the target spacing: derived from the training cases unless fixed; a fixed one starts at the bundled weights'
    assert widget.target.currentText() == _train.DERIVED and widget.options()["target_spacing"] is None
    assert widget.target.toolTip() == option_help(Stage1TrainConfig, "target_spacing")
    assert not any(spin.isEnabled() for spin in widget.target_spacing)
    widget.target.setCurrentText(_train.FIXED)
    assert all(spin.isEnabled() for spin in widget.target_spacing)
    assert widget.options()["target_spacing"] == option_default(DemoWeightsConfig, "target_spacing") == (1.0, 0.7, 0.7)
    assert widget.test_fraction.value() == pytest.approx(option_default(Stage1TrainConfig, "test_fraction"))
    assert widget.variant.currentText() == option_default(Stage1TrainConfig, "variant")
    # the learning-rate tooltip says which default each path uses, with the configs' numbers
    tip = widget.lr.toolTip()
    for value in (option_default(Stage1TrainConfig, "lr"), option_default(DemoWeightsConfig, "stage1_lr"),
                  option_default(Stage2TrainConfig, "lr_g")):
        assert _train.rate_text(value) in tip
    assert "paper" in tip and "demo weights" in tip and "G and D" in tip
    assert [_train.rate_text(v) for v in (1e-4, 2.5e-4, 1e-3, 0.02)] == ["1e-4", "2.5e-4", "1e-3", "2e-2"]
