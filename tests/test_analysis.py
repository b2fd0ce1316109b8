"""Vessel analysis on phantoms (trees, names, stenoses against the ground truth), its report and the CLI."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial import cKDTree

from seg2refine_core.analysis import analyze_mask
from seg2refine_core.analysis.report import summary, write_reports
from seg2refine_core.cli import main
from seg2refine_core.data.phantom import make_phantom, write_phantom_case, write_truth_json
from seg2refine_core.errors import StopRequested, VolumeError

SEEDS = (1000, 1010)  # right-dominant and left-dominant


@pytest.fixture(scope="module", params=SEEDS)
def case(request):
    ph = make_phantom(seed=request.param, severity_range=(0.25, 0.8))
    return ph, analyze_mask(ph.label, ph.spacing, ph.affine)


def _nearest_truth(analysis, truth):
    pts = np.concatenate([v.points_ras for v in truth.vessels])
    tree = np.concatenate([[v.tree] * len(v.points_ras) for v in truth.vessels])
    name = np.concatenate([[v.anatomical_name] * len(v.points_ras) for v in truth.vessels])
    ours = [(analysis.world(b.voxels), analysis.side(b), b.name) for b in analysis.branches]
    d, i = cKDTree(pts).query(np.concatenate([p for p, _, _ in ours]))
    side = np.concatenate([[s] * len(p) for p, s, _ in ours])
    ours_name = np.concatenate([[n] * len(p) for p, _, n in ours])
    return d, tree[i], name[i], side, ours_name


def test_trees_and_main_vessel_names_match_the_truth(case):
    ph, analysis = case
    assert ph.meta["right_dominant"] == (ph.meta["seed"] == 1000)
    d, true_tree, true_name, side, name = _nearest_truth(analysis, ph.truth)
    near = d <= 2.0
    assert near.mean() > 0.97  # the centerline lies on the true one
    assert (side[near] == true_tree[near]).mean() >= 0.98
    main = near & (true_name != "unnamed")
    assert (name[main] == true_name[main]).mean() >= 0.8  # 0.94 over 30 phantoms; one vessel can go astray
    assert {"LAD", "LCX", "RCA"} <= {b.name for b in analysis.branches}
    sides = {t.side for t in analysis.trees[:2]}
    assert sides == {"left", "right"}


def test_stenoses_against_the_truth(case):
    ph, analysis = case
    graded = [s for s in ph.truth.stenoses if s.severity_pct >= 50 and s.reference_diameter_mm >= 1.5
              and s.vessel not in ("LM", "RCA-prox")]  # the phantom's LM is a 4 mm stub; RCA-prox its ostium
    found = [min(np.linalg.norm(analysis.world(x.voxel[None])[0] - s.center_ras_mm) for x in analysis.stenoses)
             for s in graded]
    assert graded and all(f <= 5.0 for f in found)
    centres = np.array([s.center_ras_mm for s in ph.truth.stenoses])
    false = [x for x in analysis.stenoses
             if np.linalg.norm(centres - analysis.world(x.voxel[None])[0], axis=1).min() > 5.0]
    assert len(false) <= 1
    for s in graded:  # severity within 15 points of the truth
        x = min(analysis.stenoses, key=lambda x: np.linalg.norm(analysis.world(x.voxel[None])[0] - s.center_ras_mm))
        assert x.severity_pct == pytest.approx(s.severity_pct, abs=15.0)


def test_report_schema_and_world_coordinates(case, tmp_path):
    ph, analysis = case
    report = json.loads(json.dumps(analysis.to_dict()))
    assert report["coordinates"].startswith("world RAS mm")
    assert {"trees", "branches", "stenoses", "rules"} <= set(report)
    for b in report["branches"]:
        assert len(b["points_mm"]) == len(b["diameters_mm"]) == len(b["arc_mm"]) == len(b["reliable"])
        assert b["length_mm"] > 0
    if ph.meta["seed"] == 1000:  # a left main cut off the left root branch at its division (none named in 1010)
        (lm,) = [b for b in report["branches"] if b["name"] == "LM"]
        assert lm["tortuosity"] >= 1.0  # no shorter than its chord: the division is kept in place
    # an ostium of the left tree lies within a few mm of the truth's left main start
    lm_start = next(v.points_ras[0] for v in ph.truth.vessels if v.name == "LM")
    left = next(t for t in report["trees"] if t["side"] == "left")
    assert np.linalg.norm(np.asarray(left["ostium_mm"]) - lm_start) < 6.0
    for s in report["stenoses"]:
        assert s["severity_pct"] >= 25
        assert s["grade"] == "small vessel" if s["small_vessel"] else s["grade"] in ("mild", "moderate", "severe")
        assert s["small_vessel"] == (s["reference_diameter_mm"] < 1.5)
        # center_mm is the affine applied to center_voxel (z, y, x) -> (x, y, z)
        z, y, x = s["center_voxel"]
        np.testing.assert_allclose(s["center_mm"], (ph.affine @ [x, y, z, 1.0])[:3], atol=0.01)
    paths = write_reports(analysis, json_path=tmp_path / "a.json", csv_path=tmp_path / "a.csv",
                          png_path=tmp_path / "a.png", image=ph.image, mask=ph.label)
    assert [p.name for p in paths] == ["a.json", "a.csv", "a.png"]
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.DictReader((tmp_path / "a.csv").open()))
    assert len(rows) == len(analysis.branches) and {r["name"] for r in rows} >= {"LAD", "LCX", "RCA"}
    assert "stenosis" in summary(analysis)


def test_progress_stop_and_bad_input():
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:15, 9:11, 9:11] = 1
    mask[2, 2, 2] = 1  # a speck: left out
    calls = []
    analysis = analyze_mask(mask, (1.0, 1.0, 1.0), progress=lambda d, t, i: calls.append((d, t)))
    assert len(analysis.trees) == 1 and calls[-1][0] == calls[-1][1]
    with pytest.raises(StopRequested):
        analyze_mask(mask, (1.0, 1.0, 1.0), should_stop=lambda: True)
    with pytest.raises(VolumeError):
        analyze_mask(mask[0], (1.0, 1.0))
    with pytest.raises(VolumeError):
        analyze_mask(mask, (1.0, 0.0, 1.0))
    empty = analyze_mask(np.zeros((8, 8, 8), np.uint8), (1.0, 1.0, 1.0))
    assert empty.trees == [] and empty.to_dict()["stenoses"] == []


def test_cli_on_a_file_and_a_folder(tmp_path, capsys):
    ph = make_phantom(seed=1000, severity_range=(0.25, 0.8))
    write_phantom_case(ph, tmp_path / "cases", 1)
    write_phantom_case(make_phantom(seed=1001), tmp_path / "cases", 2)
    write_truth_json(ph.truth, tmp_path / "cases" / "1.truth.json")
    label = tmp_path / "cases" / "1.label.nii.gz"
    rc = main(["analyze", str(label), "--image", str(tmp_path / "cases" / "1.img.nii.gz"),
               "--json", str(tmp_path / "1.json"), "--csv", str(tmp_path / "1.csv"), "--png", str(tmp_path / "1.png")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "left tree" in out and "right tree" in out
    report = json.loads((tmp_path / "1.json").read_text())
    assert report["source"] == str(label) and report["spacing_mm"] == pytest.approx([1.0, 0.7, 0.7])
    assert (tmp_path / "1.png").stat().st_size > 10_000
    # a folder: masks by suffix, one JSON and PNG per mask in folders, one CSV for all
    rc = main(["analyze", str(tmp_path / "cases"), "--suffix", "label", "--json", str(tmp_path / "j"),
               "--csv", str(tmp_path / "all.csv"), "--png", str(tmp_path / "p"), "--image", str(tmp_path / "cases")])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["1.label.analysis.json", "2.label.analysis.json"]
    assert len(list((tmp_path / "p").iterdir())) == 2
    sources = {r["source"] for r in csv.DictReader((tmp_path / "all.csv").open())}
    assert len(sources) == 2
    assert json.loads((tmp_path / "j" / "1.label.analysis.json").read_text())["stenoses"] == report["stenoses"]


@pytest.mark.parametrize("make_args", [
    lambda d: [str(d / "missing.nii.gz")],
    lambda d: [str(d)],  # a folder without masks of the suffix
    lambda d: [str(d / "m.nii.gz"), "--image", str(d / "other.nii.gz")],  # other geometry
    lambda d: [str(d / "m.nii.gz"), "--min-reference", "-1"],
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, make_args):
    mask = np.zeros((10, 12, 14), np.uint8)
    mask[2:8, 5:7, 5:7] = 1
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), np.eye(4)), tmp_path / "m.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((14, 12, 11), np.int16), np.eye(4)), tmp_path / "other.nii.gz")
    assert main(["analyze", *make_args(tmp_path)]) == 2
    *notes, error = capsys.readouterr().err.splitlines()  # a note: the test files have no spatial unit
    assert error.startswith("seg2refine analyze: error:") and "Traceback" not in error
    assert all(line.startswith("seg2refine analyze: note:") for line in notes)


def _tube_mask(path, value=1, radius=1.5, shape=(40, 16, 16), dtype=np.uint8):
    """A straight tube along z (radius in voxels of 1 mm) written as NIfTI; returns its bytes."""
    z, y, x = np.indices(shape)
    c = (shape[1] - 1) / 2
    mask = np.where((y - c) ** 2 + (x - c) ** 2 <= radius**2, value, 0).astype(dtype)
    mask[:3] = mask[-3:] = 0
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), np.eye(4)), path)
    return path.read_bytes()


def test_cli_never_replaces_inputs_and_refuses_existing_outputs(tmp_path, capsys):
    before = _tube_mask(tmp_path / "m.nii.gz")
    for args, message in ((["--json", "m.nii.gz"], "overwrite an input"),
                          (["--json", "r.txt", "--csv", "r.txt"], "two outputs"),
                          (["--csv", "."], "not a folder"),
                          (["--json", "m.nii.gz/sub/r.json"], "cannot create the output folder")):
        assert main(["analyze", str(tmp_path / "m.nii.gz"), *[str(tmp_path / a) if a[0] != "-" else a
                                                                for a in args]]) == 2
        *notes, error = capsys.readouterr().err.splitlines()
        assert message in error and all(line.startswith("seg2refine analyze: note:") for line in notes), error
    assert (tmp_path / "m.nii.gz").read_bytes() == before and not (tmp_path / "r.txt").exists()
    out = ["--json", str(tmp_path / "reports") + "/", "--png", str(tmp_path / "r.png")]
    assert main(["analyze", str(tmp_path / "m.nii.gz"), *out]) == 0
    assert (tmp_path / "reports" / "m.analysis.json").is_file()  # a trailing / names a folder for one mask too
    assert main(["analyze", str(tmp_path / "m.nii.gz"), *out]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "m.nii.gz"), *out, "--overwrite"]) == 0
    assert (tmp_path / "m.nii.gz").read_bytes() == before


def test_cli_reports_a_bad_mask_and_goes_on_with_the_others(tmp_path, capsys):
    _tube_mask(tmp_path / "1.y.nii.gz")
    data = _tube_mask(tmp_path / "2.y.nii.gz")
    (tmp_path / "2.y.nii.gz").write_bytes(data[: len(data) // 2])
    _tube_mask(tmp_path / "3.y.nii.gz")
    rc = main(["analyze", str(tmp_path), "--json", str(tmp_path / "j"), "--csv", str(tmp_path / "all.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and f"error: {tmp_path / '2.y.nii.gz'}: corrupt or truncated" in err
    assert err.splitlines()[-1] == "seg2refine analyze: error: 1 of 3 mask(s) failed: 2.y.nii.gz"
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["1.y.analysis.json", "3.y.analysis.json"]
    assert {r["source"] for r in csv.DictReader((tmp_path / "all.csv").open())} == {
        str(tmp_path / "1.y.nii.gz"), str(tmp_path / "3.y.nii.gz")}


@pytest.mark.parametrize(("kind", "note"), [
    ("empty", "the mask is empty"),
    ("probability", "a probability map?"),
    ("labels", "several labels (values up to 3)"),
    ("wide", "far wider than a coronary artery"),
    ("binary 255", None),
])
def test_cli_says_how_an_unusual_mask_was_read(tmp_path, capsys, kind, note):
    path = tmp_path / "m.nii.gz"
    if kind == "empty":
        _tube_mask(path, value=0)
    elif kind == "probability":
        _tube_mask(path, value=0.9, dtype=np.float32)
    elif kind == "labels":
        _tube_mask(path, value=3)
        img = nib.load(path)
        arr = np.asarray(img.dataobj).copy()
        arr[:, :, :20][arr[:, :, :20] > 0] = 1
        nib.save(nib.Nifti1Image(arr, img.affine), path)
    elif kind == "wide":
        _tube_mask(path, radius=6.5, shape=(60, 20, 20))
    else:
        _tube_mask(path, value=255)
    assert main(["analyze", str(path)]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("seg2refine analyze: note:")]
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and note in notes[0] and str(path) in notes[0]


def test_cli_a_folder_of_one_mask_with_its_ct_folder_and_checks_before_any_folder_is_made(tmp_path, capsys):
    ph = make_phantom(seed=1000, severity_range=(0.25, 0.8))
    image, label = write_phantom_case(ph, tmp_path / "one", 1)
    label.rename(tmp_path / "one" / "1.y.nii.gz")
    rc = main(["analyze", str(tmp_path / "one"), str(tmp_path / "one" / "1.y.nii.gz"),  # the same mask twice: once
               "--image", str(tmp_path / "one"), "--png", str(tmp_path / "p") + "/"])
    assert rc == 0 and [p.name for p in (tmp_path / "p").iterdir()] == ["1.y.analysis.png"]
    _tube_mask(tmp_path / "one" / "2.y.nii.gz")  # no 2.img: refused before any work, no folder made
    one = str(tmp_path / "one")
    assert main(["analyze", one, "--image", one, "--json", str(tmp_path / "j")]) == 2
    assert "no 2.img.nii.gz" in capsys.readouterr().err and not (tmp_path / "j").exists()
    for args, message in ((["--json", ""], "--json: empty path"), (["--suffix", ""], "--suffix must not be empty")):
        assert main(["analyze", str(tmp_path / "one"), *args]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    assert main(["analyze", str(tmp_path / "one" / "2.y.nii.gz"), "--json", str(tmp_path / "dangling.json")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "dangling.json").is_symlink()
