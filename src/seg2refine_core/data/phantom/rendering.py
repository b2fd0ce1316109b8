"""Phantom rendering: paint tissue codes, partial-volume lumen occupancy and the lumen label on the voxel grid,
then turn them into HU with blur and CT noise."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from seg2refine_core.data.phantom.anatomy import BLOOD_CODES, SOFT_BACKGROUND, TISSUES, Heart, T, Tube
from seg2refine_core.data.phantom.coronary import CENTRELINE_STEP_MM, Plaque, Stent, Vessel
from seg2refine_core.data.phantom.geometry import SLAB, Ellipsoid, Grid, resample, soft_occupancy, tube_sdfs


def paint_ellipsoid(tissue: np.ndarray, grid: Grid, shape: Ellipsoid, code: int,
                     keep: tuple[int, ...] = ()) -> None:
    """Set ``tissue`` to ``code`` inside ``shape``, except where it already holds one of ``keep``."""
    box = grid.box(*shape.extent())
    if box is None:
        return
    for z0 in range(box[0].start, box[0].stop, SLAB):
        sub_box = (slice(z0, min(z0 + SLAB, box[0].stop)), box[1], box[2])
        mask = shape.contains_grid(*grid.coords(sub_box))
        sub = tissue[sub_box]
        if keep:
            mask &= ~np.isin(sub, keep)
        sub[mask] = code


def ellipse2d(grid: Grid, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """In-plane (y, x) mask of an axis-aligned ellipse, mm."""
    y = grid.axes[1][:, None]
    x = grid.axes[2][None, :]
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0


def paint_body(tissue: np.ndarray, grid: Grid, s: float, z_disc: float, dome_shift_mm: float = 0.0) -> None:
    """Chest wall, lungs, mediastinum, diaphragm/liver, spine and sternum (z-invariant in-plane shapes); the
    diaphragm's domes are raised by ``dome_shift_mm`` (cohort cases: so that the heart rests on them)."""
    body = ellipse2d(grid, 12 * s, 0, 51 * s, 58 * s)
    inner = ellipse2d(grid, 12 * s, 0, 47.5 * s, 54.5 * s)
    cavity = ellipse2d(grid, 12 * s, 0, 40 * s, 47 * s)
    mediastinum = (
        ellipse2d(grid, 6 * s, -2 * s, 22 * s, 10 * s)
        | ellipse2d(grid, -24 * s, -2 * s, 6 * s, 9 * s)
        | ellipse2d(grid, 23 * s, 8 * s, 8 * s, 13 * s)
    )
    vb_out = ellipse2d(grid, 39 * s, 0, 9 * s, 9.5 * s)
    vb_in = ellipse2d(grid, 39 * s, 0, 7.6 * s, 8.1 * s)
    canal = ellipse2d(grid, 55 * s, 0, 6 * s, 6 * s)
    arch = ellipse2d(grid, 55 * s, 0, 9.5 * s, 9 * s) | ellipse2d(grid, 49 * s, 0, 5 * s, 8 * s)
    ster_out = ellipse2d(grid, -32 * s, 0, 3.2 * s, 9 * s)
    ster_in = ellipse2d(grid, -32 * s, 0, 2.0 * s, 7.8 * s)
    y = grid.axes[1][:, None] / s
    x = grid.axes[2][None, :] / s
    dome = np.maximum(-20.0 - ((x + 20) ** 2 + (y - 6) ** 2) / 80.0, -33.0 - ((x - 18) ** 2 + (y - 2) ** 2) / 70.0)
    liver_side = x < 6.0
    for z0 in range(0, grid.shape[0], SLAB):
        zs = slice(z0, min(z0 + SLAB, grid.shape[0]))
        zz = grid.axes[0][zs][:, None, None] / s
        sub = tissue[zs]
        sub[:, body] = T["fat"]
        sub[:, inner] = T["muscle"]
        sub[:, cavity] = T["lung"]
        sub[:, cavity & mediastinum] = T["fat"]
        below = ((zz if dome_shift_mm == 0.0 else zz - dome_shift_mm / s) <= dome) & cavity
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


def paint_heart(tissue: np.ndarray, grid: Grid, heart: Heart, fat_mm: float) -> None:
    """Pericardium, epicardial fat, myocardium and blood pools (later shapes overwrite earlier ones)."""
    k = heart.k
    for sh in heart.surface:
        paint_ellipsoid(tissue, grid, sh.grown(fat_mm + 0.8 * k), T["pericardium"])
    for sh in heart.surface:
        paint_ellipsoid(tissue, grid, sh.grown(fat_mm), T["epicardial_fat"])
    paint_ellipsoid(tissue, grid, heart.rv_epi, T["myocardium"])
    paint_ellipsoid(tissue, grid, heart.rv_cav, T["blood"])
    paint_ellipsoid(tissue, grid, heart.lv_epi, T["myocardium"])
    paint_ellipsoid(tissue, grid, heart.lv_cav, T["lv_blood"])
    for atrium in (heart.la, heart.ra, heart.laa):
        paint_ellipsoid(tissue, grid, atrium, T["myocardium"], keep=BLOOD_CODES)
        paint_ellipsoid(tissue, grid, atrium.grown(-1.2 * k), T["blood"])
    paint_ellipsoid(tissue, grid, heart.root, T["vessel_wall"], keep=BLOOD_CODES)
    paint_ellipsoid(tissue, grid, heart.root.grown(-1.0 * k), T["blood"])


