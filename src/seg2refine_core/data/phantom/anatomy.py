"""Phantom anatomy: tissue codes, the heart (chambers, aortic root) and the chest's tubes (great vessels, ribs,
pulmonary vessels), laid out in canonical mm for :data:`REF_FOV_MM`.

Two scales place it in mm: the body scale ``s`` multiplies every position and the chest (wall, lungs, spine, ribs:
outer chest width ``116 s`` mm), the heart scale ``k`` the heart's shapes (left-ventricle long semi-axis ``27 k``
mm, aortic root radius ``8.5 k`` mm). The legacy layout takes ``s`` from the field of view and ``k = s`` x 0.94-1.06
(a heart about half real size in a small chest at the default 90-mm field of view); cohort cases draw both at real
size (:mod:`.cohort`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from seg2refine_core.data.phantom.geometry import Ellipsoid, lps, rotation, smooth_curve, unit

REF_FOV_MM = (96.0, 89.6, 89.6)

TISSUES = (
    "air", "fat", "muscle", "lung", "liver", "cortical_bone", "marrow", "disc", "csf", "cartilage",
    "myocardium", "blood", "lv_blood", "pericardium", "epicardial_fat", "vessel_wall",
)  # fmt: skip
"""Names of the codes in :attr:`Phantom.tissue` (code = index)."""
T = {name: code for code, name in enumerate(TISSUES)}
BLOOD_CODES = (T["blood"], T["lv_blood"])
SOFT_BACKGROUND = (T["fat"], T["lung"], T["pericardium"], T["epicardial_fat"], T["muscle"])


@dataclass
class Tube:
    """A tube to paint: polyline (n, 3) mm, lumen radius and wall thickness in mm."""

    points: np.ndarray
    radius: np.ndarray
    wall: float
    kind: str  # "vessel" (contrast lumen + wall), "lung" (contrast, only into lung), "rib", "esophagus"


class Heart:
    """Heart geometry in a local frame: origin ``o`` (LV centre), rows of ``frame`` = (u: base->apex, v: towards
    the RV, w = u x v: towards the diaphragmatic surface). Sizes in canonical mm times ``k`` (scale x heart size)."""

    def __init__(self, o: np.ndarray, frame: np.ndarray, k: float) -> None:
        self.o, self.frame, self.k = o, frame, k
        self.base = -12.0  # base plane, local a coordinate (canonical mm)
        cut = (frame[0], float(o @ frame[0] + self.base * k))
        lv_cut = (frame[0], float(o @ frame[0] + (self.base - 1.0) * k))

        def ell(a: float, b: float, c: float, radii: tuple[float, float, float],
                cut_: tuple[np.ndarray, float] | None = None) -> Ellipsoid:
            return Ellipsoid(self.at(a, b, c), frame, np.asarray(radii) * k, cut_)

        self.lv_epi = ell(0, 0, 0, (27, 17, 17), cut)
        self.lv_cav = ell(1.5, 0, 0, (22, 11.5, 11.5), lv_cut)
        self.rv_epi = ell(-3, 10, 0, (23, 13, 19), cut)
        self.rv_cav = ell(-3, 10, 0, (20.5, 10.5, 16.5), lv_cut)
        self.la = ell(-21, -3, -1, (10, 11, 12))
        self.ra = ell(-19, 14, 7, (12, 11, 13))
        self.laa = ell(-15, -14, -9, (4, 4.5, 8))
        self.root = ell(-16, 3.5, -8.5, (8.5, 8.5, 8.5))
        self.surface = [self.lv_epi, self.rv_epi, self.la, self.ra, self.root, self.laa]

    @property
    def lv_long_semi_axis_mm(self) -> float:
        """Long (base-apex) semi-axis of the left-ventricular epicardial ellipsoid, mm."""
        return float(self.lv_epi.radii[0])

    @property
    def root_radius_mm(self) -> float:
        """Outer radius of the aortic root (sinus) sphere, mm."""
        return float(self.root.radii[0])

    def at(self, a: float, b: float, c: float) -> np.ndarray:
        """World point (z, y, x) mm of local coordinates (canonical mm along u, v, w)."""
        return self.o + self.k * (a * self.frame[0] + b * self.frame[1] + c * self.frame[2])

    def direction(self, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Unit directions from ``o``: polar angle ``theta`` from the apex axis u, azimuth ``phi`` from v (deg)."""
        th, ph = np.radians(theta)[:, None], np.radians(phi)[:, None]
        u, v, w = self.frame
        return np.cos(th) * u + np.sin(th) * (np.cos(ph) * v + np.sin(ph) * w)

    def surface_distance(self, dirs: np.ndarray, shapes: list[Ellipsoid] | None = None) -> np.ndarray:
        """Distance from ``o`` along each direction to the outermost exit of the heart surface (mm)."""
        shapes = self.surface if shapes is None else shapes
        step = 1.0 * self.k  # thinner than every shape
        ts = np.arange(0.0, 45.0 * self.k, step)
        pts = self.o + dirs[:, None, :] * ts[None, :, None]
        inside = np.zeros(pts.shape[:2], dtype=bool)
        flat = pts.reshape(-1, 3)
        for s in shapes:
            inside |= s.contains(flat).reshape(inside.shape)
        last = len(ts) - 1 - np.argmax(inside[:, ::-1], axis=1)
        lo = ts[last]
        hi = lo + step
        for _ in range(10):
            mid = (lo + hi) / 2
            p = self.o + dirs * mid[:, None]
            ins = np.zeros(len(p), dtype=bool)
            for s in shapes:
                ins |= s.contains(p)
            lo = np.where(ins, mid, lo)
            hi = np.where(ins, hi, mid)
        return (lo + hi) / 2

    def on_surface(self, theta: np.ndarray, phi: np.ndarray, offset: np.ndarray | float) -> np.ndarray:
        """Points at ``offset`` mm outside the epicardial surface in directions (theta, phi)."""
        d = self.direction(np.asarray(theta, float), np.asarray(phi, float))
        return self.o + d * (self.surface_distance(d) + offset)[:, None]


