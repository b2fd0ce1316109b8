"""Training augmentation: presets, per-sample determinism, ranges, S/T moving with the CT, intensity on the CT only."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import pytest
import torch

from seg2refine_core.data.augment import (
    Augmentation,
    AugmentConfig,
    RandContrastLeveld,
    SliceTransform,
    augment_preset,
    contrast_level,
)
from seg2refine_core.data.patches import (
    PatchConfig,
    PatchDataset,
    PatchSource,
    _resample,
    draw_patch,
    patch_loader,
    read_region,
    resample_margin,
)
from seg2refine_core.data.preprocess import PreprocessConfig, preprocess, preprocess_slice, xprime_box
from seg2refine_core.errors import Seg2RefineError

pytestmark = pytest.mark.usefixtures("one_thread")

OFF2, OFF3 = augment_preset("off", 2), augment_preset("off", 3)
INTENSITY = dict(contrast_prob=1.0, intensity_scale_prob=1.0, intensity_shift_prob=1.0, noise_prob=1.0,
                 blur_prob=1.0, lowres_prob=1.0, gamma_prob=1.0)
SPATIAL = dict(flip_prob=1.0, rotate_prob=1.0, scale_prob=1.0)
CONFIG = PreprocessConfig()


def _counts(mask):
    return tuple(int(n) for n in mask.reshape(mask.shape[0], -1).sum(axis=1))


def _ct(shape=(40, 96, 96), seed=0):
    """CT-like HU (int16): soft tissue 40 HU with 20 HU noise, a contrast-filled tube (T, 450 HU) along a diagonal."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 20, shape)
    z, y, x = np.indices(shape)
    t = ((y - shape[1] / 2 - 0.3 * (z - shape[0] / 2)) ** 2 + (x - shape[2] / 2) ** 2 <= 16).astype(np.uint8)
    hu[t > 0] = 450 + rng.normal(0, 20, int(t.sum()))
    return np.rint(hu).astype(np.int16), t


def _dice(a, b):
    a, b = np.asarray(a) > 0.5, np.asarray(b) > 0.5
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_presets_and_options():
    none2, none3 = augment_preset("none", 2), augment_preset("none", 3)
    assert (none2.flip_prob, none2.rotate_prob, none2.rotate_deg) == (0.5, 0.5, 15.0)
    assert not none2.any_intensity and none2.scale_prob == none2.gamma_prob == none2.mask_s_prob == 0
    assert none3.flip_prob == 0 and none3.rotate_prob == 0.5 and none3.mask_s_prob == 0.5
    assert none3.xprime_noise_prob == 0.5 and none3.xprime_noise_std == 0.03 and not none3.any_intensity
    default3 = augment_preset("default", 3)
    assert default3.any_intensity and default3.scale_range == 0.2 and default3.xprime_noise_prob == 0
    assert augment_preset("default", 2).mask_s_prob == 0 and OFF3 == AugmentConfig()
    assert AugmentConfig.from_dict(default3.to_dict()) == default3
    with pytest.raises(Seg2RefineError, match="unknown augmentation preset 'strong'"):
        augment_preset("strong", 2)
    with pytest.raises(Seg2RefineError, match="noise_prob"):
        AugmentConfig(noise_prob=1.5)
    with pytest.raises(Seg2RefineError, match="contrast_range"):
        AugmentConfig(contrast_range=(0.3, 1.0))
    with pytest.raises(Seg2RefineError, match="gamma_range"):
        AugmentConfig(gamma_range=(1.5, 0.7))
    with pytest.raises(Seg2RefineError, match="unknown augmentation option"):
        AugmentConfig.from_dict({"elastic_prob": 0.1})


