"""`seg2refine predict` end to end: outputs with the input's geometry, the baseline path, refusals, progress lines
in logs, and a cohort sharded over two torchrun processes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plugin_support import SHAPE, SPACING, tiny_checkpoints, tiny_phantom
from seg2refine_core.cli import main
from seg2refine_core.data.phantom import make_phantom, write_phantom_case
from seg2refine_core.data.preprocess import PreprocessConfig
from seg2refine_core.io.checkpoint import save_checkpoint
from seg2refine_core.io.volume import read_volume


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
    root, image, (s1, _) = case_and_models
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    out = tmp_path / "pred"
    assert main(["predict", str(image), "--stage1", str(s1), "--out", str(out), "--device", "cpu",
                 "--threads", "1"]) == 0
    assert calls == [1] and (out / "7.s.nii.gz").is_file()
    assert main(["predict", str(image), "--stage1", str(s1), "--out", str(tmp_path / "o2"), "--threads", "0"]) == 2
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    assert calls == [1] and not (tmp_path / "o2").exists()


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
    assert sorted(case for _, case in by_rank) == [f"c{i}" for i in range(5)]
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
