"""The core Predictor: bundled weights give the stages' own outputs, the model-space seam, existing S, the baseline
beside the stages, cohort sharding and bad cases."""

import numpy as np
import pytest
import torch

from plugin_support import SHAPE, SPACING, tiny_checkpoints, tiny_phantom
from seg2refine_core.data.phantom import make_phantom, write_phantom_case
from seg2refine_core.data.preprocess import PreprocessConfig, preprocess
from seg2refine_core.errors import CheckpointError, Seg2RefineError
from seg2refine_core.inference.models import load_stage
from seg2refine_core.inference.predictor import Predictor
from seg2refine_core.inference.stage1 import default_batch_size, segment_slices
from seg2refine_core.inference.stage2 import count_windows, predict_baseline3d, refine_volume, window_size
from seg2refine_core.io.checkpoint import save_checkpoint
from seg2refine_core.io.volume import Volume

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("tiny"))


def tiny_volume() -> Volume:
    phantom = tiny_phantom()
    return Volume.from_array(phantom.image, phantom.spacing, phantom.affine)


def test_bundled_weights_give_exactly_the_stages_run_by_hand():
    """Checkpoints written before the Predictor (the bundled weights) load and give the same S and Y, bit for bit,
    as the two stages run one after the other on X' (what ``run_pipeline`` did before the split)."""
    phantom = make_phantom(shape=(40, 80, 72), seed=1000)
    result = Predictor.from_checkpoints(device="cpu").predict_volume(
        Volume.from_array(phantom.image, phantom.spacing, phantom.affine))
    cpu = torch.device("cpu")
    s1, s2 = load_stage("stage1", None, cpu), load_stage("stage2", None, cpu)
    xprime = preprocess(phantom.image, phantom.spacing, s1.preprocess_config)
    s_prob = segment_slices(s1.model, xprime, batch_size=default_batch_size(cpu, (80, 72)))
    s_mask = (s_prob >= 0.5).astype(np.uint8)
    y_prob = refine_volume(s2.model, preprocess(phantom.image, phantom.spacing, s2.preprocess_config), s_mask,
                           patch_size=window_size(s2))
    np.testing.assert_array_equal(result.s_prob, s_prob)
    np.testing.assert_array_equal(result.s_mask, s_mask)
    np.testing.assert_array_equal(result.y_prob, y_prob)
    np.testing.assert_array_equal(result.y_mask, (y_prob >= 0.5).astype(np.uint8))
    assert result.s_mask.any() and result.y_mask.any() and set(result.timings_s) == {"stage1", "stage2"}


class FlippedModelSpace(Predictor):
    """A model space that is the input mirrored left-right: what the canonical mapping will plug in."""

    def to_model_space(self, volume, s_mask=None):
        flipped = Volume.from_array(volume.array[..., ::-1].copy(), volume.spacing)
        return flipped, None if s_mask is None else s_mask[..., ::-1].copy()

    def from_model_space(self, prob, volume):
        return prob[..., ::-1].copy()


def test_outputs_come_back_through_the_model_space_seam_and_are_thresholded_there(tiny):
    s1, s2 = tiny
    volume = tiny_volume()
    options = {"device": "cpu", "threshold": 0.45}
    plain = Predictor.from_checkpoints(s1, s2, **options)
    flipped_input = Volume.from_array(volume.array[..., ::-1].copy(), volume.spacing)
    expected = plain.predict_volume(flipped_input)
    result = FlippedModelSpace.from_checkpoints(s1, s2, **options).predict_volume(volume)
    assert not np.array_equal(result.y_prob, plain.predict_volume(volume).y_prob)  # the mapping matters here
    for key in ("s", "y"):
        prob = getattr(result, f"{key}_prob")
        np.testing.assert_array_equal(prob, getattr(expected, f"{key}_prob")[..., ::-1])
        np.testing.assert_array_equal(getattr(result, f"{key}_mask"), (prob >= 0.45).astype(np.uint8))
    # an existing S given on the input's grid reaches stage 2 through the same mapping
    only2 = FlippedModelSpace.from_checkpoints(None, s2, **options).predict_volume(volume, s_mask=result.s_mask)
    np.testing.assert_array_equal(only2.y_prob, result.y_prob)
    assert only2.s_mask is None