def draw_heart(rng: np.random.Generator, scale: float, heart_scale: float | None = None) -> tuple[Heart, dict]:
    """Draw the heart pose (small random rotation and shift) and size; positions in canonical mm x ``scale``.

    The heart's shapes are scaled by ``heart_scale`` when given, else by ``scale`` x 0.94-1.06 (drawn either way)."""
    u0 = unit(lps(0.62, -0.55, -0.56))
    v0 = lps(-0.6, -0.7, 0.1)
    v0 = unit(v0 - (v0 @ u0) * u0)
    frame = np.stack([u0, v0, -np.cross(u0, v0)])  # w = u x v in (x, y, z); arrays are (z, y, x)
    rot = rotation(rng.normal(size=3), math.radians(float(np.clip(rng.normal(0, 5), -9, 9))))
    frame = frame @ rot.T
    o = (lps(8.0, -1.0, -7.0) + rng.uniform(-2.5, 2.5, 3)) * scale
    size = rng.uniform(0.94, 1.06)
    heart = Heart(o, frame, scale * size if heart_scale is None else float(heart_scale))
    return heart, {"heart_size": heart.k / scale}


def great_vessels(heart: Heart, s: float, calibre: float | None = None) -> list[Tube]:
    """Aorta, pulmonary arteries and veins, SVC, descending aorta, oesophagus as tubes: positions in canonical mm x
    ``s``, radii and walls x ``calibre`` (default ``s``; cohort cases pass the heart scale)."""
    c = s if calibre is None else calibre

    def line(*pts: np.ndarray) -> np.ndarray:
        return smooth_curve(np.asarray(pts), 3.0 * s, 8.0 * s)

    def tube(points: np.ndarray, r0: float, r1: float, wall: float, kind: str = "vessel") -> Tube:
        return Tube(points, np.linspace(r0, r1, len(points)) * c, wall * c, kind)

    root = heart.root.center
    bif = lps(11, 4, 27) * s
    return [
        tube(line(lps(15, 28, 70) * s, lps(14, 27, 0) * s, lps(12, 26, -70) * s), 6, 6, 0.9),
        tube(line(lps(3, 23, 70) * s, lps(3, 23, -70) * s), 3.5, 3.5, 0, "esophagus"),
        tube(line(root, lps(-5, -4, 24) * s, lps(-8, -2, 40) * s, lps(-8, 0, 70) * s), 7.5, 7.0, 1.0),
        tube(line(heart.at(-13, 7, -19), lps(8, -4, 20) * s, bif), 7.0, 6.5, 0.8),
        tube(line(bif, lps(24, 12, 31) * s, lps(40, 22, 28) * s), 5.5, 4.5, 0.6),
        tube(line(bif, lps(-3, 11, 31) * s, lps(-16, 13, 31) * s, lps(-40, 18, 28) * s), 5.5, 4.5, 0.6),
        tube(line(heart.ra.center, lps(-18, 4, 14) * s, lps(-19, 4, 70) * s), 5.5, 5.0, 0.6),
        tube(line(heart.la.center, lps(24, 18, 6) * s, lps(34, 22, 12) * s), 3.0, 2.2, 0.4),
        tube(line(heart.la.center, lps(22, 20, -6) * s, lps(32, 24, -12) * s), 3.0, 2.2, 0.4),
        tube(line(heart.la.center, lps(-18, 20, 6) * s, lps(-30, 24, 12) * s), 3.0, 2.2, 0.4),
        tube(line(heart.la.center, lps(-16, 22, -6) * s, lps(-28, 26, -12) * s), 3.0, 2.2, 0.4),
    ]


