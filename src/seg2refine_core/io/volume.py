"""CCTA volumes on disk: one entry point per direction over every supported format.

Read (:func:`read_volume`): NIfTI (``.nii``, ``.nii.gz``; :mod:`.nifti`), NRRD (``.nrrd``; :mod:`.nrrd`),
MetaImage (``.mha``, ``.mhd`` + raw; :mod:`.metaimage`) and DICOM CT series (a folder, or any file of it;
:mod:`.dicom`). Write (:func:`write_volume`): NIfTI, NRRD, MetaImage; a mask of a DICOM series also as DICOM SEG
(:func:`write_mask` with a ``.dcm`` name; :mod:`.dicom_seg`).

A :class:`Volume` holds the voxels as float32 in ``(z, y, x)`` order (axial slice, row, column) and the spacing as
``(sz, sy, sx)`` in mm. Files store ``(x, y, z)``: arrays are transposed on read and back on write. ``affine`` maps
file-order voxel indices ``(i, j, k) = (x, y, z)`` to RAS world coordinates in mm (nibabel's convention; LPS and
other spaces are converted by each format's module). A mask written ``like=`` a source volume keeps that file's
header and geometry exactly (same format) or its world geometry (another format). Extra dimensions of size 1 are
dropped in every format; the declared size is checked against the file and free memory before voxels are read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg2refine_core.errors import VolumeError
from seg2refine_core.io.atomic import atomic_path
from seg2refine_core.io.dicom import SeriesChoice, is_dicom_file

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".nrrd",)
METAIMAGE_SUFFIXES = (".mha", ".mhd")
#: File suffixes of single-file volumes (DICOM series are folders and are recognised by content).
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES + METAIMAGE_SUFFIXES
DICOM_SEG_SUFFIXES = (".seg.dcm", ".dcm")
#: Output formats for predicted masks and the file suffix each writes (see :func:`write_mask`).
OUTPUT_FORMATS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "metaimage": ".mha", "dicom-seg": ".seg.dcm"}


@dataclass
class Volume:
    """A 3D image: ``array`` (z, y, x) float32, ``spacing`` (sz, sy, sx) mm, ``affine`` 4×4 (x, y, z) → RAS mm.

    ``fmt`` is ``nifti``, ``nrrd``, ``metaimage`` or ``dicom`` (None for arrays); ``header`` the format's header
    (for DICOM: the slices' datasets in z order); ``series`` which DICOM series was read and what else its folder
    holds (None for other formats).
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: Path | None = None
    header: Any = None
    fmt: str | None = None
    series: SeriesChoice | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "<array>"

    @classmethod
    def from_array(
        cls, array: np.ndarray, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), affine: np.ndarray | None = None
    ) -> Volume:
        """Wrap an in-memory (z, y, x) array; the default affine is diag(sx, sy, sz) at the origin."""
        array = np.asarray(array)
        if array.ndim != 3:
            raise VolumeError(f"<array>: expected a 3D (z, y, x) array, got shape {array.shape}")
        spacing = tuple(float(s) for s in spacing)
        if affine is None:
            affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        return cls(array=array, spacing=spacing, affine=np.asarray(affine, dtype=float))  # type: ignore[arg-type]


def volume_format(path: str | Path) -> str:
    """``'nifti'``, ``'nrrd'``, ``'metaimage'`` or ``'dicom'`` (a folder or a DICOM file) for a path to read or
    write; :class:`VolumeError` for anything else."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    if name.endswith(METAIMAGE_SUFFIXES):
        return "metaimage"
    if path.is_dir() or is_dicom_file(path):
        return "dicom"
    raise VolumeError(
        f"{path}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)} or a DICOM series folder)"
    )


def is_volume_path(path: str | Path) -> bool:
    """True for a file with a volume suffix or a DICOM file; False for anything else (never raises)."""
    path = Path(path)
    return path.name.lower().endswith(SUPPORTED_SUFFIXES) or (path.is_file() and is_dicom_file(path))


def strip_suffix(path: str | Path) -> str:
    """The file name without its volume suffix: ``1.img.nii.gz`` → ``1.img``; a folder's name as it is."""
    path = Path(path)
    name = path.name
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name if path.is_dir() else Path(name).stem


def case_name(path: str | Path) -> str:
    """The case id of an input: the file name without its suffix, or the DICOM series folder's name (for a folder
    or for any DICOM file in it)."""
    path = Path(path)
    if path.is_dir():
        return path.name
    if not path.name.lower().endswith(SUPPORTED_SUFFIXES) and is_dicom_file(path):
        return path.parent.name
    return strip_suffix(path)


