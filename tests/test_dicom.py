"""DICOM CT series in (ordering, rescale, compressed syntaxes, series choice, refusals) and DICOM SEG out.

Every series is generated here with pydicom (tests/dicom_support.py); SimpleITK (GDCM) is the independent reader.
"""

from __future__ import annotations

import numpy as np
import pytest

from dicom_support import assert_seg_matches_source, ct_series
from seg2refine_core.errors import VolumeError
from seg2refine_core.io.dicom import dicom_folders, list_series
from seg2refine_core.io.volume import case_name, read_mask, read_volume, write_mask, write_volume

_C, _S = np.cos(0.3), np.sin(0.3)
#: oblique slices: rows along a rotated x, columns tilted out of the axial plane
OBLIQUE = (_C, _S, 0.0, -_S * 0.8, _C * 0.8, 0.6)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture
def hu():
    """A (z, y, x) = (9, 32, 40) HU volume with a bright structure that differs on every slice."""
    rng = np.random.default_rng(7)
    volume = rng.integers(-1000, 300, size=(9, 32, 40))
    for k in range(9):
        volume[k, 5 + k : 12 + k, 10:20] = 900 + 10 * k
    return volume


@pytest.fixture
def sitk():
    return pytest.importorskip("SimpleITK")


def _sitk_series(sitk, folder, uid=None):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), uid or ""))
    return reader.Execute()


def _sitk_ras_affine(image) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ lps


def test_series_is_ordered_by_position_with_rescale_and_itk_geometry(tmp_path, hu, sitk):
    folder = tmp_path / "oblique"
    files = ct_series(folder, hu, orientation=OBLIQUE, spacing=(1.25, 0.8, 0.7))
    # file names and InstanceNumber both disagree with the position order
    assert sorted(files) != files
    vol = read_volume(folder)
    assert vol.fmt == "dicom" and vol.shape == (9, 32, 40)
    np.testing.assert_array_equal(vol.array, hu.astype(np.float32))  # stored HU + 1024, intercept -1024
    assert vol.spacing == pytest.approx((1.25, 0.8, 0.7))
    image = _sitk_series(sitk, folder)
    np.testing.assert_allclose(vol.affine, _sitk_ras_affine(image), atol=1e-6)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(image))
    # one file of the folder reads the same series
    again = read_volume(files[4])
    np.testing.assert_array_equal(again.array, vol.array)
    assert case_name(files[4]) == case_name(folder) == "oblique"