def test_baseline_beside_both_stages_in_one_progress_count(tiny, tmp_path):
    from monai.networks.nets import UNet

    model_cfg = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [4, 8], "strides": [2]}
    torch.manual_seed(0)
    unet = UNet(**model_cfg)
    b3d = save_checkpoint(tmp_path / "b3d", unet, {
        "architecture": "monai-unet-3d", "model": model_cfg, "preprocess": PreprocessConfig().to_dict(),
        "input": {"patch_size": [16, 32, 32], "channels": ["xprime"]}})
    predictor = Predictor.from_checkpoints(*tiny, b3d, device="cpu")
    assert predictor.output_keys == ("s", "y", "b")
    seen = []
    result = predictor.predict_volume(tiny_volume(), progress=lambda d, t, i: seen.append((d, t, i)))
    total = SHAPE[0] + count_windows(SHAPE, (16, 32, 32), 0.25) * 2
    assert seen[-1][:2] == (total, total) and [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert list(result.outputs()) == ["s", "y", "b"] and "baseline3d" in result.timings_s
    xprime = preprocess(tiny_phantom().image, SPACING, PreprocessConfig())
    np.testing.assert_array_equal(result.b_prob, predict_baseline3d(unet.eval(), xprime, patch_size=(16, 32, 32)))
    with pytest.raises(CheckpointError, match="cannot be used for baseline3d"):
        Predictor.from_checkpoints(None, None, tiny[1], device="cpu")
    with pytest.raises(CheckpointError, match="no bundled weights for baseline3d"):
        Predictor.from_checkpoints(None, None, "bundled", device="cpu")


def test_options_are_checked_before_any_checkpoint_is_read(tmp_path):
    with pytest.raises(Seg2RefineError, match="--threshold must be between 0 and 1"):
        Predictor.from_checkpoints(tmp_path / "missing.safetensors", threshold=1.0)
    with pytest.raises(CheckpointError, match="stage 2 refines S"):
        Predictor.from_checkpoints(None, "bundled", device="cpu").predict_volume(tiny_volume())


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Five small cases with different anatomies, ids c0..c4."""
    root = tmp_path_factory.mktemp("cohort")
    for i in range(5):
        write_phantom_case(make_phantom(shape=SHAPE, spacing=SPACING, seed=20 + i), root, f"c{i}")
    return root


def test_shards_split_the_cohort_without_loss_or_overlap(tiny, cohort, tmp_path):
    predictor = Predictor.from_checkpoints(tiny[0], None, device="cpu")
    taken = []
    for rank in range(3):
        seen = []
        summary = predictor.predict_files([cohort], tmp_path / f"rank{rank}", shard=(rank, 3), on_case=seen.append)
        assert [c.case_id for c in summary.cases] == [c.case_id for c in seen]  # alone: its own cases
        assert all(c.rank == rank and c.error is None for c in seen)
        assert sorted(p.name for p in (tmp_path / f"rank{rank}").iterdir()) == [f"{c.case_id}.s.nii.gz" for c in seen]
        taken += [c.case_id for c in seen]
    assert sorted(taken) == [f"c{i}" for i in range(5)] and len(set(taken)) == 5


def test_a_case_that_cannot_be_read_is_reported_and_the_others_go_on(tiny, cohort, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a volume")
    predictor = Predictor.from_checkpoints(tiny[0], None, device="cpu")
    steps = []
    summary = predictor.predict_files([cohort / "c1.img.nii.gz", bad, cohort / "c3.img.nii.gz"], tmp_path / "out",
                                      save_prob=True, progress=lambda d, t, i: steps.append(i))
    assert [c.case_id for c in summary.cases] == ["c1", "broken", "c3"]
    assert [c.case_id for c in summary.failed] == ["broken"] and str(bad) in summary.failed[0].error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "c1.s.nii.gz", "c1.s_prob.nii.gz", "c3.s.nii.gz", "c3.s_prob.nii.gz"]
    assert steps[0].startswith("c1 (1/3): stage 1: slice") and steps[-1].startswith("c3 (3/3): ")
    assert summary.to_dict()["cases"][1]["error"] == summary.failed[0].error