def read_volume(path: str | Path, check_finite: bool = True, series: str | None = None) -> Volume:
    """Read a 3D CT volume (HU) as float32 (z, y, x) from a file or a DICOM series folder.

    ``series``: for DICOM, the SeriesInstanceUID to read (default: the series of the given file, or the one with
    the most slices in a folder); ``Volume.series`` says which was read and what else is there. Extra dimensions
    of size 1 are dropped. Raises :class:`VolumeError` naming the file or folder for: missing path, unsupported
    type, a declared size the file cannot hold or memory cannot take, corrupt or truncated data, not 3D (several
    frames or channels), NaN/inf voxels (when ``check_finite``), non-positive spacing, and the DICOM refusals of
    :mod:`seg2refine_core.io.dicom`.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{path}: file not found")
    fmt = volume_format(path)
    if fmt != "dicom" and series is not None:
        raise VolumeError(f"{path}: series={series!r} applies to DICOM folders only")
    choice = None
    if fmt == "nifti":
        from seg2refine_core.io.nifti import read_nifti

        data_xyz, spacing_xyz, affine, header = read_nifti(path)
    elif fmt == "nrrd":
        from seg2refine_core.io.nrrd import read_nrrd

        data_xyz, spacing_xyz, affine, header = read_nrrd(path)
    elif fmt == "metaimage":
        from seg2refine_core.io.metaimage import read_metaimage

        data_xyz, spacing_xyz, affine, header = read_metaimage(path)
    else:
        from seg2refine_core.io.dicom import read_dicom_series

        data_xyz, spacing_xyz, affine, header, choice = read_dicom_series(path, series)
    array = np.ascontiguousarray(data_xyz.transpose(2, 1, 0), dtype=np.float32)
    if check_finite and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise VolumeError(f"{path}: {bad} voxels are NaN or infinite")
    spacing = tuple(float(s) for s in spacing_xyz[::-1])
    if min(spacing) <= 0 or not np.all(np.isfinite(spacing)):
        raise VolumeError(f"{path}: non-positive voxel spacing {spacing}")
    return Volume(array, spacing, affine, path, header, fmt, choice)  # type: ignore[arg-type]


def read_mask(path: str | Path, like: Volume | None = None, series: str | None = None) -> np.ndarray:
    """Read a binary mask as uint8 {0, 1} (z, y, x); with ``like``, its shape and geometry must match."""
    mask_volume = read_volume(path, series=series)
    if like is not None:
        check_same_geometry(mask_volume, like)
    return (mask_volume.array > 0.5).astype(np.uint8)


def check_same_geometry(a: Volume, b: Volume, atol_mm: float = 1e-3) -> None:
    """Raise :class:`VolumeError`, naming both files by their paths, unless ``a`` and ``b`` have the same shape,
    spacing and affine."""
    where_a, where_b = (str(v.path) if v.path is not None else v.name for v in (a, b))
    if a.shape != b.shape:
        raise VolumeError(f"{where_a}: shape (z, y, x) {a.shape} does not match {where_b} {b.shape}")
    if not np.allclose(a.spacing, b.spacing, atol=atol_mm):
        raise VolumeError(f"{where_a}: spacing {a.spacing} mm does not match {where_b} {b.spacing} mm")
    if not np.allclose(a.affine, b.affine, atol=atol_mm):
        raise VolumeError(f"{where_a}: orientation/origin (affine) does not match {where_b}")


def write_volume(
    path: str | Path,
    array: np.ndarray,
    *,
    like: Volume | None = None,
    spacing: tuple[float, float, float] | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write a (z, y, x) array atomically as NIfTI, NRRD or MetaImage (chosen by the file name).

    With ``like`` the source's header and geometry are kept exactly (same format) or translated (other format,
    including a DICOM source); otherwise ``spacing``/``affine`` define the geometry. The array's dtype is kept
    (uint8 masks, float32 probabilities, int16 HU). Returns the path.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(SUPPORTED_SUFFIXES):
        raise VolumeError(f"{path}: cannot write this file type (expected {', '.join(SUPPORTED_SUFFIXES)})")
    fmt = volume_format(path)
    array = np.asarray(array)
    if array.ndim != 3:
        raise VolumeError(f"{path}: can only write 3D (z, y, x) arrays, got shape {array.shape}")
    if like is not None:
        if array.shape != like.shape:
            raise VolumeError(f"{path}: array shape {array.shape} does not match the source {like.name} {like.shape}")
        geometry = like
    else:
        geometry = Volume.from_array(array, spacing or (1.0, 1.0, 1.0), affine)
    with atomic_path(path) as tmp:
        if fmt == "nifti":
            from seg2refine_core.io.nifti import write_nifti

            write_nifti(tmp, array.transpose(2, 1, 0), geometry)
        elif fmt == "nrrd":
            from seg2refine_core.io.nrrd import write_nrrd

            write_nrrd(tmp, array, geometry)
        else:
            from seg2refine_core.io.metaimage import write_metaimage

            write_metaimage(tmp, path, array, geometry)
    return path


def write_mask(path: str | Path, mask: np.ndarray, like: Volume) -> Path:
    """Write a predicted mask (z, y, x) on ``like``'s grid: a DICOM SEG for a ``.dcm`` name (``like`` must be a
    DICOM series), else NIfTI/NRRD/MetaImage by the name, with ``like``'s geometry. Returns the path."""
    if Path(path).name.lower().endswith(DICOM_SEG_SUFFIXES):
        from seg2refine_core.io.dicom_seg import write_dicom_seg

        return write_dicom_seg(mask, like, path)
    return write_volume(path, np.asarray(mask, dtype=np.uint8), like=like)
