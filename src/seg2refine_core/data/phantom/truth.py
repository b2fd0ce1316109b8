"""Phantom ground truth for vessel analysis: per-vessel centerlines, stenoses and stents in world RAS mm.

The phantom draws its vessels in mm ``(z, y, x)`` (from the volume centre; cohort cases subtract the field-of-view
centre first); here they are mapped through the volume's affine to world RAS mm (x towards the patient's right, y
anterior, z superior: NIfTI's convention), the frame the analysis reports in. Severity is the fractional *diameter*
reduction at the stenosis centre against the vessel's own healthy (nominal) diameter there, in percent, as QCA's %
diameter stenosis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg2refine_core.data.phantom.coronary import Stent, Vessel

#: the phantom's vessel names of the four main coronary vessels, mapped to their anatomical name
MAIN_VESSELS = {"LM": "LM", "LAD": "LAD", "LCX": "LCX", "RCA-prox": "RCA", "RCA": "RCA"}
#: full width at half maximum of a Gaussian narrowing, in units of its sigma
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass
class TruthVessel:
    """One drawn vessel. name: the phantom's (LM, LAD, D1.., LCX, OM1.., RCA-prox, RCA, AM1.., PDA); tree: 'left' or
    'right'; points_ras (n, 3) world RAS mm along the centerline (0.25 mm apart); radius_mm (n,) lumen radius
    (stenoses included); reference_radius_mm (n,) the healthy (nominal) radius."""

    name: str
    tree: str
    points_ras: np.ndarray
    radius_mm: np.ndarray
    reference_radius_mm: np.ndarray

    @property
    def anatomical_name(self) -> str:
        """LM, LAD, LCX or RCA for the main vessels (RCA-prox counts as RCA), else 'unnamed'."""
        return MAIN_VESSELS.get(self.name, "unnamed")


@dataclass
class TruthStenosis:
    """One drawn stenosis: vessel and tree, centre in world RAS mm, severity (% diameter reduction), length (mm,
    full width at half maximum of the narrowing), sigma (mm), arc position on its vessel (mm), and the reference
    (healthy) and minimum lumen diameters at the centre (mm)."""

    vessel: str
    tree: str
    center_ras_mm: np.ndarray
    severity_pct: float
    length_mm: float
    sigma_mm: float
    at_mm: float
    reference_diameter_mm: float
    min_diameter_mm: float


@dataclass
class TruthStent:
    """One stent: vessel and tree, its ends on the centerline in world RAS mm, arc positions on its vessel (mm),
    length (mm) and radius (mm, the vessel's healthy lumen radius there)."""

    vessel: str
    tree: str
    start_ras_mm: np.ndarray
    end_ras_mm: np.ndarray
    start_mm: float
    end_mm: float
    radius_mm: float

    @property
    def length_mm(self) -> float:
        return self.end_mm - self.start_mm


@dataclass
class PhantomTruth:
    """Every drawn vessel, stenosis and stent of a phantom (see the module docstring)."""

    vessels: list[TruthVessel]
    stenoses: list[TruthStenosis]
    stents: list[TruthStent] = field(default_factory=list)

    def to_dict(self, step_mm: float = 0.5) -> dict:
        """A JSON-able dict: ``vessels`` (name, tree, anatomical_name, points_ras_mm, radius_mm,
        reference_radius_mm, thinned to about one point every ``step_mm``) and ``stenoses``."""
        vessels = []
        for v in self.vessels:
            seg = np.linalg.norm(np.diff(v.points_ras, axis=0), axis=1)
            every = max(1, int(round(step_mm / max(float(np.median(seg)) if len(seg) else step_mm, 1e-6))))
            keep = np.unique(np.r_[np.arange(0, len(v.points_ras), every), len(v.points_ras) - 1])
            vessels.append({
                "name": v.name, "tree": v.tree, "anatomical_name": v.anatomical_name,
                "points_ras_mm": np.round(v.points_ras[keep], 2).tolist(),
                "radius_mm": np.round(v.radius_mm[keep], 3).tolist(),
                "reference_radius_mm": np.round(v.reference_radius_mm[keep], 3).tolist(),
            })
        stenoses = [
            {"vessel": s.vessel, "tree": s.tree, "center_ras_mm": np.round(s.center_ras_mm, 2).tolist(),
             "severity_pct": round(s.severity_pct, 1), "length_mm": round(s.length_mm, 2),
             "sigma_mm": round(s.sigma_mm, 3), "at_mm": round(s.at_mm, 2),
             "reference_diameter_mm": round(s.reference_diameter_mm, 3),
             "min_diameter_mm": round(s.min_diameter_mm, 3)}
            for s in self.stenoses
        ]
        stents = [
            {"vessel": s.vessel, "tree": s.tree, "start_ras_mm": np.round(s.start_ras_mm, 2).tolist(),
             "end_ras_mm": np.round(s.end_ras_mm, 2).tolist(), "start_mm": round(s.start_mm, 2),
             "end_mm": round(s.end_mm, 2), "length_mm": round(s.length_mm, 2), "radius_mm": round(s.radius_mm, 3)}
            for s in self.stents
        ]
        return {"coordinates": "world RAS mm", "vessels": vessels, "stenoses": stenoses, "stents": stents}


def grid_mm_to_ras(points_mm: np.ndarray, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                   affine: np.ndarray) -> np.ndarray:
    """Map phantom positions (n, 3) mm ``(z, y, x)`` from the volume centre to world RAS mm (n, 3) via ``affine``.

    The voxel index of a position is ``mm / spacing + (shape - 1) / 2`` in (z, y, x); the affine takes file-order
    indices (x, y, z).
    """
    pts = np.atleast_2d(np.asarray(points_mm, dtype=float))
    idx_zyx = pts / np.asarray(spacing) + (np.asarray(shape) - 1) / 2.0
    idx_xyz = idx_zyx[:, ::-1]
    return idx_xyz @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]


