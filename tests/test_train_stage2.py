"""Stage-2 (Attention-GAN) and 3D-baseline training end to end on tiny tube volumes.

CLI run, loadable checkpoints and logs, the pool rule and overlap refusal, the S cache (from the cached HU when stage 1
records stage 2's canonical space, through both mappings from the files when it does not), stop + resume equal to a
straight run, and two DDP ranks ending with the same generator.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddp_worker import run_ranks
from seg2refine_core.cli import main
from seg2refine_core.data.augment import augment_preset
from seg2refine_core.data.cache import CacheIndex
from seg2refine_core.data.canonical import CanonicalSpace, from_canonical, to_canonical
from seg2refine_core.data.datasets import discover_cases, holdout_split
from seg2refine_core.data.preprocess import PreprocessConfig
from seg2refine_core.errors import CheckpointError, DatasetError
from seg2refine_core.inference.models import load_stage
from seg2refine_core.inference.stage2 import predict_baseline3d, refine_volume
from seg2refine_core.io.checkpoint import build_model, load_checkpoint, save_checkpoint
from seg2refine_core.io.volume import write_volume
from seg2refine_core.nets.sfanet import build_sfanet
from seg2refine_core.training import stage2
from seg2refine_core.training.runlog import load_resume_state, read_metrics, resume_path, save_resume_state
from training_support import runs_per_preset

SHAPE = (32, 64, 64)
# 6 cases; stage 1's hold-out (val 0.34, test 0.17, seed 0): 3 train, 2 val, 1 test. The stage-2 pool is stage 1's
# 2 val cases: 1 stage-2 train case and 1 validation case. 2 epochs of 2 patches of 32³ in batches of 1.
STAGE1_SPLIT = {"val_fraction": 0.34, "test_fraction": 0.17, "split_seed": 0}
OPTIONS = {"width": 4, "epochs": 2, "batch_size": 1, "patches_per_epoch": 2, "num_workers": 0, "device": "cpu",
           "val_fraction": 0.5, "threads": 1}  # fmt: skip
#: The tubes are stored at 1 mm (RAS voxel order): the space stage 2 derives from them, and stage 1's here.
SPACE = CanonicalSpace((1.0, 1.0, 1.0))
PATCH = (32, 32, 32)
pytestmark = pytest.mark.usefixtures("one_thread")


def write_tubes(root: Path, n: int = 6) -> Path:
    """``n`` ImageCAS-style cases: noisy soft tissue with a tube along z and a tube across, both at 400 HU."""
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for i in range(1, n + 1):
        rng = np.random.default_rng(i)
        label = np.zeros(SHAPE, np.uint8)
        cy, cx = rng.integers(16, SHAPE[1] - 16, 2)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4] = 1
        z0, slope = rng.integers(6, SHAPE[0] - 6), rng.uniform(-0.4, 0.4)
        across = (zz - z0) ** 2 + (yy - 32 - slope * (xx - 32)) ** 2 <= 5
        label[across & (xx > 8) & (xx < SHAPE[2] - 8)] = 1
        image = rng.normal(0.0, 40.0, SHAPE).astype(np.float32) + 400.0 * label
        write_volume(root / f"{i}.img.nii.gz", image, spacing=(1.0, 1.0, 1.0))
        write_volume(root / f"{i}.label.nii.gz", label, spacing=(1.0, 1.0, 1.0))
    return root


def stage1_ids(data: Path) -> dict[str, list[str]]:
    """The split ``train_stage1`` makes with the options of :data:`STAGE1_SPLIT`."""
    return holdout_split(discover_cases(data), STAGE1_SPLIT["val_fraction"], STAGE1_SPLIT["test_fraction"],
                         STAGE1_SPLIT["split_seed"])


def write_stage1(path: Path, data: Path | None, seed: int = 0, provenance: bool = True,
                 space: CanonicalSpace | None = SPACE) -> Path:
    """An (untrained) SFANet of width 4 with the provenance ``train_stage1`` records for its hold-out split, in
    canonical ``space`` (None: an older checkpoint without one)."""
    torch.manual_seed(seed)
    model = build_sfanet("sfanet", 4, input_size=SHAPE[1:])
    config = {"architecture": "sfanet", "model": model.config(), "preprocess": {"unsharp_amount": 0.5}}
    if space is not None:
        config["canonical_space"] = space.to_dict()
    if provenance:
        ids = stage1_ids(data)
        config["training"] = {"stage": 1, "cases": {"train": ids["train"], "val": ids["val"]},
                              "config": {**STAGE1_SPLIT, "cache_dir": None}}
    return save_checkpoint(path, model, config)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tubes(tmp_path_factory.mktemp("tubes"))


@pytest.fixture(scope="module")
def stage1_ckpt(data, tmp_path_factory) -> Path:
    return write_stage1(tmp_path_factory.mktemp("stage1") / "best", data)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def config_for(data: Path, stage1: Path, out: Path, cache_dir: Path, **changes) -> stage2.Stage2TrainConfig:
    base = stage2.Stage2TrainConfig(data=data, stage1=stage1, out=out, cache_dir=cache_dir, patch_size=PATCH,
                                    **OPTIONS)
    return replace(base, **changes)


def cli_args(data: Path, stage1: Path, out: Path, cache_dir: Path) -> list[str]:
    args = ["train", "stage2", "--data", str(data), "--stage1", str(stage1), "--out", str(out),
            "--cache-dir", str(cache_dir), "--patch", *map(str, PATCH)]  # fmt: skip
    for key, value in OPTIONS.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


@pytest.fixture(scope="module")
def straight_runs(data, stage1_ckpt, cache_dir, tmp_path_factory):
    """``straight(preset)``: two epochs in one go with that augmentation preset, through the command line (made once
    per preset; ``default`` without ``--augment``, the default of a new run)."""
    return runs_per_preset(tmp_path_factory, lambda out: cli_args(data, stage1_ckpt, out, cache_dir))


@pytest.fixture(scope="module")
def straight_run(straight_runs) -> Path:
    return straight_runs("default")


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_cli_run_writes_loadable_generator_metrics_and_curves(straight_run, data, stage1_ckpt, cache_dir):
    loaded = load_stage("stage2", straight_run / "best.safetensors", torch.device("cpu"))
    config = loaded.config
    assert config["architecture"] == "attention-gan-3d" and config["model"]["width"] == 4
    assert config["input"] == {"patch_size": list(PATCH), "s_input": "mask", "threshold": 0.5}
    # X' must match stage 1's
    assert config["preprocess"] == PreprocessConfig.from_dict(load_checkpoint(stage1_ckpt)[1]["preprocess"]).to_dict()
    training = config["training"]
    ids = stage1_ids(data)
    assert sorted(training["cases"]["train"] + training["cases"]["val"]) == ids["val"]  # the pool
    assert training["cases"]["test"] == ids["test"]
    assert training["stage1"]["sha256"] == stage2.checkpoint_fingerprint(stage1_ckpt)
    assert training["lambda"] == 5.0 and training["delta_b0"] is True and training["topology"] is None
    assert training["config"]["augment"] == "default"
    assert training["augmentation"] == augment_preset("default", ndim=3).to_dict()
    assert training["patches"] == {"patch_size": list(PATCH), "vessel_fraction": 0.7, "s_share": 0.25, "jitter": 0.5}
    records = read_metrics(straight_run)
    assert [r["epoch"] for r in records] == [1, 2]
    for key in ("d_loss", "g_loss", "g_adv", "g_dice", "g_delta_b0", "val_dice_y", "val_dice_s", "val_b0_error_y",
                "val_b0_error_s", "patches_per_s"):
        assert all(isinstance(r[key], float) for r in records), key
    assert (straight_run / "curves.png").stat().st_size > 0
    state = load_resume_state(straight_run / "last.resume.pt")
    assert state["epoch"] == 2 and "discriminator" in state and "opt_d" in state and "opt_g" in state
    # the checkpoint refines a whole volume as inference will call it
    assert config["canonical_space"] == SPACE.to_dict() and training["stage1"]["canonical_space"] == SPACE.to_dict()
    assert training["target_spacing"] == "nnU-Net's rule over the headers of the 1 training case(s)"
    cache = CacheIndex.load(cache_dir, SPACE)
    val_id = training["cases"]["val"][0]
    s_path, _ = stage2.build_s_cache(cache, [val_id], load_stage("stage1", stage1_ckpt, torch.device("cpu")),
                                     training["stage1"]["sha256"])[val_id]
    y = refine_volume(loaded.model, cache.xprime(val_id, loaded.preprocess_config), np.load(s_path), patch_size=PATCH)
    assert y.shape == SHAPE and 0.0 <= y.min() and y.max() <= 1.0


def test_existing_run_is_not_overwritten_and_resume_refuses_changes(straight_run, data, stage1_ckpt, cache_dir,
                                                                    capsys):
    assert main(cli_args(data, stage1_ckpt, straight_run, cache_dir)) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    assert main(["train", "stage2", "--out", str(straight_run), "--resume", "--lambda", "3"]) == 2
    assert "resume with --lambda 3.0, but the run used 5.0" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["default", "none"])
def test_stop_mid_epoch_then_resume_matches_straight_run(straight_runs, preset, data, stage1_ckpt, cache_dir,
                                                         tmp_path):
    out = tmp_path / "stopped"
    seen = []  # progress infos; stop right after the first step of epoch 2

    def progress(done, total, info):
        seen.append(info)

    summary = stage2.train_stage2(config_for(data, stage1_ckpt, out, cache_dir, augment=preset), progress=progress,
                                  should_stop=lambda: bool(seen) and seen[-1].startswith("epoch 2/2 D"))
    assert summary["stopped"] and summary["epochs_done"] == 1
    assert load_checkpoint(out / "last")[1]["training"]["step_in_epoch"] == 1
    if preset == "none":  # stored as runs before the presets stored it (augment: true, today's 'none')
        last = json.loads((out / "last.json").read_text())
        last["training"]["config"]["augment"] = True
        (out / "last.json").write_text(json.dumps(last))
        state = load_resume_state(resume_path(out / "last"))
        state["config"]["augment"] = True
        save_resume_state(resume_path(out / "last"), state)
    assert main(["train", "stage2", "--out", str(out), "--resume"]) == 0
    assert load_checkpoint(out / "last")[1]["training"]["config"]["augment"] == preset
    straight_run = straight_runs(preset)
    assert_same_state(load_file(str(out / "last.safetensors")), load_file(str(straight_run / "last.safetensors")))
    ours, theirs = (load_resume_state(run / "last.resume.pt") for run in (out, straight_run))
    assert_same_state(ours["discriminator"], theirs["discriminator"])
    assert len(read_metrics(out)) == 2
    for key in ("d_loss", "g_loss", "val_dice_y"):
        assert read_metrics(out)[1][key] == pytest.approx(read_metrics(straight_run)[1][key], rel=1e-6)


def test_pool_rule_and_overlap_refusal(data, stage1_ckpt, tmp_path, capsys):
    cases = discover_cases(data)
    stage1_config = load_checkpoint(stage1_ckpt)[1]
    config = config_for(data, stage1_ckpt, tmp_path / "x", tmp_path / "cache")
    ids = stage1_ids(data)
    split = stage2.stage2_split(cases, stage1_config, config)
    assert sorted(split["train"] + split["val"]) == ids["val"] and len(split["val"]) == 1
    assert split["test"] == ids["test"]
    assert stage2.stage2_split(cases, stage1_config, config) == split  # deterministic
    # a split table whose val cases include a stage-1 training case
    table = tmp_path / "split.csv"
    rows = [f"{i}.img.nii.gz,{'Val' if i in (ids['train'][0], ids['val'][0]) else 'Training'}" for i in "123456"]
    table.write_text("FileName,Split-1\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=f"case\\(s\\) {ids['train'][0]} were used to train the stage-1 model"):
        stage2.stage2_split(cases, stage1_config, replace(config, split=table))
    args = cli_args(data, stage1_ckpt, tmp_path / "refused", tmp_path / "cache") + ["--split", str(table)]
    assert main(args) == 2
    assert "never saw" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "last.safetensors").exists()
    # a stage-1 checkpoint without provenance is refused unless explicitly allowed
    bare = load_checkpoint(write_stage1(tmp_path / "bare", None, provenance=False))[1]
    with pytest.raises(CheckpointError, match="records no training cases"):
        stage2.stage2_split(cases, bare, config)
    allowed = stage2.stage2_split(cases, bare, replace(config, allow_unknown_stage1=True))
    assert len(allowed["train"] + allowed["val"]) == 5 and allowed["test"] == ids["test"]


def test_s_cache_is_reused_and_keyed_by_the_stage1_model(straight_run, stage1_ckpt, cache_dir, tmp_path, monkeypatch):
    cache = CacheIndex.load(cache_dir, SPACE)
    case_id = load_checkpoint(straight_run / "last")[1]["training"]["cases"]["train"][0]
    fingerprint = stage2.checkpoint_fingerprint(stage1_ckpt)
    model = load_stage("stage1", stage1_ckpt, torch.device("cpu"))
    path, counts = stage2.build_s_cache(cache, [case_id], model, fingerprint)[case_id]
    assert path.parent.name == fingerprint[:16] and path.parent.parent.name == "stage1-s"
    s = np.load(path)
    assert s.dtype == np.uint8 and s.shape == SHAPE and counts == tuple(s.reshape(SHAPE[0], -1).sum(axis=1))
    assert json.loads(path.with_name(f"{path.name[:-4]}.json").read_text())["made"] == "from the cached HU"
    mtime = path.stat().st_mtime_ns

    def refuse(*args, **kwargs):
        raise AssertionError("S was recomputed")

    monkeypatch.setattr(stage2, "segment_slices", refuse)
    assert stage2.build_s_cache(cache, [case_id], model, fingerprint)[case_id] == (path, counts)
    assert path.stat().st_mtime_ns == mtime
    # another stage-1 model gets its own folder (and is computed)
    other = write_stage1(tmp_path / "other", None, seed=1, provenance=False)
    other_fp = stage2.checkpoint_fingerprint(other)
    assert other_fp != fingerprint
    monkeypatch.undo()
    other_path, _ = stage2.build_s_cache(cache, [case_id], load_stage("stage1", other, torch.device("cpu")),
                                         other_fp)[case_id]
    assert other_path.parent.name == other_fp[:16] and path.is_file()
    # a rebuilt HU file (new mtime) makes S stale
    os.utime(cache[case_id].hu_path, ns=(mtime + 10**9, mtime + 10**9))
    assert not stage2._s_entry_fresh(json.loads(path.with_name(f"{path.name[:-4]}.json").read_text()),
                                     path.parent, cache[case_id].hu_path, fingerprint)


def test_s_of_a_stage1_in_another_space_comes_from_the_files_through_both_mappings(straight_run, data, cache_dir,
                                                                                    tmp_path):
    """An older stage-1 checkpoint (no canonical space) runs on each file's own grid (RAS here): its S on stage 2's
    grid is what inference gives stage 2, the Predictor's S probabilities mapped into stage 2's space like the image
    and thresholded; without the cases' files it cannot be made."""
    from seg2refine_core.data.preprocess import preprocess
    from seg2refine_core.inference.stage1 import segment_slices
    from seg2refine_core.io.volume import read_volume

    cache = CacheIndex.load(cache_dir, SPACE)
    old = write_stage1(tmp_path / "old", None, provenance=False, space=None)
    assert stage2.checkpoint_fingerprint(old) != stage2.checkpoint_fingerprint(write_stage1(tmp_path / "new", None,
                                                                                            provenance=False))
    model = load_stage("stage1", old, torch.device("cpu"))
    assert model.space is None and cache.space == SPACE
    case_id, fingerprint = cache.case_ids[0], stage2.checkpoint_fingerprint(old)
    with pytest.raises(ValueError, match="must be made from its file"):
        stage2.build_s_cache(cache, [case_id], model, fingerprint)
    sources = {case.case_id: case for case in discover_cases(data)}
    path, counts = stage2.build_s_cache(cache, [case_id], model, fingerprint, sources=sources)[case_id]
    volume = read_volume(sources[case_id].image)
    prob = segment_slices(model.model, preprocess(volume.array, volume.spacing, model.preprocess_config), batch_size=4)
    expected = to_canonical(replace(volume, array=prob), SPACE)[0] >= 0.5
    s = np.load(path)
    np.testing.assert_array_equal(s, expected)
    np.testing.assert_array_equal(from_canonical(s.astype(np.float32), to_canonical(volume, SPACE)[1]) >= 0.5,
                                  prob >= 0.5)  # the file is RAS: S on the LPS grid flips back exactly
    entry = json.loads(path.with_name(f"{path.name[:-4]}.json").read_text())
    assert entry["made"] == "from the file, through both canonical mappings" and tuple(entry["counts"]) == counts


