"""CCTA volumes on disk: NIfTI (``.nii``, ``.nii.gz``) via nibabel and NRRD (``.nrrd``) via pynrrd.

A :class:`Volume` holds the voxels as float32 in ``(z, y, x)`` order (axial slice, row, column) and the spacing as
``(sz, sy, sx)`` in mm. Files store ``(x, y, z)``: arrays are transposed on read and back on write. ``affine`` maps
file-order voxel indices ``(i, j, k) = (x, y, z)`` to RAS world coordinates in mm (nibabel's convention; NRRD files
in LPS space are converted). A mask written ``like=`` a source volume keeps that file's header and geometry exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seg2refine_core.errors import VolumeError
from seg2refine_core.io.atomic import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NRRD_SUFFIXES = (".nrrd",)
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + NRRD_SUFFIXES
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)


@dataclass
class Volume:
    """A 3D image: ``array`` (z, y, x) float32, ``spacing`` (sz, sy, sx) mm, ``affine`` 4×4 (x, y, z) → RAS mm."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    path: Path | None = None
    header: Any = None
    fmt: str | None = None

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
    """``'nifti'`` or ``'nrrd'`` from the file name; :class:`VolumeError` for anything else."""
    name = Path(path).name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    raise VolumeError(f"{path}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)})")


