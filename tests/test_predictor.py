"""The core Predictor: bundled weights give the stages' own outputs, the model-space seam, the canonical space of
each stage (four voxel orders, three voxel sizes, stages in different spaces, old checkpoints on the native grid),
existing S, the baseline beside the stages, cohort sharding, bad cases, and input discovery and output names with
DICOM series."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from dicom_support import ct_series
from plugin_support import SHAPE, SPACING, tiny_checkpoints, tiny_phantom
from seg2refine_core.data.canonical import CanonicalNotice, CanonicalSpace, from_canonical, to_canonical
from seg2refine_core.data.phantom import make_phantom, write_phantom_case
from seg2refine_core.data.preprocess import PreprocessConfig, preprocess
from seg2refine_core.errors import CheckpointError, Seg2RefineError, VolumeError
from seg2refine_core.evaluation.metrics import dice
from seg2refine_core.inference.inputs import check_output_format, check_outputs, list_inputs, output_path
from seg2refine_core.inference.models import load_stage
from seg2refine_core.inference.pipeline import run_pipeline
from seg2refine_core.inference.predictor import Predictor
from seg2refine_core.inference.roles import BUNDLED
from seg2refine_core.inference.stage1 import default_batch_size, segment_slices
from seg2refine_core.inference.stage2 import count_windows, predict_baseline3d, refine_volume, window_size
from seg2refine_core.io.checkpoint import checkpoint_paths, save_checkpoint
from seg2refine_core.io.volume import Volume, read_volume, write_mask, write_volume

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
    assert result.s_mask.any() and result.y_mask.any()
    assert set(result.timings_s) == {"stage1", "stage2", "mapping"}  # the phantom is in the weights' own space
    assert result.grids["stage1"] == "LPS 1 x 0.7 x 0.7 mm: 40 x 80 x 72 voxels (the input's own grid)"


class FlippedModelSpace(Predictor):
    """A model space that is the canonical one mirrored left-right: the seam decides what every model sees."""

    def to_model_space(self, volume, model):
        array, mapping = super().to_model_space(volume, model)
        return array[..., ::-1].copy(), mapping

    def from_model_space(self, prob, mapping):
        return super().from_model_space(prob[..., ::-1].copy(), mapping)


def test_outputs_come_back_through_the_model_space_seam_and_are_thresholded_there(tiny):
    s1, s2 = tiny
    volume = tiny_volume()
    options = {"device": "cpu", "threshold": 0.45}
    plain = Predictor.from_checkpoints(s1, s2, **options)
    flipped_input = Volume.from_array(volume.array[..., ::-1].copy(), volume.spacing, volume.affine)
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
    with pytest.raises(VolumeError, match=r"the S mask has shape \(4, 4, 4\)"):
        plain.predict_volume(volume, s_mask=np.zeros((4, 4, 4), np.uint8))


def with_space(checkpoint: Path, folder: Path, space: CanonicalSpace | None) -> Path:
    """A copy of ``checkpoint`` in ``folder`` whose JSON records ``space`` (None: no canonical space, an old one)."""
    weights, config_path = checkpoint_paths(checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights.name
    shutil.copyfile(weights, target)
    config = json.loads(config_path.read_text())
    config.pop("canonical_space", None)
    if space is not None:
        config["canonical_space"] = space.to_dict()
    target.with_suffix(".json").write_text(json.dumps(config))
    return target


def test_stages_in_different_spaces_each_map_their_input_and_s_goes_through_stage2s_mapping(tiny, tmp_path):
    """Stage 1 on the phantom's own grid, stage 2 on a coarser one: S (stage 1's probabilities on the input grid)
    is mapped into stage 2's space like the image and thresholded; Y comes back to the input grid."""
    space1, space2 = CanonicalSpace(SPACING), CanonicalSpace((1.0, 1.4, 1.4))
    s1, s2 = with_space(tiny[0], tmp_path / "a", space1), with_space(tiny[1], tmp_path / "b", space2)
    volume = tiny_volume()
    seen = []
    result = Predictor.from_checkpoints(s1, s2, device="cpu").predict_volume(
        volume, progress=lambda d, t, i: seen.append((d, t)))
    cpu = torch.device("cpu")
    m1, m2 = load_stage("stage1", s1, cpu), load_stage("stage2", s2, cpu)
    assert (m1.space, m2.space) == (space1, space2)
    by_hand = run_pipeline(volume.array, SPACING, m1, None)  # stage 1's space is the input's grid here
    np.testing.assert_array_equal(result.s_prob, by_hand.s_prob)
    image2, mapping2 = to_canonical(volume, space2)
    s2_input = to_canonical(Volume.from_array(by_hand.s_prob, SPACING, volume.affine), space2)[0] >= 0.5
    assert mapping2.shape == (32, 24, 24)
    y2 = refine_volume(m2.model, preprocess(image2, mapping2.spacing, m2.preprocess_config),
                       s2_input.astype(np.uint8), patch_size=window_size(m2))
    np.testing.assert_array_equal(result.y_prob, from_canonical(y2, mapping2))
    assert result.y_prob.shape == volume.shape and result.y_mask.dtype == np.uint8
    assert "(the input's own grid)" in result.grids["stage1"] and "32 x 24 x 24" in result.grids["stage2"]
    total = SHAPE[0] + count_windows((32, 24, 24), window_size(m2), 0.25)
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert set(result.timings_s) == {"stage1", "stage2", "mapping"}


