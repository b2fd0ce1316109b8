"""World coordinates, the heart's axis, and which tree is the left and which the right coronary tree.

The side rule, in world RAS coordinates (x towards the patient's right, y anterior, z superior): of the trees
(largest first), the two with the most lumen voxels are the coronary trees. With two, the one whose centerline
centroid lies further to the patient's left (smaller RAS x) is the *left* tree, the other the *right*. With one,
it is left if its centroid lies to the left of its own ostium (the left tree runs leftwards round the heart from
the left sinus; the RCA runs rightwards and down from the right sinus), else right. Smaller trees (fragments cut
off by a narrowing or a gap in the mask) join the side of the nearest main tree when their centerline comes within
``ATTACH_MM`` of it, and are 'other' otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

#: base-to-apex axis of the heart of a supine patient in world RAS: towards the patient's left, anterior, inferior
HEART_AXIS_RAS = np.array([-0.62, 0.55, -0.56]) / np.linalg.norm([-0.62, 0.55, -0.56])
#: a fragment within this distance (mm) of a main tree's centerline joins its side
ATTACH_MM = 10.0


def voxels_to_ras(voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World RAS mm (n, 3) of voxel indices (n, 3) in array order (z, y, x); the affine takes (x, y, z)."""
    v = np.asarray(voxels, dtype=float).reshape(-1, 3)[:, ::-1]
    a = np.asarray(affine, dtype=float)
    return v @ a[:3, :3].T + a[:3, 3]


def ras_direction_in_array_mm(direction_ras: np.ndarray, affine: np.ndarray, spacing: tuple[float, float, float]
                              ) -> np.ndarray:
    """A world RAS direction as a unit vector in array mm coordinates (z, y, x) * spacing."""
    index_xyz = np.linalg.solve(np.asarray(affine, dtype=float)[:3, :3], np.asarray(direction_ras, dtype=float))
    v = index_xyz[::-1] * np.asarray(spacing, dtype=float)
    return v / np.linalg.norm(v)


def assign_sides(points_ras: list[np.ndarray], ostia_ras: list[np.ndarray]) -> list[str]:
    """'left', 'right' or 'other' for each tree (ordered by lumen voxels, largest first), given each tree's
    centerline points (k, 3) and ostium (3,) in world RAS mm (rule in the module docstring)."""
    sides = ["other"] * len(points_ras)
    centroids = [p.mean(0) for p in points_ras]
    if len(points_ras) >= 2:
        left = 0 if centroids[0][0] < centroids[1][0] else 1
        sides[left], sides[1 - left] = "left", "right"
    elif len(points_ras) == 1:
        sides[0] = "left" if centroids[0][0] < ostia_ras[0][0] else "right"
    main = [i for i in range(min(2, len(points_ras)))]
    if not main:
        return sides
    index = {i: cKDTree(points_ras[i]) for i in main}
    for k in range(2, len(points_ras)):
        gaps = {i: float(index[i].query(points_ras[k])[0].min()) for i in main}
        nearest = min(gaps, key=gaps.get)
        if gaps[nearest] <= ATTACH_MM:
            sides[k] = sides[nearest]
    return sides
