"""Canonical space: any voxel order and spacing maps to one model grid and back (seg2refine_core.data.canonical)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

from seg2refine_core.data.canonical import (
    CONFIG_KEY,
    CanonicalNotice,
    CanonicalSpace,
    canonical_affine,
    canonical_geometry,
    from_canonical,
    layer_volume,
    resample,
    resample_label,
    space_from_config,
    target_spacing,
    to_canonical,
)
from seg2refine_core.data.phantom import make_phantom, phantom_affine
from seg2refine_core.errors import CheckpointError, Seg2RefineError, VolumeError
from seg2refine_core.evaluation.metrics import betti0, cldice, dice
from seg2refine_core.io.volume import Volume, read_volume

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE, SPACING = (24, 32, 40), (2.0, 1.4, 1.2)
ORDERS = ("LPS", "RAS", "LPI", "LSP")  # the phantom's own order, two flips, and axes permuted (y <-> z)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, SPACING, seed=3)


@pytest.fixture(scope="module")
def stored(phantom, tmp_path_factory):
    """The phantom's image and label re-stored by nibabel in each voxel order, read back as Volumes."""
    folder = tmp_path_factory.mktemp("orders")
    out = {}
    for codes in ORDERS:
        pair = []
        for name, data in (("img", phantom.image), ("label", phantom.label)):
            image = nib.Nifti1Image(np.ascontiguousarray(data.T), phantom.affine)
            image = image.as_reoriented(ornt_transform(io_orientation(phantom.affine), axcodes2ornt(tuple(codes))))
            nib.save(image, str(folder / f"{codes}.{name}.nii.gz"))
            pair.append(read_volume(folder / f"{codes}.{name}.nii.gz"))
        out[codes] = tuple(pair)
    return out


def test_phantom_is_stored_in_the_canonical_order(phantom):
    assert nib.aff2axcodes(phantom_affine(SHAPE, SPACING)) == ("L", "P", "S")
    array, mapping = to_canonical(Volume.from_array(phantom.image, SPACING, phantom.affine), CanonicalSpace(SPACING))
    assert mapping.is_identity and mapping.shape == SHAPE
    np.testing.assert_array_equal(array, phantom.image)
    np.testing.assert_allclose(mapping.affine, phantom.affine)


def test_four_voxel_orders_give_the_same_canonical_arrays_exactly(phantom, stored):
    assert {v.shape for v, _ in stored.values()} == {SHAPE, (32, 24, 40)}
    assert nib.aff2axcodes(stored["RAS"][0].affine) == ("R", "A", "S")
    space = CanonicalSpace(SPACING)
    for codes, (image, label) in stored.items():
        array, mapping = to_canonical(image, space)
        mask, _ = to_canonical(label, space, kind="label")
        np.testing.assert_array_equal(array, phantom.image, err_msg=codes)
        np.testing.assert_array_equal(mask, phantom.label, err_msg=codes)
        assert mapping.shape == SHAPE and mask.dtype == np.uint8 and array.dtype == np.float32
        np.testing.assert_allclose(mapping.affine, phantom.affine, atol=1e-4, err_msg=codes)
        assert mapping.is_identity == (codes == "LPS")


def test_geometry_in_canonical_axes_for_the_target_spacing_rule(stored):
    for codes, (image, _) in stored.items():
        assert canonical_geometry(image.shape, image.affine) == (SHAPE, pytest.approx(SPACING)), codes
    assert stored["LSP"][0].spacing == pytest.approx((1.4, 2.0, 1.2))  # the file's own order differs


def test_four_voxel_orders_agree_after_resampling(stored):
    space = CanonicalSpace((1.5, 1.0, 1.0))
    ref_image, ref_map = to_canonical(stored["LPS"][0], space)
    ref_label, _ = to_canonical(stored["LPS"][1], space, kind="label")
    assert ref_map.shape == (32, 45, 48)
    assert np.allclose(ref_map.spacing, (1.5, 0.9956, 1.0), atol=1e-3)  # n * s / n' keeps the field of view
    for codes in ORDERS[1:]:
        array, mapping = to_canonical(stored[codes][0], space)
        mask, _ = to_canonical(stored[codes][1], space, kind="label")
        assert mapping.shape == ref_map.shape
        np.testing.assert_allclose(mapping.affine, ref_map.affine, atol=1e-4)
        np.testing.assert_allclose(array, ref_image, atol=0.01)  # HU; float rounding of the sample positions only
        np.testing.assert_array_equal(mask, ref_label, err_msg=codes)  # labels are resampled in canonical order


def _smooth_field(points_ras: np.ndarray) -> np.ndarray:
    """A smooth function of RAS millimetres (wavelengths of 30-50 mm)."""
    x, y, z = points_ras
    return np.sin(x / 8.0) * np.cos(y / 6.0) + 0.5 * np.sin(z / 5.0 + 0.3)


