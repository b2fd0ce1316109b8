"""Synthetic CCTA phantom: a CT-like chest volume with a known coronary lumen mask (synthetic data only).

The project cannot ship real CCTA, so demos, sample data and tests use this generator. Weights trained on it are
demo weights. It is built to make segmentation non-trivial (design section 6):

* contrast-filled blood pools (left/right ventricles and atria, aortic root and ascending aorta, pulmonary trunk
  and arteries, pulmonary veins, SVC, descending aorta) at the SAME HU as the coronary lumen (300-450 HU per seed);
* myocardium (~100 HU), epicardial and mediastinal fat (~-100 HU), pericardium, lungs (~-850 HU) with contrast-filled
  pulmonary vessels, spine, sternum and ribs (cortex ~700-1100 HU, marrow), liver, chest wall, air outside the body;
* a left coronary tree (left main -> LAD with diagonals, LCX with obtuse marginals) and a right tree (RCA with acute
  marginals, PDA/PLB; right- or left-dominant per seed) leaving the aortic root and running on the epicardium
  inside the fat; radii taper by Murray's law (r_parent^3 = sum r_child^3; unmodelled small branches drain the
  parent continuously between the modelled ones) from ~2 mm to ~0.4 mm, below the voxel size;
* smooth random tortuosity, stenoses (local lumen narrowing filled with soft plaque) and calcified plaques
  (800-1200 HU blobs beside the lumen, not in the label);
* partial volume (soft occupancy of thin tubes), a Gaussian PSF in mm, in-plane correlated Gaussian noise.

Geometry. Anatomy is laid out in millimetres for a reference field of view ``REF_FOV_MM`` (96 x 89.6 x 89.6 mm,
i.e. 96 x 128 x 128 voxels of 1.0 x 0.7 x 0.7 mm: a small, heart-centred chest) and scaled isotropically by
``scale = min(FOV / REF_FOV_MM)`` where ``FOV = shape * spacing``; the anatomy is centred in the volume. Volumes with
the same field of view therefore show the same anatomy whatever their shape and spacing. Coronary (and pulmonary
vessel) radii are absolute millimetres and are not scaled, so thin distal vessels stay below the voxel size.
Array axes are ``(z, y, x)`` = (inferior->superior, anterior->posterior, patient right->left): displayed with row 0
at the top, an axial slice reads like a radiological image. The affine maps ``(x, y, z)`` voxel indices to RAS mm
(``diag(-sx, -sy, sz)`` with the volume centred on the origin), as in NIfTI files converted from DICOM.

Label. ``label`` is 1 where a voxel centre lies inside a coronary lumen (distance to the centreline <= lumen
radius, in mm); additionally the voxel nearest to every centreline sample is labelled so that vessels thinner than
a voxel stay connected, as an annotator would draw them. Each tree is one 26-connected component.

Determinism. Everything is drawn from ``numpy.random.default_rng`` seeded with ``seed``: the anatomy from one stream
(independent of shape and spacing), the noise from another. Same arguments -> identical arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from seg2refine_core.progress import ProgressFn, StopFn, check_stop

REF_FOV_MM = (96.0, 89.6, 89.6)
DEFAULT_SHAPE = (96, 128, 128)
DEFAULT_SPACING = (1.0, 0.7, 0.7)

TISSUES = (
    "air", "fat", "muscle", "lung", "liver", "cortical_bone", "marrow", "disc", "csf", "cartilage",
    "myocardium", "blood", "lv_blood", "pericardium", "epicardial_fat", "vessel_wall",
)  # fmt: skip
"""Names of the codes in :attr:`Phantom.tissue` (code = index)."""
T = {name: code for code, name in enumerate(TISSUES)}
_BLOOD_CODES = (T["blood"], T["lv_blood"])
_SOFT_BACKGROUND = (T["fat"], T["lung"], T["pericardium"], T["epicardial_fat"], T["muscle"])

_SLAB = 16  # slices per block when painting implicit shapes and adding noise (bounds temporary memory)
_MAX_PAIRS = 3_000_000  # voxel x segment pairs per tube chunk (bounds temporary memory)
_CENTRELINE_STEP_MM = 0.25  # coronary centreline sampling (independent of the voxel size)


@dataclass
class Phantom:
    """A synthetic CCTA volume.

    image: float32 HU, (z, y, x). label: uint8 {0, 1} coronary lumen, (z, y, x). spacing: (sz, sy, sx) mm.
    affine: 4x4, (x, y, z) voxel indices -> RAS mm. tissue: uint8 codes into :data:`TISSUES` before blur and noise
    (coronary and other thin-tube lumen excluded). meta: seed, HU levels, noise, PSF, dominance, vessels (name,
    tree, length, start/end radius), stenoses and calcified plaques; positions in meta are mm (z, y, x) from the
    volume centre (voxel index = mm / spacing + (shape - 1) / 2).
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    tissue: np.ndarray | None = None
    meta: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- geometry


def _lps(x: float, y: float, z: float) -> np.ndarray:
    """A vector given as (left, posterior, superior) mm, returned in array order (z, y, x)."""
    return np.array([z, y, x], dtype=float)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis`` by ``angle`` radians."""
    k = _unit(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


class _Grid:
    """Voxel centres in mm, (z, y, x), centred on the volume centre."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=float)
        self.axes = [(np.arange(n) - (n - 1) / 2.0) * sp for n, sp in zip(shape, self.spacing, strict=True)]

    @property
    def fov(self) -> np.ndarray:
        return np.asarray(self.shape) * self.spacing

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in the mm box [lo, hi], or None if empty."""
        out = []
        for ax in range(3):
            n, sp = self.shape[ax], self.spacing[ax]
            i0 = max(0, math.ceil(lo[ax] / sp + (n - 1) / 2.0))
            i1 = min(n, math.floor(hi[ax] / sp + (n - 1) / 2.0) + 1)
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return out[0], out[1], out[2]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) mm coordinate arrays of a box."""
        z, y, x = (self.axes[i][box[i]] for i in range(3))
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def nearest_index(self, pts: np.ndarray) -> np.ndarray:
        """Voxel index (n, 3) nearest to each mm point; -1 rows where outside the volume."""
        idx = np.rint(pts / self.spacing + (np.asarray(self.shape) - 1) / 2.0).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(self.shape)), axis=1)
        idx[~inside] = -1
        return idx


