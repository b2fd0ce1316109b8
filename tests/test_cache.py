"""The HU memmap cache: contents, X' made from it, reuse of unchanged cases, rebuild on change, index loading, and
one cache folder per canonical space."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from seg2refine_core.data import cache as cache_module
from seg2refine_core.data.cache import CACHE_VERSION, CacheIndex, build_cache, cache_root, space_name
from seg2refine_core.data.canonical import CanonicalSpace, to_canonical
from seg2refine_core.data.datasets import Case, discover_cases
from seg2refine_core.data.phantom import make_phantom
from seg2refine_core.data.preprocess import PreprocessConfig, preprocess, preprocess_slice, xprime_box
from seg2refine_core.errors import DatasetError
from seg2refine_core.io.volume import Volume, read_mask, read_volume, write_volume


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two small phantom cases in ImageCAS naming: case 1 (16×48×48) stored as float32 HU with fractions, case 2
    (12×40×56) as int16 HU like a scanner's file."""
    root = tmp_path_factory.mktemp("data")
    for case_id, shape, dtype in (("1", (16, 48, 48), np.float32), ("2", (12, 40, 56), np.int16)):
        phantom = make_phantom(shape, (2.0, 1.5, 1.5), seed=int(case_id))
        image = np.rint(phantom.image).astype(dtype) if dtype == np.int16 else phantom.image
        write_volume(root / f"{case_id}.img.nii.gz", image, spacing=phantom.spacing, affine=phantom.affine)
        write_volume(root / f"{case_id}.label.nii.gz", phantom.label, spacing=phantom.spacing, affine=phantom.affine)
    return root


def test_cache_holds_int16_hu_memmaps(dataset, tmp_path):
    cases = discover_cases(dataset)
    seen = []
    index = build_cache(cases, tmp_path / "cache", None,
                        progress=lambda done, total, info: seen.append((done, total, info)))
    assert seen[-1] == (2, 2, "2")
    for case in cases:
        volume = read_volume(case.image)
        hu, label = index.hu(case.case_id), index.label(case.case_id)
        assert isinstance(hu, np.memmap) and isinstance(label, np.memmap)
        assert hu.dtype == np.int16 and label.dtype == np.uint8 and hu.shape == volume.shape
        assert np.abs(hu - volume.array).max() <= 0.5  # rounded to whole HU
        np.testing.assert_array_equal(label, read_mask(case.label, like=volume))
        entry = index[case.case_id]
        assert entry.spacing == pytest.approx(volume.spacing) and entry.hu_path.name == f"{case.case_id}.hu.npy"
        assert list(entry.vessel_pixels) == label.reshape(label.shape[0], -1).sum(axis=1).tolist()
    np.testing.assert_array_equal(index.hu("2"), read_volume(cases[1].image).array)  # integer HU: exact
    stored = json.loads((tmp_path / "cache" / "native" / "index.json").read_text())
    assert set(stored["cases"]) == {"1", "2"} and stored["version"] == CACHE_VERSION == 3 and stored["space"] is None
    assert stored["cases"]["1"]["image_dtype"] == "int16" and stored["cases"]["1"]["clipped_voxels"] == 0
    assert stored["cases"]["1"]["source"]["image"]["size"] == os.path.getsize(cases[0].image)


def test_xprime_from_the_hu_cache_matches_preprocess(dataset, tmp_path):
    """With augmentation off, training sees what it saw from the former float16 X' cache (within its rounding)."""
    cases = discover_cases(dataset)
    index = build_cache(cases, tmp_path / "cache", None)
    config = PreprocessConfig()
    for case in cases:
        volume = read_volume(case.image)
        hu, spacing = index.hu(case.case_id), index[case.case_id].spacing
        whole = index.xprime(case.case_id, config)
        assert whole.dtype == np.float32 and whole.shape == volume.shape
        np.testing.assert_array_equal(whole, preprocess(np.asarray(hu), spacing, config))
        z = volume.shape[0] // 2
        np.testing.assert_array_equal(preprocess_slice(hu[z], spacing[1:], config), whole[z])  # stage-1 slice
        patch = xprime_box(hu, (3, 9, 11), (8, 24, 24), spacing, config)  # a stage-2 / baseline patch
        np.testing.assert_allclose(patch, whole[3:11, 9:33, 11:35], atol=1e-6)
        reference = preprocess(volume.array, volume.spacing, config)  # from the file's own HU
        former_cache = reference.astype(np.float16)
        if case.case_id == "2":  # integer HU, as scanners store them: the cache is exact
            np.testing.assert_allclose(whole, reference, atol=1e-6)
            np.testing.assert_allclose(patch, former_cache[3:11, 9:33, 11:35], atol=1e-3)
        else:  # fractional HU: rounding by <= 0.5 HU moves X' by < 1.5 / 600 even after sharpening
            assert np.abs(whole - reference).max() < 2.5e-3
            assert np.abs(whole - reference).mean() < 3e-4


