"""The phantom generator: :func:`make_phantom` draws the anatomy and the coronary trees and renders them.

See the package docstring (:mod:`seg2refine_core.data.phantom`) for what is drawn and how.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import ndimage

from seg2refine_core.data.phantom.anatomy import REF_FOV_MM, Heart, draw_heart, great_vessels, lung_vessels, ribs
from seg2refine_core.data.phantom.cohort import REAL_MATRIX, CohortDraw, PhantomOptions, draw_cohort
from seg2refine_core.data.phantom.coronary import (
    CALCIUM_HU,
    CENTRELINE_STEP_MM,
    SEVERITY_RANGE,
    coronary_trees,
    lesions,
    stents,
)
from seg2refine_core.data.phantom.geometry import SLAB, Grid
from seg2refine_core.data.phantom.rendering import (
    add_ct_noise,
    blend_lumen,
    paint_body,
    paint_coronary,
    paint_heart,
    paint_plaques,
    paint_stents,
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
    (coronary and other thin-tube lumen excluded). meta: seed, cohort flag, HU levels, noise (std, grain), PSF,
    heart and body scales, left-ventricular and aortic-root size, centre and axis, field of view, dominance, vessels
    (name, tree, length, start/end radius), stenoses, calcified plaques and stents, and for cohort cases the drawn
    scan (``cohort_scan``); positions in meta (``center_mm``, ``*_center_mm``) are mm (z, y, x) from the volume
    centre (voxel index = mm / spacing + (shape - 1) / 2), stenoses also carry ``center_ras_mm`` (world RAS mm).
    truth: the vessels' centerlines, the stenoses and the stents in world RAS mm
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


def _dome_shift(heart: Heart, s: float, fat_mm: float) -> float:
    """How far to raise the diaphragm (mm) so that the heart's lowest point rests on it (fat and pericardium
    between), as in the canonical layout where heart and chest share one scale."""
    low = min((sh.extent()[0] for sh in (heart.lv_epi, heart.rv_epi, heart.ra)), key=lambda p: p[0])
    x, y = low[2] / s, low[1] / s
    dome = max(-20.0 - ((x + 20) ** 2 + (y - 6) ** 2) / 80.0, -33.0 - ((x - 18) ** 2 + (y - 2) ** 2) / 70.0)
    return float(low[0] - fat_mm - 0.8 * heart.k - dome * s)


def _cohort_grid(draw: CohortDraw, vessels: list, shape: tuple[int, int, int] | None,
                 spacing: tuple[float, float, float] | None, matrix: int
                 ) -> tuple[tuple[int, int, int], tuple[float, float, float], np.ndarray, np.ndarray]:
    """Shape, spacing, centre (anatomy mm) and field of view (mm) of a cohort case (see :mod:`.cohort`)."""
    pts = np.concatenate([v.points for v in vessels])
    lo, hi = pts.min(0), pts.max(0)
    z0, z1 = lo[0] - draw.z_margins_mm[0], hi[0] + draw.z_margins_mm[1]
    centre = np.array([(z0 + z1) / 2, (lo[1] + hi[1]) / 2 + draw.centre_jitter_mm[0],
                       (lo[2] + hi[2]) / 2 + draw.centre_jitter_mm[1]])
    fov = np.array([z1 - z0, draw.fov_xy_mm, draw.fov_xy_mm])
    if shape is None and spacing is None:
        factor = REAL_MATRIX / matrix
        spacing = tuple(float(d * factor) for d in draw.spacing_mm)
        shape = (max(8, round(fov[0] / spacing[0])), matrix, matrix)
    elif shape is None:
        shape = tuple(max(8, round(f / d)) for f, d in zip(fov, spacing, strict=True))
    elif spacing is None:
        spacing = tuple(float(f / n) for f, n in zip(fov, shape, strict=True))
    return shape, spacing, centre, np.asarray(shape) * np.asarray(spacing)


def make_phantom(
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    severity_range: tuple[float, float] | None = None,
    *,
    cohort: bool = False,
    matrix: int | None = None,
    options: PhantomOptions | None = None,
) -> Phantom:
    """Generate a synthetic CCTA volume and its coronary lumen label (see the package docstring).

    shape: (z, y, x) voxels; spacing: (sz, sy, sx) mm (defaults :data:`DEFAULT_SHAPE`, :data:`DEFAULT_SPACING`
    without ``cohort``); seed: non-negative int; severity_range: (low, high) fractional diameter reduction of the
    stenoses, 0 <= low <= high <= 0.9 (default (0.35, 0.7), the range every earlier volume was drawn with;
    (0.25, 0.8) makes every grade occur, and only the stenoses change; it wins over ``options.severity_range``).
    cohort: draw the case from the cohort preset (real-size anatomy, spacing, field of view, contrast, noise, PSF,
    lesions and stents per seed; :mod:`.cohort`), where ``shape`` and ``spacing`` default to the drawn scan and
    ``matrix`` (in-plane voxels, default 512, 8-2048; not with ``shape`` or ``spacing``) scales it down.
    options: :class:`~.cohort.PhantomOptions` replacing single draws (legacy or cohort).
    Returns a :class:`Phantom` with image float32 HU and label uint8, both (z, y, x), and its ground truth.
    Deterministic for given arguments; without ``cohort`` and ``options``, the volumes of every earlier version.
    Raises :class:`~seg2refine_core.errors.Seg2RefineError` for bad arguments.
    """
    from seg2refine_core.errors import Seg2RefineError

    if int(seed) != seed or seed < 0:
        raise Seg2RefineError(f"phantom seed must be a non-negative integer, got {seed!r}")
    if matrix is not None and not cohort:
        raise Seg2RefineError("phantom matrix applies to cohort cases only (cohort=True)")
    if matrix is not None and (shape is not None or spacing is not None):
        raise Seg2RefineError("phantom matrix scales the drawn cohort scan: give it without shape and spacing")
    if matrix is not None and (int(matrix) != matrix or not 8 <= matrix <= 2048):
        raise Seg2RefineError(f"phantom matrix must be an integer from 8 to 2048, got {matrix!r}")
    if not cohort:
        shape, spacing = _check_geometry(DEFAULT_SHAPE if shape is None else shape,
                                         DEFAULT_SPACING if spacing is None else spacing)
    else:
        shape = None if shape is None else _check_geometry(shape, (1.0, 1.0, 1.0))[0]
        spacing = None if spacing is None else _check_geometry((8, 8, 8), spacing)[1]
    opts = options or PhantomOptions()
    draw = draw_cohort(seed) if cohort else None
    if draw is not None:
        opts = opts.merged(draw.options)
    if severity_range is not None:
        opts = replace(opts, severity_range=tuple(float(v) for v in severity_range))
    if opts.severity_range is not None:
        low, high = opts.severity_range
        if not 0.0 <= low <= high <= 0.9:
            raise Seg2RefineError(
                f"phantom severity range must satisfy 0 <= low <= high <= 0.9, got {opts.severity_range}")
    opts.check()
    report = progress or (lambda done, total, info="": None)
    rng = np.random.default_rng([int(seed), 3 if cohort else 0])
    if cohort:
        s = float(opts.body_scale)
    else:
        fov = np.asarray(shape) * np.asarray(spacing)
        s = float(np.min(fov / np.asarray(REF_FOV_MM))) if opts.body_scale is None else float(opts.body_scale)

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
    hu["blood"] = hu["blood"] if opts.blood_hu is None else opts.blood_hu
    noise_sd = float(rng.uniform(20, 40))
    noise_sd = noise_sd if opts.noise_sd_hu is None else float(opts.noise_sd_hu)
    psf_mm = np.array([0.6, 0.45, 0.45]) * rng.uniform(0.9, 1.15)
    psf_mm = psf_mm if opts.psf_sigma_mm is None else np.asarray(opts.psf_sigma_mm, dtype=float)
    grain = (0.0, 0.5) if opts.noise_grain_mm is None else tuple(float(g) for g in opts.noise_grain_mm)
    heart, info = draw_heart(rng, s, opts.heart_scale)
    fat_mm = 3.0 * heart.k
    tubes = great_vessels(heart, s, None if opts.heart_scale is None else heart.k) + ribs(rng, s)  # calibres
    tubes += lung_vessels(rng, s)
    vessels, tree_info = coronary_trees(rng, heart, CENTRELINE_STEP_MM, opts.dominance, opts.left_main_range_mm)
    stenoses, plaques = lesions(rng, vessels, opts.severity_range or SEVERITY_RANGE, opts.n_stenoses,
                                opts.n_calcified, opts.calcium_hu or CALCIUM_HU)
    z_disc = float(rng.uniform(0, 16))
    stent_list = stents(rng, vessels, stenoses, int(opts.n_stents or 0))

    if draw is not None:
        shape, spacing, centre, fov = _cohort_grid(draw, vessels, shape, spacing, int(matrix or REAL_MATRIX))
        grid = Grid(shape, spacing, centre)
    else:
        grid, centre = Grid(shape, spacing), np.zeros(3)
    sized = opts.heart_scale is not None or opts.body_scale is not None  # heart and chest sized apart
    dome_shift = _dome_shift(heart, s, fat_mm) if sized else 0.0
    voxel_mm = float(np.prod(spacing) ** (1 / 3))

    n_slabs = math.ceil(shape[0] / SLAB)
    total = 6 + len(vessels) + n_slabs + bool(stent_list)
    done = 0

    def tick(info_: str) -> None:
        nonlocal done
        check_stop(should_stop)
        done += 1
        report(done, total, info_)

    tissue = np.zeros(shape, dtype=np.uint8)
    occ = np.zeros(shape, dtype=np.uint8)
    label = np.zeros(shape, dtype=np.uint8)
    paint_body(tissue, grid, s, z_disc, dome_shift)
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
    if stent_list:
        paint_stents(image, grid, stent_list, voxel_mm)
        tick("stents")
    ndimage.gaussian_filter(image, psf_mm / np.asarray(spacing), output=image, mode="nearest")
    tick("blur")

    add_ct_noise(image, spacing, noise_sd, seed, tick, grain, 4 if cohort else 1)

    def local(p: np.ndarray) -> np.ndarray:
        """Anatomy mm -> mm from the volume centre (unchanged when the volume is centred on the origin)."""
        return p if draw is None else p - centre

    affine = phantom_affine(shape, spacing)
    for st in stenoses:
        if draw is not None:
            st["center_mm"] = local(np.asarray(st["center_mm"])).round(2).tolist()
        st["center_ras_mm"] = grid_mm_to_ras(np.asarray(st["center_mm"]), shape, spacing, affine)[0].round(2).tolist()
    meta = {
        "synthetic": True,
        "seed": int(seed),
        "cohort": bool(cohort),
        "scale": s,
        "hu": {k: round(float(v), 1) for k, v in hu.items()},
        "noise_sd_hu": round(noise_sd, 1),
        "noise_grain_mm": [round(g, 3) for g in grain],
        "psf_sigma_mm": psf_mm.round(3).tolist(),
        **info,
        "heart_scale": round(float(heart.k), 4),
        "body_scale": round(s, 4),
        "lv_long_semi_axis_mm": round(heart.lv_long_semi_axis_mm, 2),
        "aortic_root_radius_mm": round(heart.root_radius_mm, 2),
        "aortic_root_center_mm": local(heart.root.center).round(2).tolist(),
        "lv_center_mm": local(heart.o).round(2).tolist(),
        "lv_long_axis": heart.frame[0].round(4).tolist(),
        "field_of_view_mm": (np.asarray(shape) * np.asarray(spacing)).round(2).tolist(),
        **tree_info,
        "vessels": [
            {"name": v.name, "tree": v.tree,
             "length_mm": round(float(np.linalg.norm(np.diff(v.points, axis=0), axis=1).sum()), 1),
             "r_start_mm": round(float(v.r_nom[0]), 3), "r_end_mm": round(float(v.r_nom[-1]), 3)}
            for v in vessels
        ],
        "stenoses": stenoses,
        "calcified_plaques": [
            {"vessel": p.vessel, "center_mm": local(p.center).round(2).tolist(), "radius_mm": round(p.radius, 2),
             "hu": round(p.hu, 1)} for p in plaques
        ],
        "stents": [
            {"vessel": st.vessel, "tree": st.tree, "start_mm": round(st.start_mm, 2), "end_mm": round(st.end_mm, 2),
             "radius_mm": round(st.radius_mm, 3), "wires": st.wires, "wire_mm": round(st.wire_mm, 3),
             "pitch_mm": round(st.pitch_mm, 2), "hu": round(st.hu, 0)} for st in stent_list
        ],
    }
    if draw is not None:
        meta["cohort_scan"] = {
            "real_spacing_mm": [round(d, 4) for d in draw.spacing_mm],
            "field_of_view_xy_mm": round(draw.fov_xy_mm, 2),
            "z_margins_mm": [round(m, 2) for m in draw.z_margins_mm],
            "centre_jitter_mm": [round(j, 2) for j in draw.centre_jitter_mm],
            "fov_centre_anatomy_mm": centre.round(2).tolist(),
        }
    truth = phantom_truth(vessels, stenoses, shape, spacing, affine, centre, stent_list)
    tick("done")
    return Phantom(image, label, spacing, affine, tissue, meta, truth)
