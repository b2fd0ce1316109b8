"""Vessel analysis of a coronary mask: centerlines, branches, diameters and stenosis candidates."""

from seg2refine_core.analysis.analyze import analyze_file, analyze_mask
from seg2refine_core.analysis.result import TreeAnalysis

__all__ = ["TreeAnalysis", "analyze_file", "analyze_mask"]