@dataclass
class _Ellipsoid:
    """Solid ellipsoid (semi-axes ``radii`` along the rows of ``axes``), optionally cut by ``n . p >= d``."""

    center: np.ndarray
    axes: np.ndarray
    radii: np.ndarray
    cut: tuple[np.ndarray, float] | None = None

    def grown(self, t: float) -> _Ellipsoid:
        cut = None if self.cut is None else (self.cut[0], self.cut[1] - t)
        return _Ellipsoid(self.center, self.axes, self.radii + t, cut)

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        half = np.sqrt(((self.axes * self.radii[:, None]) ** 2).sum(0))
        return self.center - half, self.center + half

    def contains(self, p: np.ndarray) -> np.ndarray:
        q = (p - self.center) @ self.axes.T / self.radii
        inside = (q**2).sum(-1) <= 1.0
        if self.cut is not None:
            inside &= p @ self.cut[0] >= self.cut[1]
        return inside

    def contains_grid(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        dz, dy, dx = z - self.center[0], y - self.center[1], x - self.center[2]
        acc = 0.0
        for row, r in zip(self.axes, self.radii, strict=True):
            acc = acc + ((dz * row[0] + dy * row[1] + dx * row[2]) / r) ** 2
        inside = acc <= 1.0
        if self.cut is not None:
            n, d = self.cut
            inside &= (z * n[0] + y * n[1] + x * n[2]) >= d
        return inside


def _paint_ellipsoid(tissue: np.ndarray, grid: _Grid, shape: _Ellipsoid, code: int,
                     keep: tuple[int, ...] = ()) -> None:
    """Set ``tissue`` to ``code`` inside ``shape``, except where it already holds one of ``keep``."""
    box = grid.box(*shape.extent())
    if box is None:
        return
    for z0 in range(box[0].start, box[0].stop, _SLAB):
        sub_box = (slice(z0, min(z0 + _SLAB, box[0].stop)), box[1], box[2])
        mask = shape.contains_grid(*grid.coords(sub_box))
        sub = tissue[sub_box]
        if keep:
            mask &= ~np.isin(sub, keep)
        sub[mask] = code


def _ellipse2d(grid: _Grid, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """In-plane (y, x) mask of an axis-aligned ellipse, mm."""
    y = grid.axes[1][:, None]
    x = grid.axes[2][None, :]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def _resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline at uniform arc length; returns (points, fractional index into the input)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    frac = np.interp(t, s, np.arange(len(points)))
    out = np.stack([np.interp(t, s, points[:, i]) for i in range(3)], axis=1)
    return out, frac


def _smooth_curve(control: np.ndarray, step: float, smooth_mm: float) -> np.ndarray:
    """A smooth curve near the polyline ``control`` (n, 3) mm (corners rounded over ~``smooth_mm``)."""
    dense, _ = _resample(np.asarray(control, float), 0.25 * smooth_mm)
    dense = ndimage.gaussian_filter1d(dense, 4.0, axis=0, mode="nearest")
    return _resample(dense, step)[0]


def _tube_sdfs(grid: _Grid, pts: np.ndarray, radii: list[np.ndarray], pad: float
               ) -> Iterator[tuple[tuple[slice, slice, slice], list[np.ndarray]]]:
    """Signed distance (mm) to tubes of varying radius around a polyline, chunk by chunk.

    pts: (n, 3) mm; radii: arrays (n,) interpolated linearly along each segment. The polyline is cut into chunks
    about one tube radius long; for each chunk this yields its voxel box (bounding box grown by the largest radius
    + ``pad``) and, per radius array, the min over the chunk's segments of ``distance - radius`` on that box.
    Work is proportional to the tube volume and temporary memory is bounded.
    """
    rmax = np.max(radii, axis=0)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    chunks, i0, run = [], 0, 0.0
    for i, length in enumerate(seg):
        run += length
        if run >= max(rmax[i0] + pad, 1.0) or i == len(seg) - 1:
            chunks.append((i0, i + 1))
            i0, run = i + 1, 0.0
    stack = chunks[::-1]
    while stack:
        i0, i1 = stack.pop()
        lo = pts[i0 : i1 + 1].min(0) - rmax[i0 : i1 + 1].max() - pad
        hi = pts[i0 : i1 + 1].max(0) + rmax[i0 : i1 + 1].max() + pad
        box = grid.box(lo, hi)
        if box is None:
            continue
        nvox = math.prod(s.stop - s.start for s in box)
        if nvox * (i1 - i0) > _MAX_PAIRS and i1 - i0 > 1:
            mid = (i0 + i1) // 2
            stack += [(mid, i1), (i0, mid)]
            continue
        centre = (lo + hi) / 2
        z, y, x = grid.coords(box)
        shp = (z.shape[0], y.shape[1], x.shape[2])
        p = np.stack(np.broadcast_arrays(z - centre[0], y - centre[1], x - centre[2]), axis=-1).reshape(-1, 3)
        p = p.astype(np.float32)  # coordinates relative to the chunk centre: float32 is precise enough
        a = (pts[i0:i1] - centre).astype(np.float32)
        d = (pts[i0 + 1 : i1 + 1] - pts[i0:i1]).astype(np.float32)
        dd = np.maximum((d * d).sum(1), 1e-12)
        pd = p @ d.T - (a * d).sum(1)
        t = np.clip(pd / dd, 0.0, 1.0)
        pa2 = (p * p).sum(1)[:, None] - 2.0 * (p @ a.T) + (a * a).sum(1)
        dist = np.sqrt(np.maximum(pa2 - 2.0 * t * pd + t * t * dd, 0.0))
        out = []
        for r in radii:
            rr = r[i0:i1].astype(np.float32) + t * (r[i0 + 1 : i1 + 1] - r[i0:i1]).astype(np.float32)
            out.append((dist - rr).min(1).reshape(shp))
        yield box, out


def _soft_occupancy(sdf: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel from its signed distance to a surface, as uint8 0..255."""
    return np.rint(np.clip(0.5 - sdf / voxel_mm, 0.0, 1.0) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------------------------------- anatomy


@dataclass
class _Tube:
    """A tube to paint: polyline (n, 3) mm, lumen radius and wall thickness in mm."""

    points: np.ndarray
    radius: np.ndarray
    wall: float
    kind: str  # "vessel" (contrast lumen + wall), "lung" (contrast, only into lung), "rib", "esophagus"


@dataclass
class _Vessel:
    """One coronary vessel: dense centreline (n, 3) mm, nominal radius, lumen radius (after stenoses), tree."""

    name: str
    tree: str
    points: np.ndarray
    r_nom: np.ndarray
    r_lumen: np.ndarray


@dataclass
class _Plaque:
    """A calcified plaque: a sphere (centre mm, radius mm) of ``hu`` beside the lumen of ``vessel``."""

    center: np.ndarray
    radius: float
    hu: float
    vessel: str


class _Heart:
    """Heart geometry in a local frame: origin ``o`` (LV centre), rows of ``frame`` = (u: base->apex, v: towards
    the RV, w = u x v: towards the diaphragmatic surface). Sizes in canonical mm times ``k`` (scale x heart size)."""

    def __init__(self, o: np.ndarray, frame: np.ndarray, k: float) -> None:
        self.o, self.frame, self.k = o, frame, k
        self.base = -12.0  # base plane, local a coordinate (canonical mm)
        cut = (frame[0], float(o @ frame[0] + self.base * k))
        lv_cut = (frame[0], float(o @ frame[0] + (self.base - 1.0) * k))

        def ell(a: float, b: float, c: float, radii: tuple[float, float, float],
                cut_: tuple[np.ndarray, float] | None = None) -> _Ellipsoid:
            return _Ellipsoid(self.at(a, b, c), frame, np.asarray(radii) * k, cut_)

        self.lv_epi = ell(0, 0, 0, (27, 17, 17), cut)
        self.lv_cav = ell(1.5, 0, 0, (22, 11.5, 11.5), lv_cut)
        self.rv_epi = ell(-3, 10, 0, (23, 13, 19), cut)
        self.rv_cav = ell(-3, 10, 0, (20.5, 10.5, 16.5), lv_cut)
        self.la = ell(-21, -3, -1, (10, 11, 12))
        self.ra = ell(-19, 14, 7, (12, 11, 13))
        self.laa = ell(-15, -14, -9, (4, 4.5, 8))
        self.root = ell(-16, 3.5, -8.5, (8.5, 8.5, 8.5))
        self.surface = [self.lv_epi, self.rv_epi, self.la, self.ra, self.root, self.laa]

    def at(self, a: float, b: float, c: float) -> np.ndarray:
        """World point (z, y, x) mm of local coordinates (canonical mm along u, v, w)."""
        return self.o + self.k * (a * self.frame[0] + b * self.frame[1] + c * self.frame[2])

    def direction(self, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Unit directions from ``o``: polar angle ``theta`` from the apex axis u, azimuth ``phi`` from v (deg)."""
        th, ph = np.radians(theta)[:, None], np.radians(phi)[:, None]
        u, v, w = self.frame
        return np.cos(th) * u + np.sin(th) * (np.cos(ph) * v + np.sin(ph) * w)

    def surface_distance(self, dirs: np.ndarray, shapes: list[_Ellipsoid] | None = None) -> np.ndarray:
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


def _anatomy(rng: np.random.Generator, scale: float) -> tuple[_Heart, dict]:
    """Draw the heart pose (small random rotation and shift) and size; positions in canonical mm x ``scale``."""
    u0 = _unit(_lps(0.62, -0.55, -0.56))
    v0 = _lps(-0.6, -0.7, 0.1)
    v0 = _unit(v0 - (v0 @ u0) * u0)
    frame = np.stack([u0, v0, -np.cross(u0, v0)])  # w = u x v in (x, y, z); arrays are (z, y, x)
    rot = _rotation(rng.normal(size=3), math.radians(float(np.clip(rng.normal(0, 5), -9, 9))))
    frame = frame @ rot.T
    o = (_lps(8.0, -1.0, -7.0) + rng.uniform(-2.5, 2.5, 3)) * scale
    heart = _Heart(o, frame, scale * rng.uniform(0.94, 1.06))
    return heart, {"heart_size": heart.k / scale}


def _great_vessels(heart: _Heart, s: float) -> list[_Tube]:
    """Aorta, pulmonary arteries and veins, SVC, descending aorta, oesophagus as tubes (canonical mm x s)."""

    def line(*pts: np.ndarray) -> np.ndarray:
        return _smooth_curve(np.asarray(pts), 3.0 * s, 8.0 * s)

    def tube(points: np.ndarray, r0: float, r1: float, wall: float, kind: str = "vessel") -> _Tube:
        return _Tube(points, np.linspace(r0, r1, len(points)) * s, wall * s, kind)

    root = heart.root.center
    bif = _lps(11, 4, 27) * s
    return [
        tube(line(_lps(15, 28, 70) * s, _lps(14, 27, 0) * s, _lps(12, 26, -70) * s), 6, 6, 0.9),
        tube(line(_lps(3, 23, 70) * s, _lps(3, 23, -70) * s), 3.5, 3.5, 0, "esophagus"),
        tube(line(root, _lps(-5, -4, 24) * s, _lps(-8, -2, 40) * s, _lps(-8, 0, 70) * s), 7.5, 7.0, 1.0),
        tube(line(heart.at(-13, 7, -19), _lps(8, -4, 20) * s, bif), 7.0, 6.5, 0.8),
        tube(line(bif, _lps(24, 12, 31) * s, _lps(40, 22, 28) * s), 5.5, 4.5, 0.6),
        tube(line(bif, _lps(-3, 11, 31) * s, _lps(-16, 13, 31) * s, _lps(-40, 18, 28) * s), 5.5, 4.5, 0.6),
        tube(line(heart.ra.center, _lps(-18, 4, 14) * s, _lps(-19, 4, 70) * s), 5.5, 5.0, 0.6),
        tube(line(heart.la.center, _lps(24, 18, 6) * s, _lps(34, 22, 12) * s), 3.0, 2.2, 0.4),
        tube(line(heart.la.center, _lps(22, 20, -6) * s, _lps(32, 24, -12) * s), 3.0, 2.2, 0.4),
        tube(line(heart.la.center, _lps(-18, 20, 6) * s, _lps(-30, 24, 12) * s), 3.0, 2.2, 0.4),
        tube(line(heart.la.center, _lps(-16, 22, -6) * s, _lps(-28, 26, -12) * s), 3.0, 2.2, 0.4),
    ]


def _ribs(rng: np.random.Generator, s: float) -> list[_Tube]:
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
            tubes.append(_Tube(pts, np.full(len(pts), 2.0 * s), 0.0, "rib"))
            beta = np.radians(np.linspace(152, 170, 8))
            pts = np.stack([np.full(8, z[-1]), 12.0 + 43.0 * np.cos(beta), side * 51.0 * np.sin(beta)], 1) * s
            tubes.append(_Tube(pts, np.full(len(pts), 2.0 * s), 0.0, "cartilage"))
    return tubes


def _lung_vessels(rng: np.random.Generator, s: float) -> list[_Tube]:
    """Contrast-filled pulmonary vessel branches spreading from the hila into the lungs."""
    tubes = []
    for side in (-1.0, 1.0):
        for _ in range(int(rng.integers(14, 20))):
            start = _lps(side * rng.uniform(24, 32), rng.uniform(8, 22), rng.uniform(-15, 25)) * s
            direction = _unit(_lps(side * rng.uniform(0.3, 1), rng.uniform(-1, 1), rng.uniform(-1, 0.7)))
            length = rng.uniform(20, 40) * s
            n = 40
            turn = np.cumsum(rng.normal(0, 0.08, (n, 3)), axis=0)
            dirs = np.array([_unit(direction + t) for t in turn])
            pts = start + np.cumsum(dirs, axis=0) * (length / n)
            r = np.linspace(rng.uniform(1.0, 2.2), 0.4, n)
            tubes.append(_Tube(pts, r, 0.0, "lung"))
            for _ in range(int(rng.integers(1, 3))):  # side branches
                i, m = int(rng.integers(8, n - 12)), 20
                d2 = _unit(dirs[i] + rng.normal(0, 0.9, 3)) + np.cumsum(rng.normal(0, 0.08, (m, 3)), axis=0)
                pts2 = pts[i] + np.cumsum(d2, axis=0) * (0.5 * length / m)
                tubes.append(_Tube(np.vstack([pts[i], pts2]), np.linspace(r[i] * 0.7, 0.35, m + 1), 0.0, "lung"))
    return tubes


# ------------------------------------------------------------------------------------------ coronary trees


def _wiggle(rng: np.random.Generator, n: int, length: float, amp_mm: float) -> np.ndarray:
    """Smooth random 1D perturbation (n,) in mm: sum of a few sines with wavelengths 10-25 mm."""
    t = np.linspace(0.0, length, n)
    out = np.zeros(n)
    for _ in range(4):
        lam = rng.uniform(10.0, 25.0)
        out += rng.normal() * np.sin(2 * np.pi * t / lam + rng.uniform(0, 2 * np.pi))
    return out * amp_mm / 2.0


def _murray_profile(n: int, step: float, r0: float, r_end: float, branches: list[tuple[int, float]]
                    ) -> tuple[np.ndarray, dict[int, float]]:
    """Radius (n,) along a vessel sampled every ``step`` mm, and the start radius of each modelled branch.

    At branch sample i with fraction f the child starts at r_child = f * r_parent and the parent keeps
    (r^3 - r_child^3)^(1/3) (Murray). Between modelled branches, unmodelled small branches drain a constant fraction
    of the flow (~ r^3) per mm, so r^3 decays exponentially at the rate that ends the vessel at ``r_end``.
    """
    events = dict(branches)
    keep = math.prod(1.0 - f**3 for f in events.values())
    length = step * (n - 1)
    lam = max(0.0, math.log(r0**3 * keep / r_end**3) / length) if length > 0 else 0.0
    decay = math.exp(-lam * step)
    r3 = np.empty(n)
    r3[0] = r0**3
    child = {}
    for i in range(1, n):
        r3[i] = r3[i - 1] * decay
        if i in events:
            child[i] = events[i] * r3[i] ** (1 / 3)
            r3[i] -= child[i] ** 3
    return np.cbrt(np.maximum(r3, r_end**3)), child


@dataclass
class _SurfacePath:
    """A path on the heart: per sample the direction angles from the heart centre (deg), the distance from the
    centre to the epicardium along that direction (mm), the position along the node path (0..1) and the point."""

    theta: np.ndarray
    phi: np.ndarray
    depth: np.ndarray
    pos: np.ndarray
    points: np.ndarray


class _TreeBuilder:
    """Builds coronary vessels as paths in (theta, phi) on the heart surface, with Murray radii."""

    def __init__(self, heart: _Heart, rng: np.random.Generator, step: float) -> None:
        self.heart, self.rng, self.step = heart, rng, step
        self.gap = 0.6  # mm of fat between the epicardium and the vessel wall
        self.vessels: list[_Vessel] = []

    def angle_path(self, nodes: list[tuple[float, float]], amp_mm: float, offset: float = 2.0) -> _SurfacePath:
        """Path through (theta, phi) nodes (deg) with tortuosity, ``offset`` mm outside the epicardium, resampled
        every ``step`` mm."""
        nodes_arr = np.asarray(nodes, float)
        seg = np.hypot(*np.diff(nodes_arr, axis=0).T)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        m = 400
        t = np.linspace(0, cum[-1], m)
        theta = ndimage.gaussian_filter1d(np.interp(t, cum, nodes_arr[:, 0]), 6, mode="nearest")
        phi = ndimage.gaussian_filter1d(np.interp(t, cum, nodes_arr[:, 1]), 6, mode="nearest")
        pts = self.heart.on_surface(theta, phi, offset)
        length = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())
        dist = max(float(np.linalg.norm(pts - self.heart.o, axis=1).mean()), 1.0)
        ramp = np.clip(np.linspace(0, 10, m), 0, 1)  # no wiggle at the origin: branches stay on their parent
        dth = np.degrees(ramp * _wiggle(self.rng, m, length, amp_mm) / dist)
        dph = np.degrees(ramp * _wiggle(self.rng, m, length, amp_mm) / dist)
        theta, phi = theta + dth, phi + dph / np.maximum(np.abs(np.sin(np.radians(theta))), 0.3)
        dirs = self.heart.direction(theta, phi)
        depth = self.heart.surface_distance(dirs)
        dense, frac = _resample(self.heart.o + dirs * (depth + offset)[:, None], self.step)
        idx = np.arange(m)
        return _SurfacePath(np.interp(frac, idx, theta), np.interp(frac, idx, phi), np.interp(frac, idx, depth),
                            frac / (m - 1), dense)

    def finish(self, name: str, tree: str, path: _SurfacePath, r: np.ndarray) -> None:
        """Seat the vessel ``gap`` mm outside the epicardium (its wall touching the fat) and store it."""
        dirs = self.heart.direction(path.theta, path.phi)
        pts = self.heart.o + dirs * (path.depth + self.gap + r)[:, None]
        self.vessels.append(_Vessel(name, tree, pts, r.copy(), r.copy()))

    def vessel(self, name: str, tree: str, nodes: list[tuple[float, float]], r0: float, r_end: float,
               branch_at: list[float], fractions: list[float], amp_mm: float
               ) -> tuple[_SurfacePath, list[tuple[int, float]]]:
        """A surface vessel with side branches at ``branch_at`` (0..1 along the node path) taking ``fractions`` of
        the local radius. Returns its path and the children as (sample index, start radius)."""
        path = self.angle_path(nodes, amp_mm)
        n = len(path.points)
        events = [
            (int(np.clip(np.searchsorted(path.pos, f), 1, n - 2)), fr)
            for f, fr in zip(branch_at, fractions, strict=True)
        ]
        r, child = _murray_profile(n, self.step, r0, r_end, events)
        self.finish(name, tree, path, r)
        return path, [(i, child[i]) for i, _ in events]

    def branch(self, name: str, tree: str, parent: _SurfacePath, i: int, r0: float, end: tuple[float, float],
               r_end: float, amp_mm: float) -> None:
        """A side branch leaving the parent at sample ``i`` towards angle ``end``, tapering to ``r_end``."""
        th0, ph0 = float(parent.theta[i]), float(parent.phi[i])
        end_phi = ph0 + (end[1] - ph0 + 180.0) % 360.0 - 180.0  # the short way round
        path = self.angle_path([(th0, ph0), (end[0], end_phi)], amp_mm)
        r, _ = _murray_profile(len(path.points), self.step, r0, r_end, [])
        self.finish(name, tree, path, r)

    def straight(self, name: str, tree: str, start: np.ndarray, end: np.ndarray, r: float, bow: np.ndarray
                 ) -> None:
        """A short proximal segment (left main, proximal RCA) from an ostium, bowed by ``bow`` mm mid-way."""
        t = np.linspace(0, 1, 50)[:, None]
        pts = start + t * (end - start) + np.sin(np.pi * t) * bow
        dense, _ = _resample(pts, self.step)
        self.vessels.append(_Vessel(name, tree, dense, np.full(len(dense), r), np.full(len(dense), r)))


def _grooves(heart: _Heart) -> tuple[float, float, float]:
    """Azimuths (deg) of the anterior and posterior interventricular grooves, and the AV-groove polar angle."""
    phi = np.arange(-180.0, 180.0, 1.0)
    d = heart.direction(np.full(len(phi), 70.0), phi)
    t_lv = heart.surface_distance(d, [heart.lv_epi])
    t_rv = heart.surface_distance(d, [heart.rv_epi])
    rv_out = t_rv > t_lv
    change = np.nonzero(rv_out != np.roll(rv_out, 1))[0]
    cands = phi[change]
    ant = float(cands[np.argmin(np.abs(cands + 75))])
    post = float(cands[np.argmin(np.abs(cands - 75))])
    r_base = 17.0 * math.sqrt(1 - (heart.base / 27.0) ** 2)
    theta_av = math.degrees(math.atan2(r_base, heart.base)) - 4.0
    return ant, post, theta_av


def _coronaries(rng: np.random.Generator, heart: _Heart, step: float) -> tuple[list[_Vessel], dict]:
    """Left and right coronary trees with Murray radii, tortuosity and a random dominance (80 % right)."""
    b = _TreeBuilder(heart, rng, step)
    ant, post, th_av = _grooves(heart)
    amp = rng.uniform(0.6, 1.4)
    right_dominant = bool(rng.uniform() < 0.8)
    r_end = 0.4

    # left: left main -> LAD (diagonals) + LCX (obtuse marginals; PDA when left-dominant)
    r_lm = rng.uniform(1.9, 2.3)
    g = rng.uniform(0.78, 0.86)
    r_lad, r_lcx = g * r_lm, (1 - g**3) ** (1 / 3) * r_lm
    bif_phi = ant - rng.uniform(14, 22)
    bif = heart.on_surface(np.array([th_av]), np.array([bif_phi]), b.gap + r_lm)[0]
    ostium = heart.root.center + _unit(bif - heart.root.center) * heart.root.radii[0]
    b.straight("LM", "left", ostium, bif, r_lm, _unit(bif - heart.o) * 1.5 * heart.k)

    n_diag = int(rng.integers(1, 4))
    d_at = list(np.sort(rng.uniform(0.12, 0.55, n_diag)))
    lad, kids = b.vessel("LAD", "left", [(th_av, bif_phi), (th_av - 8, ant), (20, ant + 4), (-18, ant + 10)],
                         r_lad, r_end, d_at, list(rng.uniform(0.6, 0.75, n_diag)), amp)
    for j, (i, rc) in enumerate(kids):
        end = (lad.theta[i] - rng.uniform(35, 55), lad.phi[i] - rng.uniform(45, 70))
        b.branch(f"D{j + 1}", "left", lad, i, rc, end, r_end, amp)

    n_om = int(rng.integers(1, 4))
    at = list(np.sort(rng.uniform(0.25, 0.75, n_om)))
    fr = list(rng.uniform(0.6, 0.8, n_om))
    if right_dominant:
        lcx_end = rng.uniform(-240, -220)
    else:
        lcx_end = post - 360.0
        at.append(0.985)
        fr.append(0.85)
    lcx, kids = b.vessel("LCX", "left", [(th_av, bif_phi), (th_av + 2, bif_phi - 30), (th_av + 2, lcx_end)],
                         r_lcx, r_end, at, fr, amp)
    for j, (i, rc) in enumerate(kids[:n_om]):
        b.branch(f"OM{j + 1}", "left", lcx, i, rc, (rng.uniform(25, 45), lcx.phi[i] - rng.uniform(0, 20)), r_end,
                 amp)
    if not right_dominant:
        i, rc = kids[-1]
        b.branch("PDA", "left", lcx, i, rc, (rng.uniform(20, 35), post + 4), r_end, amp)

    # right: proximal RCA from the right sinus -> right AV groove -> crux (PDA + PLB when right-dominant)
    r_rca = rng.uniform(1.7, 2.1)
    start_phi = ant + rng.uniform(25, 35)
    groove0 = heart.on_surface(np.array([th_av]), np.array([start_phi]), b.gap + r_rca)[0]
    ostium = heart.root.center + _unit(groove0 - heart.root.center) * heart.root.radii[0]
    b.straight("RCA-prox", "right", ostium, groove0, r_rca, _unit(groove0 - heart.o) * 1.5 * heart.k)
    n_am = int(rng.integers(1, 3))
    at = list(np.sort(rng.uniform(0.3, 0.55, n_am)))
    fr = list(rng.uniform(0.55, 0.7, n_am))
    if right_dominant:
        nodes = [(th_av, start_phi), (th_av + 3, post), (th_av - 12, post + rng.uniform(15, 30))]
        legs = np.hypot(*np.diff(np.asarray(nodes), axis=0).T)
        at.append(float(legs[0] / legs.sum()))  # the crux
        fr.append(0.8)
    else:
        nodes = [(th_av, start_phi), (th_av + 3, post - rng.uniform(20, 35))]
    rca, kids = b.vessel("RCA", "right", nodes, r_rca, r_end, at, fr, amp)
    for j, (i, rc) in enumerate(kids[:n_am]):
        b.branch(f"AM{j + 1}", "right", rca, i, rc, (rng.uniform(50, 70), rca.phi[i] + rng.uniform(-5, 10)), r_end,
                 amp)
    if right_dominant:
        i, rc = kids[-1]
        b.branch("PDA", "right", rca, i, rc, (rng.uniform(20, 35), post + 4), r_end, amp)
    info = {"right_dominant": right_dominant, "grooves_deg": [ant, post, th_av]}
    return b.vessels, info


def _lesions(rng: np.random.Generator, vessels: list[_Vessel]) -> tuple[list[dict], list[_Plaque]]:
    """Narrow 1-3 vessels (soft-plaque stenoses) and place 1-4 calcified plaques beside the lumen."""
    main = [v for v in vessels if v.name in ("LM", "LAD", "LCX", "RCA", "RCA-prox", "D1", "OM1")]
    stenoses = []
    for v in rng.choice(main, size=int(rng.integers(1, 4)), replace=False):
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(v.points, axis=0), axis=1))])
        s0 = rng.uniform(0.1, 0.6) * s[-1]
        half = rng.uniform(1.5, 3.0)
        severity = rng.uniform(0.35, 0.7)
        v.r_lumen *= 1.0 - severity * np.exp(-0.5 * ((s - s0) / half) ** 2)
        stenoses.append({"vessel": v.name, "at_mm": round(float(s0), 2), "severity": round(float(severity), 3),
                         "center_mm": v.points[int(np.argmin(np.abs(s - s0)))].round(2).tolist()})
    plaques = []
    for _ in range(int(rng.integers(1, 5))):
        v = main[int(rng.integers(len(main)))]
        i = int(round(rng.uniform(0.1, 0.7) * (len(v.points) - 1)))
        tangent = _unit(v.points[min(i + 1, len(v.points) - 1)] - v.points[max(i - 1, 0)])
        side = rng.normal(size=3)
        side = _unit(side - (side @ tangent) * tangent)
        pr = rng.uniform(0.8, 1.6)
        center = v.points[i] + side * (v.r_nom[i] + 0.35 * pr)
        plaques.append(_Plaque(center, float(pr), float(rng.uniform(800, 1200)), v.name))
    return stenoses, plaques