def _sample(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")  # (z, y, x) = file (k, j, i)
    ras = affine[:3, :3] @ np.stack([ii.ravel(), jj.ravel(), kk.ravel()]) + affine[:3, 3:4]
    return _smooth_field(ras).reshape(shape).astype(np.float32)


# RAS voxel order with anisotropic voxels and an origin off zero; axes permuted (file x -> S, y -> R, z -> A); and
# an oblique LPS acquisition (tilted 0.15 rad about z), mapped to the nearest axes without rotating the voxels
_C, _S = np.cos(0.15), np.sin(0.15)
ODD_AFFINES = {
    "RAS": np.array([[1.2, 0, 0, -20.0], [0, 0.9, 0, 13.0], [0, 0, 2.5, -40.0], [0, 0, 0, 1]]),
    "SRA": np.array([[0, -0.8, 0, 25.0], [0, 0, 1.1, -9.0], [1.7, 0, 0, -33.0], [0, 0, 0, 1]]),
    "oblique": np.array([[-1.1 * _C, -0.9 * _S, 0, 10.0], [1.1 * _S, -0.9 * _C, 0, 5.0], [0, 0, 2.0, 0], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("codes", list(ODD_AFFINES))
def test_canonical_grid_samples_the_same_world_and_maps_back(codes):
    affine = ODD_AFFINES[codes]
    shape = (20, 36, 30)
    volume = Volume.from_array(_sample(shape, affine), (1.0, 1.0, 1.0), affine)
    coarse = CanonicalSpace((1.0, 2.2, 2.4))  # voxel ratios near 2: a half-voxel slip would show (mean error 0.06)
    array, mapping = to_canonical(volume, coarse)
    assert nib.aff2axcodes(mapping.affine) == ("L", "P", "S")
    np.testing.assert_allclose(mapping.spacing, coarse.spacing, rtol=0.05)
    # the canonical voxels hold the world function at their own centres (the mapping's affine is right)
    error = np.abs(array - _sample(mapping.shape, mapping.affine))
    assert error.mean() < 0.015 and error.max() < 0.08
    space = CanonicalSpace((1.8, 1.0, 1.0))
    array, mapping = to_canonical(volume, space)
    back = from_canonical(array, mapping)
    assert back.shape == volume.shape and back.dtype == np.float32
    assert np.abs(back - volume.array).max() < 0.05
    assert np.abs(back - volume.array).mean() < 0.01


def test_pure_reorientation_round_trip_is_exact(stored):
    image = stored["LSP"][0]
    array, mapping = to_canonical(image, CanonicalSpace(SPACING))
    np.testing.assert_array_equal(from_canonical(array, mapping), image.array)


def test_from_canonical_checks_the_shape(stored):
    array, mapping = to_canonical(stored["RAS"][0], CanonicalSpace((1.5, 1.0, 1.0)))
    with pytest.raises(VolumeError, match="does not match"):
        from_canonical(array[:-1], mapping)


def test_labels_keep_thin_vessels_connected():
    fine = make_phantom((96, 128, 128), (1.0, 0.7, 0.7), seed=2).label
    native = make_phantom((48, 64, 64), (2.0, 1.4, 1.4), seed=2).label  # same anatomy drawn at the target grid
    mask = resample_label(fine, native.shape)
    assert betti0(fine) == betti0(native) == betti0(mask) == 2
    assert betti0(resample(fine, native.shape) >= 0.5) > 5  # a plain threshold breaks the thin branches
    assert dice(mask, native) > 0.8 and cldice(mask, native) > 0.85


@pytest.mark.parametrize("factor", [1 / 3, 2.5])
def test_a_one_voxel_diagonal_line_stays_one_component(factor):
    line = np.zeros((30, 30, 30), dtype=np.uint8)
    idx = np.arange(2, 28)
    line[idx, idx, 29 - idx] = 1
    shape = tuple(int(round(30 * factor)) for _ in range(3))
    mask = resample_label(line, shape)
    assert betti0(mask) == 1
    assert mask.sum() <= 3 * shape[0]  # a line, not a blob


def test_memory_check_refuses_before_allocating():
    coarse = Volume.from_array(np.zeros((4, 4, 4), np.float32), (5.0, 5.0, 5.0),
                               canonical_affine((4, 4, 4), (5.0, 5.0, 5.0)))
    with pytest.raises(VolumeError, match=r"needs \d+\.\d GiB but only .* GiB of memory is available") as err:
        to_canonical(coarse, CanonicalSpace((0.001, 0.001, 0.001)))  # 20000^3 voxels
    assert "\n" not in str(err.value) and "canonical grid (20000, 20000, 20000)" in str(err.value)
    space = CanonicalSpace((2.5, 2.5, 2.5))  # 8^3 float32 = 2 KiB per canonical array
    with pytest.raises(VolumeError):
        to_canonical(coarse, space, copies=2, available_bytes=3000)
    array, mapping = to_canonical(coarse, space, available_bytes=3000)
    assert array.shape == (8, 8, 8)
    with pytest.raises(VolumeError, match="back to the input grid"):
        from_canonical(array, mapping, available_bytes=100)


def test_target_spacing_is_the_median_per_axis():
    spacings = [(0.5, 0.40, 0.40), (0.625, 0.35, 0.35), (0.5, 0.45, 0.45), (1.0, 0.30, 0.30)]
    assert target_spacing(spacings) == pytest.approx((0.5625, 0.375, 0.375))


def test_target_spacing_takes_the_10th_percentile_for_strongly_anisotropic_data():
    z = [5.0] * 8 + [2.5, 1.5]
    spacings = [(s, 0.7, 0.7) for s in z]
    shapes = [(40, 512, 512)] * 10
    expected_z = float(np.percentile(z, 10))  # 2.4: the few thin-slice cases are not interpolated badly
    assert target_spacing(spacings, shapes) == pytest.approx((expected_z, 0.7, 0.7))
    assert target_spacing(spacings) == pytest.approx((expected_z, 0.7, 0.7))  # spacing test alone without shapes
    # as many slices as in-plane voxels: not anisotropic in nnU-Net's sense, the median stays
    assert target_spacing(spacings, [(512, 512, 512)] * 10) == pytest.approx((5.0, 0.7, 0.7))
    # the 10th percentile never goes finer than the coarsest other axis
    few_thin = [(s, 0.7, 1.5) for s in [6.0] * 8 + [0.5, 0.5]]
    assert target_spacing(few_thin, shapes) == pytest.approx((1.5 + 1e-5, 0.7, 1.5))


@pytest.mark.parametrize("bad", [[], [(1.0, 1.0)], [(1.0, 0.0, 1.0)], [(1.0, float("nan"), 1.0)]])
def test_target_spacing_rejects_bad_input(bad):
    with pytest.raises(Seg2RefineError, match="target spacing"):
        target_spacing(bad)


def test_space_round_trips_through_checkpoint_json():
    space = CanonicalSpace((1.0, 0.7, 0.7))
    config = json.loads(json.dumps({"arch": "sfanet", CONFIG_KEY: space.to_dict()}))
    assert config[CONFIG_KEY] == {"orientation": "LPS", "spacing": [1.0, 0.7, 0.7]}
    assert space_from_config(config) == space
    with pytest.raises(CheckpointError, match="stage1.json: invalid 'canonical_space'"):
        CanonicalSpace.from_dict({"spacing": [1.0, -1.0, 1.0]}, source="stage1.json")
    for bad in ({"orientation": "LPS"}, [1.0, 0.7, 0.7], {"spacing": ["a", 1, 1]}):
        with pytest.raises(CheckpointError):
            CanonicalSpace.from_dict(bad)


@pytest.mark.parametrize("codes", ["LLS", "LPX", "SPL", "LP"])
def test_bad_orientations_are_refused(codes):
    with pytest.raises(Seg2RefineError, match="orientation"):
        CanonicalSpace((1.0, 1.0, 1.0), codes)


def test_old_checkpoint_runs_on_the_native_grid_with_a_notice(stored):
    with pytest.warns(CanonicalNotice, match="old.json: no canonical space recorded"):
        space = space_from_config({"arch": "sfanet"}, source="old.json")
    assert space is None
    image = stored["RAS"][0]  # not reoriented, not resampled: exactly what the old models saw
    array, mapping = to_canonical(image, space)
    assert mapping.is_identity and mapping.shape == image.shape
    np.testing.assert_array_equal(array, image.array)
    assert from_canonical(array, mapping) is array


def test_layer_without_affine_is_taken_as_canonical(phantom):
    with pytest.warns(CanonicalNotice, match="no file affine; taken as LPS"):
        volume = layer_volume(phantom.image, SPACING, name="CT")
    assert nib.aff2axcodes(volume.affine) == ("L", "P", "S")
    array, mapping = to_canonical(volume, CanonicalSpace(SPACING))
    assert mapping.is_identity
    np.testing.assert_array_equal(array, phantom.image)
    ras = layer_volume(phantom.image, SPACING, affine=np.diag([1.2, 1.4, 2.0, 1.0]))  # the file's affine wins
    flipped, _ = to_canonical(ras, CanonicalSpace(SPACING))
    np.testing.assert_array_equal(flipped, phantom.image[:, ::-1, ::-1])
    with pytest.raises(VolumeError, match="CT: layer scale"):
        layer_volume(phantom.image, (1.0, 0.0, 1.0), name="CT")
