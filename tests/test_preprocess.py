import json

import numpy as np
import pytest

from seg2refine_core.data.preprocess import (
    PreprocessConfig,
    hu_window,
    preprocess,
    preprocess_slice,
    unsharp_context,
    unsharp_mask,
    xprime_box,
)
from seg2refine_core.errors import Seg2RefineError, StopRequested, VolumeError


def test_window_maps_edges_and_center():
    hu = np.array([-100.0, 200.0, 500.0, 50.0], dtype=np.float32)
    out = hu_window(hu, center=200.0, width=600.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 0.25], atol=1e-6)


def test_window_clips_and_accepts_integer_hu():
    hu = np.array([[-1024, -101, 501, 3000]], dtype=np.int16)
    out = hu_window(hu, 200.0, 600.0)
    assert out.dtype == np.float32 and out.shape == hu.shape
    np.testing.assert_array_equal(out, [[0.0, 0.0, 1.0, 1.0]])


def test_window_rejects_bad_width():
    with pytest.raises(Seg2RefineError, match="width"):
        hu_window(np.zeros(3), 200.0, 0.0)


def _step_image() -> np.ndarray:
    image = np.full((32, 32), 0.3, dtype=np.float32)
    image[:, 16:] = 0.7
    return image


def test_unsharp_overshoots_at_edge_and_keeps_far_field():
    image = _step_image()
    sharp = unsharp_mask(image, radius=1.5, amount=1.0)
    assert sharp.dtype == np.float32
    assert sharp[16, 16] > 0.7 + 0.05  # bright side next to the step overshoots
    assert sharp[16, 15] < 0.3 - 0.05  # dark side undershoots
    np.testing.assert_allclose(sharp[:, :8], 0.3, atol=1e-5)
    np.testing.assert_allclose(sharp[:, 24:], 0.7, atol=1e-5)
    assert sharp.min() >= 0.0 and sharp.max() <= 1.0


def test_unsharp_clips_to_unit_range():
    image = np.zeros((16, 16), dtype=np.float32)
    image[:, 8:] = 1.0
    sharp = unsharp_mask(image, radius=1.0, amount=3.0)
    assert sharp.min() == 0.0 and sharp.max() == 1.0


def test_unsharp_leaves_constant_image_constant():
    image = np.full((4, 20, 20), 0.42, dtype=np.float32)
    np.testing.assert_allclose(unsharp_mask(image, radius=2.0, amount=2.0), 0.42, atol=1e-6)


def test_unsharp_is_in_plane_only():
    volume = np.empty((8, 12, 12), dtype=np.float32)
    volume[:] = np.linspace(0.0, 1.0, 8, dtype=np.float32)[:, None, None]  # varies along z only
    volume[4] = 0.9  # a sharp jump between slices
    np.testing.assert_allclose(unsharp_mask(volume, radius=2.0, amount=1.0), volume, atol=1e-6)
    hu = volume * 600.0 - 100.0
    np.testing.assert_allclose(preprocess(hu), hu_window(hu), atol=1e-6)


def test_amount_zero_is_pure_window():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1000, 1500, size=(5, 16, 16)).astype(np.float32)
    out = preprocess(hu, config=PreprocessConfig(unsharp_amount=0.0))
    np.testing.assert_array_equal(out, hu_window(hu))


def test_preprocess_is_chunk_invariant_and_matches_slices():
    rng = np.random.default_rng(1)
    hu = rng.normal(150, 300, size=(7, 24, 20)).astype(np.int16)
    whole = preprocess(hu, chunk_slices=100)
    assert whole.dtype == np.float32 and whole.shape == hu.shape
    assert whole.min() >= 0.0 and whole.max() <= 1.0
    np.testing.assert_array_equal(preprocess(hu, chunk_slices=1), whole)
    np.testing.assert_array_equal(preprocess(hu, chunk_slices=3), whole)
    np.testing.assert_array_equal(preprocess(hu, chunk_slices=100, workers=1), whole)
    np.testing.assert_array_equal(preprocess(hu, chunk_slices=2, workers=3), whole)
    np.testing.assert_array_equal(preprocess_slice(hu[5]), whole[5])
    per_slice = np.stack([unsharp_mask(hu_window(s)) for s in hu])
    np.testing.assert_allclose(whole, per_slice, atol=1e-6)


def test_preprocess_fills_out_reports_progress_and_stops(tmp_path):
    hu = np.zeros((5, 8, 8), dtype=np.float32)
    out = np.lib.format.open_memmap(tmp_path / "cache.npy", mode="w+", dtype=np.float32, shape=hu.shape)
    calls = []
    result = preprocess(hu, out=out, chunk_slices=2, workers=1, progress=lambda d, t, i: calls.append((d, t)))
    assert result is out
    np.testing.assert_allclose(out, 1.0 / 6.0, atol=1e-6)
    assert calls == [(2, 5), (4, 5), (5, 5)]
    with pytest.raises(StopRequested):
        preprocess(hu, should_stop=lambda: True)
    with pytest.raises(VolumeError, match="float32"):
        preprocess(hu, out=np.zeros(hu.shape, dtype=np.float64))
    with pytest.raises(VolumeError, match=r"\(z, y, x\)"):
        preprocess(hu[0])
    with pytest.raises(Seg2RefineError, match="workers"):
        preprocess(hu, workers=0)


def test_threaded_preprocess_reports_every_slice_and_stops_early():
    hu = np.random.default_rng(3).normal(150, 300, size=(12, 16, 16)).astype(np.float32)
    calls = []
    out = preprocess(hu, chunk_slices=1, workers=4, progress=lambda d, t, i: calls.append((d, t)))
    np.testing.assert_array_equal(out, preprocess(hu, workers=1))
    assert [d for d, _ in calls] == list(range(1, 13)) and {t for _, t in calls} == {12}
    seen = []
    with pytest.raises(StopRequested):
        preprocess(hu, chunk_slices=1, workers=2, progress=lambda d, t, i: seen.append(d),
                   should_stop=lambda: len(seen) >= 2)
    assert 2 <= len(seen) < 12


