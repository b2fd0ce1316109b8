"""The preprocessed memmap cache: contents, reuse of unchanged cases, rebuild on change, index loading."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from seg2refine_core.data import cache as cache_module
from seg2refine_core.data.cache import CacheIndex, build_cache
from seg2refine_core.data.datasets import discover_cases
from seg2refine_core.data.phantom import make_phantom
from seg2refine_core.data.preprocess import PreprocessConfig, preprocess
from seg2refine_core.errors import DatasetError
from seg2refine_core.io.volume import read_mask, read_volume, write_volume


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two small phantom cases in ImageCAS naming (16×48×48 and 12×40×56 voxels)."""
    root = tmp_path_factory.mktemp("data")
    for case_id, shape in (("1", (16, 48, 48)), ("2", (12, 40, 56))):
        phantom = make_phantom(shape, (2.0, 1.5, 1.5), seed=int(case_id))
        write_volume(root / f"{case_id}.img.nii.gz", phantom.image, spacing=phantom.spacing, affine=phantom.affine)
        write_volume(root / f"{case_id}.label.nii.gz", phantom.label, spacing=phantom.spacing, affine=phantom.affine)
    return root


def test_cache_holds_preprocessed_memmaps(dataset, tmp_path):
    cases = discover_cases(dataset)
    seen = []
    index = build_cache(cases, tmp_path / "cache", progress=lambda done, total, info: seen.append((done, total, info)))
    assert seen[-1] == (2, 2, "2")
    for case in cases:
        volume = read_volume(case.image)
        image, label = index.image(case.case_id), index.label(case.case_id)
        assert isinstance(image, np.memmap) and isinstance(label, np.memmap)
        assert image.dtype == np.float16 and label.dtype == np.uint8 and image.shape == volume.shape
        np.testing.assert_allclose(image, preprocess(volume.array, volume.spacing), atol=1e-3)
        np.testing.assert_array_equal(label, read_mask(case.label, like=volume))
        entry = index[case.case_id]
        assert entry.spacing == pytest.approx(volume.spacing)
        assert list(entry.vessel_pixels) == label.reshape(label.shape[0], -1).sum(axis=1).tolist()
    stored = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert set(stored["cases"]) == {"1", "2"}
    assert stored["cases"]["1"]["preprocess"] == PreprocessConfig().to_dict()
    assert stored["cases"]["1"]["source"]["image"]["size"] == os.path.getsize(cases[0].image)


def test_unchanged_cases_are_reused_and_changed_ones_rebuilt(dataset, tmp_path, monkeypatch):
    cases = discover_cases(dataset)
    build_cache(cases, tmp_path / "cache")
    image_file = tmp_path / "cache" / "cases" / "1.image.npy"
    first_mtime = image_file.stat().st_mtime_ns

    def no_reading(path, *args, **kwargs):
        raise AssertionError(f"{path} was read although its cache entry is up to date")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "read_volume", no_reading)
        index = build_cache(cases, tmp_path / "cache")
    assert index.case_ids == ["1", "2"] and image_file.stat().st_mtime_ns == first_mtime

    reads = []
    monkeypatch.setattr(cache_module, "read_volume", lambda path: reads.append(path.name) or read_volume(path))
    stat = cases[1].image.stat()
    os.utime(cases[1].image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    build_cache(cases, tmp_path / "cache")
    assert reads == ["2.img.nii.gz"]

    reads.clear()
    sharper = PreprocessConfig(unsharp_amount=2.0)
    index = build_cache(cases[:1], tmp_path / "cache", sharper)
    assert reads == ["1.img.nii.gz"]
    volume = read_volume(cases[0].image)
    np.testing.assert_allclose(index.image("1"), preprocess(volume.array, volume.spacing, sharper), atol=1e-3)


def test_index_loads_cases_and_names_missing_ones(dataset, tmp_path):
    build_cache(discover_cases(dataset), tmp_path / "cache")
    index = CacheIndex.load(tmp_path / "cache", ["2"])
    assert index.case_ids == ["2"] and index.image("2").shape == (12, 40, 56)
    with pytest.raises(DatasetError, match="not in the cache: 7"):
        CacheIndex.load(tmp_path / "cache", ["2", "7"])
    with pytest.raises(DatasetError, match="cache index not found"):
        CacheIndex.load(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match="'1' is not in the cache"):
        index.image("1")
