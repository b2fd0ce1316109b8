"""The result of a vessel analysis and its JSON form.

JSON schema (``to_dict``), every position in world RAS mm (x towards the patient's right, y anterior, z superior,
NIfTI's convention, through the mask's affine) and, where said, voxel indices ``(z, y, x)`` of the mask's array:

* ``trees``: id, side ('left', 'right' or 'other'), ostium_mm, ostium_voxel, lumen_volume_mm3, length_mm,
  branches (ids, root branch first);
* ``branches``: id, tree, side, name (LM, LAD, LCX, RCA or 'unnamed'), parent (branch id or null), length_mm,
  mean_diameter_mm and min_diameter_mm (equivalent diameter of the cross-section, over the points outside
  junctions and ends; null when there are none, e.g. a left main shorter than its bifurcation), tortuosity
  (length / chord), points_mm (n x 3), diameters_mm (n, equivalent diameters), radii_mm (n, inscribed-sphere
  radii from the distance transform), arc_mm (n, from the branch's origin), reliable (n; false near a junction or
  an end);
* ``stenoses``: id, branch, branch_name, side, center_mm, center_voxel, arc_mm, severity_pct, grade (mild,
  moderate, severe, or 'small vessel': reference under the grading size, 1.5 mm by default, not graded),
  small_vessel, length_mm, reference_diameter_mm, min_diameter_mm;
* ``coordinates``, ``units``, ``rules`` (the naming and stenosis rules in words), ``parameters``, ``shape``,
  ``spacing_mm``, ``source`` (the mask's file when known).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from seg2refine_core.analysis.sides import voxels_to_ras
from seg2refine_core.analysis.stenosis import Stenosis, StenosisOptions
from seg2refine_core.analysis.trees import Branch, Tree

COORDINATES = "world RAS mm (x towards the patient's right, y anterior, z superior), from the mask's affine"
RULES = {
    "trees": "the two largest trees; the one further to the patient's left (smaller RAS x) is the left tree; "
             "fragments within 10 mm of a main tree join its side",
    "names": "right tree: its root branch is the RCA; left tree: LM from the ostium to the first division into two "
             "vessels of >= 20 mm each (two junctions within the first's inscribed radius + 1 mm are one division), "
             "then the more anterior of the two is the LAD, the other the LCX; vessels "
             "in an AV groove continue into the child heading least towards the apex, others straight on and "
             "far; the rest are unnamed",
    "stenoses": "QCA-style %DS = 100 (1 - D / D_ref), D the cross-section's equivalent diameter, D_ref the mean of "
                "the median diameters 3-11 mm proximal and distal; candidates >= 25 % where D_ref >= "
                "min_reference_mm (parameters; 1.5 mm as CAD-RADS), less dips no longer than a slice and shallower "
                "than half a voxel across the vessel (the mask's staircase); in smaller vessels of at least "
                "small_vessel_mm only narrowings a voxel deep ('small vessel', not graded); a left main's points "
                "with no reference of their own against its references on either side (interpolated), or with none "
                "anywhere against Finet's 0.678 (D_LAD + D_LCX); grades mild 25-49, moderate 50-69, severe >= 70",
}


@dataclass
class TreeAnalysis:
    """Trees, branches and stenosis candidates of one mask, with its geometry (shape (z, y, x), spacing (sz, sy,
    sx) mm, affine (x, y, z) -> RAS mm)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    trees: list[Tree]
    branches: list[Branch]
    stenoses: list[Stenosis]
    options: StenosisOptions = field(default_factory=StenosisOptions)
    source: str | None = None

    def branch_named(self, name: str) -> Branch | None:
        """The branch called ``name`` (LM, LAD, LCX, RCA), or None."""
        return next((b for b in self.branches if b.name == name), None)

    def side(self, branch: Branch) -> str:
        return self.trees[branch.tree].side

    def world(self, voxels: np.ndarray) -> np.ndarray:
        """World RAS mm (n, 3) of voxel indices (n, 3) (z, y, x)."""
        return voxels_to_ras(voxels, self.affine)

    def to_dict(self) -> dict:
        """The JSON-able report (schema in the module docstring)."""
        branches = []
        for b in self.branches:
            ok = b.reliable
            pts = self.world(b.voxels)
            chord = float(np.linalg.norm(pts[-1] - pts[0]))
            branches.append({
                "id": b.id, "tree": b.tree, "side": self.side(b), "name": b.name, "parent": b.parent,
                "length_mm": round(b.length_mm, 2),
                "mean_diameter_mm": round(float(b.diameter_mm[ok].mean()), 3) if ok.any() else None,
                "min_diameter_mm": round(float(b.diameter_mm[ok].min()), 3) if ok.any() else None,
                "tortuosity": round(b.length_mm / chord, 3) if chord > 0 else None,
                "points_mm": np.round(pts, 2).tolist(),
                "diameters_mm": np.round(b.diameter_mm, 3).tolist(),
                "radii_mm": np.round(b.radius_mm, 3).tolist(),
                "arc_mm": np.round(b.arc_mm, 2).tolist(),
                "reliable": b.reliable.tolist(),
            })
        trees = []
        voxel_mm3 = float(np.prod(self.spacing))
        for t in self.trees:
            trees.append({
                "id": t.id, "side": t.side, "ostium_mm": np.round(self.world(t.root_voxel[None])[0], 2).tolist(),
                "ostium_voxel": [int(v) for v in t.root_voxel],
                "lumen_volume_mm3": round(t.voxel_count * voxel_mm3, 1),
                "length_mm": round(sum(self.branches[i].length_mm for i in t.branch_ids), 2),
                "branches": list(t.branch_ids),
            })
        stenoses = []
        for k, s in enumerate(self.stenoses):
            b = self.branches[s.branch]
            stenoses.append({
                "id": k, "branch": s.branch, "branch_name": b.name, "side": self.side(b),
                "center_mm": np.round(self.world(s.voxel[None])[0], 2).tolist(),
                "center_voxel": [int(v) for v in s.voxel], "arc_mm": round(s.arc_mm, 2),
                "severity_pct": round(s.severity_pct, 1), "grade": s.grade, "small_vessel": s.small_vessel,
                "length_mm": round(s.length_mm, 2),
                "reference_diameter_mm": round(s.reference_diameter_mm, 3),
                "min_diameter_mm": round(s.min_diameter_mm, 3),
            })
        return {
            "coordinates": COORDINATES,
            "units": "mm; severity in percent diameter reduction",
            "source": self.source,
            "shape": [int(n) for n in self.shape],
            "spacing_mm": [float(s) for s in self.spacing],
            "rules": RULES,
            "parameters": {k: getattr(self.options, k) for k in self.options.__dataclass_fields__},
            "trees": trees,
            "branches": branches,
            "stenoses": stenoses,
        }
