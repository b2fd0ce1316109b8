"""Writing analyses: the JSON report, a CSV table of branches, and the figure; one mask or a cohort."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from seg2refine_core.analysis.result import TreeAnalysis
from seg2refine_core.analysis.stenosis import worst_first
from seg2refine_core.errors import Notice
from seg2refine_core.io.atomic import write_text_atomic

#: lumen diameter (mm) far beyond a coronary artery's (an adult's left main is about 4-5 mm across; only an aneurysm
#: comes near): a mask with wider branches is said not to look like a coronary lumen mask
CORONARY_MAX_DIAMETER_MM = 10.0

CSV_COLUMNS = (
    "source", "tree", "side", "branch", "name", "parent", "length_mm", "mean_diameter_mm", "min_diameter_mm",
    "tortuosity", "stenoses", "worst_stenosis_pct", "worst_grade",
)  # fmt: skip


def write_json(analysis: TreeAnalysis, path: str | Path) -> Path:
    """The report of :meth:`TreeAnalysis.to_dict` as JSON, atomically."""
    return write_text_atomic(path, json.dumps(analysis.to_dict(), indent=1))


def branch_rows(analysis: TreeAnalysis) -> list[dict]:
    """One row per branch (the columns of :data:`CSV_COLUMNS`)."""
    report = analysis.to_dict()
    rows = []
    for b in report["branches"]:
        own = [s for s in report["stenoses"] if s["branch"] == b["id"]]
        worst = min(own, key=lambda s: (s["small_vessel"], -s["severity_pct"]), default=None)  # graded first
        rows.append({
            "source": analysis.source or "", "tree": b["tree"], "side": b["side"], "branch": b["id"],
            "name": b["name"], "parent": "" if b["parent"] is None else b["parent"], "length_mm": b["length_mm"],
            "mean_diameter_mm": "" if b["mean_diameter_mm"] is None else b["mean_diameter_mm"],
            "min_diameter_mm": "" if b["min_diameter_mm"] is None else b["min_diameter_mm"],
            "tortuosity": "" if b["tortuosity"] is None else b["tortuosity"], "stenoses": len(own),
            "worst_stenosis_pct": "" if worst is None else worst["severity_pct"],
            "worst_grade": "" if worst is None else worst["grade"],
        })
    return rows


def write_csv(analyses: list[TreeAnalysis], path: str | Path) -> Path:
    """One row per branch of every analysis (a cohort in one table), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for analysis in analyses:
        writer.writerows(branch_rows(analysis))
    return write_text_atomic(path, buf.getvalue())


def write_reports(analysis: TreeAnalysis, *, json_path: str | Path | None = None, csv_path: str | Path | None = None,
                  png_path: str | Path | None = None, image: np.ndarray | None = None,
                  mask: np.ndarray | None = None) -> list[Path]:
    """Write whichever of the JSON, CSV and PNG are asked for; returns the paths written. image and mask (z, y, x)
    on the analysed grid add CPR panels with the lumen outline to the PNG."""
    from seg2refine_core.analysis.figure import write_figure

    written = []
    if json_path:
        written.append(write_json(analysis, json_path))
    if csv_path:
        written.append(write_csv([analysis], csv_path))
    if png_path:
        title = Path(analysis.source).name if analysis.source else None
        written.append(write_figure(analysis, png_path, image=image, mask=mask, title=title))
    return written


def tree_lines(analysis: TreeAnalysis) -> list[tuple[str, str]]:
    """``(side, "N branches, L mm (named vessels)")`` for each left or right tree (fragments left out)."""
    lines = []
    for t in analysis.trees:
        if t.side == "other":
            continue
        names = [analysis.branches[i].name for i in t.branch_ids if analysis.branches[i].name != "unnamed"]
        length = sum(analysis.branches[i].length_mm for i in t.branch_ids)
        lines.append((t.side, f"{len(t.branch_ids)} branches, {length:.0f} mm"
                      + (f" ({', '.join(names)})" if names else "")))
    return lines


