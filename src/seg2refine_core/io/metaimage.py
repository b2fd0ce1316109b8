"""MetaImage (``.mha`` with the data inside, ``.mhd`` with a separate ``.raw``): read and write.

MetaImage is ITK's own format, a text header of ``Key = value`` lines followed by (or pointing to) the raw voxels.
It is read and written here with NumPy: SimpleITK would add a 260-MB install to the core for it, and the small
pure-Python ``metaimageio`` package cannot read the 4D headers ITK writes for a 3D image with a 4th dimension of
size 1 (its ``TransformMatrix`` is 4 x 4). The tests check both directions against SimpleITK.

Geometry follows ITK (``itkMetaImageIO``): ``Offset`` (aliases ``Position``, ``Origin``) is the LPS position of
the first voxel in mm; ``TransformMatrix`` (aliases ``Orientation``, ``Rotation``) lists the direction cosines
column by column; ``ElementSpacing`` is the voxel size. As in ITK, ``CenterOfRotation`` and
``AnatomicalOrientation`` do not change the geometry. The affine is turned into RAS by negating x and y.

Dimensions beyond the 3rd of size 1 are dropped; a larger one, or ``ElementNumberOfChannels`` > 1, is refused, and
so are multi-file data (``ElementDataFile = LIST`` or a file pattern). Before the voxels are read, ``DimSize`` x
``ElementType`` is checked against the data's bytes (``CompressedData``: the deflate bound) and free memory.

The writer produces ``.mha`` (one zlib-compressed file) or ``.mhd`` + ``.raw`` (each renamed into place only
when both are complete), in LPS with the source's geometry.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seg2refine_core.errors import VolumeError
from seg2refine_core.io.atomic import atomic_path
from seg2refine_core.io.limits import check_memory, check_payload

if TYPE_CHECKING:
    from seg2refine_core.io.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ELEMENT_TYPES = {
    "MET_CHAR": np.int8, "MET_UCHAR": np.uint8, "MET_SHORT": np.int16, "MET_USHORT": np.uint16,
    "MET_INT": np.int32, "MET_UINT": np.uint32, "MET_LONG": np.int64, "MET_ULONG": np.uint64,
    "MET_LONG_LONG": np.int64, "MET_ULONG_LONG": np.uint64, "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}  # fmt: skip
_MAX_HEADER = 1 << 20


def read_header(path: Path) -> tuple[dict[str, str], int]:
    """The header's fields (keys in lower case) up to ``ElementDataFile``, and its length in bytes."""
    fields: dict[str, str] = {}
    length = 0
    with open(path, "rb") as handle:
        for raw in handle:
            length += len(raw)
            if length > _MAX_HEADER:
                break
            key, sep, value = raw.decode("latin-1").partition("=")
            if sep:
                fields[key.strip().lower()] = value.strip()
                if key.strip().lower() == "elementdatafile":
                    return fields, length
    raise VolumeError(f"{path}: not a MetaImage file (no 'ElementDataFile = ...' line in its header)")


def _floats(fields: dict[str, str], names: tuple[str, ...], count: int, default: list[float]) -> np.ndarray:
    for name in names:
        if name in fields:
            values = [float(v) for v in fields[name].split()]
            if len(values) != count:
                raise ValueError(f"{name} has {len(values)} values, expected {count}")
            return np.asarray(values)
    return np.asarray(default, dtype=float)