def test_none_reproduces_the_former_stage1_transform():
    """Stage 1 with ``none``: the former MONAI pad/crop/flip/rotate chain, drawn from the same per-sample seed."""
    from monai.data import set_track_meta
    from monai.transforms import Compose, RandFlipd, RandRotated, RandSpatialCropd, SpatialPadd

    hu, t = _ct((12, 80, 100))
    crop = (64, 112)
    keys = ("image", "label")
    former = Compose([
        SpatialPadd(keys, spatial_size=crop), RandSpatialCropd(keys, roi_size=crop, random_size=False),
        RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandRotated(keys, range_x=math.radians(15), prob=0.5, keep_size=True, mode=("bilinear", "nearest"),
                    padding_mode="zeros"),
    ])
    transform = SliceTransform(augment_preset("none", 2), CONFIG, crop)
    set_track_meta(False)
    try:
        for seed in range(16):
            z = seed % 12
            xprime = preprocess_slice(hu[z])
            former.set_random_state(seed=seed)
            expected = former({"image": xprime[None], "label": t[z].astype(np.float32)[None]})
            former.set_random_state(seed=seed)
            from_float16 = former({"image": xprime.astype(np.float16).astype(np.float32)[None],
                                   "label": t[z].astype(np.float32)[None]})  # the former float16 X' cache
            out = transform(hu[z], t[z], seed)
            assert out["image"].shape == out["label"].shape == (1, *crop)
            assert torch.equal(out["image"], torch.as_tensor(expected["image"]))
            assert torch.equal(out["label"], torch.as_tensor(expected["label"]))
            assert float((out["image"] - torch.as_tensor(from_float16["image"])).abs().max()) < 1e-3
    finally:
        set_track_meta(True)


def test_none_for_patches_is_the_former_rotation_on_xprime():
    """3D with ``none`` (X' noise left out to compare): X' of the patch, or the rotated X' of the enlarged box,
    exactly as rotating the whole volume's X'; T and S follow (nearest)."""
    hu, t = _ct()
    s = np.roll(t, 2, axis=2)
    xprime = preprocess(hu)
    config = PatchConfig((24, 32, 32), vessel_fraction=0.8,
                         augment=dataclasses.replace(augment_preset("none", 3), xprime_noise_prob=0.0,
                                                     mask_s_prob=0.0))
    rotated = 0
    for seed in range(12):
        p = draw_patch(seed, hu, t, _counts(t), config, s, _counts(s))
        assert p.zoom is None
        if p.angles_deg is None:
            box = tuple(slice(a, a + n) for a, n in zip(p.start, config.patch_size, strict=True))
            np.testing.assert_allclose(p.image, xprime[box], atol=1e-6)
            np.testing.assert_array_equal(p.label, t[box])
            continue
        rotated += 1
        radians = np.deg2rad(p.angles_deg)
        margin = resample_margin(radians, config.patch_size)
        start = [a - m for a, m in zip(p.start, margin, strict=True)]
        size = [n + 2 * m for n, m in zip(config.patch_size, margin, strict=True)]
        expected = _resample(read_region(xprime, start, size)[None], radians, None, config.patch_size, "bilinear")[0]
        np.testing.assert_allclose(p.image, np.clip(expected, 0, 1), atol=1e-5)
        masks = _resample(np.stack([read_region(t, start, size), read_region(s, start, size)]), radians, None,
                          config.patch_size, "nearest") > 0.5
        np.testing.assert_array_equal(p.label, masks[0])
        np.testing.assert_array_equal(p.s, masks[1])
    assert 2 <= rotated <= 10  # rotation with probability 0.5


def test_same_seed_same_sample_whatever_the_worker_and_order():
    hu, t = _ct((6, 96, 96))
    everything = dataclasses.replace(augment_preset("default", 2), **INTENSITY, **SPATIAL)
    a, b = SliceTransform(everything, CONFIG, (96, 96)), SliceTransform(everything, CONFIG, (96, 96))
    seeds = [3, 11, 3, 40]
    first = [a(hu[2], t[2], seed) for seed in seeds]
    second = [b(hu[2], t[2], seed) for seed in reversed(seeds)][::-1]  # another worker, another order
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
    assert torch.equal(first[0]["image"], first[2]["image"])
    assert not torch.equal(first[0]["image"], first[1]["image"])
    assert not torch.equal(first[1]["label"], first[3]["label"])