def paint_tubes(tissue: np.ndarray, occ: np.ndarray, grid: Grid, tubes: list[Tube], voxel_mm: float) -> None:
    """Paint great vessels (wall + soft contrast lumen), lung vessels, ribs and the oesophagus."""
    for tube in tubes:
        r = tube.radius
        if tube.kind == "vessel":
            for box, (sdf_lumen, sdf_wall) in tube_sdfs(grid, tube.points, [r, r + tube.wall], voxel_mm):
                sub = tissue[box]
                sub[(sdf_wall <= 0) & ~np.isin(sub, BLOOD_CODES)] = T["vessel_wall"]
                np.maximum(occ[box], soft_occupancy(sdf_lumen, voxel_mm), out=occ[box])
        elif tube.kind == "lung":
            for box, (sdf,) in tube_sdfs(grid, tube.points, [r], voxel_mm):
                o = soft_occupancy(sdf, voxel_mm)
                o[tissue[box] != T["lung"]] = 0
                np.maximum(occ[box], o, out=occ[box])
        elif tube.kind == "rib":
            for box, (sdf, sdf_in) in tube_sdfs(grid, tube.points, [r, r * 0.6], 0.0):
                sub = tissue[box]
                sub[(sdf <= 0) & (sub != T["marrow"])] = T["cortical_bone"]
                sub[sdf_in <= 0] = T["marrow"]
        elif tube.kind == "cartilage":
            for box, (sdf,) in tube_sdfs(grid, tube.points, [r], 0.0):
                tissue[box][sdf <= 0] = T["cartilage"]
        else:  # oesophagus: muscular tube with a little air
            for box, (sdf, sdf_air) in tube_sdfs(grid, tube.points, [r, r * 0.25], 0.0):
                sub = tissue[box]
                sub[sdf <= 0] = T["muscle"]
                sub[sdf_air <= 0] = T["air"]


def paint_coronary(tissue: np.ndarray, occ: np.ndarray, label: np.ndarray, grid: Grid, v: Vessel,
                    voxel_mm: float) -> None:
    """Fat sleeve, vessel wall / soft plaque (tissue), soft lumen occupancy and the lumen label of one vessel."""
    wall, sleeve = 0.4, 1.2
    k = max(1, int(round(0.5 / float(np.linalg.norm(v.points[1] - v.points[0])))))
    keep = np.unique(np.r_[np.arange(0, len(v.points), k), len(v.points) - 1])  # raster every ~0.5 mm
    radii = [v.r_lumen[keep], v.r_nom[keep] + wall, v.r_nom[keep] + wall + sleeve]
    for box, (sdf_lumen, sdf_wall, sdf_sleeve) in tube_sdfs(grid, v.points[keep], radii, voxel_mm):
        sub = tissue[box]
        sub[(sdf_sleeve <= 0) & np.isin(sub, (T["lung"], T["pericardium"], T["muscle"]))] = T["epicardial_fat"]
        sub[(sdf_wall <= 0) & np.isin(sub, SOFT_BACKGROUND)] = T["vessel_wall"]
        np.maximum(occ[box], soft_occupancy(sdf_lumen, voxel_mm), out=occ[box])
        label[box] |= (sdf_lumen <= 0).astype(np.uint8)
    centreline = resample(v.points, min(CENTRELINE_STEP_MM, float(grid.spacing.min()) / 2.0))[0]
    idx = grid.nearest_index(centreline)
    idx = idx[idx[:, 0] >= 0]
    label[idx[:, 0], idx[:, 1], idx[:, 2]] = 1


def paint_plaques(image: np.ndarray, grid: Grid, plaques: list[Plaque], voxel_mm: float) -> None:
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


