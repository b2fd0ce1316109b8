"""3D patches: region reads with padding, vessel-centred vs random draws, X' from HU, rotation and zoom, S masking,
noise, sharding."""

import dataclasses
import pickle

import numpy as np
import pytest

from seg2refine_core.data.augment import AugmentConfig, augment_preset
from seg2refine_core.data.patches import (
    KIND_RANDOM,
    KIND_S,
    KIND_VESSEL,
    PatchConfig,
    PatchDataset,
    PatchSource,
    draw_patch,
    mask_s,
    patch_loader,
    patch_sampler,
    read_region,
    resample_margin,
)
from seg2refine_core.data.preprocess import PreprocessConfig, preprocess
from seg2refine_core.errors import Seg2RefineError

OFF = augment_preset("off", ndim=3)


def _config(**changes) -> AugmentConfig:
    return dataclasses.replace(OFF, **changes)


def _volume(shape=(40, 96, 80), seed=0):
    """HU noise (int16), a label with one short tube near a corner, S = label shifted by one voxel."""
    rng = np.random.default_rng(seed)
    image = rng.normal(100, 300, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[5:15, 10:13, 10:13] = 1
    s = np.roll(label, 1, axis=2)
    return image, label, s


def _counts(mask):
    return tuple(int(n) for n in mask.reshape(mask.shape[0], -1).sum(axis=1))


def _sources(tmp_path, n=2):
    sources = []
    for i in range(n):
        image, label, s = _volume(seed=i)
        paths = {}
        for name, array in (("hu", image), ("label", label), ("s", s)):
            paths[name] = tmp_path / f"{i}.{name}.npy"
            np.save(paths[name], array)
        sources.append(PatchSource(str(i), paths["hu"], paths["label"], _counts(label), paths["s"], _counts(s),
                                   (2.0, 1.0, 1.0)))
    return sources


def test_read_region_pads_outside_and_copies_inside():
    a = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    out = read_region(a, (-1, 2, 3), (3, 4, 4))
    assert out.shape == (3, 4, 4)
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[1:, :3, :3], a[0:2, 2:5, 3:6])
    assert not out[:, 3:].any() and not out[:, :, 3:].any()
    assert not read_region(a, (10, 0, 0), (2, 2, 2)).any()


def test_vessel_fraction_and_vessel_patches_hold_vessel():
    image, label, s = _volume()
    config = PatchConfig(patch_size=(32, 32, 32), vessel_fraction=0.75, s_share=0.0, augment=OFF)
    xprime = preprocess(image)
    kinds, hits = [], []
    for seed in range(300):
        p = draw_patch(seed, image, label, _counts(label), config)
        kinds.append(p.kind)
        assert p.image.shape == p.label.shape == (32, 32, 32) and p.s is None
        assert p.image.dtype == np.float32 and p.label.dtype == np.uint8
        z, y, x = p.start
        np.testing.assert_array_equal(p.label, label[z : z + 32, y : y + 32, x : x + 32])
        if seed < 20:  # X' of the patch from HU = that box of the whole volume's X'
            np.testing.assert_allclose(p.image, xprime[z : z + 32, y : y + 32, x : x + 32], atol=1e-6)
        if p.kind == KIND_VESSEL:
            hits.append(p.label.any())
    share = np.mean(np.asarray(kinds) == KIND_VESSEL)
    assert 0.68 < share < 0.82 and set(kinds) == {KIND_RANDOM, KIND_VESSEL}
    assert all(hits)  # the jittered centre stays inside the patch
    # random patches mostly miss the small tube
    randoms = [draw_patch(s_, image, label, _counts(label),
                          PatchConfig(patch_size=(32, 32, 32), vessel_fraction=0.0, augment=OFF)) for s_ in range(40)]
    assert np.mean([p.label.any() for p in randoms]) < 0.5


