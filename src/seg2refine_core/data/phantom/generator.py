"""The phantom generator: :func:`make_phantom` draws the anatomy and the coronary trees and renders them.

See the package docstring (:mod:`seg2refine_core.data.phantom`) for what is drawn and how.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from seg2refine_core.data.phantom.anatomy import REF_FOV_MM, draw_heart, great_vessels, lung_vessels, ribs
from seg2refine_core.data.phantom.coronary import CENTRELINE_STEP_MM, SEVERITY_RANGE, coronary_trees, lesions
from seg2refine_core.data.phantom.geometry import SLAB, Grid
from seg2refine_core.data.phantom.rendering import (
    add_ct_noise,
    blend_lumen,
    paint_body,
    paint_coronary,
    paint_heart,
    paint_plaques,
    paint_tubes,
    tissue_to_hu,
)
from seg2refine_core.data.phantom.truth import PhantomTruth, grid_mm_to_ras, phantom_truth
from seg2refine_core.progress import ProgressFn, StopFn, check_stop

DEFAULT_SHAPE = (96, 128, 128)
DEFAULT_SPACING = (1.0, 0.7, 0.7)


@dataclass
class Phantom:
    """A synthetic CCTA volume.

    image: float32 HU, (z, y, x). label: uint8 {0, 1} coronary lumen, (z, y, x). spacing: (sz, sy, sx) mm.
    affine: 4x4, (x, y, z) voxel indices -> RAS mm. tissue: uint8 codes into :data:`TISSUES` before blur and noise
    (coronary and other thin-tube lumen excluded). meta: seed, HU levels, noise, PSF, dominance, vessels (name,
    tree, length, start/end radius), stenoses and calcified plaques; positions in meta (``center_mm``) are mm
    (z, y, x) from the volume centre (voxel index = mm / spacing + (shape - 1) / 2), stenoses also carry
    ``center_ras_mm`` (world RAS mm). truth: the vessels' centerlines and the stenoses in world RAS mm
    (:class:`~seg2refine_core.data.phantom.truth.PhantomTruth`), the ground truth for vessel analysis.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    tissue: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    truth: PhantomTruth | None = None


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
    severity_range: tuple[float, float] = SEVERITY_RANGE,
) -> Phantom:
    """Generate a synthetic CCTA volume and its coronary lumen label (see the package docstring).

    shape: (z, y, x) voxels; spacing: (sz, sy, sx) mm; seed: non-negative int; severity_range: (low, high)
    fractional diameter reduction of the 1-3 stenoses, 0 <= low <= high <= 0.9 (default (0.35, 0.7), the range
    every earlier volume was drawn with; (0.25, 0.8) makes every clinical grade occur, and only the stenoses
    change). Returns a :class:`Phantom` with image float32 HU and label uint8, both (z, y, x), and its ground truth.
    Deterministic for given arguments. Raises :class:`~seg2refine_core.errors.Seg2RefineError` for bad arguments.
    """
    from seg2refine_core.errors import Seg2RefineError

    shape, spacing = _check_geometry(shape, spacing)
    if int(seed) != seed or seed < 0:
        raise Seg2RefineError(f"phantom seed must be a non-negative integer, got {seed!r}")
    low, high = (float(v) for v in severity_range)
    if not 0.0 <= low <= high <= 0.9:
        raise Seg2RefineError(f"phantom severity range must satisfy 0 <= low <= high <= 0.9, got {severity_range}")
    report = progress or (lambda done, total, info="": None)
    grid = Grid(shape, spacing)
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
    heart, info = draw_heart(rng, s)
    fat_mm = 3.0 * heart.k
    tubes = great_vessels(heart, s) + ribs(rng, s) + lung_vessels(rng, s)
    vessels, tree_info = coronary_trees(rng, heart, CENTRELINE_STEP_MM)
    stenoses, plaques = lesions(rng, vessels, (low, high))
    z_disc = float(rng.uniform(0, 16))

    n_slabs = math.ceil(shape[0] / SLAB)
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
    paint_body(tissue, grid, s, z_disc)
    tick("chest")
    paint_heart(tissue, grid, heart, fat_mm)
    tick("heart")
    paint_tubes(tissue, occ, grid, tubes, voxel_mm)
    tick("great vessels, ribs, lungs")
    for v in vessels:
        paint_coronary(tissue, occ, label, grid, v, voxel_mm)
        tick(f"coronary {v.name}")

    image = tissue_to_hu(tissue, hu)
    paint_plaques(image, grid, plaques, voxel_mm)
    blend_lumen(image, occ, hu["blood"])
    del occ
    tick("partial volume")
    ndimage.gaussian_filter(image, psf_mm / np.asarray(spacing), output=image, mode="nearest")
    tick("blur")

    add_ct_noise(image, spacing, noise_sd, seed, tick)

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
    affine = phantom_affine(shape, spacing)
    for st in stenoses:
        st["center_ras_mm"] = grid_mm_to_ras(np.asarray(st["center_mm"]), shape, spacing, affine)[0].round(2).tolist()
    truth = phantom_truth(vessels, stenoses, shape, spacing, affine)
    tick("done")
    return Phantom(image, label, spacing, affine, tissue, meta, truth)


