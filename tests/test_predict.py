"""`seg2refine predict` end to end: outputs with the input's geometry, the baseline path, refusals, progress lines
in logs, a cohort sharded over two torchrun processes, and DICOM series in (series choice) and out (NIfTI with the
series' geometry checked with SimpleITK, DICOM SEG read back with highdicom)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_support import assert_seg_matches_source, ct_series
from plugin_support import SHAPE, SPACING, tiny_checkpoints, tiny_phantom
from seg2refine_core.cli import main
from seg2refine_core.data.phantom import make_phantom, write_phantom_case
from seg2refine_core.data.preprocess import PreprocessConfig
from seg2refine_core.devices import torch_threads
from seg2refine_core.inference.predictor import Predictor
from seg2refine_core.io.checkpoint import save_checkpoint
from seg2refine_core.io.volume import Volume, read_volume

_C, _S = np.cos(0.3), np.sin(0.3)
#: oblique slices: rows along a rotated x, columns tilted out of the axial plane
OBLIQUE = (_C, _S, 0.0, -_S * 0.8, _C * 0.8, 0.6)


@pytest.fixture(scope="module")
def case_and_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    image, label = write_phantom_case(tiny_phantom(), root / "data", 7)
    return root, image, tiny_checkpoints(root)


def test_both_stages_write_masks_and_probabilities_with_source_geometry(case_and_models, tmp_path, capsys):
    root, image, (s1, s2) = case_and_models
    out = tmp_path / "pred"
    assert main(["predict", str(root / "data"), "--stage1", str(s1), "--stage2", str(s2), "--out", str(out),
                 "--save-prob", "--device", "cpu"]) == 0
    source = read_volume(image)
    for name in ("7.s.nii.gz", "7.y.nii.gz", "7.s_prob.nii.gz", "7.y_prob.nii.gz"):
        written = read_volume(out / name)
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine)
    s_mask, s_prob = read_volume(out / "7.s.nii.gz").array, read_volume(out / "7.s_prob.nii.gz").array
    assert set(np.unique(s_mask)) <= {0.0, 1.0}
    np.testing.assert_array_equal(s_mask, (s_prob >= 0.5).astype(np.float32))
    captured = capsys.readouterr()
    assert "7:" in captured.out and "1 of 1 case(s) segmented" in captured.out
    # stderr is not a terminal here: progress comes as plain lines, the last at 100 %
    assert "\r" not in captured.err and re.search(r"^predict: 100% \d+/\d+ step \| 7 \(1/1\)", captured.err, re.M)
    # a second run refuses to replace the outputs unless asked
    assert main(["predict", str(image), "--stage1", str(s1), "--out", str(out), "--device", "cpu"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err


def test_stage1_only_and_the_3d_baseline(case_and_models, tmp_path):
    from monai.networks.nets import UNet

    root, image, (s1, _) = case_and_models
    out = tmp_path / "pred"
    assert main(["predict", str(image), "--stage1", str(s1), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["7.s.nii.gz"]
    model_cfg = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2]}
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "b3d", UNet(**model_cfg), {
        "architecture": "monai-unet-3d", "model": model_cfg, "preprocess": PreprocessConfig().to_dict(),
        "input": {"patch_size": [16, 32, 32], "channels": ["xprime"]}})
    assert main(["predict", str(image), "--baseline3d", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    assert read_volume(out / "7.b.nii.gz").shape == read_volume(image).shape
    assert sorted(p.name for p in out.iterdir()) == ["7.b.nii.gz", "7.s.nii.gz"]
    # the baseline beside stage 1 in one run
    assert main(["predict", str(image), "--stage1", str(s1), "--baseline3d", str(ckpt), "--out", str(tmp_path / "both"),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["7.b.nii.gz", "7.s.nii.gz"]


def test_refusals_are_one_line_messages(case_and_models, tmp_path, capsys):
    root, image, (s1, s2) = case_and_models
    pickle = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(1)}, pickle)
    assert main(["predict", str(image), "--stage1", str(pickle), "--out", str(tmp_path / "o")]) == 2
    assert "pickle checkpoints are refused" in capsys.readouterr().err
    assert main(["predict", str(image), "--stage1", str(s2), "--out", str(tmp_path / "o")]) == 2
    assert "cannot be used for stage1" in capsys.readouterr().err
    assert main(["predict", str(image), "--stage1", str(s1), "--out", str(image.parent)]) == 0
    before = image.read_bytes()
    # re-running on that folder segments the image only (not the earlier output) and never touches the input
    assert main(["predict", str(root / "data"), "--stage1", str(s1), "--out", str(root / "data"),
                 "--overwrite"]) == 0
    assert image.read_bytes() == before
    assert sorted(p.name for p in (root / "data").iterdir()) == ["7.img.nii.gz", "7.label.nii.gz", "7.s.nii.gz"]
    # a file that cannot be read is named, the other inputs are still segmented, and the exit status says so
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b broken")
    assert main(["predict", str(bad), str(image), "--stage1", str(s1), "--out", str(tmp_path / "o3")]) == 2
    captured = capsys.readouterr()
    assert f"broken: error: {bad}:" in captured.out and "1 of 2 case(s) segmented" in captured.out
    assert "error: 1 case(s) failed: broken" in captured.err and (tmp_path / "o3" / "7.s.nii.gz").is_file()


def test_threads_option_sets_torch_threads_and_refuses_zero(case_and_models, tmp_path, capsys, monkeypatch):
    """--threads N for the command, by default one per idle core (devices.default_threads); the caller's count is
    restored afterwards."""
    from seg2refine_core import devices

    root, image, (s1, _) = case_and_models
    before = torch.get_num_threads()
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(devices, "default_threads", lambda *a, **k: 3)
    out = tmp_path / "pred"
    assert main(["predict", str(image), "--stage1", str(s1), "--out", str(out), "--device", "cpu",
                 "--threads", "1"]) == 0
    assert calls == [1, before] and (out / "7.s.nii.gz").is_file()
    assert main(["predict", str(image), "--stage1", str(s1), "--out", str(tmp_path / "o1"), "--device", "cpu"]) == 0
    assert calls[2:] == [3, before]
    assert main(["predict", str(image), "--stage1", str(s1), "--out", str(tmp_path / "o2"), "--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    assert len(calls) == 4 and not (tmp_path / "o2").exists()
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "default: one per core that is idle when the command starts" in " ".join(capsys.readouterr().out.split())


def test_an_old_checkpoint_is_said_in_one_line_and_the_case_line_names_the_grid(case_and_models, tmp_path, capsys):
    """The tiny checkpoints record no canonical space: one 'note:' line each, then the native grid per case; the
    bundled weights name their canonical grid."""
    import shutil

    root, image, (s1, s2) = case_and_models
    fresh = tmp_path / "fresh-s1.safetensors"  # a path of its own: each distinct notice is shown once per process
    shutil.copyfile(s1, fresh)
    shutil.copyfile(s1.with_suffix(".json"), fresh.with_suffix(".json"))
    assert main(["predict", str(image), "--stage1", str(fresh), "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if "note:" in line]
    assert notes == [f"seg2refine predict: note: {fresh}: no canonical space recorded (older checkpoint); the model "
                     "runs on the input's native voxel grid and orientation"]
    assert "(model grid: native grid 16 x 48 x 48 (no canonical space recorded))" in captured.out
    assert main(["predict", str(image), "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "(model grid: LPS 1 x 0.7 x 0.7 mm: 32 x 48 x 48 voxels)" in captured.out and "note:" not in captured.err
    assert read_volume(tmp_path / "b" / "7.y.nii.gz").shape == SHAPE


@pytest.mark.parametrize(("option", "message"), [
    (["--threshold", "1.5"], "--threshold must be between 0 and 1"),
    (["--overlap", "1"], "--overlap must be >= 0 and < 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--sw-batch-size", "0"], "--sw-batch-size must be >= 1, got 0"),
])
def test_options_out_of_range_are_refused_before_any_work(case_and_models, tmp_path, capsys, option, message):
    root, image, (s1, s2) = case_and_models
    out = tmp_path / "o"
    assert main(["predict", str(image), "--stage1", str(s1), "--stage2", str(s2), "--out", str(out), *option]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_torchrun_shares_the_cohort_out_across_two_processes(tmp_path):
    """``torchrun --nproc_per_node=2 -m seg2refine_core.cli predict``: rank r segments cases r, r + 2, ...; no
    case is lost or done twice, the outputs equal a single process's, and rank 0 alone prints the summary and
    the progress lines."""
    data = tmp_path / "data"
    for i in range(5):
        write_phantom_case(make_phantom(shape=SHAPE, spacing=SPACING, seed=40 + i), data, f"c{i}")
    s1, s2 = tiny_checkpoints(tmp_path)
    args = [str(data), "--stage1", str(s1), "--stage2", str(s2), "--device", "cpu", "--threads", "1"]
    assert main(["predict", *args, "--out", str(tmp_path / "single")]) == 0
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root / "src")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "seg2refine_core.cli", "predict", *args, "--out", str(tmp_path / "sharded")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    by_rank = re.findall(r"^\[rank (\d)/2\] (c\d): \(16, 48, 48\) in", done.stdout, re.M)
    assert sorted(case for _, case in by_rank) == [f"c{i}" for i in range(5)], done.stdout[-3000:]
    assert {case: int(rank) for rank, case in by_rank} == {f"c{i}": i % 2 for i in range(5)}
    assert done.stdout.count("case(s) segmented") == 1 and "5 of 5 case(s) segmented" in done.stdout
    assert "on 2 ranks" in done.stdout
    progress_cases = set(re.findall(r"^predict: .*\| (c\d) \(", done.stderr, re.M))
    assert progress_cases == {"c0", "c2", "c4"}  # rank 0's own cases only
    names = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "sharded").iterdir()) and len(names) == 10
    for name in names:
        np.testing.assert_array_equal(read_volume(tmp_path / "sharded" / name).array,
                                      read_volume(tmp_path / "single" / name).array)


def phantom_series(folder: Path, n_slices: int = SHAPE[0], **options) -> list[Path]:
    """The tiny phantom's first ``n_slices`` (HU, rounded) as a DICOM CT series in ``folder``."""
    hu = np.round(tiny_phantom().image[:n_slices]).astype(np.int32)
    return ct_series(folder, hu, spacing=SPACING, **options)


