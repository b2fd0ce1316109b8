"""Segment widget end to end on a tiny phantom with tiny untrained models: run, re-run, stop, errors."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_seg2refine import _jobs, _model_chooser, _segment
from napari_seg2refine._layers import VOLUME_KEY, S, Y
from napari_seg2refine._registry import registry
from plugin_support import SPACING, add_phantom, tiny_checkpoints, tiny_phantom, wait_for_job
from seg2refine_core import devices
from seg2refine_core.data.canonical import CanonicalSpace, canonical_affine
from seg2refine_core.inference.stage2 import count_windows

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_thread")]


@pytest.fixture
def checkpoints(tmp_path):
    registry.clear()
    yield tiny_checkpoints(tmp_path)
    registry.clear()


@pytest.fixture
def errors(monkeypatch):
    shown: list[str] = []
    monkeypatch.setattr(_jobs, "show_error", shown.append)
    monkeypatch.setattr(_segment, "show_error", shown.append)
    return shown


def make_widget(make_napari_viewer, checkpoints, monkeypatch):
    viewer = make_napari_viewer()
    ct = add_phantom(viewer)
    widget = _segment.SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    s1, s2 = checkpoints
    # stage 1 through the file dialog, stage 2 as the Train widget would register it
    monkeypatch.setattr(_model_chooser.QFileDialog, "getOpenFileName", lambda *a, **k: (str(s1), ""))
    widget.models["stage1"].browse.click()
    registry.add("stage2", s2.with_suffix(".json"), "tiny generator")
    widget.device.setCurrentText("cpu")
    monkeypatch.setattr(devices, "default_threads", lambda *a, **k: 1)  # one per idle core: 1 here, reproducible
    return viewer, ct, widget


def test_segment_both_stages_then_rerun_replaces_layers(make_napari_viewer, qtbot, checkpoints, monkeypatch, errors):
    viewer, ct, widget = make_widget(make_napari_viewer, checkpoints, monkeypatch)
    s1, s2 = checkpoints
    assert widget.models["stage1"].checkpoint() == str(s1.resolve())
    assert widget.models["stage2"].checkpoint() == str(s2.resolve())
    assert widget.models["stage2"].combo.currentText() == "tiny generator"
    assert widget.image_combo.layer() is ct
    widget.device.setCurrentText("auto")
    assert widget.device_label.text().startswith("→ ")
    assert widget.batch.text() == "auto"  # the run below takes default_batch_size of the device
    widget.device.setCurrentText("cpu")

    qtbot.mouseClick(widget.run_button, Qt.MouseButton.LeftButton)
    assert not widget.run_button.isEnabled() and widget.stop_button.isEnabled()
    assert wait_for_job(qtbot, widget) == "done", errors
    job = widget.job
    expected_total = ct.data.shape[0] + count_windows(ct.data.shape, (16, 32, 32), 0.25)
    assert job.pbar.total == expected_total and job.pbar.n == expected_total
    s_layer, y_layer = viewer.layers[S], viewer.layers[Y]
    for layer in (s_layer, y_layer):
        assert layer.data.shape == ct.data.shape and layer.data.dtype == np.uint8
        assert set(np.unique(layer.data)) <= {0, 1}
        np.testing.assert_allclose(layer.scale, ct.scale)
        assert layer.metadata[VOLUME_KEY] is ct.metadata[VOLUME_KEY]
    assert widget.run_button.isEnabled() and not widget.stop_button.isEnabled()
    assert "stage1" in widget.status.text() and "stage2" in widget.status.text()
    # the widget runs the core Predictor: the same masks as a script gets from the same volume
    from seg2refine_core.inference.predictor import Predictor

    expected = Predictor.from_checkpoints(s1, s2, device="cpu").predict_volume(_segment.layer_volume(ct))
    np.testing.assert_array_equal(s_layer.data, expected.s_mask)
    np.testing.assert_array_equal(y_layer.data, expected.y_mask)

    # stage 2 alone re-uses the S layer and replaces Y's data in place
    widget.mode.setCurrentText("stage 2")
    y_layer.data = np.zeros_like(y_layer.data)
    n_layers = len(viewer.layers)
    widget.run_button.click()
    assert wait_for_job(qtbot, widget) == "done", errors
    assert len(viewer.layers) == n_layers and viewer.layers[Y] is y_layer
    assert widget.job.pbar.total == count_windows(ct.data.shape, (16, 32, 32), 0.25)
    assert not errors


def test_stop_ends_the_run_and_the_viewer_stays_usable(make_napari_viewer, qtbot, checkpoints, monkeypatch, errors):
    viewer, ct, widget = make_widget(make_napari_viewer, checkpoints, monkeypatch)
    widget.batch.setValue(1)
    widget.run_button.click()
    widget.stop_button.click()
    assert wait_for_job(qtbot, widget) == "stopped"
    assert S not in viewer.layers and Y not in viewer.layers
    assert widget.status.text() == "stopped"
    assert widget.run_button.isEnabled() and not widget.stop_button.isEnabled()
    # the viewer still works: slices move, and a new run completes
    viewer.dims.set_current_step(0, 3)
    widget.mode.setCurrentText("stage 1")
    widget.run_button.click()
    assert wait_for_job(qtbot, widget) == "done"
    assert S in viewer.layers and Y not in viewer.layers
    assert not errors


def test_clear_errors(make_napari_viewer, qtbot, checkpoints, monkeypatch, errors):
    viewer, ct, widget = make_widget(make_napari_viewer, checkpoints, monkeypatch)
    widget.mode.setCurrentText("stage 2")
    widget.run_button.click()
    assert widget.job is None
    assert "needs an 'S (stage 1)' labels layer" in errors[-1]
    # a stage-2 generator picked as the stage-1 model: the core's CheckpointError text is shown
    widget.mode.setCurrentText("stage 1")
    widget.models["stage1"].add(checkpoints[1])
    widget.run_button.click()
    assert wait_for_job(qtbot, widget) == "failed"
    assert "attention-gan-3d checkpoint cannot be used for stage1" in errors[-1]
    assert S not in viewer.layers and widget.run_button.isEnabled()


def test_a_layer_without_a_file_affine_is_taken_as_canonical_with_its_scale(make_napari_viewer, qtbot, checkpoints,
                                                                             monkeypatch, errors, tmp_path):
    """A bare image layer (no reader geometry) is LPS at its layer scale, said once; models recording a coarser
    canonical space segment it there and the masks come back on the layer's grid."""
    import json

    viewer, ct, widget = make_widget(make_napari_viewer, checkpoints, monkeypatch)
    bare = viewer.add_image(tiny_phantom().image.copy(), name="bare CT", scale=SPACING)
    told: list[str] = []
    monkeypatch.setattr(_segment, "show_info", told.append)
    volume = _segment.layer_volume(bare)
    np.testing.assert_allclose(volume.affine, canonical_affine(bare.data.shape, SPACING))
    assert volume.spacing == SPACING
    _segment.layer_volume(bare)
    assert len(told) == 1 and "layer 'bare CT': no file affine; taken as LPS voxel order" in told[0]
    s1, s2 = checkpoints
    for path in (s1, s2):  # the tiny models now record a canonical space at half the in-plane resolution
        config = json.loads(path.with_suffix(".json").read_text())
        config["canonical_space"] = CanonicalSpace((2.0, 1.4, 1.4)).to_dict()
        path.with_suffix(".json").write_text(json.dumps(config))
    widget.models["stage2"].add(s2)
    widget.image_combo.select("bare CT")
    widget.run_button.click()
    assert wait_for_job(qtbot, widget) == "done", errors
    for name in (S, Y):
        assert viewer.layers[name].data.shape == bare.data.shape
    np.testing.assert_allclose(viewer.layers[Y].scale, bare.scale)
    assert widget.job.pbar.total == 16 + count_windows((16, 24, 24), (16, 32, 32), 0.25)  # the canonical grid


