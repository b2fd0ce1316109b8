"""Segmentation metrics of a predicted mask against the ground truth (paper eqs. 13-14, design section 7).

All masks are arrays ``(z, y, x)`` (bool or uint8; any non-zero voxel is foreground) of the same shape;
spacing is ``(sz, sy, sx)`` in mm, in the same order. Pure NumPy/SciPy/scikit-image/cc3d: no torch.

Conventions (kept in one place so the CLI, the plugin and the report agree):

- Dice of two empty masks is 1.0 (perfect agreement on "no vessel"); one empty and one not gives 0.0.
- Surfaces are the boundary voxels of a mask: the mask XOR its binary erosion with SciPy's default
  (face-connected) structuring element, the array border counting as background. This is exactly what
  MONAI's ``get_mask_edges`` does, so distances match ``monai.metrics.compute_hausdorff_distance``.
- Surface distances are Euclidean, in mm, from each surface voxel of one mask to the nearest surface voxel of
  the other. They are found with a k-d tree over the surface voxels' physical coordinates (SciPy ``cKDTree``):
  the same numbers as ``distance_transform_edt(sampling=spacing)``, but on a coronary tree whose bounding box
  spans most of a 512x512x256 volume about 25x faster, since the cost follows the surface, not the box.
- HD is the symmetric Hausdorff distance of eq. 14: the larger of the two directed maxima.
- HD95 follows MONAI (``compute_hausdorff_distance(..., percentile=95)``): the larger of the two *directed*
  95th percentiles (linear interpolation), not the 95th percentile of the pooled distances.
- Distances: both masks empty gives 0.0; exactly one empty gives ``inf`` (JSON reports carry it as null).
- Slice-wise Dice along z: NaN where both slices are empty (undefined), 0.0 where exactly one is empty.
- B0 counts 26-connected foreground components (cc3d); B0 of an empty mask is 0.
- clDice (Shit et al., CVPR 2021) uses 3-D skeletons from ``skimage.morphology.skeletonize``; a component
  that thinning erases whole (an isolated even-width tube) contributes its centre instead (see :func:`skeleton`),
  so identical masks score 1.0 for tubes of every width. Both empty gives 1.0, exactly one empty gives 0.0.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

Spacing = Sequence[float]


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return both masks as bool arrays, after checking that their shapes agree."""
    p = np.asarray(pred) != 0
    g = np.asarray(gt) != 0
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} does not match ground-truth shape {g.shape}")
    return p, g


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing {tuple(spacing)} must be {ndim} positive numbers (sz, sy, sx) in mm")
    return sp


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...] | None:
    """Bounding box of the foreground grown by ``margin`` voxels (clipped to the array), or None if empty."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        slices.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(slices)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient ``2|P∩T| / (|P| + |T|)`` (eq. 13); 1.0 when both masks are empty."""
    p, g = _pair(pred, gt)
    total = int(p.sum()) + int(g.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, g).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a mask (bool, same shape): ``mask XOR erosion(mask)``, face-connected, as MONAI."""
    m = np.asarray(mask) != 0
    return m & ~ndimage.binary_erosion(m, border_value=0)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Spacing
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances in mm: ``(pred surface -> gt surface, gt surface -> pred surface)``.

    Each is a 1-D float64 array with one entry per surface voxel of the source mask. When the target mask is
    empty, the source's entries are ``inf``; an empty source gives an empty array. Both masks are cropped to
    their joint bounding box (+1 voxel) before the surfaces are extracted.
    """
    p, g = _pair(pred, gt)
    sp = _spacing(spacing, p.ndim)
    box = _bbox(p | g)
    if box is None:
        return np.zeros(0), np.zeros(0)
    sp_, sg_ = surface(p[box]), surface(g[box])
    return _directed(sp_, sg_, sp), _directed(sg_, sp_, sp)