def test_an_old_checkpoint_runs_on_the_native_grid_with_a_one_line_notice(tmp_path):
    """The bundled weights without their canonical_space entry: the notice names the checkpoint, and the models
    see the file's own voxels (here 2.0 x 1.4 x 1.4 mm, which the recorded space would resample)."""
    old1 = with_space(BUNDLED["stage1"], tmp_path / "old1", None)
    old2 = with_space(BUNDLED["stage2"], tmp_path / "old2", None)
    with pytest.warns(CanonicalNotice) as notices:
        predictor = Predictor.from_checkpoints(old1, old2, device="cpu")
    texts = [str(n.message) for n in notices]
    assert len(texts) == 2 and all("no canonical space recorded (older checkpoint); the model runs on the input's "
                                   "native voxel grid" in t and "\n" not in t for t in texts)
    assert str(old1) in texts[0] and str(old2) in texts[1]
    phantom = make_phantom((24, 32, 32), (2.0, 1.4, 1.4), seed=5)
    volume = Volume.from_array(phantom.image, phantom.spacing, phantom.affine)
    result = predictor.predict_volume(volume)
    native = run_pipeline(phantom.image, phantom.spacing, predictor.stage1, predictor.stage2)
    np.testing.assert_array_equal(result.y_prob, native.y_prob)
    np.testing.assert_array_equal(result.s_mask, native.s_mask)
    assert result.grids["stage1"] == "native grid 24 x 32 x 32 (no canonical space recorded)"
    recorded = Predictor.from_checkpoints(device="cpu").predict_volume(volume)
    assert recorded.grids["stage1"] == "LPS 1 x 0.7 x 0.7 mm: 48 x 64 x 64 voxels"
    assert recorded.y_prob.shape == volume.shape and not np.array_equal(recorded.y_prob, native.y_prob)


ORDERS = ("LPS", "RAS", "LPI", "LSP")  # the phantom's own order, two flips, axes permuted (y <-> z)