def test_choosers_are_built_from_the_core_lists(qtbot, checkpoints):
    from seg2refine_core.devices import DEVICE_CHOICES
    from seg2refine_core.inference.roles import BUNDLED

    stage1 = _model_chooser.ModelChooser("stage1")
    baseline = _model_chooser.ModelChooser("baseline3d")
    qtbot.addWidget(stage1)
    qtbot.addWidget(baseline)
    assert stage1.combo.count() == 1 and stage1.combo.itemText(0) == "bundled demo weights"
    assert stage1.checkpoint() is None and stage1.path() == BUNDLED["stage1"]
    assert baseline.combo.count() == 0  # the core bundles no baseline weights
    registry.add("baseline3d", checkpoints[0], "a baseline")
    assert baseline.combo.currentText() == "a baseline" and baseline.checkpoint() == str(checkpoints[0].resolve())
    assert stage1.combo.count() == 1  # registered for another role: not offered here
    devices = _model_chooser.DeviceCombo()
    qtbot.addWidget(devices)
    label = devices.resolved_label()
    assert [devices.itemText(i) for i in range(devices.count())] == list(DEVICE_CHOICES)
    devices.setCurrentText("cpu")
    assert label.text() == "→ cpu"


@dataclass(frozen=True)
class Note:
    text: str


def test_job_routes_typed_messages_to_their_handlers(qtbot, caplog):
    received: list = []

    def work(progress, should_stop, post):
        progress(1, 3, "first")
        post(Note("hello"))
        post(("an", "untyped", "tuple"))
        progress(3, 3, "")
        return 42

    with caplog.at_level(logging.ERROR, logger=_jobs.__name__):
        job = _jobs.Job(work, "Test", on_result=received.append, on_end=received.append,
                        handlers={Note: received.append})
        qtbot.waitUntil(lambda: job.ended, timeout=10_000)
    assert received == [Note("hello"), 42, _jobs.JobStatus.DONE]
    assert job.status == "done" and str(job.status) == "done"
    assert (job.pbar.total, job.pbar.n) == (3, 3)
    assert "Test: no handler for the worker message" in caplog.text and "untyped" in caplog.text
