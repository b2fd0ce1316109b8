"""Dataset discovery and train/val/test splits for ImageCAS, ASOCA and generic image/label folders.

Only file names are looked at here (nothing is read), so discovery is instant on 1000 volumes.

Layouts (``discover_cases(root, layout=...)``; ``"auto"`` picks the single one that matches):

- ``imagecas``: ``<id>.img.nii.gz`` + ``<id>.label.nii.gz`` (or ``.nii``) in ``root`` or up to two folder
  levels below it (shards such as ``1-200/``); images and labels are paired by id anywhere in that tree.
  The synthetic phantom writes this naming too.
- ``asoca``: ``{Normal,Diseased}/CTCA/<id>.nrrd`` + ``{Normal,Diseased}/Annotations/<id>.nrrd``
  (case ids ``Normal_<i>``, ``Diseased_<i>``).
- ``generic``: ``images/`` + ``labels/`` (``labels/`` optional) paired by file stem; ``.nii.gz``, ``.nii``,
  ``.nrrd``, ``.mha``, ``.mhd`` files, and in ``images/`` also DICOM series, one sub-folder per case (the case id
  is the folder's name; a label for it is ``labels/<folder name>.nii.gz`` or any other volume file of that stem).

Images without a label are kept with ``label=None`` (test sets); callers that need labels check.
A label without an image is an error. Cases are sorted naturally (``2`` before ``10``).

Splits are ``{"train": [ids], "val": [ids], "test": [ids]}``: from the official ImageCAS table
(:func:`read_split`) or, for data without one such as phantoms, from :func:`holdout_split`; then
:func:`split_cases` maps the ids to :class:`Case` objects.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seg2refine_core.errors import DatasetError
from seg2refine_core.io.dicom import is_dicom_file
from seg2refine_core.io.volume import SUPPORTED_SUFFIXES

LAYOUTS = ("auto", "imagecas", "asoca", "generic")
SPLIT_KEYS = ("train", "val", "test")
VOLUME_SUFFIXES = SUPPORTED_SUFFIXES
ASOCA_GROUPS = ("Normal", "Diseased")

_IMAGECAS_RE = re.compile(r"^(?P<id>.+)\.(?P<kind>img|label)\.nii(\.gz)?$")
_SPLIT_VALUES = {
    "training": "train", "train": "train",
    "val": "val", "validation": "val",
    "testing": "test", "test": "test",
}  # fmt: skip
_FILENAME_COLUMNS = ("filename", "file-name", "id")


@dataclass(frozen=True)
class Case:
    """One volume of a dataset: its ``image`` path and ``label`` (lumen mask) path, None when unlabelled."""

    case_id: str
    image: Path
    label: Path | None


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically (``"Normal_2" < "Normal_10"``, ``"2" < "10"``)."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def strip_volume_suffix(name: str) -> str | None:
    """File name without its volume suffix (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``, any case), else
    None."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def discover_cases(root: str | Path, layout: str = "auto") -> list[Case]:
    """List the cases under ``root`` in ``layout`` ("auto", "imagecas", "asoca" or "generic"); see module doc.

    Raises DatasetError naming ``root`` if it is missing, empty, matches no layout (or several, with "auto"),
    holds duplicate ids, or has labels without images.
    """
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown dataset layout {layout!r} (choose one of {', '.join(LAYOUTS)})")
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} is not a folder")
    if not any(root.iterdir()):
        raise DatasetError(f"dataset folder {root} is empty")
    if layout == "auto":
        found = [name for name, matches in _DETECTORS.items() if matches(root)]
        if not found:
            raise DatasetError(
                f"dataset folder {root} matches no known layout: looked for ImageCAS '<id>.img.nii.gz' files "
                "(up to two levels deep), ASOCA 'Normal|Diseased/CTCA/*.nrrd', generic 'images/' + 'labels/'"
            )
        if len(found) > 1:
            raise DatasetError(
                f"dataset folder {root} matches several layouts ({', '.join(found)}); choose one with layout="
            )
        layout = found[0]
    cases = _READERS[layout](root)
    if not cases:
        raise DatasetError(f"dataset folder {root} holds no {layout} images")
    return sorted(cases, key=lambda case: natural_key(case.case_id))


def _walk_files(root: Path, max_depth: int = 2) -> Iterable[Path]:
    """Files in ``root`` and up to ``max_depth`` folder levels below, hidden entries skipped."""
    level = [root]
    for depth in range(max_depth + 1):
        folders = []
        for folder in level:
            for entry in sorted(folder.iterdir()):
                if entry.name.startswith("."):
                    continue
                if entry.is_file():
                    yield entry
                elif entry.is_dir() and depth < max_depth:
                    folders.append(entry)
        level = folders


