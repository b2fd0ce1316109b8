"""Screenshot of the Vessel analysis widget for the README: `xvfb-run -a python docs/make_analysis_screenshot.py`.

A phantom (seed 1000, stenoses 25-80 %), written as the NIfTI files of the README's example (`seg2refine phantom
--seed 1000 --severity 25 80`) and read back, is opened as CT and Y (its label stands in for a refined mask),
the widget analyses Y, and the worst stenosis candidate on the LAD is chosen; the viewer (1600 x 1000) is saved as
docs/screenshots/vessel_analysis.png and the analysis of that mask as docs/vessel_analysis_example.json (first
points of each branch only, to keep it short).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from napari_seg2refine._layers import CT, Y, image_kwargs, labels_kwargs
from napari_seg2refine._vessel_analysis import VesselAnalysisWidget
from seg2refine_core.data.phantom import make_phantom, write_phantom_case
from seg2refine_core.io.volume import read_volume

OUT = Path(__file__).parent


def main() -> int:
    from napari.settings import get_settings

    get_settings().application.gui_notification_level = "error"
    with tempfile.TemporaryDirectory() as tmp:  # the files store the spacing as float32, as the CLI reads it
        image, label = write_phantom_case(make_phantom(seed=1000, severity_range=(0.25, 0.8)), Path(tmp), 1)
        volume, mask = read_volume(image), read_volume(label)
    viewer = napari.Viewer(title="Seg2Refine")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.add_image(volume.array, **image_kwargs(volume, CT))
    viewer.add_labels(mask.array.astype("uint8"), **labels_kwargs(mask, Y))
    widget = VesselAnalysisWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Vessel analysis", area="right")
    widget.run_button.click()
    app = QApplication.instance()
    while widget.job is None or not widget.job.ended:
        app.processEvents()
    if widget.job.status != "done":
        sys.exit("vessel analysis failed")
    st = widget.analysis.stenoses
    chosen = max(range(len(st)), key=lambda i: (widget.analysis.branches[st[i].branch].name == "LAD",
                                                st[i].severity_pct))  # the worst on the LAD
    widget.stenosis_table.selectRow(chosen)
    widget.show_stenosis(chosen)
    widget.views.setCurrentIndex(1)
    scene = getattr(viewer, "scene", None)
    (scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera).zoom *= 1.6
    for _ in range(20):
        app.processEvents()
    (OUT / "screenshots").mkdir(exist_ok=True)
    viewer.screenshot(str(OUT / "screenshots" / "vessel_analysis.png"), canvas_only=False)
    report = widget.analysis.to_dict()
    for b in report["branches"]:
        for key in ("points_mm", "diameters_mm", "radii_mm", "arc_mm", "reliable"):
            b[key] = b[key][:3]
    report["branches"] = report["branches"][:3]
    (OUT / "vessel_analysis_example.json").write_text(json.dumps(report, indent=1))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