def _sitk_series(sitk, folder: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_a_folder_with_a_dicom_series_and_a_nifti_file(case_and_models, tmp_path, capsys):
    """Both are segmented; the series' masks line up with the series in SimpleITK, point for point and voxel for
    voxel; the line printed names the series read; re-running on a folder holding earlier outputs takes only the
    inputs."""
    sitk = pytest.importorskip("SimpleITK")
    root, image, (s1, _) = case_and_models
    cohort = tmp_path / "cohort"
    phantom_series(cohort / "patient7", orientation=OBLIQUE, series_uid="1.2.3.7")
    shutil.copy(image, cohort / "n1.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", str(cohort), "--stage1", str(s1), "--out", str(out), "--save-prob", "--device", "cpu",
                 "--threads", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "n1.s.nii.gz", "n1.s_prob.nii.gz", "patient7.s.nii.gz", "patient7.s_prob.nii.gz"]
    printed = capsys.readouterr().out
    assert (f"patient7: {cohort / 'patient7'}: read DICOM series 1.2.3.7 (CT #3 'test CT', 16 slices), the series "
            "with the most slices\n") in printed
    assert "n1: read" not in printed and "2 of 2 case(s) segmented" in printed
    np.testing.assert_allclose(read_volume(out / "n1.s.nii.gz").affine, read_volume(image).affine)
    ct = _sitk_series(sitk, cohort / "patient7")
    corners = [(i, j, k) for i in (0, SHAPE[2] - 1) for j in (0, SHAPE[1] - 1) for k in (0, SHAPE[0] - 1)]
    for name in ("patient7.s.nii.gz", "patient7.s_prob.nii.gz"):
        written = sitk.ReadImage(str(out / name))
        assert written.GetSize() == ct.GetSize() == (SHAPE[2], SHAPE[1], SHAPE[0])
        for index in corners:
            np.testing.assert_allclose(written.TransformIndexToPhysicalPoint(index),
                                       ct.TransformIndexToPhysicalPoint(index), atol=1e-3)
    # voxel for voxel: the probabilities are the model's on the CT as ITK reads it
    itk_ct = Volume.from_array(sitk.GetArrayFromImage(ct).astype(np.float32), ct.GetSpacing()[::-1])
    with torch_threads(1):  # as the command ran (it gives the caller its thread count back)
        expected = Predictor.from_checkpoints(s1, None, device="cpu").predict_volume(itk_ct)
    for name, array in (("patient7.s_prob.nii.gz", expected.s_prob), ("patient7.s.nii.gz", expected.s_mask)):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))), array)
    # outputs written into the series folder itself are not inputs the next time
    assert main(["predict", str(cohort), "--stage1", str(s1), "--out", str(cohort / "patient7"), "--device", "cpu",
                 "--threads", "1"]) == 0
    assert main(["predict", str(cohort), "--stage1", str(s1), "--out", str(cohort / "patient7"), "--device", "cpu",
                 "--threads", "1", "--overwrite"]) == 0
    assert "2 of 2 case(s) segmented" in capsys.readouterr().out
    assert sorted(p.name for p in (cohort / "patient7").glob("*.nii.gz")) == ["n1.s.nii.gz", "patient7.s.nii.gz"]