def test_patch_loader_is_identical_with_worker_processes(tmp_path):
    """Resume and DataLoader workers: a batch depends only on (seed, epoch), not on the process that drew it."""
    sources = []
    for i in range(2):
        hu, t = _ct((32, 64, 64), seed=i)
        np.save(tmp_path / f"{i}.hu.npy", hu)
        np.save(tmp_path / f"{i}.label.npy", t)
        np.save(tmp_path / f"{i}.s.npy", np.roll(t, 1, axis=1))
        sources.append(PatchSource(str(i), tmp_path / f"{i}.hu.npy", tmp_path / f"{i}.label.npy", _counts(t),
                                   tmp_path / f"{i}.s.npy", _counts(np.roll(t, 1, axis=1))))
    config = PatchConfig((16, 32, 32), augment=dataclasses.replace(augment_preset("default", 3), **INTENSITY,
                                                                   **SPATIAL))
    batches = {}
    for workers in (0, 2):
        dataset = PatchDataset(sources, config, with_s=True, preprocess=CONFIG)
        loader, sampler = patch_loader(dataset, batch_size=2, patches_per_epoch=4, seed=5, num_workers=workers)
        sampler.set_epoch(1)
        batches[workers] = [b["input"] for b in loader]
    for x, y in zip(batches[0], batches[2], strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(batches[0][0], batches[0][1])


def test_intensity_transforms_leave_s_and_t_untouched():
    hu, t = _ct()
    s = np.roll(t, 1, axis=0)
    only_intensity = dataclasses.replace(OFF3, **INTENSITY)
    for seed in range(4):
        plain = draw_patch(seed, hu, t, _counts(t), PatchConfig((16, 32, 32), augment=OFF3), s, _counts(s))
        p = draw_patch(seed, hu, t, _counts(t), PatchConfig((16, 32, 32), augment=only_intensity), s, _counts(s))
        assert p.start == plain.start
        np.testing.assert_array_equal(p.label, plain.label)
        np.testing.assert_array_equal(p.s, plain.s)
        assert np.abs(p.image - plain.image).mean() > 1e-3 and 0 <= p.image.min() and p.image.max() <= 1
    transform = SliceTransform(dataclasses.replace(OFF2, **INTENSITY), CONFIG, (96, 96))
    out = transform(hu[20], t[20], 1)
    np.testing.assert_array_equal(out["label"][0].numpy(), t[20])
    assert not np.allclose(out["image"][0].numpy(), preprocess_slice(hu[20]), atol=1e-3)


def test_spatial_transforms_move_ct_s_and_t_together():
    hu, t = _ct((48, 112, 112))
    config = PatchConfig((24, 48, 48), vessel_fraction=1.0, augment=dataclasses.replace(OFF3, **SPATIAL))
    moved = 0
    for seed in range(6):
        p = draw_patch(seed, hu, t, _counts(t), config, t, _counts(t))  # S = T: both must land on the same voxels
        np.testing.assert_array_equal(p.s, p.label)
        assert set(np.unique(p.label)) <= {0, 1} and p.label.any()
        assert _dice(p.image > 0.75, p.label) > 0.85  # the bright tube of X' is where T is
        box = tuple(slice(a, a + n) for a, n in zip(p.start, config.patch_size, strict=True))
        moved += _dice(p.label, t[box]) < 0.9
    assert moved >= 4
    yy, xx = np.indices((112, 112))
    blob = ((yy - 40) ** 2 / 2 + (xx - 70) ** 2 <= 12**2).astype(np.uint8)  # off centre, not symmetric
    slice_hu = np.where(blob > 0, 450, 40).astype(np.int16)
    transform = SliceTransform(dataclasses.replace(OFF2, **SPATIAL), CONFIG, (112, 112))
    for seed in range(6):
        out = transform(slice_hu, blob, seed)
        label = out["label"][0].numpy()
        assert set(np.unique(label)) <= {0.0, 1.0} and _dice(label, blob) < 0.9  # it moved
        assert _dice(out["image"][0].numpy() > 0.75, label) > 0.95


def test_scaling_and_rotation_stay_in_range():
    yy, xx = np.indices((128, 128))
    disk = ((yy - 64) ** 2 + (xx - 64) ** 2 <= 20**2).astype(np.uint8)
    hu = np.where(disk > 0, 450, 40).astype(np.int16)
    zoom_only = SliceTransform(dataclasses.replace(OFF2, scale_prob=1.0, scale_range=0.2), CONFIG, (128, 128))
    ratios = [float(zoom_only(hu, disk, seed)["label"].sum()) / disk.sum() for seed in range(30)]
    assert 0.8**2 * 0.95 <= min(ratios) < 0.9 and 1.1 < max(ratios) <= 1.2**2 * 1.05
    bar = np.zeros((128, 128), np.uint8)
    bar[62:66, 24:104] = 1
    rotate_only = SliceTransform(dataclasses.replace(OFF2, rotate_prob=1.0, rotate_deg=15.0), CONFIG, (128, 128))
    angles = []
    for seed in range(30):
        ys, xs = np.nonzero(rotate_only(np.where(bar > 0, 450, 40).astype(np.int16), bar, seed)["label"][0].numpy())
        cov = np.cov(np.stack([xs, ys]))
        angles.append(abs(math.degrees(0.5 * math.atan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1]))))
    assert max(angles) <= 16.0 and max(angles) > 10.0
    hu3, t3 = _ct()
    config = PatchConfig((16, 32, 32), augment=dataclasses.replace(OFF3, scale_prob=1.0, rotate_prob=1.0))
    patches = [draw_patch(seed, hu3, t3, _counts(t3), config) for seed in range(20)]
    assert all(0.8 <= p.zoom <= 1.2 and max(map(abs, p.angles_deg)) <= 15 for p in patches)