def test_s_centred_patches_and_fallback_when_s_is_empty():
    image, label, s = _volume()
    config = PatchConfig(patch_size=(32, 32, 32), vessel_fraction=1.0, s_share=1.0, augment=OFF)
    p = draw_patch(0, image, label, _counts(label), config, s, _counts(s))
    assert p.kind == KIND_S and p.s.any()
    empty = np.zeros_like(s)
    p = draw_patch(0, image, label, _counts(label), config, empty, _counts(empty))
    assert p.kind == KIND_VESSEL and p.label.any()


def test_small_volume_is_centred_and_zero_padded():
    rng = np.random.default_rng(0)
    image = rng.uniform(-1000, 1000, (20, 30, 70)).astype(np.float32)
    label = np.ones_like(image, dtype=np.uint8)
    p = draw_patch(1, image, label, _counts(label), PatchConfig((32, 32, 32), augment=OFF))
    assert p.image.shape == (32, 32, 32)
    assert p.start[0] == -6 and p.start[1] == -1 and 0 <= p.start[2] <= 38
    assert p.label.sum() == 20 * 30 * 32  # padding holds no label
    np.testing.assert_allclose(p.image[6:26, 1:31], preprocess(image)[:, :, p.start[2] : p.start[2] + 32], atol=1e-6)
    assert not p.image[:6].any() and not p.image[:, 31].any()  # X' 0 (air) outside the volume


def test_same_seed_same_patch_and_seeds_differ():
    image, label, s = _volume()
    config = PatchConfig(patch_size=(32, 32, 32), augment=dataclasses.replace(
        augment_preset("default", ndim=3), rotate_prob=1.0, scale_prob=1.0, mask_s_prob=1.0, noise_prob=1.0))
    a = draw_patch(7, image, label, _counts(label), config, s, _counts(s))
    b = draw_patch(7, image, label, _counts(label), config, s, _counts(s))
    c = draw_patch(8, image, label, _counts(label), config, s, _counts(s))
    for name in ("image", "label", "s"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)


def test_rotation_and_zoom_read_enough_margin_and_keep_masks_binary():
    shape = (80, 112, 112)
    image = np.full(shape, 200, np.int16)  # X' 0.5 everywhere
    label = np.zeros(shape, np.uint8)
    label[28:52, 54:58, 54:58] = 1  # a short tube along z in the middle
    config = PatchConfig(patch_size=(32, 32, 32), vessel_fraction=1.0, jitter=0.0,
                         augment=_config(rotate_prob=1.0, rotate_deg=15.0, scale_prob=1.0, scale_range=0.2))
    zooms = []
    for seed in range(6):
        p = draw_patch(seed, image, label, _counts(label), config)
        assert p.angles_deg is not None and max(abs(a) for a in p.angles_deg) <= 15.0
        assert 0.8 <= p.zoom <= 1.2
        zooms.append(p.zoom)
        # the enlarged read covers the rotated and zoomed box: no zero corners inside the volume
        np.testing.assert_allclose(p.image, 0.5, atol=1e-3)
        assert set(np.unique(p.label)) <= {0, 1} and p.label.any()
    assert min(zooms) < 1.0 < max(zooms)
    assert min(resample_margin(np.deg2rad([15, 15, 15]), (32, 32, 32))) >= 5
    assert resample_margin([0.0, 0.0, 0.0], (32, 32, 32)) == (1, 1, 1)
    assert resample_margin(None, (32, 32, 32), zoom=1 / 1.2) == (5, 5, 5)  # zooming out reads 1.2x the side
    assert resample_margin(None, (32, 32, 32), zoom=1.2) == (1, 1, 1)


def test_mask_s_only_removes_and_drops_components():
    s = np.zeros((32, 32, 32), np.uint8)
    s[2:30, 4:6, 4:6] = 1
    s[2:30, 20:22, 20:22] = 1
    config = _config(drop_component_prob=0.0, mask_boxes=2, mask_box_fraction=(0.2, 0.3))
    for seed in range(5):
        masked = mask_s(np.random.default_rng(seed), s, config)
        assert masked.dtype == np.uint8 and not (masked & ~s).any()  # never adds
        assert 0 < masked.sum() < s.sum()  # boxes sit on S, so they cut it
    dropped = mask_s(np.random.default_rng(0), s, _config(drop_component_prob=1.0))
    assert not dropped.any()
    assert s.sum() == 2 * 28 * 4  # input untouched


