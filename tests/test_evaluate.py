"""Pairing predictions with ground truth, scoring NIfTI files, reports, and `seg2refine evaluate`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from seg2refine_core.cli import main
from seg2refine_core.errors import DatasetError, StopRequested, VolumeError
from seg2refine_core.evaluation.evaluate import (
    evaluate_files,
    match_predictions,
    pair_predictions,
    write_report,
)

SPACING = (2.0, 0.5, 0.5)  # (sz, sy, sx) mm
SHAPE = (8, 16, 16)  # (z, y, x)


def write_nifti(path: Path, mask_zyx: np.ndarray, spacing=SPACING) -> Path:
    """Write a (z, y, x) mask the way a scanner file stores it: (x, y, z) with diag(sx, sy, sz) affine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    nib.save(nib.Nifti1Image(mask_zyx.transpose(2, 1, 0).astype(np.uint8), affine), str(path))
    return path


def box(z0: int, z1: int) -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[z0:z1, 4:12, 4:12] = 1
    return m


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_pairing_imagecas_layout_with_shards_and_leftovers(tmp_path):
    gt = tmp_path / "gt"
    for i in (1, 2):
        touch(gt / "1-200" / f"{i}.img.nii.gz")
        touch(gt / "1-200" / f"{i}.label.nii.gz")
    touch(gt / "1-200" / "10.label.nii.gz")
    touch(gt / "1-200" / "11.label.nii.gz")
    pred = tmp_path / "pred"
    touch(pred / "1.y.nii.gz")
    touch(pred / "2.y.nii.gz")
    touch(pred / "10.label.nii.gz")  # the ground truth's own name
    touch(pred / "99.y.nii.gz")  # no ground truth
    touch(pred / ".partial-1234-3.y.nii.gz")  # hidden temporary files are ignored
    touch(pred / "notes.txt")

    pairs = pair_predictions(pred, gt)
    assert [case_id for case_id, _, _ in pairs] == ["1", "2", "10"]
    assert pairs[0] == ("1", pred / "1.y.nii.gz", gt / "1-200" / "1.label.nii.gz")
    pairing = match_predictions(pred, gt)
    assert pairing.gt_without_pred == ["11"]
    assert pairing.pred_without_gt == [pred / "99.y.nii.gz"]


def test_pairing_plain_names_same_folder_files_and_suffix(tmp_path):
    gt = tmp_path / "Annotations"
    touch(gt / "Normal_1.nrrd")
    touch(gt / "Normal_2.nrrd")
    pred = tmp_path / "out"
    touch(pred / "Normal_1.s.nii.gz")
    touch(pred / "Normal_1.y.nii.gz")
    touch(pred / "Normal_2.nii.gz")
    with pytest.raises(DatasetError, match="Normal_1.*several predictions.*--suffix"):
        pair_predictions(pred, gt)
    assert [p[1].name for p in pair_predictions(pred, gt, suffix="y")] == ["Normal_1.y.nii.gz"]

    # Predictions written beside ImageCAS images and labels in one folder.
    mixed = tmp_path / "mixed"
    for name in ("7.img.nii.gz", "7.label.nii.gz", "7.y.nii.gz"):
        touch(mixed / name)
    assert pair_predictions(mixed, mixed) == [("7", mixed / "7.y.nii.gz", mixed / "7.label.nii.gz")]

    # Two files always pair, whatever their names; the id comes from the ground truth.
    assert pair_predictions(pred / "Normal_2.nii.gz", gt / "Normal_1.nrrd") == [
        ("Normal_1", pred / "Normal_2.nii.gz", gt / "Normal_1.nrrd")
    ]