def test_noise_std_is_as_configured():
    region = np.full((1, 64, 64), 100.0, np.float32)
    aug = Augmentation(dataclasses.replace(OFF2, noise_prob=1.0, noise_std_hu=30.0), ndim=2)
    stds = [float(aug.hu_transform(seed)(region).std()) for seed in range(60)]
    assert max(stds) <= 31.0 and max(stds) > 25.0 and min(stds) < 8.0  # std uniform in [0, 30] HU
    aug3 = Augmentation(dataclasses.replace(OFF3, noise_prob=1.0, noise_std_hu=10.0), ndim=3)
    out = aug3.hu_transform(1)(np.full((8, 16, 16), 100.0, np.float32))
    assert out.shape == (8, 16, 16) and 0 < out.std() <= 10.5 and abs(out.mean() - 100) < 2


def test_contrast_level_raises_and_lowers_blood_only():
    hu = torch.tensor([-1000.0, -100.0, 50.0, 100.0, 400.0])
    for k, blood in ((0.6, 280.0), (1.6, 580.0)):
        out = contrast_level(hu, k)
        np.testing.assert_allclose(out[:4].numpy(), hu[:4].numpy())  # air, fat, myocardium untouched
        assert float(out[4]) == pytest.approx(blood)
    grid = torch.linspace(-200, 1500, 2000)
    for k in (0.5, 0.6, 1.0, 1.6, 3.0):
        assert bool((torch.diff(contrast_level(grid, k)) >= 0).all())  # monotone, continuous at the ramp
    transform = RandContrastLeveld("image", 1.0, (0.6, 1.6))
    blood = []
    for seed in range(20):
        transform.set_random_state(seed)
        out = transform({"image": torch.tensor([100.0, 400.0])})["image"]
        assert float(out[0]) == 100.0
        blood.append(float(out[1]))
    assert 280.0 <= min(blood) < 350.0 < 450.0 < max(blood) <= 580.0


