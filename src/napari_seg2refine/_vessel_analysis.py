"""Vessel analysis widget: centerlines, named branches, diameters, stenosis candidates and a straightened CPR.

One core call (:func:`seg2refine_core.analysis.analyze_mask`) runs in a thread worker with a progress bar on the
chosen Labels layer (Y by default), with that layer's spacing and (when it came from a file) its affine. The result
becomes a Points layer "centerline" coloured by branch and a Points layer "stenosis candidates" labelled with their
severity; two tables list the branches and the stenosis candidates (a click on a row moves the viewer there and
shows that branch below); a chart plots the chosen branch's lumen diameter along its length with the QCA reference,
and a straightened curved planar reformation (CPR) shows the CT resampled along it with the lumen outline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ._jobs import Job
from ._layer_combo import LayerCombo
from ._layers import CT, VOLUME_KEY, Y
from ._plot import FOREGROUND, GRID, make_canvas, style_axes
from ._scroll import scroll_page

CENTERLINE = "centerline"
STENOSES = "stenosis candidates"
#: colours of the named vessels; unnamed branches cycle through PALETTE
NAMED_COLOURS = {"LM": "#f58231", "LAD": "#3cb44b", "LCX": "#4363d8", "RCA": "#f032e6"}
PALETTE = ("#a9a9a9", "#42d4f4", "#bfef45", "#dcbeff", "#c8a165", "#fffac8", "#aaffc3", "#ffd8b1")
STENOSIS_COLOUR = "#ff1a1a"
BRANCH_COLUMNS = ("branch", "name", "side", "length mm", "mean Ø mm", "min Ø mm", "tortuosity")
STENOSIS_COLUMNS = ("branch", "severity %", "grade", "length mm", "ref Ø mm", "min Ø mm")


def branch_colour(branch: Any) -> str:
    """A named vessel's colour, else one of the palette by branch id."""
    return NAMED_COLOURS.get(branch.name, PALETTE[branch.id % len(PALETTE)])


def run_analysis(mask: np.ndarray, spacing: tuple[float, float, float], affine: np.ndarray | None,
                 progress: Any, should_stop: Any) -> Any:
    """Worker body: the core analysis of ``mask``."""
    from seg2refine_core.analysis import analyze_mask

    return analyze_mask(mask, spacing, affine, progress=progress, should_stop=should_stop)


def brief_summary(analysis: Any) -> str:
    """Two short lines: each main tree's branches, length and named vessels; the stenosis candidates by grade."""
    from seg2refine_core.analysis.report import tree_lines

    trees = [f"<b>{side}</b> {text}" for side, text in tree_lines(analysis)]
    grades = {g: sum(1 for s in analysis.stenoses if s.grade == g)
              for g in ("severe", "moderate", "mild", "small vessel")}
    stenoses = ", ".join(f"{n} {g}" for g, n in grades.items() if n) or "none"
    return "; ".join(trees or ["no tree found"]) + f"<br>stenosis candidates: {stenoses}"