@pytest.mark.parametrize("syntax", ["JPEG2000Lossless", "JPEGLSLossless", "RLELossless"])
def test_compressed_transfer_syntaxes_decode(tmp_path, hu, syntax):
    import pydicom
    import pydicom.uid

    uid = getattr(pydicom.uid, syntax)
    files = ct_series(tmp_path / syntax, hu, transfer_syntax=uid)
    assert pydicom.dcmread(files[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == uid
    np.testing.assert_array_equal(read_volume(tmp_path / syntax).array, hu.astype(np.float32))


def test_the_largest_series_is_chosen_and_the_others_are_named(tmp_path, hu):
    folder = tmp_path / "study"
    big = ct_series(folder / "a", hu, series_uid="1.2.3.100", description="cardiac")
    small = ct_series(folder / "b", hu[:4] + 5, series_uid="1.2.3.200", description="scout")
    vol = read_volume(folder)
    assert vol.series.chosen.uid == "1.2.3.100" and not vol.series.requested
    assert [s.uid for s in vol.series.others] == ["1.2.3.200"]
    message = vol.series.message()
    assert "1.2.3.100" in message and "9 slices" in message and "1.2.3.200" in message and "4 slices" in message
    assert "most slices" in message and "\n" not in message
    chosen = read_volume(folder, series="1.2.3.200")
    assert chosen.shape == (4, 32, 40) and chosen.series.requested
    np.testing.assert_array_equal(chosen.array, hu[:4].astype(np.float32) + 5)
    assert read_volume(small[0]).series.chosen.uid == "1.2.3.200"  # a file picks its own series
    assert read_volume(big[0]).shape == (9, 32, 40)
    assert [s.uid for s in list_series(folder)] == ["1.2.3.100", "1.2.3.200"]
    assert dicom_folders(tmp_path) == [folder / "a", folder / "b"]
    with pytest.raises(VolumeError, match=r"study: no DICOM series 9.9.9; the series there are: 1.2.3.100"):
        read_volume(folder, series="9.9.9")


def _positions(n, step=2.0, origin=(-120.0, -90.0, -300.0)):
    return [np.asarray(origin) + np.array([0.0, 0.0, step * k]) for k in range(n)]


def _refusal_cases():
    gap = _positions(9)
    gap = gap[:4] + [p + [0, 0, 2.0] for p in gap[4:]]  # one slice missing after the 4th
    uneven = _positions(9)
    uneven = [p + [0, 0, 0.5 * (k % 2)] for k, p in enumerate(uneven)]
    tilt = [p + np.array([0.0, np.tan(np.radians(15)) * 2.0 * k, 0.0]) for k, p in enumerate(_positions(9))]
    twice = _positions(9)
    twice[5] = twice[4]
    return [
        ("gap", gap, r"1 missing slice\(s\): a 4 mm gap"),
        ("uneven", uneven, r"non-uniform slice spacing, from 1.5 to 2.5 mm"),
        ("tilt", tilt, r"gantry tilt of 15.0 degrees"),
        ("twice", twice, r"2 slices share a position"),
    ]


@pytest.mark.parametrize("name, positions, message", _refusal_cases(), ids=[c[0] for c in _refusal_cases()])
def test_bad_geometry_is_refused_in_one_line_naming_the_folder(tmp_path, hu, name, positions, message):
    folder = tmp_path / name
    ct_series(folder, hu, positions=positions, series_uid="1.2.3.4")
    with pytest.raises(VolumeError, match=message) as err:
        read_volume(folder)
    text = str(err.value)
    assert text.startswith(f"{folder}: series 1.2.3.4: ") and "\n" not in text


def test_a_single_slice_and_an_empty_folder_are_refused(tmp_path, hu):
    ct_series(tmp_path / "one", hu[:1])
    with pytest.raises(VolumeError, match="a single slice, not a volume"):
        read_volume(tmp_path / "one")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("not DICOM")
    with pytest.raises(VolumeError, match=r"none: no single-frame DICOM image series found"):
        read_volume(tmp_path / "none")


def test_nifti_mask_of_a_series_has_its_geometry(tmp_path, hu, sitk):
    folder = tmp_path / "ct"
    ct_series(folder, hu, orientation=OBLIQUE)
    vol = read_volume(folder)
    mask = (vol.array > 800).astype(np.uint8)
    out = write_mask(tmp_path / "ct.y.nii.gz", mask, like=vol)
    back = read_volume(out)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(read_mask(out, like=vol), mask)
    # ITK puts each mask voxel where it puts the matching CT voxel
    ct_image, mask_image = _sitk_series(sitk, folder), sitk.ReadImage(str(out))
    for index in [(0, 0, 0), (39, 31, 8), (15, 9, 4)]:
        np.testing.assert_allclose(
            mask_image.TransformIndexToPhysicalPoint(index), ct_image.TransformIndexToPhysicalPoint(index), atol=1e-4
        )


def test_dicom_seg_references_the_source_series(tmp_path, hu):
    folder = tmp_path / "ct"
    ct_series(folder, hu, orientation=OBLIQUE, series_uid="1.2.3.77")
    vol = read_volume(folder)
    mask = (vol.array > 800).astype(np.uint8)
    mask[0] = 0  # an empty slice: left out of the SEG
    out = write_mask(tmp_path / "ct.y.seg.dcm", mask, like=vol)
    # each frame sits at its source slice's position and holds that slice's mask
    assert_seg_matches_source(out, vol, mask, "1.2.3.77")

def test_dicom_seg_refusals(tmp_path, hu):
    ct_series(tmp_path / "blank", hu, study_uid="")
    blank = read_volume(tmp_path / "blank")
    with pytest.raises(VolumeError, match=r"its StudyInstanceUID is blank \(anonymised\?\); write NIfTI instead"):
        write_mask(tmp_path / "b.seg.dcm", np.zeros(blank.shape, np.uint8), like=blank)
    nifti = read_volume(write_volume(tmp_path / "n.nii.gz", hu.astype(np.int16), spacing=(2.0, 0.8, 0.7)))
    with pytest.raises(VolumeError, match="a DICOM SEG needs a DICOM source series; n.nii.gz is nifti"):
        write_mask(tmp_path / "n.seg.dcm", np.zeros(nifti.shape, np.uint8), like=nifti)
    assert not list(tmp_path.glob("*.dcm"))


def test_evaluate_reads_a_dicom_ground_truth(tmp_path, hu):
    """evaluate's ground truth goes through read_volume/read_mask, so a DICOM label series works as it is."""
    from seg2refine_core.evaluation.evaluate import evaluate_files

    label = (hu > 800).astype(np.int16)
    ct_series(tmp_path / "gt", label, orientation=OBLIQUE)
    gt = read_volume(tmp_path / "gt")
    np.testing.assert_array_equal(gt.array, label)
    pred = write_mask(tmp_path / "case.y.nii.gz", label.astype(np.uint8), like=gt)
    report = evaluate_files({"y": [("case", pred, tmp_path / "gt")]})
    assert report["cases"][0]["dice"] == pytest.approx(1.0)