# ------------------------------------------------------------------------------------------------ painting


def _paint_body(tissue: np.ndarray, grid: _Grid, s: float, z_disc: float) -> None:
    """Chest wall, lungs, mediastinum, diaphragm/liver, spine and sternum (z-invariant in-plane shapes)."""
    body = _ellipse2d(grid, 12 * s, 0, 51 * s, 58 * s)
    inner = _ellipse2d(grid, 12 * s, 0, 47.5 * s, 54.5 * s)
    cavity = _ellipse2d(grid, 12 * s, 0, 40 * s, 47 * s)
    mediastinum = (
        _ellipse2d(grid, 6 * s, -2 * s, 22 * s, 10 * s)
        | _ellipse2d(grid, -24 * s, -2 * s, 6 * s, 9 * s)
        | _ellipse2d(grid, 23 * s, 8 * s, 8 * s, 13 * s)
    )
    vb_out = _ellipse2d(grid, 39 * s, 0, 9 * s, 9.5 * s)
    vb_in = _ellipse2d(grid, 39 * s, 0, 7.6 * s, 8.1 * s)
    canal = _ellipse2d(grid, 55 * s, 0, 6 * s, 6 * s)
    arch = _ellipse2d(grid, 55 * s, 0, 9.5 * s, 9 * s) | _ellipse2d(grid, 49 * s, 0, 5 * s, 8 * s)
    ster_out = _ellipse2d(grid, -32 * s, 0, 3.2 * s, 9 * s)
    ster_in = _ellipse2d(grid, -32 * s, 0, 2.0 * s, 7.8 * s)
    y = grid.axes[1][:, None] / s
    x = grid.axes[2][None, :] / s
    dome = np.maximum(-20.0 - ((x + 20) ** 2 + (y - 6) ** 2) / 80.0, -33.0 - ((x - 18) ** 2 + (y - 2) ** 2) / 70.0)
    liver_side = x < 6.0
    for z0 in range(0, grid.shape[0], _SLAB):
        zs = slice(z0, min(z0 + _SLAB, grid.shape[0]))
        zz = grid.axes[0][zs][:, None, None] / s
        sub = tissue[zs]
        sub[:, body] = T["fat"]
        sub[:, inner] = T["muscle"]
        sub[:, cavity] = T["lung"]
        sub[:, cavity & mediastinum] = T["fat"]
        below = (zz <= dome) & cavity
        sub[below & liver_side] = T["liver"]
        sub[below & ~liver_side] = T["muscle"]
        disc = ((zz - z_disc) % 16.0) < 4.0
        sub[np.broadcast_to(vb_out, sub.shape) & disc] = T["disc"]
        sub[np.broadcast_to(vb_out, sub.shape) & ~disc] = T["cortical_bone"]
        sub[np.broadcast_to(vb_in, sub.shape) & ~disc] = T["marrow"]
        sub[:, arch] = T["cortical_bone"]
        sub[:, canal] = T["csf"]
        sub[:, ster_out] = T["cortical_bone"]
        sub[:, ster_in] = T["marrow"]


