"""Evaluate predicted masks against ground truth files: pair them by case id, score them, write reports.

Naming (design section 5; folders are searched recursively, hidden files are ignored):

- Ground truth: ``<id>.label.nii.gz`` (ImageCAS), or plain ``<id>.nii.gz`` / ``<id>.nrrd`` (ASOCA, generic).
  When a ground-truth folder holds any ``*.label.*`` file, only those are ground truth, so an ImageCAS folder
  with ``<id>.img.nii.gz`` beside ``<id>.label.nii.gz`` works as it is.
- Prediction: the ground truth's name, ``<id>.<ext>``, or ``<id>.<kind>.<ext>`` such as ``<id>.s.nii.gz``
  (stage 1, kind ``s``) or ``<id>.y.nii.gz`` (stage 2, kind ``y``); a plain ``<id>.<ext>`` has the kind ``""``.
  ``<id>.img.*`` files are CT images and never predictions. :func:`match_predictions` pairs one kind
  (``suffix="y"`` keeps ``<id>.y.<ext>`` only); :func:`match_kinds` pairs several, by default every kind found
  except probability maps (``<kind>_prob``, which ``seg2refine predict --save-prob`` writes beside the masks).

Distances use the ground truth's spacing; the prediction must have the ground truth's shape and geometry.
Each case's metrics are those of :func:`seg2refine_core.evaluation.metrics.evaluate_case`. A report holds one
row per (case, kind) and the mean of each kind, so S and Y of the same cases sit side by side.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seg2refine_core.data.datasets import natural_key
from seg2refine_core.errors import DatasetError
from seg2refine_core.evaluation.metrics import evaluate_case
from seg2refine_core.io.atomic import write_text_atomic
from seg2refine_core.io.volume import SUPPORTED_SUFFIXES, read_mask, read_volume, strip_suffix
from seg2refine_core.progress import ProgressFn, StopFn, check_stop

Pair = tuple[str, Path, Path]
SCALAR_KEYS = (
    "dice", "hd_mm", "hd95_mm", "b0_pred", "b0_gt", "betti0_error", "cldice", "slice_dice_mean",
    "slice_dice_undefined",
)
_IMAGE_TAG = "img"
_LABEL_TAG = "label"
_PROB_TAG = "_prob"
#: kinds listed first, in this order (plain, stage 1, stage 2, the 3D baseline); any others follow by name
_KIND_ORDER = ("", "s", "y", "b")


@dataclass
class Pairing:
    """Predictions of one kind matched to ground truth: ``pairs`` (id, prediction, ground truth), the leftovers.

    ``suffix`` is the kind (``"s"``, ``"y"``, ``""`` for plain ``<id>.<ext>`` names), or None for any kind.
    """

    pred_path: Path
    gt_path: Path
    suffix: str | None = None
    pairs: list[Pair] = field(default_factory=list)
    gt_without_pred: list[str] = field(default_factory=list)
    pred_without_gt: list[Path] = field(default_factory=list)

    def checked(self) -> list[Pair]:
        """The pairs; :class:`DatasetError` naming both paths and the unpaired ids when there are none."""
        if self.pairs:
            return self.pairs
        kind = {None: "", "": " named <id>.<ext>"}.get(self.suffix, f" named <id>.{self.suffix}.<ext>")
        detail = f"ground-truth ids without a prediction: {_preview(self.gt_without_pred)}"
        if self.pred_without_gt:
            orphans = _preview([p.name for p in self.pred_without_gt])
            detail += f"; predictions without ground truth: {orphans}"
        raise DatasetError(
            f"{self.pred_path}: no prediction{kind} pairs with the ground truth in {self.gt_path} ({detail})"
        )


def _is_volume(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.name.lower().endswith(SUPPORTED_SUFFIXES)


def _volume_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_volume(p))


def _tag(stem: str) -> str:
    """The last dotted part of a stem (``1.label`` -> ``label``), or '' when there is none."""
    return stem.rsplit(".", 1)[1] if "." in stem else ""


def _gt_id(path: Path) -> str:
    stem = strip_suffix(path)
    return stem[: -len(_LABEL_TAG) - 1] if _tag(stem) == _LABEL_TAG else stem


def _check_exists(path: Path, what: str) -> None:
    if not path.exists():
        raise DatasetError(f"{path}: {what} not found")
    if path.is_file() and not path.name.lower().endswith(SUPPORTED_SUFFIXES):
        raise DatasetError(f"{path}: {what} is not a volume file ({', '.join(SUPPORTED_SUFFIXES)})")


def _ground_truth(gt_path: Path) -> dict[str, Path]:
    files = [gt_path] if gt_path.is_file() else _volume_files(gt_path)
    labels = [p for p in files if _tag(strip_suffix(p)) == _LABEL_TAG]
    by_id: dict[str, Path] = {}
    for path in labels or files:
        case_id = _gt_id(path)
        if case_id in by_id:
            both = f"{by_id[case_id]}, {path}"
            raise DatasetError(f"{gt_path}: case '{case_id}' has two ground-truth files: {both}")
        by_id[case_id] = path
    if not by_id:
        raise DatasetError(f"{gt_path}: no ground-truth volumes ({', '.join(SUPPORTED_SUFFIXES)}) found")
    return by_id


def _match_id(stem: str, ids: dict[str, Path]) -> str | None:
    """The longest ground-truth id that ``stem`` is, or starts with followed by a dot."""
    if stem in ids:
        return stem
    parts = stem.split(".")
    for n in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in ids:
            return candidate
    return None


def _kind(stem: str, case_id: str) -> str:
    """What follows the case id in a prediction's stem (``1.y`` -> ``y``; ``1`` -> ``""``)."""
    return stem[len(case_id) + 1:] if stem.startswith(f"{case_id}.") else ""


