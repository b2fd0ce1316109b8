"""Reader for CCTA volumes and masks (``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd``) and DICOM CT series.

- ``<id>.img.nii.gz`` (ImageCAS) opens as the "CT" image together with ``<id>.label.nii.gz`` from the same
  folder, when there is one, as the "ground truth" labels.
- Masks open as labels, by name: ``*.label.*`` → "ground truth", ``*.s.*`` → "S (stage 1)",
  ``*.y.*`` → "Y (refined)" (the names ``seg2refine predict`` writes).
- A DICOM folder (or a ``.dcm``/``.ima`` file of it) opens its series with the most slices (the file's own series
  for a file) as the "CT" image; a notification says which series that is and lists the
  others (napari has no ``--series``: open another series' file to get that one).
- Anything else opens as a "CT" image.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from seg2refine_core.io.volume import SUPPORTED_SUFFIXES, Volume, is_volume_path, read_mask, read_volume, strip_suffix

from ._layers import CT, GT, LayerDataTuple, S, Y, image_kwargs, labels_kwargs

MASK_TAGS = {"label": GT, "s": S, "y": Y}


DICOM_SERIES_KEY = "seg2refine_dicom_series"


def napari_get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerDataTuple]] | None:
    """The reader function when every path is a volume file, a DICOM file or a folder holding DICOM, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if paths and all(is_volume_path(p) or _holds_dicom(Path(p)) for p in paths):
        return read_files
    return None


def _holds_dicom(folder: Path, limit: int = 2000) -> bool:
    """True when a DICOM file is among the first ``limit`` entries under ``folder`` (a quick look, not a scan)."""
    from itertools import islice

    from seg2refine_core.io.dicom import is_dicom_file

    return folder.is_dir() and any(p.is_file() and is_dicom_file(p) for p in islice(folder.rglob("*"), limit))


def mask_role(path: str | Path) -> str | None:
    """The layer name for a mask file (``1.label.nii.gz`` → "ground truth"), or None for an image."""
    tag = strip_suffix(path).rsplit(".", 1)
    return MASK_TAGS.get(tag[1].lower()) if len(tag) == 2 else None


def imagecas_label(path: Path) -> Path | None:
    """``<id>.label.<ext>`` beside an ImageCAS ``<id>.img.<ext>`` file, if present."""
    stem = strip_suffix(path)
    if not stem.endswith(".img"):
        return None
    for suffix in SUPPORTED_SUFFIXES:
        candidate = path.with_name(f"{stem[: -len('.img')]}.label{suffix}")
        if candidate.is_file():
            return candidate
    return None


def read_files(path: str | list[str]) -> list[LayerDataTuple]:
    """Read each file into layer data tuples: images with their ImageCAS label, masks as labels."""
    paths = [Path(path)] if isinstance(path, str) else [Path(p) for p in path]
    layers: list[LayerDataTuple] = []
    for p in paths:
        volume = read_volume(p)
        if volume.series is not None:
            layers.append(_dicom_layer(volume))
            continue
        role = mask_role(p)
        if role is not None:
            mask = (volume.array > 0.5).astype("uint8")
            layers.append((mask, labels_kwargs(volume, role), "labels"))
            continue
        layers.append((volume.array, image_kwargs(volume, CT), "image"))
        label = imagecas_label(p)
        if label is not None and str(label) not in map(str, paths):
            layers.append((read_mask(label, like=volume), labels_kwargs(volume, GT), "labels"))
    return layers


def _dicom_layer(volume: Volume) -> LayerDataTuple:
    """The "CT" image of a DICOM series; says in a notification which series it is and what else is there."""
    from napari.utils.notifications import show_info

    message = volume.series.message()
    show_info(message)
    kwargs = image_kwargs(volume, CT)
    kwargs["metadata"][DICOM_SERIES_KEY] = message
    return (volume.array, kwargs, "image")
