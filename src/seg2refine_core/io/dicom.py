"""DICOM CT series: find the series in a folder, choose one, check its geometry, decode it into HU.

Library: pydicom, with the pylibjpeg plugins (OpenJPEG for JPEG 2000, the RLE codec), pyjpegls (CharLS, for
JPEG-LS) and Pillow as decoders; highdicom (built on pydicom) writes DICOM SEG (:mod:`seg2refine_core.io.dicom_seg`).
Chosen over SimpleITK/GDCM because (1) the SEG writer needs pydicom datasets of the source anyway, so one DICOM
stack serves both; (2) the geometry checks below need every slice's position and orientation, which pydicom hands
over directly, while ITK's series reader silently averages spacing over gaps; (3) the wheels are small (a few MB
against SimpleITK's 260 MB), so a GPU node can carry them. Everything is imported inside the functions.
Decodable transfer syntaxes: uncompressed (implicit/explicit VR, both byte orders, deflated), RLE Lossless,
JPEG-LS (lossless and near-lossless), JPEG 2000 (lossless and lossy) and 8-bit JPEG Baseline. JPEG Lossless
(process 14) and 12-bit JPEG Extended need ``pip install python-gdcm``; without it the message says so.

Conventions (DICOM PS3.3 C.7.6.2, Image Plane module):

- A series is the set of single-frame images (with ``ImagePositionPatient``) sharing ``SeriesInstanceUID``; a
  folder is searched recursively and non-DICOM files, DICOMDIR and non-image objects are skipped. A series whose
  UID is blank (some anonymisers do that) gets the id ``unnamed-<n>``.
- Without ``series``, the series with the most slices is read; :class:`SeriesChoice` says which and what else is
  there, for the CLI to print and the napari reader to show.
- Slices are ordered by ``ImagePositionPatient`` projected on the slice normal (the cross product of the two
  ``ImageOrientationPatient`` cosines), never by file name or ``InstanceNumber``. The slice spacing is the distance
  between those positions (``SliceThickness`` may differ: overlapping reconstructions are common).
- Voxels are ``RescaleSlope`` x stored value + ``RescaleIntercept`` (or the Modality LUT), per slice, in float32.
- Array axes ``(z, y, x)`` = (slice along the normal, row, column); the affine maps (column, row, slice) indices to
  RAS mm: LPS ``ImagePositionPatient`` of the first slice, columns along the first cosine times the column
  spacing ``PixelSpacing[1]``, rows along the second times ``PixelSpacing[0]``, slices along the normal, then x
  and y negated (LPS -> RAS).

Refused, with one line naming the folder and the problem (rather than resampled, which would hide it): mixed
orientations or image sizes within a series, several slices at one position (phases or acquisitions stacked in one
series), missing slices (a gap a whole multiple of the usual spacing), other non-uniform spacing (beyond 2 % or
0.02 mm), gantry tilt (slice positions sheared off the normal by more than half a pixel over the stack), a single
slice, colour images, and enhanced multi-frame files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seg2refine_core.errors import VolumeError
from seg2refine_core.io.limits import check_memory

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
SPACING_RTOL = 0.02
SPACING_ATOL_MM = 0.02


@dataclass(frozen=True)
class SeriesInfo:
    """One image series of a folder: ``uid`` (pass it as ``series=``), its description and slice count."""

    uid: str
    description: str
    number: str
    modality: str
    files: tuple[Path, ...]

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def label(self) -> str:
        """``"<uid> (CT #3 'Cardiac 0.6 mm', 256 slices)"``."""
        number = f" #{self.number}" if self.number else ""
        description = f" '{self.description}'" if self.description else ""
        return f"{self.uid} ({self.modality or '?'}{number}{description}, {self.n_slices} slices)"


@dataclass(frozen=True)
class SeriesChoice:
    """Which series of ``folder`` was read (``chosen``), whether by request, and the ``others`` left there."""

    folder: Path
    chosen: SeriesInfo
    others: tuple[SeriesInfo, ...]
    requested: bool

    def message(self) -> str:
        """One line for the CLI and the napari notification."""
        how = "the requested series" if self.requested else "the series with the most slices"
        text = f"{self.folder}: read DICOM series {self.chosen.label()}, {how}"
        if self.others:
            listed = "; ".join(s.label() for s in self.others)
            text += f"; also there: {listed} (choose one with --series UID, or open one of its files)"
        return text


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` is a file with the DICOM Part 10 preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR" and is_dicom_file(p)
    )  # fmt: skip


def dicom_folders(root: str | Path) -> list[Path]:
    """Folders at or below ``root`` that directly hold DICOM files (by preamble; nothing is parsed), sorted: the
    candidate series folders of a cohort, each one case for :func:`seg2refine_core.io.volume.read_volume`."""
    return sorted({p.parent for p in _dicom_files(Path(root))})


def _read_header(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError) as err:
        raise VolumeError(f"{path}: unreadable DICOM file ({type(err).__name__}: {err})") from None


def _scan(folder: Path) -> tuple[list[SeriesInfo], dict[Path, Any], int]:
    """The folder's image series (largest first), every image header by file, and the count of skipped
    multi-frame files."""
    headers: dict[Path, Any] = {}
    groups: dict[tuple, list[Path]] = {}
    multiframe = 0
    for path in _dicom_files(folder):
        ds = _read_header(path)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1 or not all(key in ds for key in ("ImagePositionPatient", "ImageOrientationPatient", "Rows")):
            multiframe += frames > 1 and ds.get("Modality") != "SEG"
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        key = (uid,) if uid else ("", str(ds.get("FrameOfReferenceUID", "")), str(ds.get("SeriesNumber", "")),
                                  str(ds.get("SeriesDescription", "")))  # fmt: skip
        headers[path] = ds
        groups.setdefault(key, []).append(path)
    series = []
    unnamed = 0
    for key, files in sorted(groups.items(), key=lambda kv: (kv[0], str(kv[1][0]))):
        first = headers[files[0]]
        uid = key[0]
        if not uid:
            unnamed += 1
            uid = f"unnamed-{unnamed}"
        number = first.get("SeriesNumber")
        series.append(
            SeriesInfo(
                uid=uid,
                description=str(first.get("SeriesDescription", "") or ""),
                number="" if number is None else str(number),
                modality=str(first.get("Modality", "") or ""),
                files=tuple(files),
            )
        )
    series.sort(key=lambda s: -s.n_slices)
    return series, headers, multiframe


def list_series(path: str | Path) -> list[SeriesInfo]:
    """The image series in a DICOM folder (or the folder of a DICOM file), most slices first."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    return _scan(folder)[0]