def _directed(src: np.ndarray, dst: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distances (mm) from each True voxel of ``src`` to the nearest True voxel of ``dst``."""
    src_mm = np.argwhere(src) * np.asarray(spacing)
    if not dst.any():
        return np.full(len(src_mm), np.inf)
    if len(src_mm) == 0:
        return np.zeros(0)
    distances, _ = cKDTree(np.argwhere(dst) * np.asarray(spacing)).query(src_mm)
    return distances


def hausdorff(pred: np.ndarray, gt: np.ndarray, spacing: Spacing, percentile: float = 100) -> float:
    """Symmetric Hausdorff distance between the surfaces, in mm (eq. 14).

    ``percentile=100`` is HD; ``percentile=95`` is HD95 in MONAI's convention: the larger of the two directed
    95th percentiles. Both masks empty gives 0.0; exactly one empty gives ``inf``.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile {percentile} must be in (0, 100]")
    return _hausdorff_from(*surface_distances(pred, gt, spacing), percentile)


def _hausdorff_from(d_pg: np.ndarray, d_gp: np.ndarray, percentile: float) -> float:
    """Symmetric HD (or percentile HD) from the two directed surface-distance arrays."""
    if d_pg.size == 0 and d_gp.size == 0:
        return 0.0
    if d_pg.size == 0 or d_gp.size == 0 or np.isinf(d_pg).any() or np.isinf(d_gp).any():
        return float("inf")
    if percentile == 100:
        return float(max(d_pg.max(), d_gp.max()))
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def slice_dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Dice of each axial slice, shape ``(z,)`` float64: NaN where both slices are empty, 0.0 where one is."""
    p, g = _pair(pred, gt)
    if p.ndim != 3:
        raise ValueError(f"slice_dice needs (z, y, x) masks, got shape {p.shape}")
    inter = np.logical_and(p, g).sum(axis=(1, 2), dtype=np.int64)
    total = p.sum(axis=(1, 2), dtype=np.int64) + g.sum(axis=(1, 2), dtype=np.int64)
    out = np.full(p.shape[0], np.nan)
    defined = total > 0
    out[defined] = 2.0 * inter[defined] / total[defined]
    return out


def betti0(mask: np.ndarray) -> int:
    """Betti-0: the number of 26-connected foreground components (0 for an empty mask)."""
    m = np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)
    if not m.any():
        return 0
    connectivity = {1: 2, 2: 8, 3: 26}[m.ndim]
    _, n = cc3d.connected_components(m, connectivity=connectivity, return_N=True)
    return int(n)


def betti0_error(pred: np.ndarray, gt: np.ndarray) -> int:
    """Betti-0 error ``|B0(pred) - B0(gt)|``."""
    p, g = _pair(pred, gt)
    return abs(betti0(p) - betti0(g))


def skeleton(mask: np.ndarray) -> np.ndarray:
    """Centreline of a mask (bool, same shape) by ``skimage.morphology.skeletonize``, computed on its crop.

    Thinning removes every voxel of some components: an isolated straight tube of even width (2, 4, 6 ... voxels
    across along an axis) has no single middle voxel, and the symmetric thinning erases it whole. Such a component
    contributes its centre instead: its voxels farthest from its boundary (Euclidean distance transform, ties all
    kept), i.e. the 2-voxel-wide core along an even tube's length, or the middle of a small blob. Every foreground
    component therefore has a non-empty centreline.
    """
    from skimage.morphology import skeletonize

    m = np.asarray(mask) != 0
    out = np.zeros_like(m)
    box = _bbox(m)
    if box is None:
        return out
    crop = m[box]
    skel = skeletonize(crop) != 0
    if crop.ndim in (2, 3):
        connectivity = {2: 8, 3: 26}[crop.ndim]
        labels, n = cc3d.connected_components(crop.astype(np.uint8), connectivity=connectivity, return_N=True)
        kept = np.bincount(labels[skel], minlength=n + 1)
        vanished = np.flatnonzero(kept[1:] == 0) + 1
        if vanished.size:
            depth = ndimage.distance_transform_edt(crop)
            deepest = np.full(n + 1, np.inf)
            deepest[vanished] = ndimage.maximum(depth, labels, index=vanished)
            skel |= depth >= deepest[labels]
    out[box] = skel
    return out


def cldice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Centreline Dice (Shit et al. 2021): harmonic mean of topology precision and sensitivity.

    ``Tprec = |skel(P) ∩ T| / |skel(P)|``, ``Tsens = |skel(T) ∩ P| / |skel(T)|``. Both empty gives 1.0,
    exactly one empty gives 0.0.
    """
    p, g = _pair(pred, gt)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return 1.0
    if not (has_p and has_g):
        return 0.0
    sk_p, sk_g = skeleton(p), skeleton(g)
    tprec = np.logical_and(sk_p, g).sum() / max(int(sk_p.sum()), 1)
    tsens = np.logical_and(sk_g, p).sum() / max(int(sk_g.sum()), 1)
    if tprec + tsens == 0:
        return 0.0
    return float(2.0 * tprec * tsens / (tprec + tsens))


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def evaluate_case(pred: np.ndarray, gt: np.ndarray, spacing: Spacing) -> dict:
    """All metrics of one case as a JSON-ready dict (non-finite values become None).

    Keys: ``dice``, ``hd_mm``, ``hd95_mm``, ``b0_pred``, ``b0_gt``, ``betti0_error``, ``cldice``,
    ``slice_dice`` (list over z, None where undefined), ``slice_dice_mean`` (mean over defined slices, None if
    none) and ``slice_dice_undefined`` (the number of slices left out because both are empty).
    """
    p, g = _pair(pred, gt)
    d_pg, d_gp = surface_distances(p, g, spacing)
    hd, hd95 = _hausdorff_from(d_pg, d_gp, 100), _hausdorff_from(d_pg, d_gp, 95)
    sd = slice_dice(p, g)
    defined = ~np.isnan(sd)
    b0_p, b0_g = betti0(p), betti0(g)
    return {
        "dice": dice(p, g),
        "hd_mm": _finite_or_none(hd),
        "hd95_mm": _finite_or_none(hd95),
        "b0_pred": b0_p,
        "b0_gt": b0_g,
        "betti0_error": abs(b0_p - b0_g),
        "cldice": cldice(p, g),
        "slice_dice": [float(v) if ok else None for v, ok in zip(sd, defined, strict=True)],
        "slice_dice_mean": float(sd[defined].mean()) if defined.any() else None,
        "slice_dice_undefined": int((~defined).sum()),
    }
