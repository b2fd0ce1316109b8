"""Straightened curved planar reformation (CPR) of one branch: the CT resampled along its centerline.

Each row of the result is a line across the vessel through one centerline point, perpendicular to the centerline
(its tangent smoothed over ~2 mm), in the plane spanned by the tangent and one fixed lateral direction (the world
axis least aligned with the branch, made perpendicular to the tangent at every point, so the view turns with the
vessel but does not spin about it); rows follow the centerline at equal arc steps, so the vessel runs straight
down the image ("straightened CPR", Kanitsar et al., IEEE Visualization 2002). Sampling is trilinear
(``scipy.ndimage.map_coordinates``, order 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from seg2refine_core.analysis.cross_section import tangents


@dataclass
class CPR:
    """image (n_along, n_across) float32 (HU for a CT); lumen (n_along, n_across) float32 mask fraction 0..1 (None
    without a mask); arc_mm (n_along,) along the centerline; offset_mm (n_across,) across it; points (n_along, 3)
    voxel coordinates (z, y, x, float) of the centerline samples."""

    image: np.ndarray
    lumen: np.ndarray | None
    arc_mm: np.ndarray
    offset_mm: np.ndarray
    points: np.ndarray


def straighten(image: np.ndarray, spacing: tuple[float, float, float], voxels: np.ndarray, *,
               mask: np.ndarray | None = None, half_width_mm: float = 8.0, step_mm: float | None = None) -> CPR:
    """Straightened CPR of ``image`` (z, y, x) along a branch's centerline voxels (n, 3) (z, y, x).

    spacing: (sz, sy, sx) mm; mask: the lumen mask (same shape) to resample alongside; half_width_mm: the extent
    across; step_mm: the sampling step along and across (default half the smallest spacing). Outside the volume
    the image reads its minimum.
    """
    sp = np.asarray(spacing, dtype=float)
    step = float(step_mm) if step_mm else 0.5 * float(sp.min())
    pts = np.asarray(voxels, dtype=float).reshape(-1, 3) * sp
    if len(pts) > 2:
        pts = ndimage.gaussian_filter1d(pts, 1.5, axis=0, mode="nearest")
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    n_along = max(2, int(arc[-1] / step) + 1)
    s = np.linspace(0.0, arc[-1], n_along)
    centre = np.stack([np.interp(s, arc, pts[:, k]) for k in range(3)], axis=1) if arc[-1] > 0 else pts[[0, 0]]
    t = tangents(centre, sigma=max(1.0, 2.0 / step))
    overall = centre[-1] - centre[0]
    axis = np.eye(3)[int(np.argmin(np.abs(overall)))] if np.linalg.norm(overall) > 0 else np.eye(3)[0]
    lateral = axis - (t @ axis)[:, None] * t
    norm = np.linalg.norm(lateral, axis=1, keepdims=True)
    fallback = np.cross(t, np.eye(3)[(int(np.argmin(np.abs(overall))) + 1) % 3])
    lateral = np.where(norm > 1e-6, lateral / np.maximum(norm, 1e-12), fallback)
    offset = np.arange(-half_width_mm, half_width_mm + step / 2, step)
    pos = centre[:, None, :] + offset[None, :, None] * lateral[:, None, :]  # (n_along, n_across, 3) mm
    coords = (pos / sp).reshape(-1, 3).T
    lo = np.maximum(np.floor(coords.min(1)).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(coords.max(1)).astype(int) + 2, image.shape)
    if np.any(hi <= lo):  # the line lies outside the volume
        lo, hi = np.zeros(3, dtype=int), np.ones(3, dtype=int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    local = coords - lo[:, None]
    fill = float(np.min(image[box]))
    cpr = ndimage.map_coordinates(np.asarray(image[box], dtype=np.float32), local, order=1, mode="constant",
                                  cval=fill).reshape(pos.shape[:2])
    lumen = None
    if mask is not None:
        lumen = ndimage.map_coordinates(np.asarray(mask[box] != 0, dtype=np.float32), local, order=1,
                                        mode="constant", cval=0.0).reshape(pos.shape[:2])
    return CPR(cpr.astype(np.float32), lumen, s, offset, centre / sp)
