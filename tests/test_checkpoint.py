"""Checkpoints: safetensors + JSON round trip, refusal of pickles, clear errors on mismatched configs."""

import json

import pytest
import torch

from seg2refine_core.errors import CheckpointError
from seg2refine_core.io.checkpoint import load_checkpoint, read_config, save_checkpoint

UNET = {"spatial_dims": 3, "in_channels": 2, "out_channels": 1, "channels": [4, 8], "strides": [2]}


def _save(tmp_path, name="best", model_cfg=UNET):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    model = UNet(**model_cfg)
    path = save_checkpoint(tmp_path / name, model, {"architecture": "monai-unet-3d", "model": model_cfg,
                                                     "training": {"epochs": 3, "seed": 0}})
    return model, path


def test_round_trip_restores_identical_outputs(tmp_path):
    model, path = _save(tmp_path)
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded, config = load_checkpoint(tmp_path / "best.json")
    assert config["format"] == "seg2refine-checkpoint" and config["training"]["epochs"] == 3
    x = torch.rand(1, 2, 8, 8, 8)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert not loaded.training
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".pkl"])
def test_pickle_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="pickle checkpoints are refused"):
        load_checkpoint(path)


def test_config_that_does_not_match_weights_names_the_mismatch(tmp_path):
    _, path = _save(tmp_path)
    config_path = path.with_suffix(".json")
    config = json.loads(config_path.read_text())
    config["model"]["channels"] = [4, 16]
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"best.safetensors: weights do not match .*shape mismatch"):
        load_checkpoint(path)


def test_missing_or_foreign_config(tmp_path):
    _, path = _save(tmp_path)
    with pytest.raises(CheckpointError, match="other.json: checkpoint config not found"):
        read_config(tmp_path / "other.safetensors")
    path.with_suffix(".json").write_text('{"architecture": "sfanet"}')
    with pytest.raises(CheckpointError, match="not a Seg2Refine checkpoint config"):
        load_checkpoint(path)
    path.with_suffix(".json").write_text("{oops")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_truncated_weights_are_reported(tmp_path):
    _, path = _save(tmp_path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="best.safetensors: not a readable safetensors file"):
        load_checkpoint(path)


def test_half_precision_storage_loads_into_float32_model(tmp_path):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    model = UNet(**UNET).eval()
    full = save_checkpoint(tmp_path / "full", model, {"architecture": "monai-unet-3d", "model": UNET})
    half = save_checkpoint(tmp_path / "half", model, {"architecture": "monai-unet-3d", "model": UNET},
                           dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=2e-2, rtol=2e-2)