def _paint_heart(tissue: np.ndarray, grid: _Grid, heart: _Heart, fat_mm: float) -> None:
    """Pericardium, epicardial fat, myocardium and blood pools (later shapes overwrite earlier ones)."""
    k = heart.k
    for sh in heart.surface:
        _paint_ellipsoid(tissue, grid, sh.grown(fat_mm + 0.8 * k), T["pericardium"])
    for sh in heart.surface:
        _paint_ellipsoid(tissue, grid, sh.grown(fat_mm), T["epicardial_fat"])
    _paint_ellipsoid(tissue, grid, heart.rv_epi, T["myocardium"])
    _paint_ellipsoid(tissue, grid, heart.rv_cav, T["blood"])
    _paint_ellipsoid(tissue, grid, heart.lv_epi, T["myocardium"])
    _paint_ellipsoid(tissue, grid, heart.lv_cav, T["lv_blood"])
    for atrium in (heart.la, heart.ra, heart.laa):
        _paint_ellipsoid(tissue, grid, atrium, T["myocardium"], keep=_BLOOD_CODES)
        _paint_ellipsoid(tissue, grid, atrium.grown(-1.2 * k), T["blood"])
    _paint_ellipsoid(tissue, grid, heart.root, T["vessel_wall"], keep=_BLOOD_CODES)
    _paint_ellipsoid(tissue, grid, heart.root.grown(-1.0 * k), T["blood"])


