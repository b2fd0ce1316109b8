"""Generated DICOM CT series for the tests (pydicom): geometry, transfer syntax and naming under the test's control."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def ct_series(
    folder: Path,
    hu_zyx: np.ndarray,
    *,
    spacing: tuple[float, float, float] = (2.0, 0.8, 0.7),
    origin: Sequence[float] = (-120.0, -90.0, -300.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    positions: Sequence[Sequence[float]] | None = None,
    transfer_syntax: str | None = None,
    series_uid: str | None = None,
    description: str = "test CT",
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    frame_uid: str = "1.2.826.0.1.3680043.8.498.2",
) -> list[Path]:
    """Write ``hu_zyx`` (z along the slice normal, y rows, x columns) as one single-frame CT file per slice.

    Stored values are unsigned 12-bit ``HU + 1024`` with RescaleIntercept -1024. Files are named by a scrambled
    number and InstanceNumber falls as the position rises, so neither gives the slice order. ``positions``
    overrides the ImagePositionPatient of each slice (gaps, tilt, duplicates); ``transfer_syntax`` compresses.
    Returns the files in array order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    n = hu_zyx.shape[0]
    if positions is None:
        positions = [np.asarray(origin, float) + k * spacing[0] * normal for k in range(n)]
    files = []
    for k in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientID = "TEST-1"
        ds.PatientName = "Test^Phantom"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = "20250101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.SeriesNumber = 3
        ds.SeriesDescription = description
        ds.InstanceNumber = n - k
        ds.Manufacturer = "seg2refine tests"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = 1.5 * spacing[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = hu_zyx.shape[1:]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        stored = np.clip(np.asarray(hu_zyx[k]) + 1024, 0, 4095).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        if transfer_syntax is not None:
            ds.compress(transfer_syntax, stored)
        path = folder / f"IM{(k * 7919) % 1000:04d}_{k}"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def assert_seg_matches_source(path: Path, source, mask: np.ndarray, series_uid: str) -> None:
    """The DICOM SEG at ``path`` lies in ``source``'s study and frame of reference, references every slice of
    series ``series_uid``, and holds one frame per non-empty slice of ``mask`` (z, y, x) at that slice's position,
    equal to the mask there and derived from that slice."""
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(path)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.header[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.header[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in source.header}
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "41801008"
    by_position = {tuple(np.round(ds.ImagePositionPatient, 4)): k for k, ds in enumerate(source.header)}
    frames = pydicom.dcmread(path).pixel_array.reshape(-1, *mask.shape[1:])
    assert len(frames) == int(mask.any(axis=(1, 2)).sum())
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        k = by_position[tuple(np.round(group.PlanePositionSequence[0].ImagePositionPatient, 4))]
        np.testing.assert_array_equal(frame, mask[k])
        assert group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == \
            source.header[k].SOPInstanceUID
