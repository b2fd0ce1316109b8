"""Vessel analysis of a coronary mask: centerlines, branches, diameters and stenosis candidates."""