def ribs(rng: np.random.Generator, s: float) -> list[Tube]:
    """Ribs (bone tubes) following the chest wall, descending towards the front, and costal cartilages."""
    tubes = []
    z_off = rng.uniform(-5, 5)
    for side in (-1.0, 1.0):
        for z0 in np.arange(-70.0, 80.0, 13.0) + z_off:
            alpha = np.radians(np.linspace(18, 152, 60))
            x = side * 51.0 * np.sin(alpha)
            y = 12.0 + 43.0 * np.cos(alpha)
            z = z0 + 20.0 - 40.0 * (alpha - alpha[0]) / (alpha[-1] - alpha[0])
            pts = np.stack([z, y, x], axis=1) * s
            tubes.append(Tube(pts, np.full(len(pts), 2.0 * s), 0.0, "rib"))
            beta = np.radians(np.linspace(152, 170, 8))
            pts = np.stack([np.full(8, z[-1]), 12.0 + 43.0 * np.cos(beta), side * 51.0 * np.sin(beta)], 1) * s
            tubes.append(Tube(pts, np.full(len(pts), 2.0 * s), 0.0, "cartilage"))
    return tubes


def lung_vessels(rng: np.random.Generator, s: float) -> list[Tube]:
    """Contrast-filled pulmonary vessel branches spreading from the hila into the lungs."""
    tubes = []
    for side in (-1.0, 1.0):
        for _ in range(int(rng.integers(14, 20))):
            start = lps(side * rng.uniform(24, 32), rng.uniform(8, 22), rng.uniform(-15, 25)) * s
            direction = unit(lps(side * rng.uniform(0.3, 1), rng.uniform(-1, 1), rng.uniform(-1, 0.7)))
            length = rng.uniform(20, 40) * s
            n = 40
            turn = np.cumsum(rng.normal(0, 0.08, (n, 3)), axis=0)
            dirs = np.array([unit(direction + t) for t in turn])
            pts = start + np.cumsum(dirs, axis=0) * (length / n)
            r = np.linspace(rng.uniform(1.0, 2.2), 0.4, n)
            tubes.append(Tube(pts, r, 0.0, "lung"))
            for _ in range(int(rng.integers(1, 3))):  # side branches
                i, m = int(rng.integers(8, n - 12)), 20
                d2 = unit(dirs[i] + rng.normal(0, 0.9, 3)) + np.cumsum(rng.normal(0, 0.08, (m, 3)), axis=0)
                pts2 = pts[i] + np.cumsum(d2, axis=0) * (0.5 * length / m)
                tubes.append(Tube(np.vstack([pts[i], pts2]), np.linspace(r[i] * 0.7, 0.35, m + 1), 0.0, "lung"))
    return tubes