def test_scale_shift_blur_lowres_gamma_ranges():
    region = np.full((1, 48, 48), 300.0, np.float32)
    scaled = [float(Augmentation(dataclasses.replace(OFF2, intensity_scale_prob=1.0), 2).hu_transform(s)(region)
                    .mean()) for s in range(10)]
    shifted = [float(Augmentation(dataclasses.replace(OFF2, intensity_shift_prob=1.0), 2).hu_transform(s)(region)
                     .mean()) for s in range(10)]
    assert 270 <= min(scaled) and max(scaled) <= 330 and max(scaled) - min(scaled) > 10
    assert 270 <= min(shifted) and max(shifted) <= 330 and max(shifted) - min(shifted) > 10
    noise = np.random.default_rng(0).normal(0, 100, (1, 48, 48)).astype(np.float32)
    for option in ("blur_prob", "lowres_prob"):
        aug = Augmentation(dataclasses.replace(OFF2, **{option: 1.0}), 2)
        assert all(aug.hu_transform(s)(noise).std() < 95 for s in range(5))  # loses detail
    gamma = Augmentation(dataclasses.replace(OFF2, gamma_prob=1.0), 2)
    x = torch.linspace(0, 1, 101).reshape(1, 1, 101)
    curves = [gamma.gamma(x, s) for s in range(10)]
    assert all(float(c.min()) >= 0 and float(c.max()) <= 1 + 1e-6 and bool((torch.diff(c) >= 0).all())
               for c in curves)
    assert float(max(c[0, 0, 50] for c in curves)) > 0.52 and float(min(c[0, 0, 50] for c in curves)) < 0.48


def test_blur_of_a_patch_equals_blur_of_the_volume_cropped():
    """The intensity step reads its context: a patch is blurred as if inside the whole volume."""
    hu, _ = _ct((24, 64, 64))
    aug = Augmentation(dataclasses.replace(OFF3, blur_prob=1.0), ndim=3)
    start, size = (8, 20, 24), (8, 16, 16)
    patch = xprime_box(hu, start, size, hu_transform=aug.hu_transform(4), hu_context=aug.hu_context)
    whole = xprime_box(hu, (0, 0, 0), hu.shape, hu_transform=aug.hu_transform(4), hu_context=aug.hu_context)
    np.testing.assert_allclose(patch, whole[8:16, 20:36, 24:40], atol=1e-5)
    assert not np.allclose(patch, preprocess(hu)[8:16, 20:36, 24:40], atol=1e-3)


def test_real_size_slice_and_patch(tmp_path):
    """A 512² slice and a 64³ patch of a 512×512 volume with every transform on; the cost is printed, not asserted."""
    rng = np.random.default_rng(0)
    hu = np.lib.format.open_memmap(tmp_path / "hu.npy", mode="w+", dtype=np.int16, shape=(80, 512, 512))
    label = np.zeros((80, 512, 512), np.uint8)
    for z in range(80):
        hu[z] = rng.integers(-1000, 1000, (512, 512), dtype=np.int16)
        label[z, 250:262, 200 + z : 212 + z] = 1
    everything2 = dataclasses.replace(augment_preset("default", 2), **INTENSITY, **SPATIAL)
    transform = SliceTransform(everything2, CONFIG, (512, 512))
    t0 = time.perf_counter()
    out = transform(hu[40], label[40], 0)
    slice_ms = (time.perf_counter() - t0) * 1000
    assert out["image"].shape == (1, 512, 512) and set(np.unique(out["label"].numpy())) <= {0.0, 1.0}
    config = PatchConfig((64, 64, 64), vessel_fraction=1.0,
                         augment=dataclasses.replace(augment_preset("default", 3), **INTENSITY, **SPATIAL))
    t0 = time.perf_counter()
    p = draw_patch(0, hu, label, _counts(label), config, label, _counts(label))
    patch_ms = (time.perf_counter() - t0) * 1000
    assert p.image.shape == (64, 64, 64) and p.label.any() and 0 <= p.image.min() and p.image.max() <= 1
    print(f"every transform on: 512² slice {slice_ms:.0f} ms, 64³ patch {patch_ms:.0f} ms (one thread)")