def summary(analysis: TreeAnalysis) -> str:
    """A few lines for a terminal: trees, named branches, stenosis candidates."""
    lines = [f"{side} tree: {text}" for side, text in tree_lines(analysis)]
    others = sum(1 for t in analysis.trees if t.side == "other")
    if others:
        lines.append(f"{others} other fragment(s)")
    for s in worst_first(analysis.stenoses):
        b = analysis.branches[s.branch]
        where = b.name if b.name != "unnamed" else f"branch {b.id} ({analysis.side(b)})"
        c = analysis.world(s.voxel[None])[0]
        lines.append(f"stenosis {s.severity_pct:4.0f} % ({s.grade}) on {where} at {s.arc_mm:.1f} mm, "
                     f"length {s.length_mm:.1f} mm, RAS ({c[0]:.1f}, {c[1]:.1f}, {c[2]:.1f}) mm")
    if not analysis.stenoses:
        lines.append("no stenosis candidate >= 25 %")
    return "\n".join(lines)


def lumen_mask(array: np.ndarray, name: str) -> np.ndarray:
    """The lumen (voxels > 0.5) of a mask file's array (z, y, x), bool. Where the array is not a plain binary mask
    (0/1, or 0 and one other value such as 255) a :class:`~seg2refine_core.errors.Notice` naming ``name`` says how
    it was read: empty, a probability map (values between 0 and 1), or several labels merged into one lumen."""
    mask = array > 0.5
    if not mask.any():
        _notice(f"{name}: the mask is empty (no voxel > 0.5): no vessel to analyse")
    elif np.any((array > 0) & (array < 1)):
        _notice(f"{name}: values between 0 and 1 (a probability map?): voxels > 0.5 are taken as lumen")
    else:
        top = array.max()
        if top > 1 and np.any(mask & (array != top)):
            _notice(f"{name}: several labels (values up to {top:g}) are merged into one lumen (voxels > 0.5)")
    return mask


def check_coronary_size(analysis: TreeAnalysis, name: str) -> None:
    """A :class:`~seg2refine_core.errors.Notice` naming ``name`` where a branch of ``analysis`` is wider than
    :data:`CORONARY_MAX_DIAMETER_MM` (a whole-heart or blood-pool mask, not a coronary lumen)."""
    diameters = [b.diameter_mm[np.isfinite(b.diameter_mm)] for b in analysis.branches]
    widest = max((float(d.max()) for d in diameters if d.size), default=0.0)
    if widest > CORONARY_MAX_DIAMETER_MM:
        _notice(f"{name}: branches up to {widest:.0f} mm across, far wider than a coronary artery: is this a "
                "coronary lumen mask?")


def _notice(message: str) -> None:
    warnings.warn(message, Notice, stacklevel=3)


def analyze_file(mask_path: str | Path, *, image_path: str | Path | None = None, json_path: str | Path | None = None,
                 png_path: str | Path | None = None, options: Any = None) -> TreeAnalysis:
    """Analyse the mask file ``mask_path`` (any format :func:`~seg2refine_core.io.volume.read_volume` reads; voxels
    > 0.5 are lumen, :func:`lumen_mask`) and write the reports asked for. ``image_path``: its CT, on the same grid,
    for the figure's CPR panels. ``options``: :class:`~seg2refine_core.analysis.stenosis.StenosisOptions`. A
    :class:`~seg2refine_core.errors.Notice` says when a branch is too wide for a coronary (:func:`check_coronary_size`).
    Raises :class:`~seg2refine_core.errors.VolumeError` for an unreadable file or a CT on another grid."""
    from seg2refine_core.analysis.analyze import analyze_mask
    from seg2refine_core.io.volume import check_same_geometry, read_volume

    volume = read_volume(mask_path)
    image = None
    if image_path is not None:
        ct = read_volume(image_path)
        check_same_geometry(ct, volume)
        image = ct.array
    mask = lumen_mask(volume.array, str(mask_path))
    analysis = analyze_mask(mask, volume.spacing, volume.affine, options=options, source=str(mask_path))
    check_coronary_size(analysis, str(mask_path))
    write_reports(analysis, json_path=json_path, png_path=png_path, image=image, mask=mask)
    return analysis