class VesselAnalysisWidget(QWidget):
    """Dock widget: mask and CT choosers, Analyse/Stop, branch and stenosis tables, diameter chart, CPR."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.job: Job | None = None
        self.analysis: Any = None
        self.branch: Any = None
        self._mask_layer: Any = None
        self._mask: np.ndarray | None = None
        self.mask_combo = LayerCombo(napari_viewer, Labels, preferred=Y)
        self.ct_combo = LayerCombo(napari_viewer, Image, preferred=CT, optional=True)
        self.run_button = QPushButton("Analyse")
        self.run_button.clicked.connect(self.run)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(lambda: self.job.stop() if self.job else None)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.branch_table = self._table(BRANCH_COLUMNS)
        self.stenosis_table = self._table(STENOSIS_COLUMNS)
        self.branch_table.cellClicked.connect(lambda row, _: self.show_branch(self._row_branch(row), jump=True))
        self.stenosis_table.cellClicked.connect(lambda row, _: self.show_stenosis(row))
        self.tables = QTabWidget()
        self.tables.addTab(self.stenosis_table, "Stenosis candidates")
        self.tables.addTab(self.branch_table, "Branches")
        self.chart, self.chart_figure, (self.chart_ax,) = make_canvas(1, height=2.4)
        self.chart.setMinimumHeight(180)
        self.chart.mpl_connect("button_press_event", self._chart_clicked)
        self.cpr_canvas, self.cpr_figure, (self.cpr_ax,) = make_canvas(1, height=2.4)
        self.cpr_canvas.setMinimumHeight(180)
        self.views = QTabWidget()
        self.views.addTab(self.chart, "Diameter")
        self.views.addTab(self.cpr_canvas, "Straightened CPR")
        form = QFormLayout()
        form.addRow("Mask", self.mask_combo)
        form.addRow("CT (for the CPR)", self.ct_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        page = scroll_page(self)
        layout = QVBoxLayout(page)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.summary)
        layout.addWidget(self.tables, 1)
        layout.addWidget(self.views, 1)
        page.setMinimumWidth(400)
        self._clear_views()

    @staticmethod
    def _table(columns: tuple[str, ...]) -> QTableWidget:
        table = QTableWidget(0, len(columns))
        table.setHorizontalHeaderLabels(list(columns))
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setStretchLastSection(True)
        table.setMinimumHeight(120)
        return table

    # ------------------------------------------------------------------------------------------------- running

    def run(self) -> None:
        """Analyse the chosen mask layer in a thread worker."""
        from seg2refine_core.analysis.report import lumen_mask
        from seg2refine_core.data.canonical import notices_to

        layer = self.mask_combo.layer()
        if layer is None:
            show_error("Vessel analysis: choose a mask (Labels) layer")
            return
        if np.asarray(layer.data).ndim != 3:
            show_error(f"Vessel analysis: '{layer.name}' is not a 3D mask")
            return
        volume = layer.metadata.get(VOLUME_KEY)
        affine = volume.affine if volume is not None else None
        spacing = tuple(float(s) for s in layer.scale)
        self._mask_layer = layer
        with notices_to(show_info):  # an empty layer, several labels merged
            self._mask = lumen_mask(np.asarray(layer.data), f"layer {layer.name!r}")
        mask = self._mask
        self.run_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.job = Job(
            lambda progress, should_stop: run_analysis(mask, spacing, affine, progress, should_stop),
            "Vessel analysis", on_result=self._show, on_end=self._ended,
        )

    def _ended(self, _status: str) -> None:
        self.run_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    def _show(self, analysis: Any) -> None:
        from seg2refine_core.analysis.report import check_coronary_size
        from seg2refine_core.data.canonical import notices_to

        self.analysis = analysis
        with notices_to(show_info):
            check_coronary_size(analysis, f"layer {self._mask_layer.name!r}")
        self._add_layers(analysis)
        self._fill_tables(analysis)
        self.summary.setText(brief_summary(analysis))
        first = max(analysis.branches, key=lambda b: b.length_mm, default=None)
        if analysis.stenoses:
            from seg2refine_core.analysis.stenosis import worst_first

            first = analysis.branches[worst_first(analysis.stenoses)[0].branch]
        if first is not None:
            self.show_branch(first, jump=False)

    def _add_layers(self, analysis: Any) -> None:
        like = self._mask_layer
        points = np.concatenate([b.voxels for b in analysis.branches]) if analysis.branches else np.zeros((0, 3))
        colours = [branch_colour(b) for b in analysis.branches for _ in range(len(b.voxels))]
        features = {
            "branch": np.concatenate([[b.id] * len(b.voxels) for b in analysis.branches]).astype(int)
            if analysis.branches else np.zeros(0, int),
            "name": [b.name for b in analysis.branches for _ in range(len(b.voxels))],
            "diameter_mm": np.concatenate([b.diameter_mm for b in analysis.branches])
            if analysis.branches else np.zeros(0),
        }
        common = {"scale": tuple(like.scale), "translate": tuple(like.translate), "units": tuple(
            str(u) for u in like.units)}
        size = float(min(like.scale)) * 1.5
        for name in (CENTERLINE, STENOSES):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.viewer.add_points(points, name=CENTERLINE, face_color=colours if len(points) else "white",
                               border_width=0, size=size / min(like.scale), features=features, **common)
        st = analysis.stenoses
        self.viewer.add_points(
            np.array([s.voxel for s in st]) if st else np.zeros((0, 3)), name=STENOSES, symbol="ring",
            face_color=STENOSIS_COLOUR, border_color=STENOSIS_COLOUR, size=2.5 * size / min(like.scale),
            features={"severity": [round(s.severity_pct) for s in st], "grade": [s.grade for s in st],
                      "label": [s.label for s in st]},
            text={"string": "{label}", "color": STENOSIS_COLOUR, "size": 10, "anchor": "upper_left"}
            if st else None, **common,
        )

    def _fill_tables(self, analysis: Any) -> None:
        report = analysis.to_dict()
        self.branch_table.setRowCount(len(report["branches"]))
        for row, b in enumerate(report["branches"]):
            cells = (b["id"], b["name"], b["side"], b["length_mm"], b["mean_diameter_mm"], b["min_diameter_mm"],
                     b["tortuosity"])
            self._fill_row(self.branch_table, row, cells)
        self.stenosis_table.setRowCount(len(report["stenoses"]))
        for row, s in enumerate(report["stenoses"]):
            label = s["branch_name"] if s["branch_name"] != "unnamed" else f"{s['branch']} ({s['side']})"
            cells = (label, s["severity_pct"], s["grade"], s["length_mm"], s["reference_diameter_mm"],
                     s["min_diameter_mm"])
            self._fill_row(self.stenosis_table, row, cells)
        for table in (self.branch_table, self.stenosis_table):
            table.resizeColumnsToContents()

    @staticmethod
    def _fill_row(table: QTableWidget, row: int, cells: tuple) -> None:
        for col, value in enumerate(cells):
            text = "" if value is None else (f"{value:.1f}" if isinstance(value, float) else str(value))
            table.setItem(row, col, QTableWidgetItem(text))

    # ------------------------------------------------------------------------------------------------ selection

    def _row_branch(self, row: int) -> Any:
        return self.analysis.branches[int(self.branch_table.item(row, 0).text())]

    def show_stenosis(self, row: int) -> None:
        """Move the viewer to stenosis candidate ``row`` and show its branch."""
        s = self.analysis.stenoses[row]
        self.show_branch(self.analysis.branches[s.branch], jump=False)
        self.go_to(s.voxel)

    def go_to(self, voxel: np.ndarray) -> None:
        """Centre the viewer on a voxel (z, y, x) of the analysed mask and move to its axial slice."""
        world = np.asarray(self._mask_layer.data_to_world(tuple(float(v) for v in voxel)))
        self.viewer.dims.set_point(0, float(world[0]))
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9 keeps the camera there
        camera = scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera
        camera.center = tuple(float(w) for w in world[-self.viewer.dims.ndisplay:])

    def show_branch(self, branch: Any, jump: bool) -> None:
        """Plot ``branch``'s diameter and its CPR; with ``jump`` move the viewer to its middle."""
        self.branch = branch
        self._plot_diameter(branch)
        self._plot_cpr(branch)
        if jump:
            self.go_to(branch.voxels[len(branch.voxels) // 2])

    def _label(self, branch: Any) -> str:
        return branch.name if branch.name != "unnamed" else f"branch {branch.id} ({self.analysis.side(branch)})"

    def _clear_views(self) -> None:
        for ax, canvas, title in ((self.chart_ax, self.chart, "lumen diameter along a branch"),
                                  (self.cpr_ax, self.cpr_canvas, "straightened CPR of a branch")):
            ax.clear()
            style_axes(ax)
            ax.set_title(title, fontsize=9, color=FOREGROUND)
            canvas.draw_idle()

    def _plot_diameter(self, branch: Any) -> None:
        from seg2refine_core.analysis.stenosis import reference_diameter

        ax = self.chart_ax
        ax.clear()
        style_axes(ax)
        d, ref = reference_diameter(branch, self.analysis.options)
        colour = branch_colour(branch)
        ax.plot(branch.arc_mm, branch.diameter_mm, color=GRID, lw=0.8, label="all points")
        ax.plot(branch.arc_mm, d, color=colour, lw=1.4, label="lumen Ø")
        ax.plot(branch.arc_mm, ref, color=colour, lw=1.0, ls="--", label="QCA reference")
        for s in (s for s in self.analysis.stenoses if s.branch == branch.id):
            ax.plot([s.arc_mm], [s.min_diameter_mm], "v", color=STENOSIS_COLOUR)
            ax.annotate(s.label, (s.arc_mm, s.min_diameter_mm), color=STENOSIS_COLOUR, fontsize=8,
                        xytext=(0, -12), textcoords="offset points", ha="center")
        ax.set_xlabel("along the branch (mm)")
        ax.set_ylabel("diameter (mm)")
        ax.set_title(f"{self._label(branch)}: lumen diameter", fontsize=9, color=FOREGROUND)
        ax.set_ylim(bottom=0)
        self.chart.draw_idle()

    def _chart_clicked(self, event: Any) -> None:
        if self.branch is None or event.inaxes is not self.chart_ax or event.xdata is None:
            return
        i = int(np.argmin(np.abs(self.branch.arc_mm - event.xdata)))
        self.go_to(self.branch.voxels[i])

    def _plot_cpr(self, branch: Any) -> None:
        from seg2refine_core.analysis.cpr import straighten

        ct_layer = self.ct_combo.layer()
        use_ct = ct_layer is not None and np.asarray(ct_layer.data).shape == self._mask.shape
        image = np.asarray(ct_layer.data) if use_ct else self._mask.astype(np.float32)
        cpr = straighten(image, self.analysis.spacing, branch.voxels, mask=self._mask, half_width_mm=6.0)
        ax = self.cpr_ax
        ax.clear()
        style_axes(ax)
        limits = tuple(ct_layer.contrast_limits) if use_ct else (0.0, 1.0)
        ext = (cpr.arc_mm[0], cpr.arc_mm[-1], cpr.offset_mm[0], cpr.offset_mm[-1])
        ax.imshow(cpr.image.T, cmap="gray", vmin=limits[0], vmax=limits[1], extent=ext, origin="lower",
                  aspect="auto")  # a long vessel would be a thin strip at equal aspect: stretched across
        if cpr.lumen is not None and cpr.lumen.max() >= 0.5:
            ax.contour(cpr.arc_mm, cpr.offset_mm, cpr.lumen.T, levels=[0.5], colors=[branch_colour(branch)],
                       linewidths=0.8)
        for s in (s for s in self.analysis.stenoses if s.branch == branch.id):
            ax.axvline(s.arc_mm, color=STENOSIS_COLOUR, lw=0.8, ls=":")
        source = f"CT '{ct_layer.name}'" if use_ct else "mask"
        ax.set_title(f"{self._label(branch)}: straightened CPR ({source})", fontsize=9, color=FOREGROUND)
        ax.set_xlabel("along the branch (mm)")
        ax.set_ylabel("across (mm, stretched)")
        self.cpr_canvas.draw_idle()