def _paint_tubes(tissue: np.ndarray, occ: np.ndarray, grid: _Grid, tubes: list[_Tube], voxel_mm: float) -> None:
    """Paint great vessels (wall + soft contrast lumen), lung vessels, ribs and the oesophagus."""
    for tube in tubes:
        r = tube.radius
        if tube.kind == "vessel":
            for box, (sdf_lumen, sdf_wall) in _tube_sdfs(grid, tube.points, [r, r + tube.wall], voxel_mm):
                sub = tissue[box]
                sub[(sdf_wall <= 0) & ~np.isin(sub, _BLOOD_CODES)] = T["vessel_wall"]
                np.maximum(occ[box], _soft_occupancy(sdf_lumen, voxel_mm), out=occ[box])
        elif tube.kind == "lung":
            for box, (sdf,) in _tube_sdfs(grid, tube.points, [r], voxel_mm):
                o = _soft_occupancy(sdf, voxel_mm)
                o[tissue[box] != T["lung"]] = 0
                np.maximum(occ[box], o, out=occ[box])
        elif tube.kind == "rib":
            for box, (sdf, sdf_in) in _tube_sdfs(grid, tube.points, [r, r * 0.6], 0.0):
                sub = tissue[box]
                sub[(sdf <= 0) & (sub != T["marrow"])] = T["cortical_bone"]
                sub[sdf_in <= 0] = T["marrow"]
        elif tube.kind == "cartilage":
            for box, (sdf,) in _tube_sdfs(grid, tube.points, [r], 0.0):
                tissue[box][sdf <= 0] = T["cartilage"]
        else:  # oesophagus: muscular tube with a little air
            for box, (sdf, sdf_air) in _tube_sdfs(grid, tube.points, [r, r * 0.25], 0.0):
                sub = tissue[box]
                sub[sdf <= 0] = T["muscle"]
                sub[sdf_air <= 0] = T["air"]