def choose_series(path: Path, series: str | None = None) -> tuple[SeriesChoice, dict[Path, Any]]:
    """Pick the series to read from a folder or a file in it (see module doc) and return the headers read.

    A file picks its own series unless ``series`` names another. Raises :class:`VolumeError` when the folder holds
    no image series or ``series`` is not among them.
    """
    folder = path if path.is_dir() else path.parent
    found, headers, multiframe = _scan(folder)
    if not found:
        detail = f" ({multiframe} enhanced multi-frame file(s), which are not supported)" if multiframe else ""
        raise VolumeError(f"{folder}: no single-frame DICOM image series found{detail}")
    if series is not None:
        matches = [s for s in found if s.uid == series]
        if not matches:
            listed = "; ".join(s.label() for s in found)
            raise VolumeError(f"{folder}: no DICOM series {series}; the series there are: {listed}")
        chosen = matches[0]
    elif path.is_file() and path in headers:
        chosen = next(s for s in found if path in s.files)
    else:
        chosen = found[0]
    others = tuple(s for s in found if s is not chosen)
    requested = series is not None or (path.is_file() and path in headers)
    return SeriesChoice(folder, chosen, others, requested=requested), headers


def _check_and_sort(folder: Path, info: SeriesInfo, headers: Sequence[Any]) -> tuple[list[int], np.ndarray, float]:
    """Order of the slices along the normal, the normal (LPS) and the slice spacing (mm); refusals as one line."""
    where = f"{folder}: series {info.uid}"
    if len(headers) < 2:
        raise VolumeError(f"{where}: a single slice, not a volume")
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in headers])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise VolumeError(f"{where}: slices have different orientations (ImageOrientationPatient)")
    sizes = {(int(ds.Rows), int(ds.Columns), tuple(float(v) for v in ds.PixelSpacing)) for ds in headers}
    if len(sizes) > 1:
        raise VolumeError(f"{where}: slices differ in size or pixel spacing: {sorted(sizes)}")
    if any(int(ds.get("SamplesPerPixel", 1)) != 1 for ds in headers):
        raise VolumeError(f"{where}: colour images (SamplesPerPixel > 1), not CT")
    row_dir, col_dir = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    along = along[order]
    gaps = np.diff(along)
    if (gaps < 1e-3).any():
        n = int((gaps < 1e-3).sum()) + 1
        raise VolumeError(
            f"{where}: {n} slices share a position (several phases or acquisitions in one series?); "
            "split the series first"
        )
    step = float(np.median(gaps))
    tol = max(SPACING_RTOL * step, SPACING_ATOL_MM)
    off = np.abs(gaps - step) > tol
    if off.any():
        i = int(np.flatnonzero(off)[0])
        ratio = gaps[i] / step
        if abs(ratio - round(ratio)) * step <= tol and round(ratio) >= 2:
            missing = int(sum(round(g / step) - 1 for g in gaps[off]))
            raise VolumeError(
                f"{where}: {missing} missing slice(s): a {gaps[i]:.3g} mm gap between slices at "
                f"{along[i]:.2f} and {along[i + 1]:.2f} mm along the normal where the others are {step:.3g} mm"
            )
        raise VolumeError(
            f"{where}: non-uniform slice spacing, from {gaps.min():.3g} to {gaps.max():.3g} mm "
            f"(median {step:.3g} mm); resample it to a uniform spacing first"
        )
    total = positions[order[-1]] - positions[order[0]]
    sheared = total - (total @ normal) * normal
    pixel = min(float(v) for v in headers[0].PixelSpacing)
    if np.linalg.norm(sheared) > 0.5 * pixel:
        tilt = math.degrees(math.atan2(float(np.linalg.norm(sheared)), float(total @ normal)))
        raise VolumeError(
            f"{where}: gantry tilt of {tilt:.1f} degrees (slices are offset along their plane, not stacked on "
            "the normal); correct the tilt first, e.g. with dcm2niix"
        )
    spacing = float((along[-1] - along[0]) / (len(along) - 1))
    return order, normal, spacing


