"""The analysis figure: the tree in 3D coloured by lumen diameter with stenoses marked, diameters along the main
branches, and (with a CT) straightened CPRs of the branches with the worst stenoses."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seg2refine_core.analysis.result import TreeAnalysis
from seg2refine_core.analysis.stenosis import reference_diameter, worst_first

MAIN_NAMES = ("LM", "LAD", "LCX", "RCA")
#: CT window of the CPR panels (HU): centre 200, width 600, as the preprocessing's
CPR_WINDOW = (-100.0, 500.0)


def plotted_branches(analysis: TreeAnalysis, limit: int = 4) -> list:
    """The branches the diameter plot shows: the named main vessels, else the longest branches."""
    named = [b for name in MAIN_NAMES for b in analysis.branches if b.name == name]
    if named:
        return named
    return sorted(analysis.branches, key=lambda b: -b.length_mm)[:limit]


def write_figure(analysis: TreeAnalysis, path: str | Path, image: np.ndarray | None = None,
                 mask: np.ndarray | None = None, title: str | None = None) -> Path:
    """Write the PNG (atomically) and return its path. image: the CT (z, y, x) HU on the mask's grid, for the CPR
    panels; mask: the analysed mask, for their lumen outline."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import cm, colors
    from matplotlib.figure import Figure

    from seg2refine_core.analysis.cpr import straighten
    from seg2refine_core.io.atomic import atomic_path

    worst = worst_first(analysis.stenoses)
    cpr_branches = list(dict.fromkeys(s.branch for s in worst))[:2] if image is not None else []
    if image is not None and not cpr_branches:
        cpr_branches = [b.id for b in plotted_branches(analysis, 2)][:2]
    rows = 2 if cpr_branches else 1
    fig = Figure(figsize=(13, 5.5 * rows), dpi=100)
    grid = fig.add_gridspec(rows, 2, width_ratios=(1.1, 1))
    ax3d = fig.add_subplot(grid[0, 0], projection="3d")
    reliable = [b.diameter_mm[b.reliable] for b in analysis.branches if b.reliable.any()]
    diam_max = float(np.percentile(np.concatenate(reliable), 99)) if reliable else 1.0
    norm = colors.Normalize(0.0, max(diam_max, 1.0))
    for b in analysis.branches:
        p = analysis.world(b.voxels)
        ax3d.scatter(p[:, 0], p[:, 1], p[:, 2], c=b.diameter_mm, cmap="viridis", norm=norm, s=4, depthshade=True)
        if b.name != "unnamed":
            mid = p[len(p) // 2]
            ax3d.text(mid[0], mid[1], mid[2], f" {b.name}", fontsize=9, color="black")
    for s in analysis.stenoses:
        c = analysis.world(s.voxel[None])[0]
        ax3d.scatter([c[0]], [c[1]], [c[2]], marker="X", s=90, color="red", depthshade=False)
        ax3d.text(c[0], c[1], c[2], f" {s.label}", color="red", fontsize=9)
    ax3d.set_xlabel("x (mm, patient right +)", fontsize=8)
    ax3d.set_ylabel("y (mm, anterior +)", fontsize=8)
    ax3d.set_zlabel("z (mm, superior +)", fontsize=8)
    ax3d.view_init(elev=20, azim=120)  # from the patient's anterior left
    ax3d.tick_params(labelsize=7)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax3d, shrink=0.6, label="lumen diameter (mm)")
    ax3d.set_title("centerlines by lumen diameter; stenosis candidates in red", fontsize=10)

    ax = fig.add_subplot(grid[0, 1])
    for b in plotted_branches(analysis):
        d, ref = reference_diameter(b, analysis.options)
        label = b.name if b.name != "unnamed" else f"branch {b.id}"
        line = ax.plot(b.arc_mm, d, lw=1.2, label=label)[0]  # junctions and ends left out
        ax.plot(b.arc_mm, ref, lw=0.8, ls="--", color=line.get_color())
        for s in (s for s in analysis.stenoses if s.branch == b.id):
            ax.annotate(s.label, (s.arc_mm, s.min_diameter_mm), color="red", fontsize=8,
                        xytext=(0, -12), textcoords="offset points", ha="center")
            ax.plot([s.arc_mm], [s.min_diameter_mm], "v", color="red")
    ax.set_xlabel("distance along the branch (mm)")
    ax.set_ylabel("lumen diameter (mm)")
    ax.set_title("lumen diameter along the main branches (dashed: QCA reference)", fontsize=10)
    ax.grid(True, lw=0.4)
    if ax.get_legend_handles_labels()[1]:  # no branch long enough to plot: no legend
        ax.legend(fontsize=8)

    for col, branch_id in enumerate(cpr_branches):
        b = analysis.branches[branch_id]
        cpr = straighten(image, analysis.spacing, b.voxels, mask=mask)
        ax = fig.add_subplot(grid[1, col])
        ext = (cpr.offset_mm[0], cpr.offset_mm[-1], cpr.arc_mm[-1], cpr.arc_mm[0])
        ax.imshow(cpr.image, cmap="gray", vmin=CPR_WINDOW[0], vmax=CPR_WINDOW[1], extent=ext, aspect="equal")
        if cpr.lumen is not None and cpr.lumen.max() >= 0.5:
            ax.contour(cpr.offset_mm, cpr.arc_mm, cpr.lumen, levels=[0.5], colors="#00e5ff", linewidths=0.8)
        for s in (s for s in analysis.stenoses if s.branch == b.id):
            ax.axhline(s.arc_mm, color="red", lw=0.8, ls=":")
            ax.text(ext[1], s.arc_mm, f" {s.label}", color="red", fontsize=8, va="center")
        label = b.name if b.name != "unnamed" else f"branch {b.id}"
        ax.set_title(f"straightened CPR of {label} (CT {CPR_WINDOW[0]:g} to {CPR_WINDOW[1]:g} HU)", fontsize=10)
        ax.set_xticks([-5.0, 0.0, 5.0])
        ax.set_xlabel("across (mm)")
        ax.set_ylabel("along the centerline (mm)")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