def kind_order(kind: str) -> tuple[int, str]:
    """Sort key of prediction kinds: plain, ``s``, ``y``, ``b``, then the others by name."""
    return (_KIND_ORDER.index(kind), "") if kind in _KIND_ORDER else (len(_KIND_ORDER), kind)


@dataclass
class _Scan:
    gt_by_id: dict[str, Path]
    found: dict[str, dict[str, list[Path]]]  # kind -> case id -> prediction files
    unmatched: list[Path]
    single_file: bool  # the prediction is one file
    two_files: bool = False  # ... and so is the ground truth: always one pair, whatever the names


def _scan(pred_path: Path, gt_path: Path) -> _Scan:
    _check_exists(gt_path, "ground truth")
    _check_exists(pred_path, "prediction")
    gt_by_id = _ground_truth(gt_path)
    if pred_path.is_file() and gt_path.is_file():
        ((case_id, gt_file),) = gt_by_id.items()
        found = {_kind(strip_suffix(pred_path), case_id): {case_id: [pred_path]}}
        return _Scan(gt_by_id, found, [], single_file=True, two_files=True)
    gt_files = {p.resolve() for p in gt_by_id.values()}
    candidates = [pred_path] if pred_path.is_file() else _volume_files(pred_path)
    found = {}
    unmatched: list[Path] = []
    for path in candidates:
        stem = strip_suffix(path)
        if path.resolve() in gt_files or _tag(stem) == _IMAGE_TAG:
            continue
        case_id = _match_id(stem, gt_by_id)
        if case_id is None:
            unmatched.append(path)
        else:
            found.setdefault(_kind(stem, case_id), {}).setdefault(case_id, []).append(path)
    return _Scan(gt_by_id, found, unmatched, pred_path.is_file())


def _pairing(scan: _Scan, pred_path: Path, gt_path: Path, suffix: str | None) -> Pairing:
    by_case: dict[str, list[Path]] = {}
    for kind, cases in scan.found.items():
        if suffix is None or kind == suffix or scan.two_files:
            for case_id, files in cases.items():
                by_case.setdefault(case_id, []).extend(files)
    pairs = []
    for case_id, files in by_case.items():
        if len(files) > 1:
            names = ", ".join(p.name for p in files)
            raise DatasetError(
                f"{pred_path}: case '{case_id}' has several predictions ({names}): pick one kind with --suffix"
            )
        pairs.append((case_id, files[0], scan.gt_by_id[case_id]))
    pairs.sort(key=lambda pair: natural_key(pair[0]))
    missing = [] if scan.single_file else sorted((i for i in scan.gt_by_id if i not in by_case), key=natural_key)
    return Pairing(pred_path, gt_path, suffix, pairs, gt_without_pred=missing, pred_without_gt=scan.unmatched)


def match_predictions(
    pred_path: str | os.PathLike, gt_path: str | os.PathLike, suffix: str | None = None
) -> Pairing:
    """Pair prediction files of one kind with ground-truth files (each argument a file or a folder).

    ``suffix``: the kind to keep (see the module doc); None takes any, but then a case must have only one
    prediction. Two files are always a pair (the case id comes from the ground truth's name). Raises
    :class:`DatasetError` for a missing path, duplicate ground-truth ids, or a case with several predictions.
    """
    pred_path, gt_path = Path(pred_path), Path(gt_path)
    return _pairing(_scan(pred_path, gt_path), pred_path, gt_path, suffix)


