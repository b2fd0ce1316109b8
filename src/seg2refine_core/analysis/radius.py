"""Lumen radius from the Euclidean distance transform of a mask, in mm, with the voxel spacing honoured.

``scipy.ndimage.distance_transform_edt(mask, sampling=spacing)`` gives every lumen voxel its distance to the nearest
background voxel centre: the radius of the largest ball centred there that holds only lumen, the
maximal-inscribed-sphere radius of centerline tools such as VMTK (Antiga et al., Med. Biol. Eng. Comput. 2008).
A skeleton voxel lies up to half a voxel off the true axis, which makes its own value read low (by up to 0.4 mm
on digitised cylinders of radius 1-3 mm at 0.7 mm voxels); the radius is therefore the largest value in its
3 x 3 x 3 neighbourhood: within 0.2 mm of the true radius on those cylinders at every orientation, within 0.3 mm
at 1.0 x 0.5 x 0.5 mm voxels (``tests/test_analysis_geometry.py``). Lumen diameters for grading come from
cross-sections instead (:mod:`.cross_section`); this radius sizes junctions, spurs and sampling windows.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_NEIGHBOURS = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij"), -1).reshape(-1, 3)


def lumen_distance(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distance (mm, float32, same shape as ``mask``) from every lumen voxel to the nearest background voxel centre.

    ``mask``: bool or {0, 1}, (z, y, x); ``spacing``: (sz, sy, sx) mm. Voxels beyond the array's edge are not
    background: pad a crop by one voxel of background first if the lumen may touch its edge.
    """
    return ndimage.distance_transform_edt(np.asarray(mask, dtype=bool), sampling=spacing).astype(np.float32)


def radius_at(voxels: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Lumen radius (mm, float64 (n,)) at centerline voxels (n, 3) int (z, y, x) of ``dist`` from
    :func:`lumen_distance`: the largest distance in each voxel's 3 x 3 x 3 neighbourhood."""
    vox = np.asarray(voxels, dtype=np.int64).reshape(-1, 3)
    nb = vox[:, None, :] + _NEIGHBOURS[None]
    nb = np.clip(nb, 0, np.asarray(dist.shape) - 1)
    return dist[nb[..., 0], nb[..., 1], nb[..., 2]].max(axis=1).astype(float)
