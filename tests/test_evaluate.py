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
    match_kinds,
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
    with pytest.raises(DatasetError, match="Normal_1.*several predictions.*kind with --suffix"):
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
    pairs = {"y": pair_predictions(pred_dir, gt_dir)}
    report = evaluate_files(pairs, progress=lambda d, t, i: calls.append((d, t)))
    assert calls[0] == (0, 2) and calls[-1] == (2, 2)
    one, two = report["cases"]
    assert one["id"] == "1" and one["kind"] == "y" and one["dice"] == pytest.approx(2 * 3 / 7)
    assert one["hd_mm"] == pytest.approx(2.0)
    assert two["hd_mm"] is None and two["dice"] == 0.0 and two["b0_pred"] == 0
    (mean,) = report["mean"]
    assert mean["kind"] == "y" and mean["n_cases"] == 2
    assert mean["dice"] == pytest.approx((2 * 3 / 7) / 2)
    assert mean["hd_mm"] == pytest.approx(2.0)  # the undefined HD is left out
    assert "slice_dice" not in mean

    json_path, csv_path = tmp_path / "r" / "report.json", tmp_path / "r" / "report.csv"
    write_report(report, json_path=json_path, csv_path=csv_path)
    assert json.loads(json_path.read_text())["cases"][1]["hd95_mm"] is None
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["id"], r["kind"]) for r in rows] == [("1", "y"), ("2", "y")]
    assert float(rows[0]["hd_mm"]) == pytest.approx(2.0) and rows[1]["hd_mm"] == ""
    assert "slice_dice" not in rows[0]
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["report.csv", "report.json"]

    with pytest.raises(StopRequested):
        evaluate_files(pairs, should_stop=lambda: True)


def test_geometry_mismatch_is_a_volume_error(tmp_path):
    gt = write_nifti(tmp_path / "1.label.nii.gz", box(2, 6))
    pred = write_nifti(tmp_path / "p" / "1.y.nii.gz", box(2, 6), spacing=(1.0, 0.5, 0.5))
    with pytest.raises(VolumeError, match="spacing"):
        evaluate_files({"y": pair_predictions(pred, gt)})


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
    assert captured.out.splitlines()[2].split()[:2] == ["1", "s"]
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
    assert report["kinds"] == ["s"] and report["mean"][0]["dice"] == pytest.approx(0.5)
    assert csv_path.read_text().splitlines()[0].startswith("id,kind,dice,hd_mm,hd95_mm")


def test_cli_missing_gt_folder_exits_2(tmp_path, capsys):
    missing = tmp_path / "no_such_gt"
    (tmp_path / "pred").mkdir()
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err


def test_match_kinds_finds_every_kind_and_keeps_the_order_asked(tmp_path):
    gt = tmp_path / "gt"
    for i in (1, 2):
        touch(gt / f"{i}.label.nii.gz")
    pred = tmp_path / "pred"
    for name in ("1.y.nii.gz", "1.s.nii.gz", "1.s_prob.nii.gz", "1.nii.gz", "2.y.nii.gz", "2.b.nii.gz"):
        touch(pred / name)
    found = match_kinds(pred, gt)
    # plain <id>.<ext> first, then s, y, b; probability maps are not masks and are left out by default
    assert [p.suffix for p in found] == ["", "s", "y", "b"]
    by_kind = {p.suffix: p for p in found}
    assert [(i, f.name) for i, f, _ in by_kind["y"].pairs] == [("1", "1.y.nii.gz"), ("2", "2.y.nii.gz")]
    assert by_kind["s"].gt_without_pred == ["2"] and by_kind[""].pairs[0][1].name == "1.nii.gz"
    assert [p.suffix for p in match_kinds(pred, gt, ["y", "s", "y"])] == ["y", "s"]
    assert [f.name for _, f, _ in match_kinds(pred, gt, ["s_prob"])[0].pairs] == ["1.s_prob.nii.gz"]
    (missing,) = match_kinds(pred, gt, ["q"])
    with pytest.raises(DatasetError, match=r"no prediction named <id>\.q\.<ext> pairs"):
        missing.checked()
    # two files are one pair whatever the suffixes ask for; the kind comes from the prediction's name
    (two,) = match_kinds(pred / "2.b.nii.gz", gt / "1.label.nii.gz", ["s", "y"])
    assert two.suffix == "" and two.pairs == [("1", pred / "2.b.nii.gz", gt / "1.label.nii.gz")]
    only_probs = tmp_path / "probs"
    touch(only_probs / "1.y_prob.nii.gz")
    with pytest.raises(DatasetError, match="no prediction pairs"):
        match_kinds(only_probs, gt)


def test_cli_scores_s_and_y_side_by_side(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for case in ("1", "2"):
        write_nifti(gt_dir / f"{case}.label.nii.gz", box(2, 6))
        write_nifti(pred_dir / f"{case}.y.nii.gz", box(2, 6))  # Y exact: Dice 1
    write_nifti(pred_dir / "1.s.nii.gz", box(3, 6))  # S one slice short: Dice 6/7
    write_nifti(pred_dir / "1.s_prob.nii.gz", box(3, 6))
    json_path, csv_path = tmp_path / "r.json", tmp_path / "r.csv"
    argv = ["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(json_path), "--csv", str(csv_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split()[:3] == ["case", "kind", "dice"]
    # each case's kinds on adjacent rows, then each kind's mean
    rows = [line.split()[:3] for line in lines[2:5]]
    assert rows == [["1", "s", "0.8571"], ["1", "y", "1.0000"], ["2", "y", "1.0000"]]
    assert [line.split()[:4] for line in lines[6:8]] == [["mean", "(1)", "s", "0.8571"], ["mean", "(2)", "y", "1.0000"]]
    assert "(kind s)" in captured.err and "no prediction" in captured.err
    report = json.loads(json_path.read_text())
    assert report["kinds"] == ["s", "y"]
    assert [(c["id"], c["kind"]) for c in report["cases"]] == [("1", "s"), ("1", "y"), ("2", "y")]
    assert [(m["kind"], m["n_cases"]) for m in report["mean"]] == [("s", 1), ("y", 2)]
    assert report["mean"][0]["dice"] == pytest.approx(6 / 7) and report["mean"][1]["dice"] == 1.0
    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["id"], r["kind"], float(r["dice"])) for r in rows] == [
        ("1", "s", pytest.approx(6 / 7)), ("1", "y", 1.0), ("2", "y", 1.0)]

    # --suffix takes several kinds, in the order given; a kind that pairs with nothing is a clear error
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--suffix", "y", "s"]) == 0
    assert [line.split()[1] for line in capsys.readouterr().out.splitlines()[2:5]] == ["y", "s", "y"]
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--suffix", "y", "b"]) == 2
    err = capsys.readouterr().err
    assert "<id>.b.<ext>" in err and str(pred_dir) in err and "Traceback" not in err
