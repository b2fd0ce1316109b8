"""Slice-wise Dice widget: the chart's data, the slice cursor following the viewer, clicks moving the viewer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from napari_seg2refine._slice_dice import SliceDiceWidget
from plugin_support import add_masks, add_phantom, wait_for_job
from seg2refine_core.evaluation.metrics import betti0, slice_dice

pytestmark = pytest.mark.gui


def test_slice_dice_chart_summary_and_slice_link(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    ct = add_phantom(viewer)
    s, y = add_masks(viewer, ct)
    gt = y
    widget = SliceDiceWidget(viewer)
    viewer.window.add_dock_widget(widget)

    widget.compute_button.click()
    assert not widget.compute_button.isEnabled()  # while it runs
    assert wait_for_job(qtbot, widget) == "done"
    assert widget.compute_button.isEnabled()
    lines = {line.get_label().split()[0]: line for line in widget.ax.get_lines() if line is not widget.cursor}
    assert set(lines) == {"S", "Y"}
    expected = slice_dice(s, gt)
    defined = np.flatnonzero(~np.isnan(expected))
    assert len(defined) < len(expected)  # some slices hold no vessel in either mask: left out
    np.testing.assert_array_equal(lines["S"].get_xdata(), defined)
    np.testing.assert_allclose(lines["S"].get_ydata(), expected[defined])
    np.testing.assert_allclose(lines["Y"].get_ydata(), 1.0)
    assert widget.ax.get_legend() is not None
    assert widget.ax.get_xlabel() == "axial slice z" and widget.ax.get_ylabel() == "Dice"
    summary = widget.summaries
    assert summary["Y"]["dice"] == 1.0 and summary["Y"]["hd95_mm"] == 0.0
    assert (summary["S"]["b0_pred"], summary["S"]["b0_ref"]) == (betti0(s), betti0(gt))
    assert math.isfinite(summary["S"]["hd95_mm"])
    text = widget.summary.text()
    assert "HD95 (mm)" in text and "B0" in text and f"{summary['S']['dice']:.3f}" in text

    # the cursor follows the viewer's slice
    viewer.dims.set_current_step(0, 5)
    qtbot.wait(10)
    assert widget.current_slice() == 5
    assert list(widget.cursor.get_xdata()) == [5, 5] and widget.cursor.get_visible()

    # a click on the chart moves the viewer to that slice
    widget.canvas.draw()
    target = 11
    x_px, y_px = widget.ax.transData.transform((target, 0.5))
    ratio = widget.canvas.device_pixel_ratio
    point = QPoint(int(round(x_px / ratio)), int(round(widget.canvas.height() - y_px / ratio)))
    qtbot.mouseClick(widget.canvas, Qt.MouseButton.LeftButton, pos=point)
    qtbot.waitUntil(lambda: widget.current_slice() == target, timeout=2000)
    assert list(widget.cursor.get_xdata()) == [target, target]
    world_z = viewer.dims.point[0]
    assert world_z == pytest.approx(target * ct.scale[0])


def test_ground_truth_chooser_starts_empty_and_compute_says_what_is_missing(make_napari_viewer):
    from napari_seg2refine._layers import GT, S, Y, labels_kwargs
    from plugin_support import tiny_phantom
    from seg2refine_core.io.volume import Volume

    viewer = make_napari_viewer()
    ct = add_phantom(viewer, with_gt=False)
    add_masks(viewer, ct)  # S and Y, no ground truth
    widget = SliceDiceWidget(viewer)
    # Y is not offered as the ground truth: the chooser starts empty, Compute says what is missing
    assert widget.gt_combo.layer() is None and widget.gt_combo.currentIndex() == -1
    assert widget.gt_combo.placeholderText() == "(choose a labels layer)"
    assert not widget.compute_button.isEnabled() and widget.compute_button.text() == "Compute (no ground truth)"
    assert "ground-truth layer" in widget.compute_button.toolTip()

    phantom = tiny_phantom()
    volume = Volume.from_array(phantom.image, phantom.spacing, phantom.affine)
    viewer.add_labels(phantom.label, **labels_kwargs(volume, GT))
    assert widget.gt_combo.layer() is viewer.layers[GT]
    assert widget.compute_button.isEnabled() and widget.compute_button.text() == "Compute"

    # S and Y of "(none)", or the ground truth itself, leave nothing to score
    widget.s_combo.select("(none)")
    widget.y_combo.select(GT)
    assert not widget.compute_button.isEnabled() and widget.compute_button.text() == "Compute (no S or Y)"
    widget.y_combo.select(Y)
    assert widget.compute_button.isEnabled()
    assert S in widget.s_combo.names()