def _is_imagecas(root: Path) -> bool:
    return any(
        (match := _IMAGECAS_RE.match(path.name)) is not None and match["kind"] == "img"
        for path in _walk_files(root)
    )


def _is_asoca(root: Path) -> bool:
    return any((root / group / "CTCA").is_dir() for group in ASOCA_GROUPS)


def _is_generic(root: Path) -> bool:
    return (root / "images").is_dir()


def _pair(root: Path, images: dict[str, Path], labels: dict[str, Path]) -> list[Case]:
    orphans = sorted(set(labels) - set(images), key=natural_key)
    if orphans:
        shown = ", ".join(str(labels[i].relative_to(root)) for i in orphans[:5])
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        raise DatasetError(f"dataset folder {root}: {len(orphans)} label(s) without an image: {shown}{more}")
    return [Case(case_id, path, labels.get(case_id)) for case_id, path in images.items()]


def _add_unique(root: Path, found: dict[str, Path], case_id: str, path: Path) -> None:
    if case_id in found:
        raise DatasetError(
            f"dataset folder {root}: case id {case_id!r} appears twice: "
            f"{found[case_id].relative_to(root)} and {path.relative_to(root)}"
        )
    found[case_id] = path


def _read_imagecas(root: Path) -> list[Case]:
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for path in _walk_files(root):
        match = _IMAGECAS_RE.match(path.name)
        if match:
            _add_unique(root, images if match["kind"] == "img" else labels, match["id"], path)
    return _pair(root, images, labels)


def _volumes_in(root: Path, folder: Path, dicom: bool = False) -> dict[str, Path]:
    """Volume files in ``folder`` by stem; with ``dicom``, also sub-folders holding a DICOM series, by name."""
    found: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            stem = strip_volume_suffix(path.name)
            if path.is_file() and stem is not None:
                _add_unique(root, found, stem, path)
            elif dicom and path.is_dir() and _holds_dicom(path):
                _add_unique(root, found, path.name, path)
    return found


def _holds_dicom(folder: Path) -> bool:
    """True when a DICOM file lies in ``folder`` or below (the first one found ends the look)."""
    return any(p.is_file() and is_dicom_file(p) for p in folder.rglob("*") if not p.name.startswith("."))


def _read_asoca(root: Path) -> list[Case]:
    images: dict[str, Path] = {}
    labels: dict[str, Path] = {}
    for group in ASOCA_GROUPS:
        for case_id, path in _volumes_in(root, root / group / "CTCA").items():
            _add_unique(root, images, case_id, path)
        for case_id, path in _volumes_in(root, root / group / "Annotations").items():
            _add_unique(root, labels, case_id, path)
    return _pair(root, images, labels)


def _read_generic(root: Path) -> list[Case]:
    return _pair(root, _volumes_in(root, root / "images", dicom=True), _volumes_in(root, root / "labels"))


_DETECTORS = {"imagecas": _is_imagecas, "asoca": _is_asoca, "generic": _is_generic}
_READERS = {"imagecas": _read_imagecas, "asoca": _read_asoca, "generic": _read_generic}