def paint_stents(image: np.ndarray, grid: Grid, stents: list[Stent], voxel_mm: float) -> None:
    """Blend metal stent wires into ``image`` (before blur and noise) by their partial volume.

    A wire of equivalent radius ``a`` occupies ``pi a^2`` mm^2 of a cross-section; spread over the voxels within one
    voxel size ``v`` as a tent ``3 a^2 / v^2 * (1 - d / v)`` (d: distance to the wire centreline, mm), it keeps the
    metal's volume whatever the voxel size, so thin struts show as a faint mesh on coarse grids and as a bright
    one (blooming after the PSF) on fine ones.
    """
    for st in stents:
        peak = 3.0 * st.wire_mm**2 / voxel_mm**2
        for path in st.paths:
            zero = np.zeros(len(path))
            for box, (dist,) in tube_sdfs(grid, path, [zero], voxel_mm):
                frac = (peak * np.clip(1.0 - dist / voxel_mm, 0.0, 1.0)).astype(np.float32)
                sub = image[box]
                sub += (np.float32(st.hu) - sub) * frac


def gaussian_std_factor(sigma: float, truncate: float = 4.0) -> float:
    """Std of unit white noise after scipy's 1D Gaussian filter with this sigma (px) and ``truncate``."""
    if sigma <= 0:
        return 1.0
    radius = int(truncate * sigma + 0.5)
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    g /= g.sum()
    return float(np.sqrt((g**2).sum()))


def tissue_to_hu(tissue: np.ndarray, hu: dict[str, float]) -> np.ndarray:
    """Image float32 HU (z, y, x) from tissue codes: the drawn levels ``hu`` and fixed ones for the rest."""
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
    image = np.empty(tissue.shape, dtype=np.float32)
    for z0 in range(0, tissue.shape[0], SLAB):
        zs = slice(z0, min(z0 + SLAB, tissue.shape[0]))
        image[zs] = lut[tissue[zs]]
    return image


def blend_lumen(image: np.ndarray, occ: np.ndarray, blood_hu: float) -> None:
    """Blend contrast-filled lumen into ``image`` in place by its partial-volume occupancy ``occ`` (uint8 0..255)."""
    for z0 in range(0, image.shape[0], SLAB):
        zs = slice(z0, min(z0 + SLAB, image.shape[0]))
        frac = occ[zs].astype(np.float32) / 255.0
        image[zs] += (np.float32(blood_hu) - image[zs]) * frac


def add_ct_noise(image: np.ndarray, spacing: tuple[float, float, float], noise_sd: float, seed: int,
                 tick: Callable[[str], None], grain_mm: tuple[float, float] = (0.0, 0.5), stream: int = 1) -> None:
    """Add correlated Gaussian noise of std ``noise_sd`` HU in place and clip to the CT range [-1024, 3071] HU.

    White noise from the seeded stream ``[seed, stream]``, drawn slab by slab, is filtered by a Gaussian of sigma
    ``grain_mm`` = (through-plane, in-plane) mm and rescaled to std ``noise_sd``: its autocorrelation is a Gaussian
    of sigma ``sqrt(2) * grain`` (1/e correlation length ``2 * grain``) wherever the grain spans a voxel or more.
    A through-plane grain of 0 filters each slice alone (the legacy noise: in-plane grain 0.5 mm). ``tick`` is
    called once per slab of :data:`SLAB` slices.
    """
    noise_rng = np.random.default_rng([int(seed), int(stream)])
    sigma_px = np.asarray(grain_mm, dtype=float)[[0, 1, 1]] / np.asarray(spacing)
    nz, empty = image.shape[0], np.zeros((0, *image.shape[1:]), dtype=np.float32)
    # the through-plane kernel must fit in one slab of halo on each side (scipy's radius: int(truncate * sigma + 0.5))
    halo = min(SLAB, int(4.0 * sigma_px[0] + 0.5))
    truncate = 4.0 if sigma_px[0] == 0 else min(4.0, (halo + 0.49) / sigma_px[0])
    gain = noise_sd / (gaussian_std_factor(sigma_px[0], truncate) * gaussian_std_factor(sigma_px[1])
                       * gaussian_std_factor(sigma_px[2]))

    def draw(z0: int) -> np.ndarray:
        return noise_rng.standard_normal(image[z0 : z0 + SLAB].shape, dtype=np.float32) if z0 < nz else empty

    prev, cur = empty, draw(0)
    for z0 in range(0, nz, SLAB):
        zs = slice(z0, z0 + len(cur))
        if halo == 0:  # each slice alone (the legacy noise)
            noise = cur
            ndimage.gaussian_filter(noise, (0.0, sigma_px[1], sigma_px[2]), output=noise)
        else:  # with the neighbouring slabs' white noise as halo: as if the whole volume were filtered at once
            nxt = draw(z0 + SLAB)
            block = np.concatenate([prev[len(prev) - halo :], cur, nxt[:halo]])
            lo = min(halo, len(prev))
            noise = ndimage.gaussian_filter(block, sigma_px, truncate=truncate)[lo : lo + len(cur)]
            prev, cur = cur, nxt
        image[zs] += noise * np.float32(gain)
        np.clip(image[zs], -1024.0, 3071.0, out=image[zs])
        if halo == 0:
            cur = draw(z0 + SLAB)
        tick("noise")