def read_metaimage(path: Path) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, dict[str, str]]:
    """``(data (x, y, z) float32, spacing (sx, sy, sz) mm, affine (x, y, z) -> RAS mm, header fields)``.

    Raises :class:`VolumeError` naming the file for bad headers, sizes the file cannot hold, channels or frames,
    multi-file data and corrupt data.
    """
    try:
        fields, header_bytes = read_header(path)
        ndim = int(fields.get("ndims", "0"))
        shape_xyz = tuple(int(v) for v in fields["dimsize"].split())
        dtype = np.dtype(ELEMENT_TYPES[fields["elementtype"].upper()])
        spacing = _floats(fields, ("elementspacing", "elementsize"), ndim, [1.0] * ndim)
        offset = _floats(fields, ("offset", "position", "origin"), ndim, [0.0] * ndim)
        matrix = _floats(fields, ("transformmatrix", "orientation", "rotation"), ndim * ndim, np.eye(ndim).ravel())
    except (KeyError, ValueError, OSError) as err:
        raise VolumeError(f"{path}: unreadable MetaImage header ({type(err).__name__}: {err})") from None
    if len(shape_xyz) != ndim:
        raise VolumeError(f"{path}: NDims = {ndim} but DimSize has {len(shape_xyz)} values")
    channels = int(fields.get("elementnumberofchannels", "1"))
    if channels > 1:
        raise VolumeError(f"{path}: {channels} channels per voxel; expected a single-channel 3D volume")
    if ndim < 3:
        raise VolumeError(f"{path}: expected a 3D volume, got {ndim}D with shape {shape_xyz}")
    if any(d > 1 for d in shape_xyz[3:]):
        raise VolumeError(f"{path}: {int(np.prod(shape_xyz[3:]))} frames beyond x, y, z; expected a single 3D volume")
    data_file = fields["elementdatafile"]
    if data_file.upper() == "LIST" or "%" in data_file:
        raise VolumeError(f"{path}: data spread over several files (ElementDataFile = {data_file}) is not supported")
    source = path if data_file.upper() == "LOCAL" else path.parent / data_file
    if not source.is_file():
        raise VolumeError(f"{path}: its data file {source.name} is missing")
    start = header_bytes if source == path else 0
    compressed = fields.get("compresseddata", "false").lower() == "true"
    stored = source.stat().st_size - start
    check_payload(path, shape_xyz, dtype.itemsize, stored, "zlib" if compressed else "raw")
    check_memory(path, shape_xyz, dtype.itemsize + 8)
    n_bytes = int(np.prod(shape_xyz)) * dtype.itemsize
    skip = int(fields.get("headersize", "0"))
    try:
        with open(source, "rb") as handle:
            handle.seek(start + (stored - n_bytes if skip == -1 else max(skip, 0)))
            payload = zlib.decompress(handle.read()) if compressed else handle.read(n_bytes)
    except (OSError, zlib.error) as err:
        raise VolumeError(f"{path}: corrupt or truncated MetaImage data ({type(err).__name__}: {err})") from None
    if len(payload) < n_bytes:
        raise VolumeError(f"{path}: truncated MetaImage data ({len(payload)} of {n_bytes} bytes)")
    msb = fields.get("binarydatabyteordermsb", fields.get("elementbyteordermsb", "false")).lower() == "true"
    data = np.frombuffer(payload[:n_bytes], dtype=dtype.newbyteorder(">" if msb else "<"))
    data_xyz = data.reshape(shape_xyz[:3], order="F").astype(np.float32)
    direction = matrix.reshape(ndim, ndim).T[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing[:3])
    affine[:3, 3] = offset[:3]
    return data_xyz, tuple(float(s) for s in spacing[:3]), LPS_TO_RAS @ affine, fields  # type: ignore[return-value]


def write_metaimage(tmp: Path, target: Path, array_zyx: np.ndarray, geometry: Volume) -> None:
    """Write a (z, y, x) array as MetaImage at ``tmp`` (a temporary beside ``target``, same suffix).

    ``.mha`` holds zlib-compressed voxels; for ``.mhd`` the voxels go to ``<target stem>.raw``, renamed into place
    once the header's temporary file is complete (the caller then renames the header).
    """
    lps = LPS_TO_RAS @ geometry.affine
    spacing = np.asarray(geometry.spacing[::-1], dtype=float)
    direction = lps[:3, :3] / spacing
    array = np.ascontiguousarray(array_zyx)
    dtype = array.dtype.newbyteorder("<")
    element = next((k for k, v in ELEMENT_TYPES.items() if np.dtype(v) == array.dtype.newbyteorder("=")), None)
    if element is None:
        raise VolumeError(f"{target}: MetaImage cannot hold {array.dtype} voxels")
    payload = array.astype(dtype, copy=False).tobytes()
    local = target.suffix.lower() == ".mha"
    if local:
        payload = zlib.compress(payload, 6)
    fields = {
        "ObjectType": "Image",
        "NDims": "3",
        "BinaryData": "True",
        "BinaryDataByteOrderMSB": "False",
        "CompressedData": str(local),
        **({"CompressedDataSize": str(len(payload))} if local else {}),
        "TransformMatrix": " ".join(repr(float(v)) for v in direction.T.ravel()),
        "Offset": " ".join(repr(float(v)) for v in lps[:3, 3]),
        "CenterOfRotation": "0 0 0",
        "AnatomicalOrientation": _orientation_code(direction),
        "ElementSpacing": " ".join(repr(float(v)) for v in spacing),
        "DimSize": " ".join(str(s) for s in array.shape[::-1]),
        "ElementType": element,
        "ElementDataFile": "LOCAL" if local else target.with_suffix(".raw").name,
    }
    header = "".join(f"{key} = {value}\n" for key, value in fields.items()).encode("latin-1")
    if local:
        tmp.write_bytes(header + payload)
        return
    with atomic_path(target.with_suffix(".raw")) as raw_tmp:
        raw_tmp.write_bytes(payload)
        tmp.write_bytes(header)


def _orientation_code(direction: np.ndarray) -> str:
    """ITK's three-letter code for LPS direction columns, by dominant axis (identity -> ``RAI``)."""
    letters = (("L", "R"), ("P", "A"), ("S", "I"))
    code = ""
    for column in direction.T:
        axis = int(np.argmax(np.abs(column)))
        code += letters[axis][int(column[axis] > 0)]
    return code