def normalize_case_id(value: object) -> str:
    """Case id of a split-table cell: ``"1.img.nii.gz"``, ``"1-200/1.img.nii.gz"``, ``1``, ``1.0`` -> "1"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    name = str(value).strip().replace("\\", "/").rsplit("/", 1)[-1]
    match = _IMAGECAS_RE.match(name)
    if match:
        return match["id"]
    stem = strip_volume_suffix(name)
    if stem is not None:
        return stem
    return name[:-2] if re.fullmatch(r"\d+\.0", name) else name


def read_split(path: str | Path, fold: int = 1, sheet: str = "v2-latest") -> dict[str, list[str]]:
    """Official ImageCAS split ``{"train", "val", "test"} -> [case ids]`` for ``fold`` in 1..4.

    ``path``: ``imageCAS_data_split.xlsx`` (sheet ``sheet``) or the same table as ``.csv``: a ``FileName``
    column and ``Split-1`` .. ``Split-4`` with ``Training`` / ``Val`` / ``Testing`` (headers and values are
    matched case-insensitively; ``id`` / ``fold_<k>`` and ``train`` / ``validation`` / ``test`` are accepted).
    Ids are sorted naturally. Raises DatasetError naming the file for every problem.
    """
    path = Path(path)
    if isinstance(fold, bool) or not isinstance(fold, int) or not 1 <= fold <= 4:
        raise DatasetError(f"split file {path}: fold must be 1, 2, 3 or 4, got {fold!r}")
    if not path.is_file():
        raise DatasetError(f"split file {path} does not exist")
    rows = _read_table(path, sheet)
    if not rows:
        raise DatasetError(f"split file {path} is empty")
    header = [_header_key(cell) for cell in rows[0]]
    name_col = _find_column(path, header, _FILENAME_COLUMNS, "FileName")
    split_col = _find_column(path, header, (f"split-{fold}", f"fold-{fold}"), f"Split-{fold}")
    split: dict[str, list[str]] = {key: [] for key in SPLIT_KEYS}
    seen: set[str] = set()
    for number, row in enumerate(rows[1:], start=2):
        cells = [None if c is None or str(c).strip() == "" else c for c in row]
        if all(c is None for c in cells):
            continue
        name = cells[name_col] if name_col < len(cells) else None
        value = cells[split_col] if split_col < len(cells) else None
        if name is None or value is None:
            raise DatasetError(f"split file {path}: row {number} lacks a file name or a Split-{fold} value")
        key = _SPLIT_VALUES.get(str(value).strip().lower())
        if key is None:
            raise DatasetError(
                f"split file {path}: row {number} has unknown Split-{fold} value {value!r} "
                "(expected Training, Val or Testing)"
            )
        case_id = normalize_case_id(name)
        if case_id in seen:
            raise DatasetError(f"split file {path}: case {case_id!r} is listed twice (row {number})")
        seen.add(case_id)
        split[key].append(case_id)
    return {key: sorted(ids, key=natural_key) for key, ids in split.items()}


def _read_table(path: Path, sheet: str) -> list[list[object]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                return [list(row) for row in csv.reader(handle)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DatasetError(f"split file {path} cannot be read as CSV: {exc}") from exc
    if suffix in (".xlsx", ".xlsm"):
        from openpyxl import load_workbook

        try:
            workbook = load_workbook(path, read_only=True, data_only=True)
        except Exception as exc:  # openpyxl raises several unrelated types for a bad file
            raise DatasetError(f"split file {path} cannot be read as an Excel workbook: {exc}") from exc
        try:
            if sheet not in workbook.sheetnames:
                raise DatasetError(
                    f"split file {path} has no sheet {sheet!r} (sheets: {', '.join(workbook.sheetnames)})"
                )
            return [list(row) for row in workbook[sheet].iter_rows(values_only=True)]
        finally:
            workbook.close()
    raise DatasetError(f"split file {path}: unsupported type {path.suffix!r} (use .xlsx or .csv)")


def _header_key(cell: object) -> str:
    return re.sub(r"[\s_]+", "-", str(cell).strip().lower()) if cell is not None else ""


def _find_column(path: Path, header: list[str], names: Sequence[str], shown: str) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise DatasetError(
        f"split file {path} has no column {shown!r} (columns: {', '.join(h for h in header if h) or 'none'})"
    )


def split_cases(cases: Sequence[Case], split: dict[str, list[str]]) -> dict[str, list[Case]]:
    """Map a split of ids onto ``cases`` (same keys, same order). Cases in no split are left out.

    Raises DatasetError listing a few ids that the split names but ``cases`` lacks.
    """
    by_id = {case.case_id: case for case in cases}
    missing = [case_id for ids in split.values() for case_id in ids if case_id not in by_id]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"the split names {len(missing)} case(s) not found in the dataset: {shown}")
    return {key: [by_id[case_id] for case_id in ids] for key, ids in split.items()}


def holdout_split(
    cases: Sequence[Case], val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[str]]:
    """Deterministic random split, as ids like :func:`read_split`, for data without a split table (phantoms).

    The ids are sorted naturally, shuffled with ``numpy.random.default_rng(seed)``, then the first
    ``round(n * test_fraction)`` go to test and the next ``round(n * val_fraction)`` to val (each at least 1
    when its fraction is > 0); the rest train. The result depends only on the set of ids and ``seed``, not on
    the order of ``cases``. Each list is sorted naturally.
    Raises DatasetError if no training case would remain.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DatasetError(f"holdout split: {name} must be in [0, 1), got {value}")
    ids = sorted({case.case_id for case in cases}, key=natural_key)
    if len(ids) != len(cases):
        raise DatasetError("holdout split: case ids are not unique")
    n = len(ids)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if n_test + n_val >= n:
        raise DatasetError(
            f"holdout split: {n} case(s) are too few for val_fraction={val_fraction}, "
            f"test_fraction={test_fraction} (no training case would remain)"
        )
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {key: sorted(parts[key], key=natural_key) for key in SPLIT_KEYS}