def test_xprime_noise_stays_in_range():
    image = np.full((40, 40, 40), 200, np.int16)
    label = np.zeros((40, 40, 40), np.uint8)
    config = PatchConfig(patch_size=(32, 32, 32), augment=_config(xprime_noise_prob=1.0, xprime_noise_std=0.05))
    p = draw_patch(3, image, label, _counts(label), config)
    assert 0.0 <= p.image.min() and p.image.max() <= 1.0
    assert 0.0 < p.image.std() <= 0.06


def test_sampler_shards_ranks_and_depends_on_epoch():
    full = patch_sampler(3, 10, seed=4)
    full.set_epoch(2)
    everything = list(full)
    ranks = [patch_sampler(3, 10, seed=4, rank=r, world_size=2) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(2)
    shares = [list(r) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == 5
    assert shares[0] == everything[0::2] and shares[1] == everything[1::2]
    full.set_epoch(3)
    assert list(full) != everything
    assert {i for i, _ in everything} <= {0, 1, 2}


def test_dataset_items_and_loader(tmp_path):
    sources = _sources(tmp_path)
    config = PreprocessConfig(unsharp_radius=0.8, radius_units="mm")  # the sources' spacing reaches the filter
    dataset = PatchDataset(sources, PatchConfig((32, 32, 32)), with_s=True, preprocess=config)
    item = dataset[(1, 5)]
    assert item["input"].shape == (2, 32, 32, 32) and item["label"].shape == (1, 32, 32, 32)
    assert set(np.unique(item["input"][1].numpy())) <= {0.0, 1.0}
    clone = pickle.loads(pickle.dumps(dataset))  # worker processes get a copy without open memmaps
    assert not clone._open
    np.testing.assert_array_equal(clone[(1, 5)]["input"].numpy(), item["input"].numpy())
    plain = PatchDataset(sources, PatchConfig((32, 32, 32), augment=OFF), with_s=False, preprocess=config)
    p = plain.patch(0, 3)
    z, y, x = p.start
    hu = np.load(sources[0].hu)
    np.testing.assert_allclose(p.image, preprocess(hu, (2.0, 1.0, 1.0), config)[z : z + 32, y : y + 32, x : x + 32],
                               atol=1e-6)
    loader, sampler = patch_loader(dataset, batch_size=2, patches_per_epoch=4, seed=0)
    sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["input"].shape == (2, 2, 32, 32, 32)
    only_x = PatchDataset(sources, PatchConfig((32, 32, 32)), with_s=False, preprocess=config, max_open=1)
    assert only_x[(0, 1)]["input"].shape == (1, 32, 32, 32)
    only_x[(1, 1)]
    assert list(only_x._open) == [1]  # at most max_open volumes stay mapped


def test_bad_options_are_clear():
    with pytest.raises(Seg2RefineError, match="vessel_fraction"):
        PatchConfig(vessel_fraction=1.5)
    with pytest.raises(Seg2RefineError, match="patch size"):
        PatchConfig(patch_size=(32, 32))
    with pytest.raises(Seg2RefineError, match="AugmentConfig"):
        PatchConfig(augment=True)  # the former on/off switch: name a preset instead
    with pytest.raises(Seg2RefineError, match="S file"):
        PatchDataset([PatchSource("a", "x.npy", "y.npy", (0,))], PatchConfig(), with_s=True,
                     preprocess=PreprocessConfig())
    with pytest.raises(Seg2RefineError, match="PreprocessConfig"):
        PatchDataset([PatchSource("a", "x.npy", "y.npy", (0,))], PatchConfig(), with_s=False, preprocess=None)