def read_dicom_series(
    path: Path, series: str | None = None
) -> tuple[np.ndarray, tuple[float, float, float], np.ndarray, tuple[Any, ...], SeriesChoice]:
    """Read one series of a DICOM folder (or of a file's folder) as HU.

    Returns ``(data (x, y, z) float32 view, spacing (sx, sy, sz) mm, affine (x, y, z) -> RAS mm, headers, choice)``
    where ``headers`` are the slices' pydicom datasets without pixel data, in array z order, and ``choice`` says
    which series was read and what else the folder holds. Raises :class:`VolumeError` as listed in the module doc.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut

    choice, headers = choose_series(path, series)
    folder, info = choice.folder, choice.chosen
    slices = [headers[p] for p in info.files]
    order, normal, step = _check_and_sort(folder, info, slices)
    files = [info.files[i] for i in order]
    slices = [slices[i] for i in order]
    first = slices[0]
    rows, cols = int(first.Rows), int(first.Columns)
    check_memory(folder, (len(files), rows, cols), 4 + 8)
    volume = np.empty((len(files), rows, cols), dtype=np.float32)
    for k, file in enumerate(files):
        ds = None
        try:
            ds = pydicom.dcmread(file)
            pixels = ds.pixel_array
        except (RuntimeError, NotImplementedError, ValueError, OSError, EOFError, AttributeError) as err:
            syntax = ds.file_meta.get("TransferSyntaxUID") if ds is not None else None
            name = getattr(syntax, "name", "its")
            hint = " (install python-gdcm for JPEG Lossless and 12-bit JPEG)" if "JPEG" in str(name) else ""
            first_line = (str(err).strip().splitlines() or [""])[0]
            raise VolumeError(f"{file}: cannot decode the {name} pixel data{hint}: {first_line}") from None
        if pixels.shape != (rows, cols):
            raise VolumeError(f"{file}: pixel data of shape {pixels.shape}, expected {(rows, cols)}")
        volume[k] = apply_modality_lut(pixels, ds)
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    orientation = [float(v) for v in first.ImageOrientationPatient]
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(orientation[:3]) * col_spacing
    lps[:3, 1] = np.asarray(orientation[3:]) * row_spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = [float(v) for v in first.ImagePositionPatient]
    spacing = (col_spacing, row_spacing, step)
    return volume.transpose(2, 1, 0), spacing, LPS_TO_RAS @ lps, tuple(slices), choice