def test_ddp_ranks_end_with_identical_generators(data, stage1_ckpt, cache_dir, tmp_path):
    out = tmp_path / "ddp"
    hashes = run_ranks("stage2", data, out, cache_dir, stage1_ckpt, timeout=240)
    assert hashes[0] == hashes[1] and hashes[0][1] == "1"
    _, config = load_checkpoint(out / "last")
    assert config["training"]["world_size"] == 2 and config["training"]["topology"] == "cldice"
    (record,) = read_metrics(out)
    assert isinstance(record["g_topology"], float)


def test_baseline3d_trains_one_epoch_end_to_end(data, cache_dir, tmp_path):
    out = tmp_path / "baseline"
    args = ["train", "baseline3d", "--data", str(data), "--out", str(out), "--cache-dir", str(cache_dir),
            "--width", "4", "--patch", *map(str, PATCH), "--epochs", "1", "--batch-size", "1",
            "--patches-per-epoch", "2", "--num-workers", "0", "--device", "cpu", "--val-fraction", "0.34",
            "--test-fraction", "0.17"]  # fmt: skip
    assert main(args) == 0
    model, config = load_checkpoint(out / "best")
    assert config["architecture"] == "monai-unet-3d" and config["model"]["in_channels"] == 1
    ids = stage1_ids(data)
    assert config["training"]["cases"] == {"train": ids["train"], "val": ids["val"]}  # stage 1's cases
    assert config["training"]["config"]["augment"] == "default"
    assert config["training"]["augmentation"] == augment_preset("default", ndim=3).to_dict()
    record = read_metrics(out)[0]
    assert isinstance(record["train_loss"], float) and isinstance(record["val_dice"], float)
    prob = predict_baseline3d(model, CacheIndex.load(cache_dir, SPACE).xprime(ids["val"][0]), patch_size=PATCH)
    assert prob.shape == SHAPE and prob.dtype == np.float32 and 0.0 <= prob.min() and prob.max() <= 1.0


