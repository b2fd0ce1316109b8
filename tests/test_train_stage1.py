"""Stage-1 training end to end on tiny phantoms: CLI run, checkpoints, logs, resume, stop, overwrite guard, DDP, and
the canonical space a run trains in (derived from the training cases' headers, or --target-spacing), recorded in its
checkpoints and used by the Predictor."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ddp_worker import run_ranks
from seg2refine_core.cli import main
from seg2refine_core.data.augment import augment_preset
from seg2refine_core.data.cache import CacheIndex, build_cache
from seg2refine_core.data.canonical import CanonicalSpace, canonical_geometry, header_geometry
from seg2refine_core.data.datasets import discover_cases
from seg2refine_core.data.phantom import make_phantom
from seg2refine_core.data.preprocess import PreprocessConfig, preprocess
from seg2refine_core.io.checkpoint import load_checkpoint
from seg2refine_core.io.volume import write_volume
from seg2refine_core.training.runlog import load_resume_state, resume_path, save_resume_state
from seg2refine_core.training.stage1 import SliceDataset, Stage1TrainConfig, cosine_decay, default_crop, train_stage1
from training_support import runs_per_preset

# 4 phantoms: hold-out 1 val, 1 test, 2 train; 2 epochs of 8 slices in batches of 4 = 4 steps.
OPTIONS = {"width": 4, "epochs": 2, "batch_size": 4, "samples_per_epoch": 8, "num_workers": 0, "device": "cpu",
           "val_fraction": 0.25, "test_fraction": 0.25, "threads": 1}  # fmt: skip
#: the phantoms' spacing, the space a run derives from them (they are stored in LPS order)
SPACE = CanonicalSpace((2.0, 1.5, 1.5))
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    for seed in range(4):
        phantom = make_phantom((16, 64, 64), (2.0, 1.5, 1.5), seed=seed)
        for kind, array in (("img", phantom.image), ("label", phantom.label)):
            write_volume(root / f"{seed + 1}.{kind}.nii.gz", array, spacing=phantom.spacing, affine=phantom.affine)
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def config_for(data: Path, out: Path, cache_dir: Path, **changes) -> Stage1TrainConfig:
    return replace(Stage1TrainConfig(data=data, out=out, cache_dir=cache_dir, **OPTIONS), **changes)


def cli_args(data: Path, out: Path, cache_dir: Path) -> list[str]:
    args = ["train", "stage1", "--data", str(data), "--out", str(out), "--cache-dir", str(cache_dir)]
    for key, value in OPTIONS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def straight_runs(data, cache_dir, tmp_path_factory):
    """``straight(preset)``: two epochs in one go with that augmentation preset, through the command line (made once
    per preset; ``default`` without ``--augment``, the default of a new run)."""
    return runs_per_preset(tmp_path_factory, lambda out: cli_args(data, out, cache_dir))


@pytest.fixture(scope="module")
def straight_run(straight_runs) -> Path:
    return straight_runs("default")


def weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / f"{name}.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_cli_run_writes_loadable_checkpoints_metrics_and_curves(straight_run, capsys):
    for name in ("best", "last"):
        model, config = load_checkpoint(straight_run / name)
        assert config["architecture"] == "sfanet" and config["model"]["width"] == 4
        assert config["input"]["slice_size"] == [64, 64]
        assert config["preprocess"]["window_center"] == 200.0
        training = config["training"]
        assert len(training["cases"]["train"]) == 2 and len(training["cases"]["val"]) == 1
        assert training["seed"] == 0 and training["torch_version"] == torch.__version__
        assert training["config"]["augment"] == "default"
        assert training["augmentation"] == augment_preset("default", ndim=2).to_dict()
        with torch.no_grad():
            assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    assert json.loads((straight_run / "last.json").read_text())["training"]["epochs_done"] == 2
    records = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert {"train_loss", "val_dice", "lr", "time_s", "samples_per_s"} <= record.keys()
        assert 0.0 <= record["val_dice"] <= 1.0 and record["train_loss"] > 0
    assert records[0]["lr"] == pytest.approx(1e-4) and records[1]["lr"] < records[0]["lr"]
    assert (straight_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_records_the_space_it_derived_from_its_training_cases(straight_run, data, cache_dir):
    _, config = load_checkpoint(straight_run / "best")
    assert config["canonical_space"] == {"orientation": "LPS", "spacing": [2.0, 1.5, 1.5]}
    assert config["training"]["target_spacing"] == "nnU-Net's rule over the headers of the 2 training case(s)"
    assert config["training"]["config"]["target_spacing"] is None
    assert CacheIndex.load(cache_dir, SPACE).case_ids  # the cache of that space


def test_training_space_follows_nnunets_rule_over_the_headers_in_canonical_axes(tmp_path):
    """Four cases at different spacings, one stored with permuted axes (its slices along the file's y): the target is
    the per-axis median in canonical (z, y, x) order; the slice axis of strongly anisotropic data takes the 10th
    percentile; --target-spacing wins. Only headers are read."""
    from seg2refine_core.data.canonical import target_spacing
    from seg2refine_core.data.datasets import Case
    from seg2refine_core.training.cases import training_space

    cases = []
    for i, spacing in enumerate([(2.5, 0.5, 0.5), (3.0, 0.6, 0.6), (5.0, 0.7, 0.7), (2.0, 0.8, 0.8)]):
        affine = np.diag([-spacing[2], -spacing[1], spacing[0], 1.0])
        if i == 3:  # axes permuted: the file's y runs inferior-superior
            affine = affine[:, [0, 2, 1, 3]]
        path = write_volume(tmp_path / f"{i}.nii.gz", np.zeros((12, 10, 8), np.int16), affine=affine)
        cases.append(Case(str(i), path, None))
    geometry = [canonical_geometry(*header_geometry(c.image)) for c in cases]
    assert geometry[3][1] == pytest.approx((2.0, 0.8, 0.8)) and geometry[3][0] == (10, 12, 8)
    space, rule = training_space(Stage1TrainConfig(data=tmp_path, out=tmp_path), cases)
    assert space.orientation == "LPS" and rule.startswith("nnU-Net's rule over the headers of the 4")
    assert space.spacing == pytest.approx(target_spacing([g[1] for g in geometry], [g[0] for g in geometry]))
    # medians: 2.75 > 3 x 0.65, but 12 slices x 3 is not below 8 voxels in-plane, so not "strongly anisotropic"
    assert space.spacing == pytest.approx((2.75, 0.65, 0.65))
    strongly = [(6.0, 0.5, 0.5), (5.0, 0.5, 0.5), (2.5, 0.5, 0.5), (5.0, 0.6, 0.6)]
    assert target_spacing(strongly, [(20, 512, 512)] * 4)[0] == pytest.approx(np.percentile([6, 5, 2.5, 5], 10))
    given, rule = training_space(Stage1TrainConfig(data=tmp_path, out=tmp_path, target_spacing=(1.0, 0.7, 0.7)),
                                 cases)
    assert given == CanonicalSpace((1.0, 0.7, 0.7)) and rule == "given (--target-spacing)"


def test_target_spacing_option_sets_the_grid_of_training_and_of_prediction(data, tmp_path, capsys):
    """--target-spacing 2 3 3: cases are cached on that grid, stage 1 trains on 32 x 32 slices of it, the checkpoint
    records it, and the Predictor maps a 64 x 64 case there and back."""
    from seg2refine_core.data.phantom import make_phantom
    from seg2refine_core.inference.predictor import Predictor
    from seg2refine_core.io.volume import Volume

    out = tmp_path / "coarse"
    args = cli_args(data, out, tmp_path / "cache") + ["--epochs", "1", "--target-spacing", "2", "3", "3"]
    assert main(args) == 0
    _, config = load_checkpoint(out / "best")
    assert config["canonical_space"] == {"orientation": "LPS", "spacing": [2.0, 3.0, 3.0]}
    assert config["input"]["slice_size"] == [32, 32] and config["training"]["target_spacing"].startswith("given")
    coarse = CanonicalSpace((2.0, 3.0, 3.0))
    index = CacheIndex.load(tmp_path / "cache", coarse)
    assert {index[c].shape for c in index.case_ids} == {(16, 32, 32)}
    assert main(["train", "stage1", "--out", str(out), "--resume", "--epochs", "2", "--target-spacing", "1", "1",
                 "1"]) == 2
    assert "--target-spacing" in capsys.readouterr().err
    phantom = make_phantom((16, 64, 64), (2.0, 1.5, 1.5), seed=9)
    result = Predictor.from_checkpoints(out / "best", None, device="cpu").predict_volume(
        Volume.from_array(phantom.image, phantom.spacing, phantom.affine))
    assert result.s_prob.shape == (16, 64, 64) and result.grids["stage1"] == "LPS 2 x 3 x 3 mm: 16 x 32 x 32 voxels"


def test_existing_run_is_not_overwritten(straight_run, data, cache_dir, capsys):
    before = (straight_run / "last.safetensors").stat().st_mtime_ns
    assert main(cli_args(data, straight_run, cache_dir)) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert (straight_run / "last.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("preset", ["default", "none"])
def test_resume_after_one_epoch_matches_a_straight_run(straight_runs, preset, data, cache_dir, tmp_path):
    out = tmp_path / "resumed"
    records = []
    first = train_stage1(config_for(data, out, cache_dir, epochs=1, augment=preset), on_epoch=records.append)
    assert first["epochs_done"] == 1 and not first["stopped"] and [r["epoch"] for r in records] == [1]
    assert main(["train", "stage1", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert_same_weights(weights(out), weights(straight_runs(preset)))
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def stop_after_three_steps(data: Path, out: Path, cache_dir: Path, preset: str) -> list[int]:
    """Start a run and stop it after 3 steps (mid-epoch 2); the steps seen."""
    steps: list[int] = []
    summary = train_stage1(config_for(data, out, cache_dir, augment=preset), should_stop=lambda: len(steps) >= 3,
                           on_step=lambda s, loss: steps.append(s))
    assert summary["stopped"] and summary["epochs_done"] == 1 and steps == [1, 2, 3]
    assert json.loads((out / "last.json").read_text())["training"]["step_in_epoch"] == 1
    return steps


@pytest.mark.parametrize("preset", ["default", "none"])
def test_stop_saves_last_and_resumes_mid_epoch_exactly(straight_runs, preset, data, cache_dir, tmp_path):
    out = tmp_path / "stopped"
    steps = stop_after_three_steps(data, out, cache_dir, preset)
    resumed = train_stage1(config_for(data, out, cache_dir, resume=True, augment=preset),
                           on_step=lambda s, loss: steps.append(s))
    assert not resumed["stopped"] and resumed["epochs_done"] == 2 and steps == [1, 2, 3, 4]
    assert_same_weights(weights(out), weights(straight_runs(preset)))


def test_a_run_stored_before_the_presets_resumes_with_none(straight_runs, data, cache_dir, tmp_path, capsys):
    """Stage-1 runs stored no augment option (they always flipped and rotated: the 'none' preset)."""
    out = tmp_path / "older"
    stop_after_three_steps(data, out, cache_dir, "none")
    last = json.loads((out / "last.json").read_text())
    del last["training"]["config"]["augment"]
    (out / "last.json").write_text(json.dumps(last))
    state = load_resume_state(resume_path(out / "last"))
    del state["config"]["augment"]
    save_resume_state(resume_path(out / "last"), state)
    assert main(["train", "stage1", "--out", str(out), "--resume", "--augment", "default"]) == 2
    assert "resume with --augment 'default', but the run used 'none'" in capsys.readouterr().err
    assert main(["train", "stage1", "--out", str(out), "--resume"]) == 0
    assert_same_weights(weights(out), weights(straight_runs("none")))
    default, none = weights(straight_runs("default")), weights(straight_runs("none"))
    assert any(not torch.equal(default[k], none[k]) for k in default)  # the preset reaches the samples


def test_resume_refuses_a_changed_run_option(straight_run, data, cache_dir):
    from seg2refine_core.errors import Seg2RefineError

    with pytest.raises(Seg2RefineError, match="--width 8, but the run used 4"):
        train_stage1(config_for(data, straight_run, cache_dir, width=8, resume=True))


def test_slice_dataset_crops_and_augments_deterministically(data, cache_dir):
    index = build_cache(discover_cases(data), cache_dir, SPACE)
    config = PreprocessConfig()
    dataset = SliceDataset(index, (48, 32), augment=augment_preset("default", ndim=2), preprocess=config)
    assert len(dataset) == 4 * 16
    sample = dataset[(20, 7)]
    assert sample["image"].shape == sample["label"].shape == (1, 48, 32)
    assert torch.equal(sample["image"], dataset[(20, 7)]["image"])
    assert not torch.equal(sample["image"], dataset[(20, 8)]["image"])  # another seed, another draw
    assert set(np.unique(sample["label"].numpy())) <= {0.0, 1.0}
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
    assert dataset.locate(20) == (1, 4)
    # without augmentation a slice is that slice of the whole volume's X', zero-padded to the crop
    plain = SliceDataset(index, (80, 64), augment=augment_preset("off", ndim=2), preprocess=config)
    padded = plain[3]
    assert padded["image"].shape == (1, 80, 64) and float(padded["image"][0, :8].abs().max()) == 0.0
    case_id = index.case_ids[0]
    xprime = preprocess(np.asarray(index.hu(case_id)), index[case_id].spacing, config)
    np.testing.assert_allclose(padded["image"][0, 8:72].numpy(), xprime[3], atol=1e-6)
    assert torch.equal(padded["label"][0, 8:72], torch.from_numpy(np.asarray(index.label(case_id)[3], np.float32)))
    assert default_crop([(16, 64, 64), (10, 64, 64)]) == (64, 64)
    assert default_crop([(16, 70, 64), (10, 100, 50)]) == (64, 48)
    assert cosine_decay(4)(0) == 1.0 and cosine_decay(4)(4) == pytest.approx(0.01)


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_weights(data, tmp_path):
    out = tmp_path / "ddp"
    hashes = run_ranks("stage1", data, out, tmp_path / "cache", timeout=180)
    assert hashes[0] == hashes[1] and hashes[0][1] == "2"
    model, config = load_checkpoint(out / "last")
    assert config["training"]["world_size"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


class _CompileFailed(torch._dynamo.exc.TorchDynamoException):
    """Stands for what a broken ``torch.compile`` raises (e.g. Inductor without a C++ compiler)."""


class _Compiled(nn.Module):
    """Stands for ``torch.compile(module)``: counts the calls that go through it; ``error`` makes them fail."""

    def __init__(self, module: nn.Module, error: type[Exception] | None):
        super().__init__()
        self.module, self.error, self.calls = module, error, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.error is not None:
            raise self.error("compiling failed")
        return self.module(x)


def test_compile_trains_through_the_compiled_model_and_falls_back_to_eager(straight_run, data, cache_dir,
                                                                          tmp_path, monkeypatch):
    made: list[_Compiled] = []

    def fake_compile(error):
        return lambda module: made.append(_Compiled(module, error)) or made[-1]

    monkeypatch.setattr(torch, "compile", fake_compile(None))
    summary = train_stage1(config_for(data, tmp_path / "compiled", cache_dir, compile=True))
    assert summary["compiled"] and made[-1].calls == 4  # 2 epochs x 2 steps
    assert_same_weights(weights(tmp_path / "compiled"), weights(straight_run))

    monkeypatch.setattr(torch, "compile", fake_compile(_CompileFailed))
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*compiling failed.*eager"):
        summary = train_stage1(config_for(data, tmp_path / "fallback", cache_dir, compile=True))
    assert not summary["compiled"] and made[-1].calls == 1  # only the first step tried it
    assert_same_weights(weights(tmp_path / "fallback"), weights(straight_run))

    monkeypatch.setattr(torch, "compile", fake_compile(ValueError))
    with pytest.raises(ValueError, match="compiling failed"):  # not a compile error: not hidden
        train_stage1(config_for(data, tmp_path / "broken", cache_dir, compile=True))