def strip_suffix(path: str | Path) -> str:
    """The file name without its volume suffix: ``1.img.nii.gz`` → ``1.img``."""
    name = Path(path).name
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_volume(path: str | Path, check_finite: bool = True) -> Volume:
    """Read a 3D CT volume (HU) as float32 (z, y, x); a 4D file with a single frame is accepted.

    Raises :class:`VolumeError` naming the file for: missing file, unsupported type, corrupt or truncated data,
    not 3D, and NaN/inf voxels (when ``check_finite``).
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"{path}: file not found")
    fmt = volume_format(path)
    if fmt == "nifti":
        data_xyz, spacing_xyz, affine, header = _read_nifti(path)
    else:
        data_xyz, spacing_xyz, affine, header = _read_nrrd(path)
    data_xyz = _squeeze_to_3d(path, data_xyz)
    array = np.ascontiguousarray(data_xyz.transpose(2, 1, 0), dtype=np.float32)
    if check_finite and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise VolumeError(f"{path}: {bad} voxels are NaN or infinite")
    spacing = tuple(float(s) for s in spacing_xyz[::-1])
    if min(spacing) <= 0:
        raise VolumeError(f"{path}: non-positive voxel spacing {spacing}")
    return Volume(array=array, spacing=spacing, affine=affine, path=path, header=header, fmt=fmt)  # type: ignore[arg-type]


def read_mask(path: str | Path, like: Volume | None = None) -> np.ndarray:
    """Read a binary mask as uint8 {0, 1} (z, y, x); with ``like``, its shape and geometry must match."""
    mask_volume = read_volume(path)
    if like is not None:
        check_same_geometry(mask_volume, like)
    return (mask_volume.array > 0.5).astype(np.uint8)


def check_same_geometry(a: Volume, b: Volume, atol_mm: float = 1e-3) -> None:
    """Raise :class:`VolumeError` unless ``a`` and ``b`` have the same shape, spacing and affine."""
    if a.shape != b.shape:
        raise VolumeError(f"{a.name}: shape (z, y, x) {a.shape} does not match {b.name} {b.shape}")
    if not np.allclose(a.spacing, b.spacing, atol=atol_mm):
        raise VolumeError(f"{a.name}: spacing {a.spacing} mm does not match {b.name} {b.spacing} mm")
    if not np.allclose(a.affine, b.affine, atol=atol_mm):
        raise VolumeError(f"{a.name}: orientation/origin (affine) does not match {b.name}")


def write_volume(
    path: str | Path,
    array: np.ndarray,
    *,
    like: Volume | None = None,
    spacing: tuple[float, float, float] | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """Write a (z, y, x) array atomically as NIfTI or NRRD (chosen by the file name).

    With ``like`` the source's header and geometry are kept exactly (same format) or translated (other format);
    otherwise ``spacing``/``affine`` define the geometry. The array's dtype is kept (uint8 masks, float32
    probabilities, int16 HU). Returns the path.
    """
    path = Path(path)
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
    data_xyz = array.transpose(2, 1, 0)
    with atomic_path(path) as tmp:
        if fmt == "nifti":
            _write_nifti(tmp, data_xyz, geometry)
        else:
            _write_nrrd(tmp, array, geometry)
    return path


def _squeeze_to_3d(path: Path, data: np.ndarray) -> np.ndarray:
    if data.ndim == 4 and data.shape[3] == 1:
        return data[..., 0]
    if data.ndim == 4:
        raise VolumeError(f"{path}: 4D image with {data.shape[3]} frames; expected a single 3D volume")
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got {data.ndim}D with shape {data.shape}")
    return data


def _read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray, Any]:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except ImageFileError as err:
        raise VolumeError(f"{path}: not a readable NIfTI file ({err})") from None
    except _READ_ERRORS as err:
        raise VolumeError(f"{path}: corrupt or truncated file ({type(err).__name__}: {err})") from None
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    return data, spacing, np.asarray(image.affine, dtype=float), image.header


def _read_nrrd(path: Path) -> tuple[np.ndarray, tuple[float, ...], np.ndarray, Any]:
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="F")
    except (nrrd.NRRDError, *_READ_ERRORS) as err:
        raise VolumeError(f"{path}: corrupt or truncated NRRD file ({type(err).__name__}: {err})") from None
    ndim = min(data.ndim, 3)
    directions = header.get("space directions")
    if directions is not None:
        rows = [np.asarray(r, dtype=float) for r in directions if r is not None and not np.all(np.isnan(r))]
        directions = np.stack(rows[:ndim]) if len(rows) >= ndim else None
    if directions is None:
        spacings = header.get("spacings")
        steps = [float(s) for s in spacings[:ndim]] if spacings is not None else [1.0] * ndim
        directions = np.diag(steps + [1.0] * (3 - ndim))[:ndim]
    affine = np.eye(4)
    if directions.shape == (3, 3):
        affine[:3, :3] = directions.T
        affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    if str(header.get("space", "")).lower() in ("left-posterior-superior", "lps"):
        affine = _LPS_TO_RAS @ affine
    spacing = tuple(float(np.linalg.norm(d)) for d in directions)
    return data.astype(np.float32, copy=False), spacing, affine, header


def _write_nifti(tmp: Path, data_xyz: np.ndarray, geometry: Volume) -> None:
    import nibabel as nib

    if geometry.fmt == "nifti" and geometry.header is not None:
        header = geometry.header.copy()
        header.set_data_shape(data_xyz.shape)
        header.set_data_dtype(data_xyz.dtype)
        image = nib.Nifti1Image(data_xyz, None, header=header)
        image.header.set_slope_inter(1.0, 0.0)
    else:
        image = nib.Nifti1Image(data_xyz, geometry.affine)
        image.header.set_zooms(tuple(geometry.spacing[::-1]))
        image.header.set_xyzt_units("mm")
        image.set_qform(geometry.affine, code=1)
        image.set_sform(geometry.affine, code=1)
    nib.save(image, str(tmp))


def _write_nrrd(tmp: Path, array_zyx: np.ndarray, geometry: Volume) -> None:
    import nrrd

    if geometry.fmt == "nrrd" and geometry.header is not None:
        keep = ("space", "space directions", "space origin", "kinds", "space units", "measurement frame")
        header = {k: v for k, v in geometry.header.items() if k in keep}
    else:
        header = {
            "space": "right-anterior-superior",
            "space directions": geometry.affine[:3, :3].T,
            "space origin": geometry.affine[:3, 3],
        }
    header["encoding"] = "gzip"
    nrrd.write(str(tmp), np.ascontiguousarray(array_zyx), header=header, index_order="C")
