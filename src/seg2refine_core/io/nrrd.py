"""NRRD (``.nrrd``) through pynrrd: every ``space``, non-spatial axes, and a clean 3D header on write.

World geometry (NRRD format spec, "space" and "space directions"): voxel index ``(i, j, k)`` of the spatial axes
maps to ``space origin + i d_i + j d_j + k d_k`` in the file's ``space``, converted here to RAS mm:

- ``right-anterior-superior`` / ``RAS`` (and ``-time``): already RAS.
- ``left-anterior-superior`` / ``LAS`` (and ``-time``): x negated.
- ``left-posterior-superior`` / ``LPS`` (and ``-time``): x and y negated.
- ``scanner-xyz``, ``3D-right-handed``, ``3D-left-handed`` (and ``-time``), or ``space dimension`` with no
  ``space``: no anatomical meaning is declared; they are read as LPS, which is what ITK (and so 3D Slicer) does
  with them, so a file opens the same here as there.
- No ``space directions`` at all: ``spacings`` (1.0 where absent) along the axes, origin at zero.

Spatial axes are those with a space direction whose spatial part is non-zero (without directions: axes of kind
``domain``/``space`` or no kind). Every other axis (kind ``list``, ``vector``, ``RGB-color``, ``time`` ...) is a
channel or a frame: one of size 1 is dropped, so a ``1 48 48 24`` list-axis file is a 48 x 48 x 24 volume (as ITK
reads it); several channels or frames are refused with a message that says so.

The writer always produces a plain 3D NRRD (three ``domain`` axes, a 3 x 3 ``space directions``, a 3-vector
``space origin``, gzip): in the source's own anatomical space when the source is an NRRD in RAS, LAS or LPS, in
LPS for the other NRRD spaces, and in RAS for non-NRRD sources. ITK and 3D Slicer open it with the source geometry.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from seg2refine_core.errors import VolumeError
from seg2refine_core.io.limits import check_memory, check_payload

if TYPE_CHECKING:
    from seg2refine_core.io.volume import Volume

#: Each NRRD ``space`` (lower case, ``-time`` removed) -> the diagonal that turns its coordinates into RAS.
SPACE_TO_RAS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
    "scanner-xyz": (-1.0, -1.0, 1.0),
    "3d-right-handed": (-1.0, -1.0, 1.0),
    "3d-left-handed": (-1.0, -1.0, 1.0),
    "": (-1.0, -1.0, 1.0),
}
#: The 3D anatomical space a mask is written in, per source space (LPS for the spaces read as LPS).
_WRITE_SPACE = {
    "right-anterior-superior": "right-anterior-superior",
    "ras": "right-anterior-superior",
    "left-anterior-superior": "left-anterior-superior",
    "las": "left-anterior-superior",
}
_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2",
              "ascii": "text", "text": "text", "txt": "text"}  # fmt: skip
_SPATIAL_KINDS = ("domain", "space")
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error)


def space_key(header: dict) -> str:
    """The header's ``space`` in lower case without ``-time`` ('' when absent); :class:`ValueError` if unknown."""
    space = str(header.get("space", "")).strip().lower()
    for suffix in ("-time", "t"):
        if space.endswith(suffix) and space[: -len(suffix)] in SPACE_TO_RAS:
            space = space[: -len(suffix)]
    if space not in SPACE_TO_RAS:
        raise ValueError(f"unknown NRRD space {header.get('space')!r}")
    return space