def test_pairing_errors_name_the_folder_and_unpaired_ids(tmp_path):
    gt = tmp_path / "labels"
    touch(gt / "a.label.nii.gz")
    touch(gt / "b.label.nii.gz")
    pred = tmp_path / "pred"
    touch(pred / "c.y.nii.gz")
    with pytest.raises(DatasetError) as err:
        pair_predictions(pred, gt)
    message = str(err.value)
    assert str(pred) in message and str(gt) in message
    assert "a, b" in message and "c.y.nii.gz" in message
    with pytest.raises(DatasetError, match="missing.*not found"):
        pair_predictions(pred, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no ground-truth volumes"):
        pair_predictions(pred, empty)


def test_evaluate_files_report_and_mean(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_nifti(gt_dir / "1.label.nii.gz", box(2, 6))
    write_nifti(pred_dir / "1.y.nii.gz", box(3, 6))  # one slice short at the bottom: HD = sz = 2 mm
    write_nifti(gt_dir / "2.label.nii.gz", box(2, 6))
    write_nifti(pred_dir / "2.y.nii.gz", np.zeros(SHAPE, np.uint8))  # empty prediction: HD undefined
    calls = []
    report = evaluate_files(pair_predictions(pred_dir, gt_dir), progress=lambda d, t, i: calls.append((d, t)))
    assert calls[0] == (0, 2) and calls[-1] == (2, 2)
    one, two = report["cases"]
    assert one["id"] == "1" and one["dice"] == pytest.approx(2 * 3 / 7)
    assert one["hd_mm"] == pytest.approx(2.0)
    assert two["hd_mm"] is None and two["dice"] == 0.0 and two["b0_pred"] == 0
    mean = report["mean"]
    assert mean["n_cases"] == 2
    assert mean["dice"] == pytest.approx((2 * 3 / 7) / 2)
    assert mean["hd_mm"] == pytest.approx(2.0)  # the undefined HD is left out
    assert "slice_dice" not in mean

    json_path, csv_path = tmp_path / "r" / "report.json", tmp_path / "r" / "report.csv"
    write_report(report, json_path=json_path, csv_path=csv_path)
    assert json.loads(json_path.read_text())["cases"][1]["hd95_mm"] is None
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["id"] for r in rows] == ["1", "2"]
    assert float(rows[0]["hd_mm"]) == pytest.approx(2.0) and rows[1]["hd_mm"] == ""
    assert "slice_dice" not in rows[0]
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["report.csv", "report.json"]

    with pytest.raises(StopRequested):
        evaluate_files(pair_predictions(pred_dir, gt_dir), should_stop=lambda: True)


def test_geometry_mismatch_is_a_volume_error(tmp_path):
    gt = write_nifti(tmp_path / "1.label.nii.gz", box(2, 6))
    pred = write_nifti(tmp_path / "p" / "1.y.nii.gz", box(2, 6), spacing=(1.0, 0.5, 0.5))
    with pytest.raises(VolumeError, match="spacing"):
        evaluate_files(pair_predictions(pred, gt))


def test_cli_end_to_end(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    write_nifti(gt_dir / "1.label.nii.gz", box(1, 5))
    write_nifti(pred_dir / "1.s.nii.gz", box(3, 7))  # shifted 2 slices along z: HD = 2 * sz = 4 mm
    write_nifti(gt_dir / "2.label.nii.gz", box(2, 6))
    json_path, csv_path = tmp_path / "out.json", tmp_path / "out.csv"
    argv = ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(json_path)]
    assert main([*argv, "--csv", str(csv_path)]) == 0
    captured = capsys.readouterr()
    assert "mean (1)" in captured.out and "dice" in captured.out and "hd95_mm" in captured.out
    assert "2" in captured.err and "no prediction" in captured.err
    report = json.loads(json_path.read_text())
    (case,) = report["cases"]
    keys = {"id", "dice", "hd_mm", "hd95_mm", "b0_pred", "b0_gt", "betti0_error", "cldice", "slice_dice"}
    assert keys <= set(case)
    assert case["id"] == "1"
    assert case["dice"] == pytest.approx(0.5)
    assert case["hd_mm"] == pytest.approx(4.0)
    assert case["b0_pred"] == case["b0_gt"] == 1 and case["betti0_error"] == 0
    assert case["slice_dice"][0] is None and case["slice_dice"][1] == 0.0 and case["slice_dice"][3] == 1.0
    assert report["mean"]["dice"] == pytest.approx(0.5)
    assert csv_path.read_text().splitlines()[0].startswith("id,dice,hd_mm,hd95_mm")


def test_cli_missing_gt_folder_exits_2(tmp_path, capsys):
    missing = tmp_path / "no_such_gt"
    (tmp_path / "pred").mkdir()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
