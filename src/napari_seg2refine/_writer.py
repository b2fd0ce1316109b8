"""Writer for labels layers: NIfTI (``.nii.gz``, ``.nii``), NRRD (``.nrrd``) or MetaImage (``.mha``, ``.mhd`` with
``.raw``), with the source geometry (for a DICOM source: the series' world geometry).

A layer made by this plugin carries its source :class:`Volume` geometry in ``metadata``; the mask is then
written with that file's header and affine exactly (``write_volume(..., like=...)``). Any other labels layer is
written with its ``scale`` as the spacing (sz, sy, sx) in mm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seg2refine_core.errors import VolumeError
from seg2refine_core.io.volume import SUPPORTED_SUFFIXES, write_volume

from ._layers import VOLUME_KEY


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one labels layer (z, y, x) to ``path``; a name without a volume suffix gets ``.nii.gz``."""
    target = Path(path)
    if not target.name.lower().endswith(SUPPORTED_SUFFIXES):
        target = target.with_name(target.name + ".nii.gz")
    array = np.asarray(data)
    if array.ndim != 3:
        raise VolumeError(f"{target}: can only save 3D (z, y, x) labels, got shape {array.shape}")
    if array.min(initial=0) >= 0 and array.max(initial=0) <= 255:
        array = array.astype(np.uint8)
    like = (meta.get("metadata") or {}).get(VOLUME_KEY)
    if like is not None and tuple(like.shape) == array.shape:
        write_volume(target, array, like=like)
    else:
        spacing = tuple(float(s) for s in meta.get("scale", (1.0, 1.0, 1.0)))
        write_volume(target, array, spacing=spacing)  # type: ignore[arg-type]
    return [str(target)]
