"""Checks of a header's declared voxel count before any voxel is read: against the file's bytes and free memory.

A header can declare any size: a 1-kB file claiming 30000 x 30000 x 4000 int16 voxels would otherwise end in a
``MemoryError`` (or the machine swapping) long before the reader notices that the data are not there. Each reader
calls :func:`check_payload` with the bytes its encoding could at most hold, then :func:`check_memory`.

Bounds per encoding of the stored data:

- ``raw``: the stored bytes must cover the declared bytes.
- ``gzip`` / ``zlib`` (deflate): at most 1032 bytes out per byte in, the deflate format's limit (zlib's
  technical notes, "Maximum compression factor"); this needs no decompression, so it also holds for
  multi-member gzip files whose size trailer covers only the last member.
- ``bzip2``: a deliberately generous 45,899,236 bytes out per byte in (bzip2 has no small fixed limit; this
  still refuses a kilobyte that claims terabytes).
- ``text`` (ASCII numbers): at least two bytes per value (a digit and a separator), the last one excepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from seg2refine_core.errors import VolumeError

MAX_EXPANSION = {"raw": 1, "gzip": 1032, "zlib": 1032, "bzip2": 45_899_236}


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``; binary units up to TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def check_payload(
    path: Path, shape: Sequence[int], itemsize: int, stored_bytes: int, encoding: str = "raw", leading_bytes: int = 0
) -> None:
    """Raise :class:`VolumeError` when ``stored_bytes`` of data in ``encoding`` cannot hold ``shape`` voxels.

    ``itemsize`` is the bytes per voxel as stored (before decoding); ``encoding`` is one of ``raw``, ``gzip``,
    ``zlib``, ``bzip2`` or ``text``; ``leading_bytes`` precede the voxels inside the same stream (the header of a
    ``.nii.gz``).
    """
    n = math.prod(int(s) for s in shape)
    declared = n * int(itemsize) + int(leading_bytes)
    if encoding == "text":
        fits = n == 0 or 2 * n - 1 <= stored_bytes
    else:
        fits = declared <= stored_bytes * MAX_EXPANSION[encoding]
    if not fits:
        how = "" if encoding == "raw" else f" {encoding}-compressed"
        raise VolumeError(
            f"{path}: the header declares {' x '.join(map(str, shape))} voxels ({human_bytes(declared)}) but the "
            f"file holds only {human_bytes(stored_bytes)} of{how} data: truncated file or corrupt header"
        )


def check_memory(path: Path, shape: Sequence[int], bytes_per_voxel: float) -> None:
    """Raise :class:`VolumeError` when reading ``shape`` voxels needs more than the memory available now.

    ``bytes_per_voxel`` is the reader's peak use per voxel (the stored array plus its float32 copies).
    """
    import psutil

    need = math.prod(int(s) for s in shape) * bytes_per_voxel
    available = psutil.virtual_memory().available
    if need > available:
        raise VolumeError(
            f"{path}: reading its {' x '.join(map(str, shape))} voxels needs about {human_bytes(need)} of memory "
            f"but only {human_bytes(available)} is available"
        )
