"""A binary mask of a DICOM CT series written as a DICOM Segmentation (SEG) object, through highdicom.

The SEG belongs to the source's patient, study and frame of reference and references every source slice
(``ReferencedSeriesSequence`` and per-frame ``DerivationImageSequence``), so a PACS viewer or 3D Slicer shows it
on the CT it came from. One segment, "Coronary artery" (SNOMED CT 41801008, category "Anatomical Structure"),
produced by an automatic algorithm of family "Artificial Intelligence" named Seg2Refine. Frames without any
foreground voxel are left out (highdicom's default), as is usual for sparse vessel masks.

A source with blank Study/Series/SOP Instance UIDs (some anonymisers blank them) cannot be referenced; such a
series is refused with a one-line message: write NIfTI instead, which keeps the geometry without the references.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seg2refine_core.errors import VolumeError
from seg2refine_core.io.atomic import atomic_path

if TYPE_CHECKING:
    from seg2refine_core.io.volume import Volume

SEGMENT_LABEL = "coronary artery lumen"


def write_dicom_seg(
    mask: np.ndarray,
    source: Volume,
    path: str | Path,
    *,
    segment_label: str = SEGMENT_LABEL,
    series_description: str = "Seg2Refine coronary lumen",
) -> Path:
    """Write ``mask`` (z, y, x) {0, 1} on ``source``'s grid as a DICOM SEG at ``path`` (atomically).

    ``source`` must be a DICOM series read by :func:`seg2refine_core.io.volume.read_volume` (its ``header`` holds
    the slices' datasets in array z order). Raises :class:`VolumeError` for a non-DICOM source, a shape mismatch, or
    a source whose UIDs are blank. Returns the path.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    path = Path(path)
    if source.fmt != "dicom" or not source.header:
        kind = source.fmt or "an array"
        raise VolumeError(f"{path}: a DICOM SEG needs a DICOM source series; {source.name} is {kind}")
    mask = np.asarray(mask)
    if mask.shape != source.shape:
        raise VolumeError(f"{path}: mask shape {mask.shape} does not match the source {source.name} {source.shape}")
    datasets = list(source.header)
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID"):
        if not str(datasets[0].get(key, "") or ""):
            raise VolumeError(
                f"{path}: cannot reference {source.name} in a DICOM SEG: its {key} is blank (anonymised?); "
                "write NIfTI instead"
            )
    from seg2refine_core import __version__

    algorithm = hd.AlgorithmIdentificationSequence(
        name="Seg2Refine", version=str(__version__), family=codes.DCM.ArtificialIntelligence
    )
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_label,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.CoronaryArtery,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=mask != 0,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=generate_uid(),
            series_number=int(datasets[0].get("SeriesNumber") or 0) + 1000,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="Seg2Refine",
            manufacturer_model_name="Seg2Refine",
            software_versions=str(__version__),
            device_serial_number="0",
            series_description=series_description,
        )
    except (ValueError, TypeError, AttributeError) as err:
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise VolumeError(f"{path}: cannot build a DICOM SEG for {source.name}: {first_line}") from None
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path