def phantom_truth(vessels: list[Vessel], stenoses: list[dict], shape: tuple[int, int, int],
                  spacing: tuple[float, float, float], affine: np.ndarray, centre: np.ndarray | None = None,
                  stents: list[Stent] | None = None) -> PhantomTruth:
    """Ground truth from the drawn vessels, the stenosis records of :func:`~.coronary.lesions` and the stents;
    ``centre`` is the volume centre in the anatomy's mm (default the origin)."""
    by_name = {(v.name, v.tree): v for v in vessels}
    off = np.zeros(3) if centre is None else np.asarray(centre, dtype=float)

    def ras(points_mm: np.ndarray) -> np.ndarray:
        return grid_mm_to_ras(points_mm - off, shape, spacing, affine)

    truth_vessels = [TruthVessel(v.name, v.tree, ras(v.points), v.r_lumen.copy(), v.r_nom.copy()) for v in vessels]
    truth_stenoses = []
    for st in stenoses:
        v = by_name[(st["vessel"], st["tree"])]
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(v.points, axis=0), axis=1))])
        i = int(np.argmin(np.abs(s - st["at_mm"])))
        truth_stenoses.append(TruthStenosis(
            vessel=v.name, tree=v.tree, center_ras_mm=ras(v.points[i])[0],
            severity_pct=100.0 * st["severity"], length_mm=FWHM_PER_SIGMA * st["sigma_mm"], sigma_mm=st["sigma_mm"],
            at_mm=st["at_mm"], reference_diameter_mm=2.0 * float(v.r_nom[i]),
            min_diameter_mm=2.0 * float(v.r_lumen[i]),
        ))
    truth_stents = []
    for st in stents or []:
        v = by_name[(st.vessel, st.tree)]
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(v.points, axis=0), axis=1))])
        ends = ras(v.points[[int(np.argmin(np.abs(s - st.start_mm))), int(np.argmin(np.abs(s - st.end_mm)))]])
        truth_stents.append(TruthStent(st.vessel, st.tree, ends[0], ends[1], st.start_mm, st.end_mm, st.radius_mm))
    return PhantomTruth(truth_vessels, truth_stenoses, truth_stents)


def write_truth_json(truth: PhantomTruth, path: str | Path) -> Path:
    """Write :meth:`PhantomTruth.to_dict` as JSON, atomically; returns the path."""
    import json

    from seg2refine_core.io.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(truth.to_dict(), indent=1))
    return Path(path)