def test_hu_outside_int16_is_clipped_and_counted(tmp_path):
    image = np.zeros((2, 8, 8), np.float32)
    image[0, 0, :3] = [40000.0, -40000.0, 1234.4]
    write_volume(tmp_path / "x.nii.gz", image, spacing=(1.0, 1.0, 1.0))
    index = build_cache([Case("x", tmp_path / "x.nii.gz", None)], tmp_path / "cache", None)
    np.testing.assert_array_equal(index.hu("x")[0, 0, :3], [32767, -32768, 1234])
    assert json.loads((tmp_path / "cache" / "native" / "cases" / "x.json").read_text())["clipped_voxels"] == 2
    with pytest.raises(DatasetError, match="no label"):
        index.label("x")


def test_unchanged_cases_are_reused_and_changed_ones_rebuilt(dataset, tmp_path, monkeypatch):
    cases = discover_cases(dataset)
    build_cache(cases, tmp_path / "cache", None)
    hu_file = tmp_path / "cache" / "native" / "cases" / "1.hu.npy"
    first_mtime = hu_file.stat().st_mtime_ns

    def no_reading(path, *args, **kwargs):
        raise AssertionError(f"{path} was read although its cache entry is up to date")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "read_volume", no_reading)
        index = build_cache(cases, tmp_path / "cache", None)
    assert index.case_ids == ["1", "2"] and hu_file.stat().st_mtime_ns == first_mtime

    reads = []
    monkeypatch.setattr(cache_module, "read_volume", lambda path: reads.append(path.name) or read_volume(path))
    stat = cases[1].image.stat()
    os.utime(cases[1].image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    build_cache(cases, tmp_path / "cache", None)
    assert reads == ["2.img.nii.gz"]


def test_each_canonical_space_has_its_own_cases_and_the_space_is_in_the_key(dataset, tmp_path, monkeypatch):
    """Cases are mapped into the space as inference maps them (HU trilinear, labels by the label rule), each space
    in its own folder; an entry made in another space is not taken as up to date; older top-level caches are left
    alone."""
    cases = discover_cases(dataset)
    (tmp_path / "cache" / "cases").mkdir(parents=True)  # a version-2 cache (files' own grids) at the top level
    (tmp_path / "cache" / "index.json").write_text(json.dumps({"format": "seg2refine-cache", "version": 2}))
    fine, coarse = CanonicalSpace((1.0, 0.7, 0.7)), CanonicalSpace((2.0, 1.4, 1.4))
    index = build_cache(cases, tmp_path / "cache", fine)
    assert index.root == cache_root(tmp_path / "cache", fine) and index.space == fine
    assert index.root.name == space_name(fine) and space_name(fine).startswith("LPS-1x0.7x0.7mm-")
    assert space_name(coarse) != space_name(fine) and space_name(None) == "native"
    for case in cases:
        volume = read_volume(case.image)
        hu, mapping = to_canonical(volume, fine)
        entry = index[case.case_id]
        assert entry.shape == mapping.shape and entry.spacing == pytest.approx(mapping.spacing)
        assert entry.shape != volume.shape  # 2.0 x 1.5 x 1.5 mm files on a 1.0 x 0.7 x 0.7 mm grid
        assert np.abs(index.hu(case.case_id) - hu).max() <= 0.5
        label = to_canonical(Volume.from_array(read_mask(case.label, like=volume), volume.spacing, volume.affine),
                             fine, kind="label")[0]
        np.testing.assert_array_equal(index.label(case.case_id), label)
        stored = json.loads((index.root / "cases" / f"{case.case_id}.json").read_text())
        assert stored["space"] == fine.to_dict() and stored["native"]["shape"] == list(volume.shape)
    assert CacheIndex.load(tmp_path / "cache", fine).case_ids == ["1", "2"]
    with pytest.raises(DatasetError, match="cache index not found"):
        CacheIndex.load(tmp_path / "cache", coarse)
    # another space is built beside it; the first is reused as it is, and the old top-level cache stays untouched
    other = build_cache(cases, tmp_path / "cache", coarse)
    assert other.root != index.root and other["1"].shape != index["1"].shape
    monkeypatch.setattr(cache_module, "read_volume", lambda path: pytest.fail(f"{path} read again"))
    assert build_cache(cases, tmp_path / "cache", fine)["1"].shape == index["1"].shape
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["version"] == 2
    # an entry whose recorded space differs from its folder's (e.g. copied by hand) is rebuilt, not trusted
    meta = index.root / "cases" / "1.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "space": coarse.to_dict()}))
    reads = []
    monkeypatch.setattr(cache_module, "read_volume", lambda path: reads.append(path.name) or read_volume(path))
    build_cache(cases, tmp_path / "cache", fine)
    assert reads == ["1.img.nii.gz"]


def test_index_loads_cases_and_names_missing_ones(dataset, tmp_path):
    build_cache(discover_cases(dataset), tmp_path / "cache", None)
    index = CacheIndex.load(tmp_path / "cache", None, ["2"])
    assert index.case_ids == ["2"] and index.hu("2").shape == (12, 40, 56)
    with pytest.raises(DatasetError, match="not in the cache: 7"):
        CacheIndex.load(tmp_path / "cache", None, ["2", "7"])
    with pytest.raises(DatasetError, match="cache index not found"):
        CacheIndex.load(tmp_path / "elsewhere", None)
    with pytest.raises(DatasetError, match="'1' is not in the cache"):
        index.hu("1")
