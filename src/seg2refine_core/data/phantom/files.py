"""Phantom files: ImageCAS-named NIfTI cases and a PNG preview."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seg2refine_core.data.phantom.generator import Phantom
from seg2refine_core.data.phantom.geometry import SLAB

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _label_extent(label: np.ndarray, axis: int) -> tuple[int, int]:
    """Index range of ``label`` along ``axis`` (whole axis when empty)."""
    other = tuple(a for a in range(3) if a != axis)
    hit = np.nonzero(label.any(axis=other))[0]
    if hit.size == 0:
        return 0, label.shape[axis]
    return int(hit[0]), int(hit[-1]) + 1


def _panels(phantom: Phantom | tuple[np.ndarray, np.ndarray, tuple[float, float, float]], slab_mm: float
            ) -> list[tuple[np.ndarray, tuple[float, float, float, float], str, str, tuple[float, float]]]:
    """The four preview panels of one volume: (data, extent mm, title, colormap, (vmin, vmax))."""
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
    ext_ax = (0, nx * sx, ny * sy, 0)
    ext_co = (0, nx * sx, 0, nz * sz)
    return [
        (image[zs].max(axis=0), ext_ax, f"CT axial MIP, {slab_mm:g} mm slab (z {zs.start}-{zs.stop - 1})", "gray",
         (-100, 500)),
        (image[:, ys].max(axis=1)[::-1], ext_co, f"CT coronal MIP, {slab_mm:g} mm slab (y {ys.start}-{ys.stop - 1})",
         "gray", (-100, 500)),
        (label.max(axis=0), ext_ax, "label MIP, axial", "magma", (0, 1)),
        (label.max(axis=1)[::-1], ext_co, "label MIP, coronal (anterior view)", "magma", (0, 1)),
    ]


def _save(fig: Figure, path: str | Path) -> Path:
    from seg2refine_core.io.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


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

    panels = _panels(phantom, slab_mm)
    ext_ax, ext_co = panels[0][1], panels[1][1]  # (0, width, height, 0) and (0, width, 0, height), mm
    fig = Figure(figsize=(10, 10 * (ext_ax[2] + ext_co[3]) / (2 * ext_ax[1]) + 0.6), dpi=100)
    axes = fig.subplots(2, 2)
    for ax, (data, ext, name, cmap, (vmin, vmax)) in zip(axes.flat, panels, strict=True):
        ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, extent=ext, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("x (mm, patient right -> left)", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def preview_cases_png(phantoms: list[Phantom], path: str | Path, *, titles: list[str] | None = None,
                      slab_mm: float = 16.0) -> Path:
    """Write one PNG with a row per case: CT axial and coronal slab MIPs and the coronal label MIP (as
    :func:`preview_png`), every panel of a column on one mm scale so that sizes compare across cases; ``titles``
    head the rows. Written atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = [_panels(p, slab_mm) for p in phantoms]
    width = max(r[0][1][1] for r in rows)  # mm
    depth = max(r[0][1][2] for r in rows)
    height = max(r[1][1][3] for r in rows)
    fig = Figure(figsize=(12, (3.6 * max(depth, height) / width + 0.4) * len(rows)), dpi=80, layout="constrained")
    for i, (sub, r) in enumerate(zip(fig.subfigures(len(rows), 1, squeeze=False)[:, 0], rows, strict=True)):
        axes = sub.subplots(1, 3)
        for ax, (data, ext, name, cmap, (vmin, vmax)) in zip(axes, (r[0], r[1], r[3]), strict=True):
            ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, extent=ext, interpolation="nearest")
            ax.set_xlim(0, width)
            ax.set_ylim((depth, 0) if ext[3] == 0 else (0, height))
            ax.set_facecolor("black")
            ax.set_title(name, fontsize=8)
            ax.tick_params(labelsize=7)
        if titles is not None:
            sub.suptitle(titles[i], fontsize=9)
    with_path = Path(path)
    from seg2refine_core.io.atomic import atomic_path

    with atomic_path(with_path) as tmp:
        fig.savefig(tmp, format="png")
    return with_path


def write_phantom_case(phantom: Phantom, out_dir: str | Path, case_id: int | str) -> tuple[Path, Path]:
    """Write ``<id>.img.nii.gz`` (int16 HU, rounded) and ``<id>.label.nii.gz`` (uint8), ImageCAS naming."""
    from seg2refine_core.io.volume import write_volume

    out = Path(out_dir)
    hu = np.empty(phantom.image.shape, dtype=np.int16)
    for z0 in range(0, hu.shape[0], SLAB):  # slab by slab: no full-size float temporary
        zs = slice(z0, z0 + SLAB)
        hu[zs] = np.clip(np.rint(phantom.image[zs]), -32768, 32767)
    img = write_volume(out / f"{case_id}.img.nii.gz", hu, spacing=phantom.spacing, affine=phantom.affine)
    lab = write_volume(out / f"{case_id}.label.nii.gz", phantom.label.astype(np.uint8), spacing=phantom.spacing,
                       affine=phantom.affine)
    return img, lab
