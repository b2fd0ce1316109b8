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


def test_choosers_start_empty_and_buttons_say_what_is_missing(make_napari_viewer, monkeypatch):
    from napari_seg2refine import _compare

    shown: list[str] = []
    monkeypatch.setattr(_compare, "show_error", shown.append)
    viewer = make_napari_viewer()
    ct = add_phantom(viewer)  # CT and ground truth, no S or Y yet
    widget = CompareWidget(viewer)
    # the ground truth is not offered as S or Y: those choosers start empty and say so
    for combo in (widget.s_combo, widget.y_combo):
        assert combo.layer() is None and combo.currentIndex() == -1
        assert combo.placeholderText() == "(choose a labels layer)" and GT in combo.names()
    assert widget.gt_combo.layer() is viewer.layers[GT]
    assert not widget.diff_button.isEnabled() and widget.diff_button.text() == "Difference layer (no Y)"
    assert Y in widget.diff_button.toolTip()
    widget.difference()  # called anyway: a message, no layer of the ground truth against itself
    assert "Choose a Y layer" in shown[-1] and Y_VS_GT not in viewer.layers
    assert widget.grid_button.isEnabled()  # the CT under the ground truth is a valid view

    # S and Y appear (Segment's names): the choosers take them, the buttons are ready
    add_masks(viewer, ct)
    assert widget.s_combo.layer() is viewer.layers[S] and widget.y_combo.layer() is viewer.layers[Y]
    assert widget.diff_button.isEnabled() and widget.diff_button.text() == "Difference layer"

    # a user's choice of the ground truth as Y is refused, saying why
    widget.y_combo.select(GT)
    assert not widget.diff_button.isEnabled()
    assert widget.diff_button.text() == "Difference layer (Y is the ground truth)"
    assert "same layer" in widget.diff_button.toolTip()
    widget.gt_combo.select("(none)")
    widget.y_combo.select(S)
    assert widget.diff_button.text() == "Difference layer (Y is S)"
    widget.y_combo.select(Y)
    assert widget.diff_button.isEnabled()

    # no mask, then no CT: Side by side says which
    for name in (S, Y, GT):
        viewer.layers.remove(name)
    assert widget.grid_button.text() == "Side by side (no mask)" and not widget.grid_button.isEnabled()
    assert widget.s_combo.placeholderText() == "(no labels layer)"
    viewer.layers.remove(CT)
    assert widget.grid_button.text() == "Side by side (no CT)"


def test_layer_combo_takes_only_layers_that_fit_its_role(make_napari_viewer):
    from napari.layers import Image, Labels

    from napari_seg2refine._layer_combo import LayerCombo

    viewer = make_napari_viewer()
    image = np.zeros((2, 4, 4), np.float32)
    mask = np.zeros((2, 4, 4), np.uint8)
    viewer.add_image(image, name="patient 7")
    viewer.add_labels(mask, name="my mask")
    ct_combo = LayerCombo(viewer, Image, preferred=CT)
    s_combo = LayerCombo(viewer, Labels, preferred=S)
    assert ct_combo.layer().name == "patient 7"  # any image may be the CT
    assert s_combo.layer() is None  # a mask of unknown role is listed, not chosen
    first = viewer.add_labels(mask, name=S)
    second = viewer.add_labels(mask, name=S)  # napari names it "S (stage 1) [1]"
    assert s_combo.layer() is first
    viewer.layers.remove(first)
    assert s_combo.layer() is second and second.name.startswith(f"{S} ")
    s_combo.select("my mask")
    viewer.add_labels(mask, name=S)
    assert s_combo.layer().name == "my mask"  # the user's choice stays
    strict = LayerCombo(viewer, Image, preferred=CT, fallback=False)
    assert strict.layer() is None