def reoriented(array: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """``array`` (z, y, x) with ``affine`` stored in voxel order ``codes`` (exact: nibabel); (array, affine)."""
    image = nib.Nifti1Image(np.ascontiguousarray(array.T), affine)
    image = image.as_reoriented(ornt_transform(io_orientation(affine), axcodes2ornt(tuple(codes))))
    return np.ascontiguousarray(np.asarray(image.dataobj).T), image.affine


def test_one_world_volume_in_four_voxel_orders_gives_the_same_world_masks(tmp_path):
    """The bundled weights on one phantom stored as LPS, RAS, LPI and with permuted axes (files written and read
    back): S and Y agree in world space (compared after an exact reorientation back to LPS) at Dice >= 0.99, and
    are written on each file's own grid with its affine. Before canonical spaces: Y agreed at 0.64 / 0.64 / 0.11
    (benchmarks/canonical_space.py dice)."""
    # the demo anatomy (field of view >= 96 x 89.6 x 89.6 mm) with every axis resampled; LSP permutes them
    phantom = make_phantom((48, 64, 82), (2.0, 1.4, 1.1), seed=1000)
    predictor = Predictor.from_checkpoints(device="cpu")
    world = {}
    for codes in ORDERS:
        image, affine = reoriented(phantom.image, phantom.affine, codes)
        path = write_volume(tmp_path / f"{codes}.nii.gz", image, affine=affine)
        volume = read_volume(path)
        assert nib.aff2axcodes(volume.affine) == tuple(codes)
        result = predictor.predict_volume(volume)
        written = predictor.write_outputs(codes, result, volume, tmp_path / "out")
        for out in written:
            back = read_volume(out)
            assert back.shape == volume.shape and np.allclose(back.affine, volume.affine)
        world[codes] = [reoriented(m, volume.affine, "LPS")[0] for m in (result.s_mask, result.y_mask)]
    assert dice(world["LPS"][1], phantom.label) > 0.3  # measured 0.358
    for codes in ORDERS[1:]:
        for mine, reference in zip(world[codes], world["LPS"], strict=True):
            assert dice(mine, reference) >= 0.99, codes


def test_bundled_weights_score_one_anatomy_at_other_voxel_sizes_close_to_their_own():
    """The demo phantom's anatomy (seed 1000, field of view 96 x 89.6 x 89.6 mm or a little more) at 1.0 x s x s mm,
    s = 0.4, 0.7, 1.2: Y Dice within 0.1 of its score at the weights' own 0.7 mm (measured 0.475 / 0.458 / 0.388;
    the weights bundled before, trained without blur or low-resolution augmentation: 0.598 / 0.600 / 0.509; before
    canonical spaces the native grid gave 0.35 / 0.66 / 0.09 on seed 4321; README, Canonical space)."""
    voxels = {0.7: 128, 0.4: 224, 1.2: 76}  # 76 x 1.2 = 91.2 mm: the same anatomy (scale 1) on whole voxels
    predictor = Predictor.from_checkpoints(device="cpu")
    scores = {}
    for size, n in voxels.items():
        phantom = make_phantom((96, n, n), (1.0, size, size), seed=1000)
        result = predictor.predict_volume(Volume.from_array(phantom.image, phantom.spacing, phantom.affine))
        assert result.y_mask.shape == phantom.label.shape
        scores[size] = dice(result.y_mask, phantom.label)
    assert scores[0.7] > 0.4, scores
    assert abs(scores[0.4] - scores[0.7]) <= 0.1 and abs(scores[1.2] - scores[0.7]) <= 0.1, scores


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


def test_input_discovery_takes_each_dicom_series_folder_as_a_case_and_skips_outputs(tmp_path, monkeypatch):
    hu = np.full((4, 8, 10), 40)
    root = tmp_path / "cohort"
    a_files = ct_series(root / "a", hu, series_uid="1.2.3.1")
    ct_series(root / "p1" / "st" / "se", hu, series_uid="1.2.3.2")  # a nested (PACS) layout: named by its folder
    write_volume(root / "n.nii.gz", hu.astype(np.int16))
    write_volume(root / "n.s.nii.gz", hu.astype(np.uint8))  # an earlier output
    (root / "notes.txt").write_text("not an image")
    a = read_volume(root / "a")
    write_mask(root / "out" / "a.y.seg.dcm", np.ones(a.shape, np.uint8), like=a)  # earlier SEG outputs only
    write_volume(root / "out" / "a.y_prob.nii.gz", np.zeros(a.shape, np.float32))
    assert list_inputs([root]) == [("n", root / "n.nii.gz"), ("a", root / "a"), ("se", root / "p1" / "st" / "se")]
    # a DICOM file reads its series and is named by its folder; so is "." inside a series folder
    assert list_inputs([a_files[2]]) == [("a", a_files[2])]
    monkeypatch.chdir(root / "a")
    assert list_inputs(["."]) == [("a", Path("."))]
    # --series keeps the DICOM cases that hold it
    assert list_inputs([root], series="1.2.3.2") == [("se", root / "p1" / "st" / "se")]
    with pytest.raises(Seg2RefineError, match=r"--series 9: no DICOM series with this UID in the inputs; the series "
                                              r"there are: 1\.2\.3\.1 \(CT #3 'test CT', 4 slices\); 1\.2\.3\.2"):
        list_inputs([root], series="9")
    with pytest.raises(Seg2RefineError, match="notes.txt: not a volume"):
        list_inputs([root / "notes.txt"])
    with pytest.raises(Seg2RefineError, match=r"share the case id\(s\) a \(.*a, .*IM"):
        list_inputs([root / "a", a_files[0]])


def test_output_names_and_checks_follow_the_output_format(tmp_path):
    out = tmp_path / "out"
    names = {fmt: output_path(out, "c", "y", output_format=fmt).name for fmt in ("nifti", "nrrd", "metaimage",
                                                                                   "dicom-seg")}
    assert names == {"nifti": "c.y.nii.gz", "nrrd": "c.y.nrrd", "metaimage": "c.y.mha", "dicom-seg": "c.y.seg.dcm"}
    assert output_path(out, "c", "y", prob=True, output_format="dicom-seg").name == "c.y_prob.nii.gz"
    series = tmp_path / "c"
    ct_series(series, np.zeros((3, 4, 4)))
    cases = [("c", series)]
    check_output_format(cases, "dicom-seg")
    with pytest.raises(Seg2RefineError, match="--output-format must be one of nifti, nrrd, metaimage, dicom-seg"):
        check_output_format(cases, "png")
    nifti = write_volume(tmp_path / "n.nii.gz", np.zeros((3, 4, 4), np.int16))
    with pytest.raises(Seg2RefineError, match="n.nii.gz: --output-format dicom-seg needs a DICOM series input"):
        check_output_format([*cases, ("n", nifti)], "dicom-seg")
    out.mkdir()
    (out / "c.y.seg.dcm").write_bytes(b"")
    check_outputs(cases, out, ["s", "y"], save_prob=True, overwrite=False)  # NIfTI names: nothing in the way
    with pytest.raises(Seg2RefineError, match=r"c\.y\.seg\.dcm: already exists; pass --overwrite"):
        check_outputs(cases, out, ["s", "y"], save_prob=False, overwrite=False, output_format="dicom-seg")


def test_write_outputs_in_each_format_keeps_the_series_geometry(tiny, tmp_path):
    """Masks in the asked format on the source's grid, probabilities as NIfTI."""
    ct_series(tmp_path / "ct", np.round(tiny_phantom().image).astype(np.int32), spacing=SPACING)
    source = read_volume(tmp_path / "ct")
    predictor = Predictor.from_checkpoints(tiny[0], None, device="cpu")
    result = predictor.predict_volume(source)
    for fmt in ("nifti", "nrrd", "metaimage"):
        written = predictor.write_outputs("ct", result, source, tmp_path / fmt, save_prob=True, output_format=fmt)
        assert [p.name for p in written] == [output_path(".", "ct", "s", output_format=fmt).name, "ct.s_prob.nii.gz"]
        for path in written:
            back = read_volume(path)
            np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)
        np.testing.assert_array_equal(read_volume(written[0]).array, result.s_mask)
    (seg,) = predictor.write_outputs("ct", result, source, tmp_path / "seg", output_format="dicom-seg")
    assert seg.name == "ct.s.seg.dcm" and seg.stat().st_size > 0
