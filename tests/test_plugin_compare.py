"""Compare widget: grid side by side and back to overlay, difference layers against ground truth and S."""

from __future__ import annotations

import numpy as np
import pytest

from napari_seg2refine._compare import COPY_KEY, CompareWidget, grid_of
from napari_seg2refine._layers import CT, GT, Y_VS_GT, Y_VS_S, S, Y
from plugin_support import add_masks, add_phantom, wait_for_job
from seg2refine_core.evaluation.compare import difference_map

pytestmark = pytest.mark.gui


def test_side_by_side_and_back_to_overlay(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    ct = add_phantom(viewer)
    add_masks(viewer, ct)
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget)
    before = [layer.name for layer in viewer.layers]
    grid = grid_of(viewer)

    widget.grid_button.click()
    assert grid.enabled and grid.stride == 2 and tuple(grid.shape) == (1, 3)
    names = [layer.name for layer in viewer.layers]
    assert names[:6] == [CT, S, f"CT under {Y}", Y, f"CT under {GT}", GT]
    copies = [layer for layer in viewer.layers if layer.metadata.get(COPY_KEY)]
    assert len(copies) == 2 and all(c.data is ct.data for c in copies)
    assert all(tuple(c.contrast_limits) == tuple(ct.contrast_limits) for c in copies)
    np.testing.assert_allclose(copies[0].scale, ct.scale)
    # each tile is the CT under one mask; tiles share one camera and one slice
    tiles = [grid.position(i, viewer.layers) for i in range(6)]
    assert tiles == [(0, 0), (0, 0), (0, 1), (0, 1), (0, 2), (0, 2)]
    viewer.dims.set_current_step(0, 7)
    qtbot.wait(10)

    widget.overlay_button.click()
    assert not grid.enabled
    assert [layer.name for layer in viewer.layers] == before
    assert all(layer.visible for layer in viewer.layers)
    assert viewer.dims.current_step[0] == 7


def test_difference_against_ground_truth_and_against_s(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    ct = add_phantom(viewer)
    s, y = add_masks(viewer, ct)
    gt = viewer.layers[GT].data
    widget = CompareWidget(viewer)
    viewer.window.add_dock_widget(widget)

    widget.diff_button.click()
    assert wait_for_job(qtbot, widget) == "done"
    layer = viewer.layers[Y_VS_GT]
    np.testing.assert_array_equal(layer.data, difference_map(y, gt))
    np.testing.assert_allclose(layer.scale, ct.scale)
    colours = layer.colormap.color_dict
    np.testing.assert_allclose(colours[2][:3], np.array([0x1F, 0x4D, 0xFF]) / 255, atol=1e-3)  # FP blue
    np.testing.assert_allclose(colours[3][:3], np.array([0x8B, 0x45, 0x13]) / 255, atol=1e-3)  # FN brown
    assert "TP" in widget.status.text() and "FP 0" in widget.status.text()

    widget.gt_combo.select("(none)")
    widget.diff_button.click()
    assert wait_for_job(qtbot, widget) == "done"
    expected = difference_map(y, s)
    np.testing.assert_array_equal(viewer.layers[Y_VS_S].data, expected)
    assert (expected == 2).any() and (expected == 3).any()
    # re-running replaces the data of the existing layer
    n_layers = len(viewer.layers)
    widget.diff_button.click()
    assert wait_for_job(qtbot, widget) == "done"
    assert len(viewer.layers) == n_layers
