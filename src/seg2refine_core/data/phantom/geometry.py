"""Phantom geometry: the voxel grid in mm, ellipsoids, smooth polylines and tube signed distances.

Anatomy coordinates are mm ``(z, y, x)``; the volume centre sits at ``Grid.centre`` in them (the origin unless a
cohort case centres its field of view on the heart), so voxel index = (mm - centre) / spacing + (shape - 1) / 2.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

SLAB = 16  # slices per block when painting implicit shapes and adding noise (bounds temporary memory)
MAX_PAIRS = 3_000_000  # voxel x segment pairs per tube chunk (bounds temporary memory)


def lps(x: float, y: float, z: float) -> np.ndarray:
    """A vector given as (left, posterior, superior) mm, returned in array order (z, y, x)."""
    return np.array([z, y, x], dtype=float)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis`` by ``angle`` radians."""
    k = unit(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


class Grid:
    """Voxel centres in anatomy mm, (z, y, x); the volume centre is at ``centre`` (default the origin)."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                 centre: np.ndarray | None = None) -> None:
        self.shape = shape
        self.spacing = np.asarray(spacing, dtype=float)
        self.centre = np.zeros(3) if centre is None else np.asarray(centre, dtype=float)
        self.axes = [(np.arange(n) - (n - 1) / 2.0) * sp for n, sp in zip(shape, self.spacing, strict=True)]
        if centre is not None:
            self.axes = [a + c for a, c in zip(self.axes, self.centre, strict=True)]

    @property
    def fov(self) -> np.ndarray:
        return np.asarray(self.shape) * self.spacing

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in the mm box [lo, hi], or None if empty."""
        out = []
        lo, hi = lo - self.centre, hi - self.centre
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
        idx = np.rint((pts - self.centre) / self.spacing + (np.asarray(self.shape) - 1) / 2.0).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(self.shape)), axis=1)
        idx[~inside] = -1
        return idx


@dataclass
class Ellipsoid:
    """Solid ellipsoid (semi-axes ``radii`` along the rows of ``axes``), optionally cut by ``n . p >= d``."""

    center: np.ndarray
    axes: np.ndarray
    radii: np.ndarray
    cut: tuple[np.ndarray, float] | None = None

    def grown(self, t: float) -> Ellipsoid:
        cut = None if self.cut is None else (self.cut[0], self.cut[1] - t)
        return Ellipsoid(self.center, self.axes, self.radii + t, cut)

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


def resample(points: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Resample a polyline at uniform arc length; returns (points, fractional index into the input)."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(2, int(math.ceil(s[-1] / step)) + 1)
    t = np.linspace(0.0, s[-1], n)
    frac = np.interp(t, s, np.arange(len(points)))
    out = np.stack([np.interp(t, s, points[:, i]) for i in range(3)], axis=1)
    return out, frac


def smooth_curve(control: np.ndarray, step: float, smooth_mm: float) -> np.ndarray:
    """A smooth curve near the polyline ``control`` (n, 3) mm (corners rounded over ~``smooth_mm``)."""
    dense, _ = resample(np.asarray(control, float), 0.25 * smooth_mm)
    dense = ndimage.gaussian_filter1d(dense, 4.0, axis=0, mode="nearest")
    return resample(dense, step)[0]


def tube_sdfs(grid: Grid, pts: np.ndarray, radii: list[np.ndarray], pad: float
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
        if nvox * (i1 - i0) > MAX_PAIRS and i1 - i0 > 1:
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


def soft_occupancy(sdf: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Partial-volume fraction of a voxel from its signed distance to a surface, as uint8 0..255."""
    return np.rint(np.clip(0.5 - sdf / voxel_mm, 0.0, 1.0) * 255.0).astype(np.uint8)

