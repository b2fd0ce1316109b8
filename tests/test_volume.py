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
        (lambda d: (d / "x.tif").write_bytes(b"0") and d / "x.tif", "unsupported file type"),
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


# ---------------------------------------------------------------------------------------------------------------
# Real-world files: every NRRD space and axis kind, NIfTI units, MetaImage, singleton dimensions, declared sizes.
# SimpleITK (the dev extra) is the independent reader: ITK defines MetaImage and is what 3D Slicer reads NRRD with.

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# an oblique, anisotropic direction matrix (rows = the x, y, z axes' steps in mm) for the NRRD tests
_DIRECTIONS = np.array([[0.7 * _C, 0.7 * _S, 0.0], [-0.6 * _S, 0.6 * _C, 0.1], [0.0, -0.2, 2.0]])


@pytest.fixture
def sitk():
    return pytest.importorskip("SimpleITK")


def _sitk_ras_affine(image) -> np.ndarray:
    """The RAS affine of (x, y, z) indices of a SimpleITK image (ITK's geometry is LPS)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return _LPS_TO_RAS @ lps


def test_nrrd_las_space_is_not_mirrored(tmp_path):
    """Why 1: a left-anterior-superior NRRD came out mirrored left-right (x column +0.7, origin x -22.05)."""
    data = np.zeros((24, 64, 64), np.int16)
    data[3:6, 10:20, 30:40] = 500
    header = {"space": "left-anterior-superior", "space directions": np.diag([0.7, 0.7, 0.7]),
              "space origin": [-22.05, 10.0, -5.0]}  # fmt: skip
    src = tmp_path / "las.nrrd"
    nrrd.write(str(src), data, header=header)
    vol = read_volume(src)
    assert vol.affine[0, 0] == pytest.approx(-0.7) and vol.affine[0, 3] == pytest.approx(22.05)
    assert vol.affine[1, 1] == pytest.approx(0.7) and vol.affine[1, 3] == pytest.approx(10.0)
    out = write_volume(tmp_path / "las.s.nii.gz", (vol.array > 0).astype(np.uint8), like=vol)
    written = nib.load(str(out)).affine
    assert written[0, 0] == pytest.approx(-0.7) and written[0, 3] == pytest.approx(22.05)


@pytest.mark.parametrize(
    "space",
    ["right-anterior-superior", "RAS", "left-anterior-superior", "LAS", "left-posterior-superior", "LPS",
     "scanner-xyz", "3D-right-handed", "3D-left-handed", None],
)  # fmt: skip
def test_every_nrrd_space_gives_the_geometry_itk_reads(tmp_path, ct_xyz, sitk, space):
    header = {"space directions": _DIRECTIONS, "space origin": [12.5, -30.0, 7.0]}
    if space is None:
        header["space dimension"] = 3  # space directions without a space
    else:
        header["space"] = space
    src = tmp_path / "case.nrrd"
    nrrd.write(str(src), ct_xyz, header=header)
    vol = read_volume(src)
    np.testing.assert_allclose(vol.affine, _sitk_ras_affine(sitk.ReadImage(str(src))), atol=1e-6)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(sitk.ReadImage(str(src))))
    # the mask written like it opens in ITK with the same geometry, as a plain 3D NRRD
    out = write_volume(tmp_path / "case.s.nrrd", (vol.array > 0).astype(np.uint8), like=vol)
    again = sitk.ReadImage(str(out))
    assert again.GetDimension() == 3 and again.GetNumberOfComponentsPerPixel() == 1
    np.testing.assert_allclose(_sitk_ras_affine(again), vol.affine, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), (vol.array > 0).astype(np.uint8))


def test_nrrd_time_space_with_one_frame_is_3d(tmp_path, ct_xyz):
    rows = [[*_DIRECTIONS[0], 0.0], [*_DIRECTIONS[1], 0.0], [*_DIRECTIONS[2], 0.0], [0.0, 0.0, 0.0, 1.5]]
    header = {"space": "right-anterior-superior-time", "space directions": rows,
              "space origin": [1.0, 2.0, 3.0, 0.0], "kinds": ["domain", "domain", "domain", "time"]}  # fmt: skip
    src = tmp_path / "t.nrrd"
    nrrd.write(str(src), ct_xyz[..., None], header=header)
    vol = read_volume(src)
    expected = np.eye(4)
    expected[:3, :3], expected[:3, 3] = _DIRECTIONS.T, [1.0, 2.0, 3.0]
    np.testing.assert_allclose(vol.affine, expected)
    assert vol.array[4, 2, 3] == ct_xyz[3, 2, 4]
    nrrd.write(str(src), np.stack([ct_xyz, ct_xyz], axis=-1), header=header)
    with pytest.raises(VolumeError, match=r"t.nrrd: 2 frames \(axis 3, kind 'time'\)"):
        read_volume(src)


@pytest.mark.parametrize("channels", [1, 3])
def test_nrrd_list_axis_is_a_channel_not_frames(tmp_path, channels, sitk):
    """Why 2: sizes ``1 48 48 24`` with a leading list axis were refused as "4D image with 24 frames"."""
    rng = np.random.default_rng(1)
    data = rng.integers(-100, 400, size=(channels, 48, 48, 24)).astype(np.int16)
    header = {"space": "left-posterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": [[np.nan] * 3, [0.5, 0, 0], [0, 0.6, 0], [0, 0, 2]]}  # fmt: skip
    src = tmp_path / f"c{channels}.nrrd"
    nrrd.write(str(src), data, header=header, index_order="F")
    if channels == 3:
        with pytest.raises(VolumeError) as err:
            read_volume(src)
        assert "3 channels" in str(err.value) and "frames" not in str(err.value) and src.name in str(err.value)
        return
    vol = read_volume(src)
    assert vol.shape == (24, 48, 48) and vol.spacing == pytest.approx((2.0, 0.6, 0.5))
    np.testing.assert_array_equal(vol.array, data[0].transpose(2, 1, 0))
    np.testing.assert_allclose(vol.affine, _sitk_ras_affine(sitk.ReadImage(str(src))), atol=1e-6)
    out = write_volume(tmp_path / "c1.s.nrrd", (vol.array > 0).astype(np.uint8), like=vol)
    assert sitk.ReadImage(str(out)).GetDimension() == 3
    np.testing.assert_allclose(read_volume(out).affine, vol.affine)


def test_nrrd_vector_axis_without_directions(tmp_path, ct_xyz):
    header = {"kinds": ["domain", "domain", "domain", "vector"], "spacings": [0.4, 0.5, 2.0, np.nan]}
    src = tmp_path / "v.nrrd"
    nrrd.write(str(src), ct_xyz[..., None], header=header)
    vol = read_volume(src)
    assert vol.shape == (5, 6, 7) and vol.spacing == pytest.approx((2.0, 0.5, 0.4))


@pytest.mark.parametrize("unit, per_mm", [("micron", 1000.0), ("meter", 0.001), ("mm", 1.0)])
def test_nifti_spatial_units_are_honoured(tmp_path, unit, per_mm):
    """Why 3: 0.5 x 0.5 x 2 mm voxels stored in microns gave HD 6000 "mm" instead of 6.0."""
    from seg2refine_core.evaluation.metrics import evaluate_case

    affine = np.diag([0.5 * per_mm, 0.5 * per_mm, 2.0 * per_mm, 1.0])
    affine[:3, 3] = np.array([10.0, -20.0, 30.0]) * per_mm
    gt = np.zeros((20, 20, 12), np.uint8)
    gt[5:10, 5:10, 2:5] = 1
    pred = np.roll(gt, 3, axis=2)  # 3 slices of 2 mm along z: HD 6 mm
    paths = []
    for name, mask in (("gt", gt), ("pred", pred)):
        image = nib.Nifti1Image(mask, affine)
        image.header.set_xyzt_units(unit)
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(image, str(paths[-1]))
    gt_vol = read_volume(paths[0])
    assert gt_vol.spacing == pytest.approx((2.0, 0.5, 0.5))
    np.testing.assert_allclose(gt_vol.affine[:3, 3], [10.0, -20.0, 30.0])
    scores = evaluate_case(read_mask(paths[1], like=gt_vol), gt_vol.array > 0.5, gt_vol.spacing)
    assert scores["hd_mm"] == pytest.approx(6.0)
    # a mask written like it keeps the file's own unit, so it reads back to the same mm geometry
    out = write_volume(tmp_path / "out.nii.gz", gt_vol.array.astype(np.uint8), like=gt_vol)
    assert nib.load(str(out)).header.get_xyzt_units()[0] == unit
    np.testing.assert_allclose(read_volume(out).affine, gt_vol.affine)


def test_unknown_nifti_units_are_mm_and_said_once(tmp_path, ct_xyz, monkeypatch):
    import warnings

    from seg2refine_core.io import nifti

    monkeypatch.setattr(nifti, "_unknown_units_said", False)
    paths = [_write_nifti_xyz(tmp_path / f"{i}.nii.gz", ct_xyz) for i in range(3)]
    assert nib.load(str(paths[0])).header.get_xyzt_units()[0] == "unknown"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volumes = [read_volume(p) for p in paths]
    said = [w for w in caught if "spatial unit" in str(w.message)]
    assert len(said) == 1 and "as mm" in str(said[0].message)
    assert all(v.spacing == pytest.approx((2.0, 0.5, 0.4)) for v in volumes)


def _huge_header_nifti(path, shape=(30000, 30000, 4000)):
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 600
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_declared_size_beyond_the_file_is_refused_before_reading(tmp_path, name):
    """Why 4: 30000 x 30000 x 4000 voxels declared on a 1-kB file ended in a MemoryError traceback."""
    path = _huge_header_nifti(tmp_path / name)
    assert path.stat().st_size < 1100
    with pytest.raises(VolumeError) as err:
        read_volume(path)
    text = str(err.value)
    assert name in text and "30000 x 30000 x 4000" in text and "\n" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_declared_size_checks_for_nrrd_and_metaimage(tmp_path):
    nrrd_path = tmp_path / "huge.nrrd"
    nrrd_header = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 30000 30000 4000\nendian: little\nencoding: gzip\n\n"
    nrrd_path.write_bytes(nrrd_header + gzip.compress(b"\0" * 100))
    mha_path = tmp_path / "huge.mha"
    mha_path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 30000 30000 4000\nElementType = MET_SHORT\n"
                         b"ElementDataFile = LOCAL\n" + b"\0" * 500)  # fmt: skip
    for path in (nrrd_path, mha_path):
        with pytest.raises(VolumeError, match=rf"{path.name}: the header declares 30000 x 30000 x 4000 voxels"):
            read_volume(path)


def test_volume_larger_than_free_memory_is_refused(tmp_path, ct_xyz, monkeypatch):
    import psutil

    path = _write_nifti_xyz(tmp_path / "a.nii.gz", ct_xyz)

    class Tight:
        available = 1000  # bytes: less than the 210 voxels need

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight())
    with pytest.raises(VolumeError, match=r"a.nii.gz: reading its 7 x 6 x 5 voxels needs about .* available"):
        read_volume(path)


def test_extra_singleton_dimensions_read_as_3d_in_every_format(tmp_path, ct_xyz, sitk):
    nii = _write_nifti_xyz(tmp_path / "five.nii.gz", ct_xyz[..., None, None])
    assert nib.load(str(nii)).shape == (7, 6, 5, 1, 1)
    nrrd_path = tmp_path / "four.nrrd"
    nrrd.write(str(nrrd_path), ct_xyz[None], header={"kinds": ["list", "domain", "domain", "domain"]})
    image = sitk.GetImageFromArray(ct_xyz.transpose(2, 1, 0)[None], isVector=False)  # 4D, the 4th size 1
    mha = tmp_path / "four.mha"
    sitk.WriteImage(image, str(mha))
    for path in (nii, nrrd_path, mha):
        vol = read_volume(path)
        assert vol.shape == (5, 6, 7), path.name
        assert vol.array[4, 2, 3] == ct_xyz[3, 2, 4], path.name
    with pytest.raises(VolumeError, match=r"multi.nii.gz: 3 components per voxel"):
        read_volume(_write_nifti_xyz(tmp_path / "multi.nii.gz", np.zeros((4, 4, 4, 1, 3), np.int16)))


@pytest.mark.parametrize("name", ["ct.mha", "ct.mhd"])
def test_metaimage_matches_itk_both_ways(tmp_path, ct_xyz, sitk, name):
    image = sitk.GetImageFromArray(ct_xyz.transpose(2, 1, 0))
    rotation = np.array([[_C, -_S, 0.0], [0.0, 0.0, 1.0], [_S, _C, 0.0]])
    image.SetDirection(rotation.ravel().tolist())
    image.SetSpacing((0.4, 0.5, 2.0))
    image.SetOrigin((-12.0, 30.5, 7.25))
    src = tmp_path / name
    sitk.WriteImage(image, str(src), useCompression=name.endswith(".mha"))
    vol = read_volume(src)
    assert vol.fmt == "metaimage" and vol.spacing == pytest.approx((2.0, 0.5, 0.4))
    np.testing.assert_allclose(vol.affine, _sitk_ras_affine(image), atol=1e-9)
    np.testing.assert_array_equal(vol.array, ct_xyz.transpose(2, 1, 0))
    out = write_volume(tmp_path / f"mask{src.suffix}", (vol.array > 0).astype(np.uint8), like=vol)
    back = sitk.ReadImage(str(out))
    np.testing.assert_allclose(_sitk_ras_affine(back), vol.affine, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), (vol.array > 0).astype(np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("mask")) == (
        ["mask.mha"] if name.endswith(".mha") else ["mask.mhd", "mask.raw"]
    )
    # and from a NIfTI source, the world geometry carries over
    nii = read_volume(_write_nifti_xyz(tmp_path / "n.nii.gz", ct_xyz))
    np.testing.assert_allclose(read_volume(write_volume(tmp_path / f"n{src.suffix}", nii.array, like=nii)).affine,
                               nii.affine, atol=1e-9)  # fmt: skip


def test_metaimage_channels_are_refused(tmp_path, sitk):
    image = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "rgb.mha"))
    with pytest.raises(VolumeError, match=r"rgb.mha: 3 channels per voxel"):
        read_volume(tmp_path / "rgb.mha")


def test_a_failed_atomic_write_names_the_target_and_leaves_no_temporary_file(tmp_path):
    from seg2refine_core.io.atomic import write_text_atomic

    target = tmp_path / "report.json"
    target.mkdir()
    (target / "keep").write_text("x")  # a non-empty folder where the file should go: the rename fails
    with pytest.raises(OSError) as caught:
        write_text_atomic(target, "{}")
    assert caught.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"] and (target / "keep").read_text() == "x"