def _two_series_in_one_folder(folder: Path) -> None:
    """A 16-slice series 1.2.3.100 and an 8-slice one 1.2.3.200 (other origin), their files mixed in ``folder``."""
    phantom_series(folder / "big", series_uid="1.2.3.100", description="cardiac")
    phantom_series(folder / "small", 8, series_uid="1.2.3.200", description="low dose", origin=(-100.0, -80.0, -250.0))
    for part in ("big", "small"):
        for file in (folder / part).iterdir():
            file.rename(folder / f"{part}_{file.name}")
        (folder / part).rmdir()


def test_series_option_reads_the_other_series_and_the_line_names_it(case_and_models, tmp_path, capsys):
    root, image, (s1, _) = case_and_models
    study = tmp_path / "study"
    _two_series_in_one_folder(study)
    args = ["--stage1", str(s1), "--device", "cpu", "--threads", "1"]
    assert main(["predict", str(study), *args, "--out", str(tmp_path / "default")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^study: .*study: read DICOM series 1\.2\.3\.100 \(CT #3 'cardiac', 16 slices\), the series "
                     r"with the most slices; also there: 1\.2\.3\.200 \(CT #3 'low dose', 8 slices\) \(choose one with "
                     r"--series UID", printed, re.M)
    assert read_volume(tmp_path / "default" / "study.s.nii.gz").shape == SHAPE

    assert main(["predict", str(study), *args, "--series", "1.2.3.200", "--out", str(tmp_path / "chosen")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^study: .*study: read DICOM series 1\.2\.3\.200 \(CT #3 'low dose', 8 slices\), the requested "
                     r"series; also there: 1\.2\.3\.100", printed, re.M)
    written = read_volume(tmp_path / "chosen" / "study.s.nii.gz")
    small = read_volume(study, series="1.2.3.200")
    assert written.shape == (8, *SHAPE[1:]) and small.shape == written.shape
    np.testing.assert_allclose(written.affine, small.affine, atol=1e-4)

    # a UID no input holds: refused before any work, with the series that are there
    assert main(["predict", str(study), *args, "--series", "9.9.9", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "--series 9.9.9: no DICOM series with this UID in the inputs; the series there are: 1.2.3.100 (CT #3 " in err
    assert "1.2.3.200 (CT #3 'low dose', 8 slices)" in err and not (tmp_path / "none").exists()

    # series in sibling folders (one folder per series, as PACS exports): --series keeps the folder that holds it
    nested = tmp_path / "nested"
    phantom_series(nested / "SE1", series_uid="1.2.3.1")
    phantom_series(nested / "SE2", 8, series_uid="1.2.3.2")
    shutil.copy(image, nested / "other.nii.gz")
    assert main(["predict", str(nested), *args, "--series", "1.2.3.2", "--out", str(tmp_path / "n")]) == 0
    assert sorted(p.name for p in (tmp_path / "n").iterdir()) == ["SE2.s.nii.gz"]
    assert "SE2: " in capsys.readouterr().out


def test_dicom_seg_output_references_the_source_series(tmp_path, capsys):
    """``--output-format dicom-seg``: one SEG per mask in the source's study and frame of reference, referencing
    every source slice, each frame at its slice holding the predicted mask there; probabilities stay NIfTI."""
    series = tmp_path / "ct"
    phantom_series(series, orientation=OBLIQUE, series_uid="1.2.3.77")
    args = ["predict", str(series), "--device", "cpu", "--threads", "1"]  # the bundled weights: a Y with vessels
    assert main([*args, "--out", str(tmp_path / "seg"), "--output-format", "dicom-seg", "--save-prob"]) == 0
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [
        "ct.s.seg.dcm", "ct.s_prob.nii.gz", "ct.y.seg.dcm", "ct.y_prob.nii.gz"]
    assert "ct.s.seg.dcm, ct.s_prob.nii.gz, ct.y.seg.dcm, ct.y_prob.nii.gz" in capsys.readouterr().out
    source = read_volume(series)
    mask = Predictor.from_checkpoints(device="cpu").predict_volume(source).y_mask
    assert mask.any() and not mask.any(axis=(1, 2)).all()  # some slices have no vessel: their frames are left out
    assert_seg_matches_source(tmp_path / "seg" / "ct.y.seg.dcm", source, mask, "1.2.3.77")

def test_dicom_refusals_are_one_line_messages(case_and_models, tmp_path, capsys):
    root, image, (s1, _) = case_and_models
    args = ["--stage1", str(s1), "--device", "cpu", "--threads", "1"]
    # a SEG needs a DICOM source: refused before any work
    assert main(["predict", str(image), *args, "--output-format", "dicom-seg", "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert f"{image}: --output-format dicom-seg needs a DICOM series input (a SEG references its source slices) " \
           "and this is a nifti file; use --output-format nifti" in err
    errors = [line for line in err.splitlines() if ": note: " not in line]  # the tiny models' notice, once
    assert len(errors) == 1 and not (tmp_path / "o1").exists()
    # a series whose UIDs were blanked cannot be referenced: that case is refused before segmenting, others go on
    cohort = tmp_path / "cohort"
    phantom_series(cohort / "blank", study_uid="")
    phantom_series(cohort / "good", series_uid="1.2.3.5")
    assert main(["predict", str(cohort), *args, "--output-format", "dicom-seg", "--out", str(tmp_path / "o2")]) == 2
    captured = capsys.readouterr()
    assert (f"blank: error: {tmp_path / 'o2' / 'blank.s.seg.dcm'}: cannot reference blank in a DICOM SEG: its "
            "StudyInstanceUID is blank (anonymised?); write NIfTI instead\n") in captured.out
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["good.s.seg.dcm"]
    assert "error: 1 case(s) failed: blank" in captured.err
    # a file that is not a volume, and two series folders with one name
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    assert main(["predict", str(notes), *args, "--out", str(tmp_path / "o3")]) == 2
    assert f"{notes}: not a volume (.nii.gz, .nii, .nrrd, .mha, .mhd, a DICOM file or a DICOM series folder)" in \
        capsys.readouterr().err
    phantom_series(tmp_path / "pacs" / "PA1" / "SE0")
    phantom_series(tmp_path / "pacs" / "PA2" / "SE0")
    assert main(["predict", str(tmp_path / "pacs"), *args, "--out", str(tmp_path / "o4")]) == 2
    assert "several inputs share the case id(s) SE0 (" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists() and not (tmp_path / "o4").exists()


def test_analyze_runs_the_vessel_analysis_on_y_as_analyze_does(case_and_models, tmp_path, capsys):
    import json

    root, image, (s1, s2) = case_and_models
    out = tmp_path / "pred"
    assert main(["predict", str(image), "--stage1", str(s1), "--stage2", str(s2), "--out", str(out),
                 "--device", "cpu", "--analyze"]) == 0
    assert "7: vessel analysis of 7.y.nii.gz -> 7.y.analysis.json, 7.y.analysis.png" in capsys.readouterr().out
    report = json.loads((out / "7.y.analysis.json").read_text())
    assert {"trees", "branches", "stenoses"} <= set(report) and (out / "7.y.analysis.png").stat().st_size > 0
    # the same report as `seg2refine analyze` on the mask written
    assert main(["analyze", str(out / "7.y.nii.gz"), "--json", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again == report
    # stage 1 alone: S is analysed; a DICOM SEG cannot be read back, so --analyze refuses it up front
    assert main(["predict", str(image), "--stage1", str(s1), "--out", str(tmp_path / "s"), "--device", "cpu",
                 "--analyze"]) == 0
    assert (tmp_path / "s" / "7.s.analysis.json").is_file()
    assert main(["predict", str(image), "--out", str(tmp_path / "seg"), "--output-format", "dicom-seg",
                 "--analyze"]) == 2
    assert "--analyze reads the masks written" in capsys.readouterr().err