def test_radius_in_mm_uses_in_plane_spacing():
    rng = np.random.default_rng(2)
    hu = rng.uniform(-200, 600, size=(3, 16, 16)).astype(np.float32)
    mm = PreprocessConfig(unsharp_radius=1.0, radius_units="mm")
    voxels = PreprocessConfig(unsharp_radius=2.0)
    np.testing.assert_array_equal(preprocess(hu, (3.0, 0.5, 0.5), mm), preprocess(hu, None, voxels))
    assert mm.sigma_yx((3.0, 0.5, 0.25)) == (2.0, 4.0)
    with pytest.raises(Seg2RefineError, match="spacing"):
        preprocess(hu, None, mm)


def test_config_round_trip_and_validation():
    config = PreprocessConfig(window_center=300.0, window_width=800.0, unsharp_radius=1.5, unsharp_amount=0.5)
    data = json.loads(json.dumps(config.to_dict()))
    assert PreprocessConfig.from_dict(data) == config
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    with pytest.raises(Seg2RefineError, match="unknown preprocessing option.*'gamma'"):
        PreprocessConfig.from_dict({**data, "gamma": 2.0})
    with pytest.raises(Seg2RefineError, match="window_width"):
        PreprocessConfig(window_width=-1.0)
    with pytest.raises(Seg2RefineError, match="unsharp_amount"):
        PreprocessConfig.from_dict({"unsharp_amount": "much"})
    with pytest.raises(Seg2RefineError, match="radius_units"):
        PreprocessConfig(radius_units="pixels")


@pytest.mark.parametrize("config", [PreprocessConfig(), PreprocessConfig(unsharp_radius=2.3),
                                    PreprocessConfig(unsharp_radius=0.8, radius_units="mm"),
                                    PreprocessConfig(unsharp_amount=0.0)])
def test_xprime_box_equals_whole_volume_preprocess_cropped(config):
    rng = np.random.default_rng(4)
    hu = rng.normal(150, 300, size=(9, 40, 50)).astype(np.int16)
    spacing = (2.0, 0.6, 0.4)
    whole = preprocess(hu, spacing, config)
    boxes = [((2, 10, 12), (4, 20, 25)),  # inside: the box alone would see wrong neighbours without context
             ((0, 0, 0), (9, 40, 50)),  # the whole volume: mirrored edges as the filter's own mode
             ((6, 33, 41), (3, 7, 9)),  # touching the far corner
             ((-2, -5, 30), (5, 12, 30))]  # partly outside: X' is 0 there
    for start, size in boxes:
        box = xprime_box(hu, start, size, spacing, config)
        expected = np.zeros(size, np.float32)
        lo = [max(a, 0) for a in start]
        hi = [min(a + n, dim) for a, n, dim in zip(start, size, hu.shape, strict=True)]
        expected[tuple(slice(b - a, c - a) for a, b, c in zip(start, lo, hi, strict=True))] = whole[
            tuple(slice(b, c) for b, c in zip(lo, hi, strict=True))]
        assert box.dtype == np.float32 and box.shape == size
        np.testing.assert_allclose(box, expected, atol=1e-6, err_msg=f"box {start} {size}")
    cropped = preprocess(np.ascontiguousarray(hu[2:6, 10:30, 12:37]), spacing, config)
    if unsharp_context(config, spacing) != (0, 0):  # filtering the cut-out alone differs at its borders
        assert not np.allclose(cropped, whole[2:6, 10:30, 12:37], atol=1e-3)


def test_unsharp_context_is_the_kernel_reach():
    assert unsharp_context(PreprocessConfig()) == (4, 4)
    assert unsharp_context(PreprocessConfig(unsharp_radius=2.3)) == (9, 9)
    assert unsharp_context(PreprocessConfig(unsharp_radius=1.0, radius_units="mm"), (3.0, 0.5, 0.25)) == (8, 16)
    assert unsharp_context(PreprocessConfig(unsharp_amount=0.0)) == (0, 0)
    # one voxel less context than the reach changes the result at the box border
    hu = np.random.default_rng(5).normal(150, 300, size=(2, 30, 30)).astype(np.float32)
    whole = preprocess(hu)
    short = preprocess(np.ascontiguousarray(hu[:, 5:25, 5:25]))
    assert not np.allclose(short[:, 0], whole[:, 5, 5:25], atol=1e-4)


def test_xprime_box_runs_the_hu_transform_on_the_box_with_its_context():
    hu = np.random.default_rng(6).normal(150, 300, size=(8, 30, 30)).astype(np.int16)
    seen = []

    def add_100(region):
        seen.append(region.shape)
        return region + 100.0

    box = xprime_box(hu, (2, 5, 6), (3, 10, 12), hu_transform=add_100, hu_context=(1, 2, 3))
    assert seen == [(3 + 2, 10 + 2 * (2 + 4), 12 + 2 * (3 + 4))]  # its context plus the unsharp mask's
    np.testing.assert_allclose(box, preprocess(hu.astype(np.float32) + 100.0)[2:5, 5:15, 6:18], atol=1e-6)
    with pytest.raises(Seg2RefineError, match="shape"):
        xprime_box(hu, (0, 0, 0), (2, 8, 8), hu_transform=lambda r: r[1:])
    with pytest.raises(VolumeError, match="xprime_box"):
        xprime_box(hu[0], (0, 0), (4, 4))
