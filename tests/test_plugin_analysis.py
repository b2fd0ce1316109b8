"""Vessel analysis widget: runs the core in a worker, adds centerline and stenosis layers, tables jump the viewer,
the diameter chart and the straightened CPR follow the chosen branch."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from napari_seg2refine._vessel_analysis import CENTERLINE, NAMED_COLOURS, STENOSES, VesselAnalysisWidget
from plugin_support import wait_for_job

pytestmark = pytest.mark.gui


@lru_cache(maxsize=1)
def phantom():
    from seg2refine_core.data.phantom import make_phantom

    return make_phantom(seed=1000, severity_range=(0.25, 0.8))


def add_case(viewer):
    from napari_seg2refine._layers import CT, Y, image_kwargs, labels_kwargs
    from seg2refine_core.io.volume import Volume

    ph = phantom()
    volume = Volume.from_array(ph.image, ph.spacing, ph.affine)
    ct = viewer.add_image(ph.image, **image_kwargs(volume, CT))
    y = viewer.add_labels(ph.label.copy(), **labels_kwargs(volume, Y))
    return ct, y


def test_vessel_analysis_widget(make_napari_viewer, qtbot, tmp_path):
    from seg2refine_core.analysis import analyze_mask

    viewer = make_napari_viewer()
    ct, y = add_case(viewer)
    widget = VesselAnalysisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Vessel analysis")
    assert widget.mask_combo.layer() is y and widget.ct_combo.layer() is ct

    widget.run_button.click()
    assert wait_for_job(qtbot, widget) == "done"
    expected = analyze_mask(phantom().label, phantom().spacing, phantom().affine)
    analysis = widget.analysis
    assert len(analysis.branches) == len(expected.branches) and len(analysis.stenoses) == len(expected.stenoses)

    # layers on the mask's grid: every centerline voxel, coloured by branch; stenoses with their severity
    line = viewer.layers[CENTERLINE]
    assert len(line.data) == sum(len(b.voxels) for b in analysis.branches)
    np.testing.assert_allclose(line.scale, y.scale)
    lad = next(b for b in analysis.branches if b.name == "LAD")
    first = int(np.flatnonzero(line.features["branch"] == lad.id)[0])
    np.testing.assert_allclose(line.face_color[first][:3], [int(NAMED_COLOURS["LAD"][i:i + 2], 16) / 255
                                                            for i in (1, 3, 5)])
    marks = viewer.layers[STENOSES]
    assert len(marks.data) == len(analysis.stenoses) > 0
    assert list(marks.features["severity"]) == [round(s.severity_pct) for s in analysis.stenoses]

    # tables: one row per branch / stenosis; a click on a stenosis row moves the viewer to it
    assert widget.branch_table.rowCount() == len(analysis.branches)
    assert widget.stenosis_table.rowCount() == len(analysis.stenoses)
    row = len(analysis.stenoses) - 1
    target = analysis.stenoses[row]
    widget.stenosis_table.cellClicked.emit(row, 0)
    assert viewer.dims.point[0] == pytest.approx(target.voxel[0] * y.scale[0])
    assert widget.branch is analysis.branches[target.branch]
    # ... and the chart shows that branch's diameter with the stenosis marked; the CPR its straightened CT
    lines = widget.chart_ax.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), widget.branch.diameter_mm)
    assert any(list(ln.get_xdata()) == [target.arc_mm] for ln in lines)
    (cpr,) = widget.cpr_ax.get_images()
    data = np.asarray(cpr.get_array())
    assert data.shape[1] > 20 and "CT 'CT'" in widget.cpr_ax.get_title()
    middle = data[data.shape[0] // 2]
    assert middle.max() > 200.0  # contrast-filled lumen in the middle row of the straightened vessel

    # a click on a branch row moves the viewer to the branch's middle
    lad_row = next(r for r in range(widget.branch_table.rowCount())
                   if widget.branch_table.item(r, 1).text() == "LAD")
    widget.branch_table.cellClicked.emit(lad_row, 0)
    assert widget.branch is lad
    assert viewer.dims.point[0] == pytest.approx(lad.voxels[len(lad.voxels) // 2][0] * y.scale[0])

    widget.tables.setCurrentIndex(0)
    widget.views.setCurrentIndex(1)
    qtbot.wait(50)
    image = widget.grab().toImage()
    assert image.save(str(tmp_path / "widget.png"))


def test_stop_and_no_mask(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = VesselAnalysisWidget(viewer)
    widget.run_button.click()  # no Labels layer: an error notification, no job
    assert widget.job is None
    ct, y = add_case(viewer)
    widget.mask_combo.select(y.name)
    widget.run_button.click()
    widget.job.stop()
    assert wait_for_job(qtbot, widget) in ("stopped", "done")
    assert widget.run_button.isEnabled() and not widget.stop_button.isEnabled()


def test_a_label_map_and_a_blood_pool_are_said_as_notifications(make_napari_viewer, qtbot, monkeypatch):
    """Several labels are merged into one lumen, and a branch far wider than a coronary is questioned, each in one
    napari notification naming the layer."""
    from napari_seg2refine import _vessel_analysis

    told = []
    monkeypatch.setattr(_vessel_analysis, "show_info", told.append)
    viewer = make_napari_viewer()
    widget = VesselAnalysisWidget(viewer)
    labels = np.zeros((60, 24, 24), np.uint8)
    z, y, x = np.indices(labels.shape)
    labels[((y - 11.5) ** 2 + (x - 11.5) ** 2 <= 6.5**2) & (z > 2) & (z < 57)] = 2  # a 13 mm wide "vessel"
    labels[30:] = np.where(labels[30:] > 0, 3, 0)
    layer = viewer.add_labels(labels, name="pools")
    widget.mask_combo.select(layer.name)
    widget.run_button.click()
    assert wait_for_job(qtbot, widget) == "done"
    assert len(told) == 2
    assert "layer 'pools': several labels" in told[0] and "far wider than a coronary" in told[1]