def _paint_coronary(tissue: np.ndarray, occ: np.ndarray, label: np.ndarray, grid: _Grid, v: _Vessel,
                    voxel_mm: float) -> None:
    """Fat sleeve, vessel wall / soft plaque (tissue), soft lumen occupancy and the lumen label of one vessel."""
    wall, sleeve = 0.4, 1.2
    k = max(1, int(round(0.5 / float(np.linalg.norm(v.points[1] - v.points[0])))))
    keep = np.unique(np.r_[np.arange(0, len(v.points), k), len(v.points) - 1])  # raster every ~0.5 mm
    radii = [v.r_lumen[keep], v.r_nom[keep] + wall, v.r_nom[keep] + wall + sleeve]
    for box, (sdf_lumen, sdf_wall, sdf_sleeve) in _tube_sdfs(grid, v.points[keep], radii, voxel_mm):
        sub = tissue[box]
        sub[(sdf_sleeve <= 0) & np.isin(sub, (T["lung"], T["pericardium"], T["muscle"]))] = T["epicardial_fat"]
        sub[(sdf_wall <= 0) & np.isin(sub, _SOFT_BACKGROUND)] = T["vessel_wall"]
        np.maximum(occ[box], _soft_occupancy(sdf_lumen, voxel_mm), out=occ[box])
        label[box] |= (sdf_lumen <= 0).astype(np.uint8)
    centreline = _resample(v.points, min(_CENTRELINE_STEP_MM, float(grid.spacing.min()) / 2.0))[0]
    idx = grid.nearest_index(centreline)
    idx = idx[idx[:, 0] >= 0]
    label[idx[:, 0], idx[:, 1], idx[:, 2]] = 1