def read_nrrd(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, Any]:
    """``(data (x, y, z) float32, spacing (sx, sy, sz) mm, affine (x, y, z) -> RAS mm, header)``.

    Raises :class:`VolumeError` naming the file for unreadable headers, unknown spaces, declared sizes the file
    cannot hold, several channels or frames, and corrupt data.
    """
    import nrrd

    try:
        with open(path, "rb") as handle:
            header = nrrd.read_header(handle)
            if "data file" not in header:
                _check_size(path, header, path.stat().st_size - handle.tell())
            data = nrrd.read_data(header, handle, str(path), index_order="F")
    except VolumeError:
        raise
    except (nrrd.NRRDError, *_READ_ERRORS) as err:
        raise VolumeError(f"{path}: corrupt or truncated NRRD file ({type(err).__name__}: {err})") from None
    try:
        scale = np.diag([*SPACE_TO_RAS[space_key(header)], 1.0])
    except ValueError as err:
        raise VolumeError(f"{path}: {err}") from None
    spatial, directions = _spatial_axes(path, header, data.ndim)
    data = _drop_singleton_axes(path, header, data, spatial)
    affine = np.eye(4)
    affine[:3, :3] = directions.T
    origin = header.get("space origin")
    if origin is not None and len(origin) >= 3 and np.all(np.isfinite(origin[:3])):
        affine[:3, 3] = np.asarray(origin[:3], dtype=float)
    affine = scale @ affine
    spacing = tuple(float(np.linalg.norm(d)) for d in directions)
    return data.astype(np.float32, copy=False), spacing, affine, header  # type: ignore[return-value]


def _check_size(path: Path, header: dict, stored: int) -> None:
    import nrrd

    shape = tuple(int(s) for s in header["sizes"])
    itemsize = np.dtype(nrrd.reader._determine_datatype(header)).itemsize  # pynrrd's own map of NRRD type names
    encoding = _ENCODINGS.get(str(header.get("encoding", "raw")).lower(), "raw")
    check_payload(path, shape, 1 if encoding == "text" else itemsize, stored, encoding)
    check_memory(path, shape, itemsize + 8)


def _spatial_axes(path: Path, header: dict, ndim: int) -> tuple[list[int], np.ndarray]:
    """Indices of the spatial axes and their direction vectors (rows, mm, in the file's space)."""
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * ndim)]
    raw = header.get("space directions")
    if raw is not None:
        rows = [None if r is None else np.asarray(r, dtype=float) for r in raw]
        spatial = [
            a for a, r in enumerate(rows)
            if r is not None and np.all(np.isfinite(r)) and np.any(r[:3] != 0) and kinds[a] != "time"
        ]  # fmt: skip
        directions = np.stack([rows[a][:3] for a in spatial]) if spatial else np.zeros((0, 3))
    else:
        spatial = [a for a in range(ndim) if kinds[a] in _SPATIAL_KINDS]
        spacings = header.get("spacings")
        steps = [float(spacings[a]) if spacings is not None and np.isfinite(spacings[a]) else 1.0 for a in spatial]
        directions = np.diag(steps) if len(spatial) == 3 else np.zeros((0, 3))
    if len(spatial) != 3:
        raise VolumeError(
            f"{path}: expected a 3D volume, got {len(spatial)} spatial axes (sizes {list(header['sizes'])}, "
            f"kinds {kinds})"
        )
    return spatial, directions


def _drop_singleton_axes(path: Path, header: dict, data: np.ndarray, spatial: list[int]) -> np.ndarray:
    kinds = [str(k) for k in header.get("kinds", ["domain"] * data.ndim)]
    extra = [a for a in range(data.ndim) if a not in spatial]
    for axis in extra:
        if data.shape[axis] > 1:
            what = "frames" if kinds[axis].lower() == "time" else "channels"
            raise VolumeError(
                f"{path}: {data.shape[axis]} {what} (axis {axis}, kind '{kinds[axis]}'); expected a single-channel "
                "3D volume"
            )
    return np.squeeze(np.moveaxis(data, spatial, [0, 1, 2]), axis=tuple(range(3, data.ndim)))


def write_nrrd(tmp: Path, array_zyx: np.ndarray, geometry: Volume) -> None:
    """Write a (z, y, x) array as a plain 3D gzip NRRD in the space described in the module doc."""
    import nrrd

    space = "right-anterior-superior"
    if geometry.fmt == "nrrd" and geometry.header is not None:
        space = _WRITE_SPACE.get(space_key(geometry.header), "left-posterior-superior")
    to_space = np.diag([*SPACE_TO_RAS[space], 1.0])  # its own inverse
    affine = to_space @ geometry.affine
    header = {
        "space": space,
        "space directions": affine[:3, :3].T,
        "space origin": affine[:3, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    nrrd.write(str(tmp), np.ascontiguousarray(array_zyx), header=header, index_order="C")
