"""Vessel analysis of a coronary mask: centerlines, trees and named branches, lumen diameters, stenosis candidates.

Entry point: :func:`analyze_mask` (a mask array with its spacing and affine), returning a :class:`TreeAnalysis`;
:func:`~seg2refine_core.analysis.report.write_reports` writes its JSON, CSV and figure.
One step per module, in order: :mod:`.centerline` (skeleton and graph), :mod:`.radius` (distance transform),
:mod:`.joined` (a component holding both trees split in two), :mod:`.trees` (ostium, flow, branches), :mod:`.sides`
(left/right, world coordinates), :mod:`.naming` (LM, LAD, LCX, RCA), :mod:`.cross_section` (equivalent diameters),
:mod:`.stenosis` (QCA-style candidates), :mod:`.result` (the report's schema), :mod:`.report` and :mod:`.figure`
(files), :mod:`.cpr` (straightened CPR).
Positions are reported in world RAS mm through the mask's affine.
"""

from seg2refine_core.analysis.analyze import analyze_mask
from seg2refine_core.analysis.report import write_reports
from seg2refine_core.analysis.result import TreeAnalysis

__all__ = ["TreeAnalysis", "analyze_mask", "write_reports"]