def _paint_plaques(image: np.ndarray, grid: _Grid, plaques: list[_Plaque], voxel_mm: float) -> None:
    """Calcified plaques: soft spheres of high HU blended into the image (before the lumen is blended)."""
    for p in plaques:
        box = grid.box(p.center - p.radius - voxel_mm, p.center + p.radius + voxel_mm)
        if box is None:
            continue
        z, y, x = grid.coords(box)
        d = np.sqrt((z - p.center[0]) ** 2 + (y - p.center[1]) ** 2 + (x - p.center[2]) ** 2)
        frac = np.clip(0.5 - (d - p.radius) / voxel_mm, 0.0, 1.0).astype(np.float32)
        sub = image[box]
        sub += (p.hu - sub) * frac


def _gaussian_std_factor(sigma: float) -> float:
    """Std of unit white noise after scipy's 1D Gaussian filter with this sigma (truncate 4)."""
    if sigma <= 0:
        return 1.0
    radius = int(4.0 * sigma + 0.5)
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    g /= g.sum()
    return float(np.sqrt((g**2).sum()))


# ---------------------------------------------------------------------------------------------- public API


def _check_geometry(shape: tuple[int, int, int], spacing: tuple[float, float, float]
                    ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    from seg2refine_core.errors import Seg2RefineError

    if len(shape) != 3 or any(int(n) != n or n < 8 for n in shape):
        raise Seg2RefineError(f"phantom shape must be 3 integers >= 8 (z, y, x), got {tuple(shape)}")
    if len(spacing) != 3 or any(not (math.isfinite(s) and s > 0) for s in spacing):
        raise Seg2RefineError(f"phantom spacing must be 3 positive numbers in mm (sz, sy, sx), got {tuple(spacing)}")
    return (int(shape[0]), int(shape[1]), int(shape[2])), (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """4x4 affine from (x, y, z) voxel indices to RAS mm: x -> patient left, y -> posterior, centred on 0."""
    nz, ny, nx = shape
    sz, sy, sx = spacing
    return np.array(
        [
            [-sx, 0.0, 0.0, sx * (nx - 1) / 2.0],
            [0.0, -sy, 0.0, sy * (ny - 1) / 2.0],
            [0.0, 0.0, sz, -sz * (nz - 1) / 2.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


def make_phantom(
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> Phantom:
    """Generate a synthetic CCTA volume and its coronary lumen label (see the module docstring).

    shape: (z, y, x) voxels; spacing: (sz, sy, sx) mm; seed: non-negative int. Returns a :class:`Phantom` with
    image float32 HU and label uint8, both (z, y, x). Deterministic for given arguments.
    """
    from seg2refine_core.errors import Seg2RefineError

    shape, spacing = _check_geometry(shape, spacing)
    if int(seed) != seed or seed < 0:
        raise Seg2RefineError(f"phantom seed must be a non-negative integer, got {seed!r}")
    report = progress or (lambda done, total, info="": None)
    grid = _Grid(shape, spacing)
    s = float(np.min(grid.fov / np.asarray(REF_FOV_MM)))
    voxel_mm = float(np.prod(spacing) ** (1 / 3))
    rng = np.random.default_rng([int(seed), 0])

    hu = {
        "blood": rng.uniform(300, 450),
        "myocardium": rng.uniform(85, 125),
        "fat": rng.uniform(-115, -80),
        "lung": rng.uniform(-880, -800),
        "muscle": rng.uniform(35, 60),
        "liver": rng.uniform(60, 100),
        "cortical_bone": rng.uniform(750, 1100),
        "marrow": rng.uniform(180, 280),
    }
    noise_sd = float(rng.uniform(20, 40))
    psf_mm = np.array([0.6, 0.45, 0.45]) * rng.uniform(0.9, 1.15)
    heart, info = _anatomy(rng, s)
    fat_mm = 3.0 * heart.k
    tubes = _great_vessels(heart, s) + _ribs(rng, s) + _lung_vessels(rng, s)
    vessels, tree_info = _coronaries(rng, heart, _CENTRELINE_STEP_MM)
    stenoses, plaques = _lesions(rng, vessels)
    z_disc = float(rng.uniform(0, 16))

    n_slabs = math.ceil(shape[0] / _SLAB)
    total = 6 + len(vessels) + n_slabs
    done = 0

    def tick(info_: str) -> None:
        nonlocal done
        check_stop(should_stop)
        done += 1
        report(done, total, info_)

    tissue = np.zeros(shape, dtype=np.uint8)
    occ = np.zeros(shape, dtype=np.uint8)
    label = np.zeros(shape, dtype=np.uint8)
    _paint_body(tissue, grid, s, z_disc)
    tick("chest")
    _paint_heart(tissue, grid, heart, fat_mm)
    tick("heart")
    _paint_tubes(tissue, occ, grid, tubes, voxel_mm)
    tick("great vessels, ribs, lungs")
    for v in vessels:
        _paint_coronary(tissue, occ, label, grid, v, voxel_mm)
        tick(f"coronary {v.name}")

    lut = np.zeros(len(TISSUES), dtype=np.float32)
    lut[T["air"]] = -1000.0
    for name in ("fat", "epicardial_fat"):
        lut[T[name]] = hu["fat"]
    for name in ("blood", "lv_blood"):
        lut[T[name]] = hu["blood"]
    for name in ("muscle", "lung", "liver", "cortical_bone", "marrow", "myocardium"):
        lut[T[name]] = hu[name]
    lut[T["disc"]] = 80.0
    lut[T["csf"]] = 10.0
    lut[T["cartilage"]] = 120.0
    lut[T["pericardium"]] = 30.0
    lut[T["vessel_wall"]] = 45.0
    image = np.empty(shape, dtype=np.float32)
    for z0 in range(0, shape[0], _SLAB):
        zs = slice(z0, min(z0 + _SLAB, shape[0]))
        image[zs] = lut[tissue[zs]]
    _paint_plaques(image, grid, plaques, voxel_mm)
    for z0 in range(0, shape[0], _SLAB):
        zs = slice(z0, min(z0 + _SLAB, shape[0]))
        frac = occ[zs].astype(np.float32) / 255.0
        image[zs] += (np.float32(hu["blood"]) - image[zs]) * frac
    del occ
    tick("partial volume")
    ndimage.gaussian_filter(image, psf_mm / np.asarray(spacing), output=image, mode="nearest")
    tick("blur")

    noise_rng = np.random.default_rng([int(seed), 1])
    corr_px = 0.5 / np.asarray(spacing[1:])
    gain = noise_sd / (_gaussian_std_factor(corr_px[0]) * _gaussian_std_factor(corr_px[1]))
    for z0 in range(0, shape[0], _SLAB):
        zs = slice(z0, min(z0 + _SLAB, shape[0]))
        noise = noise_rng.standard_normal(image[zs].shape, dtype=np.float32)
        ndimage.gaussian_filter(noise, (0.0, corr_px[0], corr_px[1]), output=noise)
        image[zs] += noise * np.float32(gain)
        np.clip(image[zs], -1024.0, 3071.0, out=image[zs])
        tick("noise")

    meta = {
        "synthetic": True,
        "seed": int(seed),
        "scale": s,
        "hu": {k: round(float(v), 1) for k, v in hu.items()},
        "noise_sd_hu": round(noise_sd, 1),
        "psf_sigma_mm": psf_mm.round(3).tolist(),
        **info,
        **tree_info,
        "vessels": [
            {"name": v.name, "tree": v.tree,
             "length_mm": round(float(np.linalg.norm(np.diff(v.points, axis=0), axis=1).sum()), 1),
             "r_start_mm": round(float(v.r_nom[0]), 3), "r_end_mm": round(float(v.r_nom[-1]), 3)}
            for v in vessels
        ],
        "stenoses": stenoses,
        "calcified_plaques": [
            {"vessel": p.vessel, "center_mm": p.center.round(2).tolist(), "radius_mm": round(p.radius, 2),
             "hu": round(p.hu, 1)} for p in plaques
        ],
    }
    tick("done")
    return Phantom(image, label, spacing, phantom_affine(shape, spacing), tissue, meta)


def _label_extent(label: np.ndarray, axis: int) -> tuple[int, int]:
    """Index range of ``label`` along ``axis`` (whole axis when empty)."""
    other = tuple(a for a in range(3) if a != axis)
    hit = np.nonzero(label.any(axis=other))[0]
    if hit.size == 0:
        return 0, label.shape[axis]
    return int(hit[0]), int(hit[-1]) + 1


def preview_png(
    phantom: Phantom | tuple[np.ndarray, np.ndarray, tuple[float, float, float]],
    path: str | Path,
    *,
    slab_mm: float = 16.0,
    title: str | None = None,
) -> Path:
    """Write a PNG preview: CT slab MIPs (axial, coronal) and label MIPs (axial, coronal), physical aspect ratio.

    phantom: a :class:`Phantom` or ``(image HU (z, y, x), label (z, y, x), spacing (sz, sy, sx) mm)``. The CT MIPs
    are ``slab_mm`` thick through the middle of the coronary tree (a whole-volume MIP shows bones, not the heart),
    windowed at centre 200 / width 600 HU. Written atomically; returns the path.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from seg2refine_core.io.atomic import atomic_path

    if isinstance(phantom, Phantom):
        image, label, spacing = phantom.image, phantom.label, phantom.spacing
    else:
        image, label, spacing = phantom
    image = np.asarray(image)
    label = np.asarray(label) > 0
    sz, sy, sx = (float(v) for v in spacing)
    nz, ny, nx = image.shape

    def slab(axis: int, sp: float) -> slice:
        lo, hi = _label_extent(label, axis)
        mid = (lo + hi) // 2
        half = max(1, int(round(slab_mm / sp / 2)))
        return slice(max(0, mid - half), min(image.shape[axis], mid + half + 1))

    zs, ys = slab(0, sz), slab(1, sy)
    axial = image[zs].max(axis=0)
    coronal = image[:, ys].max(axis=1)[::-1]
    ext_ax = (0, nx * sx, ny * sy, 0)
    ext_co = (0, nx * sx, 0, nz * sz)
    panels = [
        (axial, ext_ax, f"CT axial MIP, {slab_mm:g} mm slab (z {zs.start}-{zs.stop - 1})", "gray", (-100, 500)),
        (coronal, ext_co, f"CT coronal MIP, {slab_mm:g} mm slab (y {ys.start}-{ys.stop - 1})", "gray", (-100, 500)),
        (label.max(axis=0), ext_ax, "label MIP, axial", "magma", (0, 1)),
        (label.max(axis=1)[::-1], ext_co, "label MIP, coronal (anterior view)", "magma", (0, 1)),
    ]
    fig = Figure(figsize=(10, 10 * (ny * sy + nz * sz) / (2 * nx * sx) + 0.6), dpi=100)
    axes = fig.subplots(2, 2)
    for ax, (data, ext, name, cmap, (vmin, vmax)) in zip(axes.flat, panels, strict=True):
        ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, extent=ext, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x (mm, patient right -> left)", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def write_phantom_case(phantom: Phantom, out_dir: str | Path, case_id: int | str) -> tuple[Path, Path]:
    """Write ``<id>.img.nii.gz`` (int16 HU, rounded) and ``<id>.label.nii.gz`` (uint8), ImageCAS naming."""
    from seg2refine_core.io.volume import write_volume

    out = Path(out_dir)
    hu = np.empty(phantom.image.shape, dtype=np.int16)
    for z0 in range(0, hu.shape[0], _SLAB):  # slab by slab: no full-size float temporary
        zs = slice(z0, z0 + _SLAB)
        hu[zs] = np.clip(np.rint(phantom.image[zs]), -32768, 32767)
    img = write_volume(out / f"{case_id}.img.nii.gz", hu, spacing=phantom.spacing, affine=phantom.affine)
    lab = write_volume(out / f"{case_id}.label.nii.gz", phantom.label.astype(np.uint8), spacing=phantom.spacing,
                       affine=phantom.affine)
    return img, lab
