"""Vessel analysis of a coronary mask, end to end: centerline graph -> joined trees split -> trees and branches ->
names -> stenoses."""

from __future__ import annotations

import numpy as np

from seg2refine_core.analysis.centerline import MIN_LENGTH_MM, SPUR_MM, centerline_graphs
from seg2refine_core.analysis.cross_section import equivalent_diameters
from seg2refine_core.analysis.joined import separate_joined_trees
from seg2refine_core.analysis.naming import name_trees
from seg2refine_core.analysis.result import TreeAnalysis
from seg2refine_core.analysis.stenosis import StenosisOptions, find_stenoses, left_main_stenosis
from seg2refine_core.analysis.trees import build_trees
from seg2refine_core.errors import VolumeError
from seg2refine_core.progress import ProgressFn, StopFn, check_stop


def analyze_mask(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    affine: np.ndarray | None = None,
    *,
    options: StenosisOptions | None = None,
    spur_mm: float = SPUR_MM,
    min_length_mm: float = MIN_LENGTH_MM,
    source: str | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> TreeAnalysis:
    """Analyse a binary coronary mask (z, y, x; nonzero = lumen) with voxel ``spacing`` (sz, sy, sx) mm.

    affine: 4x4 from (x, y, z) voxel indices to world RAS mm (default ``diag(sx, sy, sz)``: RAS axes along x, y,
    z; left/right and LAD/LCX then assume that orientation). Returns a :class:`TreeAnalysis`. Progress counts the
    connected components, then naming and stenoses. Raises :class:`~seg2refine_core.errors.VolumeError` for a mask
    that is not 3D or whose spacing is not positive. See :mod:`seg2refine_core.analysis` for the rules.
    """
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise VolumeError(f"{source or '<array>'}: expected a 3D (z, y, x) mask, got shape {mask.shape}")
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    if len(spacing) != 3 or min(spacing) <= 0:
        raise VolumeError(f"{source or '<array>'}: voxel spacing must be 3 positive numbers in mm, got {spacing}")
    if affine is None:
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    affine = np.asarray(affine, dtype=float)
    options = options or StenosisOptions()
    report = progress or (lambda done, total, info="": None)
    state = {"total": 2}

    def components(done: int, total: int, info: str) -> None:
        state["total"] = total + 2
        report(done, state["total"], info)

    graphs = centerline_graphs(mask, spacing, spur_mm=spur_mm, min_length_mm=min_length_mm,
                               progress=components, should_stop=should_stop)
    graphs = separate_joined_trees(mask, graphs, spacing, spur_mm=spur_mm, min_length_mm=min_length_mm)
    trees, branches = build_trees(graphs, spacing, affine)
    for b in branches:
        check_stop(should_stop)
        half_width = np.maximum(2.0 * b.radius_mm + 2.0 * max(spacing), 2.0)
        b.diameter_mm = equivalent_diameters(mask, spacing, b.voxels, half_width)
    branches = name_trees(trees, branches, affine)
    report(state["total"] - 1, state["total"], "trees and names")
    stenoses = []
    for b in branches:
        found = find_stenoses(b, options, voxel_mm=max(spacing), spacing=spacing)
        if b.name == "LM" and not found:
            daughters = [d for d in branches if d.tree == b.tree and d.name in ("LAD", "LCX")]
            found = [s for s in [left_main_stenosis(b, daughters, spacing, options)] if s is not None]
        stenoses += found
    report(state["total"], state["total"], "stenoses")
    return TreeAnalysis(mask.shape, spacing, affine, trees, branches, stenoses, options, source)  # type: ignore[arg-type]

