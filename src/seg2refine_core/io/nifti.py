"""NIfTI-1/2 (``.nii``, ``.nii.gz``) through nibabel, with the header's spatial units honoured.

``xyzt_units`` says what one unit of the affine and of ``pixdim`` is: metres, millimetres or microns. Everything
in the core is in mm, so the affine and the spacing are scaled by 1000, 1 or 0.001 on read. A header whose unit is
"unknown" (0, nibabel's default when a writer never sets it) is read as mm, the NIfTI standard's intent and what
ITK and 3D Slicer do; this is said once per process as a :class:`~seg2refine_core.errors.Notice`, not once per file.

Dimensions 4 to 7 beyond (x, y, z) are time (dim 4) and per-voxel components (dims 5 to 7): each of size 1 is
dropped, any larger one is refused with a message naming frames or components. The declared data size is checked
against the file's bytes (``.nii.gz``: the deflate bound) and free memory before the voxels are read.

Writing ``like=`` a NIfTI source keeps its header (affine, qform/sform codes, units) exactly, so a mask of a
micron-unit file is a micron-unit file too; from any other source the affine is written in mm with
``xyzt_units = mm``.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seg2refine_core.errors import Notice, VolumeError
from seg2refine_core.io.limits import check_memory, check_payload

if TYPE_CHECKING:
    from seg2refine_core.io.volume import Volume

MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 0.001}
EXTRA_DIMS = ("frames (time points)", "components per voxel", "components per voxel", "components per voxel")
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)
_unknown_units_said = False


def read_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, Any]:
    """``(data (x, y, z), spacing (sx, sy, sz) mm, affine (x, y, z) -> RAS mm, header)``; data in stored dtype
    scaled to float32. Raises :class:`VolumeError` naming the file."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        image = nib.load(str(path))
    except ImageFileError as err:
        raise VolumeError(f"{path}: not a readable NIfTI file ({err})") from None
    except _READ_ERRORS as err:
        raise VolumeError(f"{path}: corrupt or truncated file ({type(err).__name__}: {err})") from None
    header = image.header
    shape = tuple(int(s) for s in image.shape)
    if len(shape) < 3:
        raise VolumeError(f"{path}: expected a 3D volume, got {len(shape)}D with shape {shape}")
    extra = [(size, EXTRA_DIMS[i]) for i, size in enumerate(shape[3:]) if size > 1]
    if extra:
        raise VolumeError(f"{path}: {extra[0][0]} {extra[0][1]} beyond x, y, z; expected a single 3D volume")
    _check_size(path, image, shape)
    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape[:3], order="F")
    except _READ_ERRORS as err:
        raise VolumeError(f"{path}: corrupt or truncated file ({type(err).__name__}: {err})") from None
    factor = _mm_per_unit(path, header.get_xyzt_units()[0])
    affine = np.asarray(image.affine, dtype=float).copy()
    affine[:3, :] *= factor
    spacing = tuple(float(z) * factor for z in header.get_zooms()[:3])
    return data, spacing, affine, header  # type: ignore[return-value]


def _mm_per_unit(path: Path, unit: str) -> float:
    global _unknown_units_said
    if unit in MM_PER_UNIT:
        return MM_PER_UNIT[unit]
    if not _unknown_units_said:
        _unknown_units_said = True
        warnings.warn(
            f"{path}: NIfTI spatial unit is '{unit}'; reading it as mm (said once; other such files are read "
            "the same way)",
            Notice,
            stacklevel=4,
        )
    return 1.0


def _check_size(path: Path, image: Any, shape: tuple[int, ...]) -> None:
    itemsize = image.header.get_data_dtype().itemsize
    offset = int(getattr(image.dataobj, "offset", 0))
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        check_payload(path, shape, itemsize, size, "gzip", leading_bytes=offset)
    else:
        check_payload(path, shape, itemsize, max(size - offset, 0))
    check_memory(path, shape, itemsize + 8)


def write_nifti(tmp: Path, data_xyz: np.ndarray, geometry: Volume) -> None:
    """Write ``data_xyz`` with ``geometry``'s NIfTI header kept exactly, or its RAS mm affine (see module doc)."""
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
