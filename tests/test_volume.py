"""Volume I/O: geometry conventions, lossless round trips and clear errors for bad files."""

import gzip

import nibabel as nib
import nrrd
import numpy as np
import pytest

from seg2refine_core.errors import VolumeError
from seg2refine_core.io.volume import Volume, read_mask, read_volume, strip_suffix, write_volume

# x flipped, y flipped, anisotropic (sx, sy, sz) = (0.4, 0.5, 2.0), a non-zero origin and a small rotation in x-y.
_C, _S = np.cos(0.1), np.sin(0.1)
AFFINE = np.array(
    [
        [-0.4 * _C, -0.5 * _S, 0.0, 120.0],
        [0.4 * _S, -0.5 * _C, 0.0, 95.5],
        [0.0, 0.0, 2.0, -300.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _write_nifti_xyz(path, data_xyz, affine=AFFINE, dtype=np.int16, slope=None):
    img = nib.Nifti1Image(data_xyz.astype(dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    if slope is not None:
        img.header.set_slope_inter(*slope)
    nib.save(img, str(path))
    return path


@pytest.fixture
def ct_xyz():
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 1500, size=(7, 6, 5)).astype(np.int16)  # (x, y, z)


def test_nifti_axes_and_spacing_are_zyx(tmp_path, ct_xyz):
    path = _write_nifti_xyz(tmp_path / "1.img.nii.gz", ct_xyz)
    vol = read_volume(path)
    assert vol.shape == (5, 6, 7)
    assert vol.array.dtype == np.float32
    assert vol.spacing == pytest.approx((2.0, 0.5, 0.4))
    # voxel (x=3, y=2, z=4) lands at array[z, y, x]
    assert vol.array[4, 2, 3] == ct_xyz[3, 2, 4]
    np.testing.assert_allclose(vol.affine, AFFINE, atol=1e-5)
    assert vol.fmt == "nifti" and vol.path == path


def test_nifti_mask_round_trip_is_lossless(tmp_path, ct_xyz):
    src = _write_nifti_xyz(tmp_path / "1.img.nii.gz", ct_xyz, slope=(1.0, -1024.0))
    vol = read_volume(src)
    mask = (vol.array > 0).astype(np.uint8)
    out = write_volume(tmp_path / "out" / "1.s.nii.gz", mask, like=vol)
    back = nib.load(str(out))
    src_img = nib.load(str(src))
    np.testing.assert_array_equal(back.affine, src_img.affine)
    for key in ("qform_code", "sform_code", "pixdim", "srow_x", "srow_y", "srow_z", "quatern_b", "xyzt_units"):
        np.testing.assert_array_equal(back.header[key], src_img.header[key], err_msg=key)
    assert back.get_data_dtype() == np.uint8
    # the source's intensity scaling (inter = -1024) must not leak into the mask
    np.testing.assert_array_equal(read_mask(out, like=vol), mask)
    np.testing.assert_array_equal(np.asarray(back.dataobj).transpose(2, 1, 0), mask)


def test_nrrd_lps_round_trip(tmp_path, ct_xyz):
    directions = np.array([[0.4, 0.0, 0.0], [0.0, -0.5, 0.0], [0.0, 0.0, 2.5]])
    header = {"space": "left-posterior-superior", "space directions": directions, "space origin": [10.0, -20.0, 5.0]}
    src = tmp_path / "case.nrrd"
    nrrd.write(str(src), ct_xyz, header=header)
    vol = read_volume(src)
    assert vol.shape == (5, 6, 7)
    assert vol.spacing == pytest.approx((2.5, 0.5, 0.4))
    assert vol.array[4, 2, 3] == ct_xyz[3, 2, 4]
    # LPS → RAS: x and y world axes flip sign
    np.testing.assert_allclose(vol.affine[:3, 3], [-10.0, 20.0, 5.0])
    np.testing.assert_allclose(vol.affine[0, 0], -0.4)
    mask = (vol.array > 100).astype(np.uint8)
    out = write_volume(tmp_path / "case.s.nrrd", mask, like=vol)
    data, back_header = nrrd.read(str(out))
    np.testing.assert_array_equal(data.transpose(2, 1, 0), mask)
    np.testing.assert_allclose(back_header["space directions"], directions)
    np.testing.assert_allclose(back_header["space origin"], [10.0, -20.0, 5.0])
    assert back_header["space"] == "left-posterior-superior"


def test_write_from_nifti_source_to_nrrd_keeps_world_geometry(tmp_path, ct_xyz):
    vol = read_volume(_write_nifti_xyz(tmp_path / "a.nii", ct_xyz))
    out = write_volume(tmp_path / "a.nrrd", (vol.array > 0).astype(np.uint8), like=vol)
    again = read_volume(out)
    np.testing.assert_allclose(again.affine, vol.affine, atol=1e-5)
    assert again.spacing == pytest.approx(vol.spacing)


def test_write_from_array_with_spacing(tmp_path):
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = 0.75
    out = write_volume(tmp_path / "p.nii.gz", arr, spacing=(3.0, 0.6, 0.5))
    vol = read_volume(out)
    assert vol.spacing == pytest.approx((3.0, 0.6, 0.5))
    assert vol.array[1, 2, 3] == pytest.approx(0.75)


def test_single_frame_4d_is_accepted(tmp_path, ct_xyz):
    vol = read_volume(_write_nifti_xyz(tmp_path / "t.nii.gz", ct_xyz[..., None]))
    assert vol.shape == (5, 6, 7)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.nii.gz", "file not found"),
        (lambda d: _write_nifti_xyz(d / "flat.nii.gz", np.zeros((4, 4), np.int16)), "expected a 3D volume"),
        (lambda d: _write_nifti_xyz(d / "multi.nii.gz", np.zeros((4, 4, 4, 3), np.int16)), "3 frames"),
        (lambda d: _write_nifti_xyz(d / "nan.nii.gz", np.full((3, 3, 3), np.nan), dtype=np.float32), "NaN"),
        (lambda d: (d / "x.mha").write_bytes(b"0") and d / "x.mha", "unsupported file type"),
        (lambda d: (d / "junk.nii.gz").write_bytes(b"not a gzip") and d / "junk.nii.gz", "junk.nii.gz"),
    ],
)
def test_bad_files_give_one_line_errors_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(VolumeError) as err:
        read_volume(path)
    text = str(err.value)
    assert path.name in text and message in text
    assert "\n" not in text


def test_truncated_gzip_is_reported(tmp_path, ct_xyz):
    good = _write_nifti_xyz(tmp_path / "good.nii.gz", np.tile(ct_xyz, (8, 8, 8)))
    raw = good.read_bytes()
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with gzip.open(good) as fh:  # the good file really is gzip, so the failure is the truncation
        assert len(fh.read()) > 0
    with pytest.raises(VolumeError, match="cut.nii.gz: corrupt or truncated"):
        read_volume(bad)


def test_mask_geometry_mismatch_is_named(tmp_path, ct_xyz):
    vol = read_volume(_write_nifti_xyz(tmp_path / "1.img.nii.gz", ct_xyz))
    shifted = AFFINE.copy()
    shifted[0, 3] += 5.0
    lab = _write_nifti_xyz(tmp_path / "1.label.nii.gz", (ct_xyz > 0).astype(np.uint8), affine=shifted)
    with pytest.raises(VolumeError, match="1.label.nii.gz: orientation/origin"):
        read_mask(lab, like=vol)
    small = _write_nifti_xyz(tmp_path / "2.label.nii.gz", np.zeros((7, 6, 4), np.uint8))
    with pytest.raises(VolumeError, match=r"2.label.nii.gz: shape \(z, y, x\) \(4, 6, 7\)"):
        read_mask(small, like=vol)


def test_failed_write_leaves_existing_output_untouched(tmp_path):
    target = tmp_path / "keep.nii.gz"
    write_volume(target, np.ones((2, 3, 4), np.uint8))
    before = target.read_bytes()
    with pytest.raises(VolumeError):
        write_volume(target, np.ones((2, 3), np.uint8))
    with pytest.raises(VolumeError):
        write_volume(target, np.ones((5, 3, 4), np.uint8), like=Volume.from_array(np.zeros((2, 3, 4))))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.nii.gz"]


def test_strip_suffix():
    assert strip_suffix("a/b/12.img.nii.gz") == "12.img"
    assert strip_suffix("Normal_1.nrrd") == "Normal_1"
    assert strip_suffix("x.nii") == "x"