def match_kinds(
    pred_path: str | os.PathLike, gt_path: str | os.PathLike, suffixes: Sequence[str] | None = None
) -> list[Pairing]:
    """One :class:`Pairing` per prediction kind, in ``suffixes``' order (duplicates dropped).

    Without ``suffixes``: every kind found in ``pred_path``, probability maps (``<kind>_prob``) left out,
    plain names first, then ``s``, ``y``, ``b`` and the others by name. Two files are one pair of the kind the
    prediction's name gives, whatever ``suffixes`` asks for. Raises :class:`DatasetError` as
    :func:`match_predictions` does, and when no prediction of any kind pairs with the ground truth.
    """
    pred_path, gt_path = Path(pred_path), Path(gt_path)
    scan = _scan(pred_path, gt_path)
    if scan.two_files:
        kinds = list(scan.found)
    elif suffixes is None:
        kinds = sorted((k for k in scan.found if not k.endswith(_PROB_TAG)), key=kind_order)
        if not kinds:  # nothing pairs: checked() raises, naming the folders and the unpaired ids
            Pairing(pred_path, gt_path, None, gt_without_pred=sorted(scan.gt_by_id, key=natural_key),
                    pred_without_gt=scan.unmatched).checked()
    else:
        kinds = list(dict.fromkeys(suffixes))
    return [_pairing(scan, pred_path, gt_path, kind) for kind in kinds]


def _preview(items: list, limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def pair_predictions(
    pred_path: str | os.PathLike, gt_path: str | os.PathLike, suffix: str | None = None
) -> list[Pair]:
    """``[(case_id, prediction_file, ground_truth_file), ...]`` sorted by id; see :func:`match_predictions`.

    Raises :class:`DatasetError` naming the folders and the unpaired ids when nothing pairs.
    """
    return match_predictions(pred_path, gt_path, suffix=suffix).checked()


def evaluate_files(
    pairs_by_kind: dict[str, list[Pair]], progress: ProgressFn | None = None, should_stop: StopFn | None = None
) -> dict:
    """Score each kind's (id, prediction, ground truth) pairs; each ground truth is read once for all kinds.

    ``pairs_by_kind`` maps a kind (``"s"``, ``"y"``, ...) to its pairs, e.g. ``{p.suffix: p.checked() for p in
    match_kinds(...)}``. One case's ground truth and one prediction are held in memory at a time; progress
    counts ground-truth cases. Returns ``{"kinds": [...], "cases": [...], "mean": [...]}``: ``cases`` one dict
    per (case, kind), ordered by case then kind, with ``id``, ``kind``, ``prediction``, ``ground_truth`` and the
    :func:`~seg2refine_core.evaluation.metrics.evaluate_case` keys; ``mean`` one dict per kind with ``kind`` and
    :func:`mean_metrics`. Raises :class:`VolumeError` when a prediction's geometry differs from its ground truth.
    """
    kinds = list(pairs_by_kind)
    by_gt: dict[Path, list[tuple[str, str, Path]]] = {}
    for kind, pairs in pairs_by_kind.items():
        for case_id, pred_file, gt_file in pairs:
            by_gt.setdefault(gt_file, []).append((case_id, kind, pred_file))
    order = sorted(by_gt, key=lambda gt_file: natural_key(by_gt[gt_file][0][0]))
    cases = []
    for done, gt_file in enumerate(order):
        check_stop(should_stop)
        if progress is not None:
            progress(done, len(order), by_gt[gt_file][0][0])
        gt_volume = read_volume(gt_file)
        gt = gt_volume.array > 0.5
        for case_id, kind, pred_file in sorted(by_gt[gt_file], key=lambda item: kinds.index(item[1])):
            check_stop(should_stop)
            pred = read_mask(pred_file, like=gt_volume)
            scores = evaluate_case(pred, gt, gt_volume.spacing)
            cases.append({"id": case_id, "kind": kind, "prediction": str(pred_file), "ground_truth": str(gt_file),
                          **scores})
    if progress is not None:
        progress(len(order), len(order), "")
    mean = [{"kind": kind, **mean_metrics([c for c in cases if c["kind"] == kind])} for kind in kinds]
    return {"kinds": kinds, "cases": cases, "mean": mean}


def mean_metrics(cases: list[dict]) -> dict:
    """Mean of each scalar metric over the cases that define it (None where none does), plus ``n_cases``."""
    mean: dict = {"n_cases": len(cases)}
    for key in SCALAR_KEYS:
        values = [c[key] for c in cases if c.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    return mean


def _csv_text(report: dict) -> str:
    columns = ["id", "kind", *SCALAR_KEYS, "prediction", "ground_truth"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in report["cases"]:
        writer.writerow({k: "" if case.get(k) is None else case[k] for k in columns})
    return buffer.getvalue()


def write_report(
    report: dict, json_path: str | os.PathLike | None = None, csv_path: str | os.PathLike | None = None
) -> None:
    """Write the report atomically: JSON as it is (no NaN/inf: those are null already), CSV one row per case.

    The CSV holds one row per (case, kind): ``id``, ``kind``, the scalar metrics (empty cell for None) and the two
    file paths.
    """
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=2, allow_nan=False) + "\n")
    if csv_path is not None:
        write_text_atomic(csv_path, _csv_text(report))
