"""Inference plumbing: batched slices, sliding windows (count, blending, progress, stop), input listing."""

import numpy as np
import pytest
from torch import nn

from seg2refine_core.cli.predict import resolve_stages
from seg2refine_core.errors import Seg2RefineError, StopRequested
from seg2refine_core.inference.inputs import list_inputs
from seg2refine_core.inference.stage1 import default_batch_size, segment_slices
from seg2refine_core.inference.stage2 import count_windows, default_sw_batch_size, refine_volume


class SliceLogit(nn.Module):
    """logit = 10 * (x - 0.5): a 'model' whose probabilities are known exactly; records batch sizes."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return 10.0 * (x - 0.5)


class CopyS(nn.Module):
    """A 'generator' returning a large logit where the S channel is 1 and a small one elsewhere."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        assert x.shape[1] == 2
        return 20.0 * (x[:, 1:2] - 0.5)


def test_segment_slices_batches_and_values():
    rng = np.random.default_rng(0)
    xprime = rng.random((10, 12, 20)).astype(np.float32)
    model = SliceLogit()
    seen = []
    prob = segment_slices(model, xprime, batch_size=4, progress=lambda d, t, i: seen.append((d, t)))
    assert model.batches == [4, 4, 2]
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-10 * (xprime - 0.5))), rtol=1e-5, atol=1e-6)
    assert seen[-1] == (10, 10) and [d for d, _ in seen] == [4, 8, 10]


@pytest.mark.parametrize("shape, roi, overlap", [((40, 50, 33), (16, 32, 32), 0.25), ((10, 20, 20), (16, 32, 32), 0.5)])
def test_count_windows_matches_monai_and_output_is_blended_copy(shape, roi, overlap):
    rng = np.random.default_rng(1)
    xprime = rng.random(shape).astype(np.float32)
    s_mask = (rng.random(shape) > 0.7).astype(np.uint8)
    model = CopyS()
    seen = []
    y = refine_volume(model, xprime, s_mask, patch_size=roi, overlap=overlap, progress=lambda d, t, i: seen.append(d))
    assert model.calls == count_windows(shape, roi, overlap)
    assert seen[-1] == model.calls
    assert y.shape == shape and y.dtype == np.float32
    # every window agrees, so Gaussian blending must reproduce the per-voxel value exactly
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-20 * (s_mask - 0.5))), rtol=1e-4, atol=1e-5)


def test_stop_flag_interrupts_sliding_window():
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(StopRequested):
        refine_volume(CopyS(), np.zeros((32, 64, 64), np.float32), np.zeros((32, 64, 64), np.uint8),
                      patch_size=(16, 16, 16), should_stop=stop)


def test_resolve_stages_rules():
    assert resolve_stages(None, None) == ("bundled", "bundled")  # both bundled
    assert resolve_stages(None, None, "b3d.safetensors") == (None, None)  # the baseline alone
    assert resolve_stages("a.safetensors", None) == ("a.safetensors", None)  # stage 1 only
    assert resolve_stages(None, "b.safetensors") == ("bundled", "b.safetensors")
    assert resolve_stages("bundled", "bundled", "b3d.safetensors") == ("bundled", "bundled")


def test_list_inputs(tmp_path):
    for name in ("1.img.nii.gz", "1.label.nii.gz", "2.img.nii.gz", "1.s.nii.gz", "x.nrrd", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [c for c, _ in list_inputs([tmp_path])] == ["1", "2"]  # ImageCAS images only
    other = tmp_path / "other"
    other.mkdir()
    for name in ("a.nii.gz", "a.s.nii.gz", "a.y_prob.nii.gz", "b.label.nrrd", "c.nrrd"):
        (other / name).write_bytes(b"")
    assert [c for c, _ in list_inputs([other])] == ["a", "c"]
    with pytest.raises(Seg2RefineError, match="not found"):
        list_inputs([tmp_path / "nope.nii.gz"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(Seg2RefineError, match="no .nii"):
        list_inputs([tmp_path / "empty"])


def test_refine_volume_equals_monai_on_the_stacked_input():
    """Cutting S per window by coordinates (no (2, z, y, x) input) gives MONAI's own result, padding included."""
    import torch
    from monai.inferers import sliding_window_inference

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 1, 3, padding=1)).eval()
    rng = np.random.default_rng(3)
    for shape in [(40, 70, 50), (20, 40, 90)]:
        xprime = rng.random(shape, dtype=np.float32)
        s_mask = (rng.random(shape) > 0.8).astype(np.uint8)
        y = refine_volume(model, xprime, s_mask, patch_size=(32, 32, 32), sw_batch_size=3)
        stacked = torch.from_numpy(np.stack([xprime, s_mask.astype(np.float32)]))[None]
        with torch.inference_mode():
            ref = sliding_window_inference(stacked, (32, 32, 32), 3, lambda w: torch.sigmoid(model(w)), 0.25,
                                           mode="gaussian")
        np.testing.assert_allclose(y, ref[0, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_fold_batchnorm_keeps_outputs_and_leaves_the_model_alone():
    import torch
    from monai.networks.nets.basic_unet import TwoConv

    from seg2refine_core.inference.models import fold_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(TwoConv(2, 3, 8, act="relu", norm="batch", bias=False), nn.Conv2d(8, 4, 1),
                          nn.BatchNorm2d(4)).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.rand(2, 3, 16, 16)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 3
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert fold_batchnorm(model.train()) is model  # training mode: nothing folded


def test_default_batch_follows_the_slice_size_on_cpu_and_is_eight_on_gpus():
    assert default_batch_size("cpu") == 1
    assert [default_batch_size("cpu", (s, s)) for s in (512, 256, 128, 64, 16)] == [1, 1, 4, 8, 8]
    assert default_batch_size("cuda", (512, 512)) == 8 and default_batch_size("mps") == 8
    assert default_sw_batch_size("cpu") == 1 and default_sw_batch_size("cuda:0") == 8