@pytest.mark.parametrize("preset", ["default", "none"])
def test_baseline3d_stopped_mid_epoch_resumes_exactly(preset, data, cache_dir, tmp_path):
    from seg2refine_core.training.baseline3d import Baseline3dTrainConfig, train_baseline3d

    def config(out: Path, **changes) -> Baseline3dTrainConfig:
        return Baseline3dTrainConfig(data=data, out=out, cache_dir=cache_dir, width=4, patch_size=PATCH, epochs=2,
                                     batch_size=1, patches_per_epoch=2, num_workers=0, device="cpu",
                                     val_fraction=0.34, test_fraction=0.17, augment=preset, **changes)

    train_baseline3d(config(tmp_path / "straight"))
    steps: list[int] = []
    stopped = train_baseline3d(config(tmp_path / "stopped"), should_stop=lambda: len(steps) >= 3,
                               on_step=lambda step, loss: steps.append(step))
    assert stopped["stopped"] and steps == [1, 2, 3]
    train_baseline3d(config(tmp_path / "stopped", resume=True))
    assert_same_state(load_file(str(tmp_path / "stopped" / "last.safetensors")),
                      load_file(str(tmp_path / "straight" / "last.safetensors")))
    assert read_metrics(tmp_path / "stopped")[1]["train_loss"] == read_metrics(tmp_path / "straight")[1]["train_loss"]


def test_baseline3d_starts_near_the_generators_vessel_prior():
    from seg2refine_core.nets.attention_gan import OUTPUT_PRIOR
    from seg2refine_core.training.baseline3d import Baseline3dTrainConfig, start_at_vessel_prior

    torch.manual_seed(0)
    config = Baseline3dTrainConfig(data=Path("."), out=Path("."), width=4)
    model = build_model({"architecture": "monai-unet-3d", "model": config.model_config()}).eval()
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = torch.sigmoid(model(x))
        start_at_vessel_prior(model)
        after = torch.sigmoid(model(x))
    assert float(before.mean()) > 0.3  # MONAI's default start: about half the patch called vessel
    assert abs(float(after.mean()) - OUTPUT_PRIOR) < 0.03
    assert float((after >= 0.5).float().mean()) < 0.01
