"""3D training patches for stage 2 (Attention-GAN) and the 3D baseline: sampling, reading and augmentation.

Patches are read straight from memory-mapped volumes (the HU cache, its labels and the stage-1 S cache): only the
patch's box (plus the margin a rotation or zoom needs, plus the filters' context) is touched, never the whole
volume. X' of the patch is made from HU on the fly (:func:`~.preprocess.xprime_box`), equal to that box of
:func:`~.preprocess.preprocess` of the whole volume. Arrays are ``(z, y, x)``.

Sampling (one draw per patch, :func:`draw_patch`):

- With probability ``vessel_fraction`` the patch is centred on a foreground voxel: an S voxel with
  probability ``s_share`` (where the case has an S with foreground; these patches show S's false positives),
  else a label (T) voxel. The voxel is found without scanning the volume: an axial slice is drawn with
  probability proportional to its foreground voxel count (stored with the caches), then a voxel of that slice.
  The centre is then moved by a uniform random offset of up to ``jitter`` × half the patch side per axis, so
  vessels do not always sit in the middle. Otherwise (and for a case without any foreground) the patch is
  placed uniformly at random.
- A patch that would stick out of the volume is shifted inside; a volume smaller than the patch on some axis
  is centred in the patch and zero-padded (X' = 0 is air after the HU window; masks are 0).

Augmentation (:class:`~.augment.AugmentConfig` in ``PatchConfig.augment``; presets ``default``, ``none`` = the
recipe before augmentation existed, ``off``; the ranges are in :mod:`seg2refine_core.data.augment`), in this order:

- Intensity on the HU of the box (CT only), then X'.
- Rotation (``rotate_prob``): angles uniform in ±``rotate_deg`` about each of the three voxel axes (paper: up to
  15°) and scaling (``scale_prob``): one isotropic zoom factor uniform in ``1 ± scale_range`` (> 1 enlarges), both
  in one MONAI ``Affine`` about the patch centre; X' bilinear, T and S nearest. The box read from the volume is
  enlarged by the transform's exact reach (:func:`resample_margin`), so corners come from real data (zeros only
  beyond the volume). Rotation is in voxel space (with anisotropic spacing it is slightly sheared).
- Flips of X', T and S (each axis, ``flip_prob``), then gamma on X'.
- Random masking of S (``mask_s_prob``, only when the input has S): simulates what stage 1 misses, so G
  learns to restore vessels from X'. Both of (a) each 26-connected S component in the patch is dropped with
  probability ``drop_component_prob`` (a whole missed branch), and (b) 1..``mask_boxes`` boxes, each side a
  uniform ``mask_box_fraction`` share of the patch side, are zeroed in S (gaps in a vessel); a box is centred
  on a random S voxel when S is not empty, so it usually cuts a vessel.
- Gaussian noise on X' (``xprime_noise_prob``, the ``none`` preset): ``N(0, sigma)`` with ``sigma`` uniform in
  (0, ``xprime_noise_std``], then clipped to [0, 1], the range X' always has.

Determinism: everything about a patch comes from one integer seed. The placement, rotation angles, masking of S and
X' noise are drawn from ``numpy.random.default_rng(seed)`` in the order they always were (so ``none`` draws the same
patches as before); scaling and the seeds of the MONAI transform groups come from a second stream
``default_rng([seed, 1])``. :func:`patch_sampler` draws (case index, seed) pairs per epoch from ``(seed, epoch)``
with :class:`~seg2refine_core.data.sampling.BalancedSampler` (uniform over cases), sharded across
DistributedDataParallel ranks, so a run is identical for any number of DataLoader workers and after ``--resume``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seg2refine_core.data.augment import Augmentation, AugmentConfig, augment_preset
from seg2refine_core.data.cache import CacheIndex
from seg2refine_core.data.preprocess import PreprocessConfig, xprime_box
from seg2refine_core.data.sampling import BalancedSampler
from seg2refine_core.errors import Seg2RefineError

KIND_RANDOM, KIND_VESSEL, KIND_S = 0, 1, 2
KIND_NAMES = ("random", "vessel", "s")


@dataclass(frozen=True)
class PatchConfig:
    """How patches are drawn (see module doc) and augmented. ``patch_size`` is ``(d, h, w)`` voxels;
    ``augment`` an :class:`~.augment.AugmentConfig` (default: ``augment_preset("default", ndim=3)``)."""

    patch_size: tuple[int, int, int] = (64, 64, 64)
    vessel_fraction: float = 0.7
    s_share: float = 0.25
    jitter: float = 0.5
    augment: AugmentConfig = field(default_factory=lambda: augment_preset("default", ndim=3))

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.patch_size)
        if len(size) != 3 or min(size) < 1:
            raise Seg2RefineError(f"patch size must be three positive sides (d h w), got {self.patch_size}")
        object.__setattr__(self, "patch_size", size)
        for name in ("vessel_fraction", "s_share", "jitter"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise Seg2RefineError(f"patch option {name} must be in [0, 1], got {value}")
        if not isinstance(self.augment, AugmentConfig):
            raise Seg2RefineError(
                f"patch option augment must be an AugmentConfig (augment_preset('default' | 'none' | 'off', "
                f"ndim=3)), got {self.augment!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists, ``augment`` as its own dict)."""
        return {"patch_size": list(self.patch_size), "vessel_fraction": self.vessel_fraction,
                "s_share": self.s_share, "jitter": self.jitter, "augment": self.augment.to_dict()}


@dataclass(frozen=True)
class PatchSource:
    """One volume as ``.npy`` files read by memory map.

    ``hu``: CT in HU (z, y, x), int16 in the cache (any real dtype); ``label``: T uint8 {0, 1}; ``s``: stage-1 mask
    uint8 or None. ``label_counts`` / ``s_counts``: foreground voxels per axial slice (vessel-centred draws use
    them). ``spacing``: (sz, sy, sx) mm, needed only for an unsharp radius in mm.
    """

    case_id: str
    hu: Path
    label: Path
    label_counts: tuple[int, ...]
    s: Path | None = None
    s_counts: tuple[int, ...] | None = None
    spacing: tuple[float, float, float] | None = None


@dataclass
class Patch:
    """A drawn patch: ``image`` X' (d, h, w) float32 in [0, 1], ``label`` T uint8, ``s`` S uint8 or None, its
    origin, and the rotation angles (°) and zoom factor (> 1 enlarges) when drawn."""

    image: np.ndarray
    label: np.ndarray
    s: np.ndarray | None
    kind: int
    start: tuple[int, int, int]
    angles_deg: tuple[float, float, float] | None = None
    zoom: float | None = None


def read_region(array: np.ndarray, start: Sequence[int], size: Sequence[int], dtype: Any = None) -> np.ndarray:
    """``array[start : start + size]`` (3D) as a new array; voxels outside ``array`` are 0. Reads only the box."""
    dtype = array.dtype if dtype is None else dtype
    out = np.zeros(tuple(int(n) for n in size), dtype=dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape, strict=True):
        lo, hi = max(int(s), 0), min(int(s) + int(n), dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - int(s), hi - int(s)))
    out[tuple(dst)] = array[tuple(src)]
    return out


def patch_start(centre: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """Corner of a ``size`` box centred on ``centre``, moved inside ``shape``; centred (padded) where too small."""
    start = []
    for c, n, dim in zip(centre, size, shape, strict=True):
        if dim >= n:
            start.append(int(min(max(int(c) - n // 2, 0), dim - n)))
        else:
            start.append(int((dim - n) // 2))
    return tuple(start)  # type: ignore[return-value]


def foreground_voxel(
    rng: np.random.Generator, mask: np.ndarray, counts: Sequence[int]
) -> tuple[int, int, int] | None:
    """A uniformly random foreground voxel of ``mask`` (z, y, x), reading one axial slice; None when empty.

    ``counts``: foreground voxels per slice (a slice is drawn in proportion to its count).
    """
    weights = np.asarray(counts, dtype=np.float64)
    total = weights.sum()
    if total <= 0:
        return None
    z = int(rng.choice(weights.size, p=weights / total))
    ys, xs = np.nonzero(np.asarray(mask[z]))
    if ys.size == 0:
        return None
    i = int(rng.integers(ys.size))
    return z, int(ys[i]), int(xs[i])


def affine_matrix(angles_rad: Sequence[float] | None, zoom: float | None = None) -> np.ndarray:
    """The 3×3 matrix that MONAI ``Affine(rotate_params=angles_rad, scale_params=(1 / zoom,) * 3)`` applies to the
    output voxel coordinates (about the centre) to find where to sample the input. ``zoom`` > 1 enlarges."""
    from monai.transforms.utils import create_rotate, create_scale

    matrix = np.eye(3)
    if angles_rad is not None:
        matrix = np.asarray(create_rotate(3, tuple(float(a) for a in angles_rad)), dtype=np.float64)[:3, :3]
    if zoom is not None:
        matrix = matrix @ np.asarray(create_scale(3, (1.0 / float(zoom),) * 3), dtype=np.float64)[:3, :3]
    return matrix


def resample_margin(
    angles_rad: Sequence[float] | None, size: Sequence[int], zoom: float | None = None
) -> tuple[int, int, int]:
    """Voxels to add on each side of a ``size`` box so that the box rotated by ``angles_rad`` and zoomed by
    ``zoom`` (:func:`affine_matrix`) samples only inside the enlarged box (plus one voxel for interpolation)."""
    m = np.abs(affine_matrix(angles_rad, zoom))
    half = np.asarray(size, dtype=np.float64) / 2
    reach = m @ half
    return tuple(max(int(math.ceil(reach[i] - half[i] - 1e-9)), 0) + 1 for i in range(3))  # type: ignore[return-value]


def _resample(
    arrays: np.ndarray, angles_rad: Sequence[float] | None, zoom: float | None, size: Sequence[int], mode: str
) -> np.ndarray:
    """Rotate/zoom channels ``(C, *enlarged)`` about their centre and cut the central ``size`` box → ``(C, *size)``."""
    from monai.transforms import Affine

    affine = Affine(
        rotate_params=None if angles_rad is None else tuple(float(a) for a in angles_rad),
        scale_params=None if zoom is None else (1.0 / float(zoom),) * 3, spatial_size=tuple(size), mode=mode,
        padding_mode="zeros", image_only=True, dtype=torch.float32,
    )
    return np.asarray(affine(torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32))))


def mask_s(rng: np.random.Generator, s: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """Random masking of S (module doc): drop whole 26-connected components, then zero random boxes. New array."""
    s = np.array(s, dtype=np.uint8, copy=True)
    if s.any() and config.drop_component_prob > 0:
        labels, n = cc3d.connected_components(s, connectivity=26, return_N=True)
        drop = np.flatnonzero(rng.random(n) < config.drop_component_prob) + 1
        if drop.size:
            s[np.isin(labels, drop)] = 0
    size = np.asarray(s.shape)
    low, high = config.mask_box_fraction
    for _ in range(int(rng.integers(1, config.mask_boxes + 1))):
        box = np.maximum(np.round(size * rng.uniform(low, high, 3)).astype(int), 1)
        fg = np.argwhere(s)
        centre = fg[rng.integers(len(fg))] if len(fg) else rng.integers(0, size)
        lo = np.clip(centre - box // 2, 0, size)
        hi = np.clip(lo + box, 0, size)
        s[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 0
    return s


def draw_patch(
    seed: int,
    hu: np.ndarray,
    label: np.ndarray,
    label_counts: Sequence[int],
    config: PatchConfig,
    s: np.ndarray | None = None,
    s_counts: Sequence[int] | None = None,
    *,
    preprocess: PreprocessConfig | None = None,
    spacing: Sequence[float] | None = None,
    augmentation: Augmentation | None = None,
) -> Patch:
    """Draw, read and augment one patch (module doc) from volumes ``hu``/``label``/``s`` (z, y, x, memmaps).

    seed: the patch's seed (everything is drawn from it). preprocess: X' parameters (default
    :class:`~.preprocess.PreprocessConfig`); spacing: (sz, sy, sx) mm, only for an unsharp radius in mm.
    augmentation: the MONAI transforms of ``config.augment`` (built here when None; datasets build them once).
    """
    aug = config.augment
    if augmentation is None:
        augmentation = Augmentation(aug, ndim=3)
    rng = np.random.default_rng(int(seed))
    extra = np.random.default_rng([int(seed), 1])
    size = config.patch_size
    shape = hu.shape
    kind, centre = KIND_RANDOM, None
    if rng.random() < config.vessel_fraction:
        if s is not None and s_counts is not None and rng.random() < config.s_share:
            kind, centre = KIND_S, foreground_voxel(rng, s, s_counts)
        if centre is None:
            kind, centre = KIND_VESSEL, foreground_voxel(rng, label, label_counts)
    if centre is None:
        kind = KIND_RANDOM
        start = tuple(int(rng.integers(0, dim - n + 1)) if dim >= n else (dim - n) // 2
                      for n, dim in zip(size, shape, strict=True))
    else:
        reach = np.floor(np.asarray(size) / 2 * config.jitter).astype(int)
        shifted = np.asarray(centre) + rng.integers(-reach, reach + 1)
        start = patch_start(shifted, size, shape)
    angles = zoom = None
    if aug.rotate_deg > 0 and rng.random() < aug.rotate_prob:
        angles = tuple(float(a) for a in rng.uniform(-aug.rotate_deg, aug.rotate_deg, 3))
    if aug.scale_range > 0 and extra.random() < aug.scale_prob:
        zoom = float(1.0 + extra.uniform(-aug.scale_range, aug.scale_range))
    aug_seed = int(extra.integers(2**32))
    radians = None if angles is None else tuple(np.deg2rad(angles))
    margin = resample_margin(radians, size, zoom) if angles is not None or zoom is not None else (0, 0, 0)
    box_start = [a - m for a, m in zip(start, margin, strict=True)]
    box_size = [n + 2 * m for n, m in zip(size, margin, strict=True)]
    x = xprime_box(hu, box_start, box_size, spacing, preprocess, hu_transform=augmentation.hu_transform(aug_seed),
                   hu_context=augmentation.hu_context)
    masks = [read_region(label, box_start, box_size, np.uint8)]
    if s is not None:
        masks.append(read_region(s, box_start, box_size, np.uint8))
    if angles is not None or zoom is not None:
        x = _resample(x[None], radians, zoom, size, "bilinear")[0]
        masks = list(_resample(np.stack(masks), radians, zoom, size, "nearest") > 0.5)
    sample = {"image": torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32)),
              "label": torch.from_numpy(masks[0][None].astype(np.float32))}
    if s is not None:
        sample["s"] = torch.from_numpy(masks[1][None].astype(np.float32))
    sample = augmentation.flip(sample, aug_seed)
    x = np.asarray(augmentation.gamma(sample["image"], aug_seed), dtype=np.float32)[0]
    t = (np.asarray(sample["label"])[0] > 0.5).astype(np.uint8)
    sp = (np.asarray(sample["s"])[0] > 0.5).astype(np.uint8) if s is not None else None
    if sp is not None and rng.random() < aug.mask_s_prob:
        sp = mask_s(rng, sp, aug)
    if aug.xprime_noise_std > 0 and rng.random() < aug.xprime_noise_prob:
        sigma = aug.xprime_noise_std * (1.0 - rng.random())
        x = x + rng.normal(0.0, sigma, x.shape).astype(np.float32)
    return Patch(image=np.clip(x, 0.0, 1.0), label=t, s=sp, kind=kind, start=start, angles_deg=angles, zoom=zoom)


class PatchDataset(Dataset):
    """Patches of :class:`PatchSource` volumes for a DataLoader driven by :func:`patch_sampler`.

    ``dataset[(case_index, seed)]`` → dict of tensors: ``input`` ``(C, d, h, w)`` float32 (C = 2: X', S as
    float {0, 1} when ``with_s``; C = 1: X'), ``label`` ``(1, d, h, w)`` float32 {0, 1}, ``kind`` (0 random,
    1 label-centred, 2 S-centred). X' is made from the HU with ``preprocess`` (the model's preprocessing config).
    Memory maps are opened lazily per process (safe with worker processes); at most ``max_open`` volumes stay
    mapped (each map holds a file descriptor).
    """

    def __init__(
        self, sources: Sequence[PatchSource], config: PatchConfig, with_s: bool, *, preprocess: PreprocessConfig,
        max_open: int = 16,
    ) -> None:
        if not isinstance(preprocess, PreprocessConfig):
            raise Seg2RefineError(f"patch dataset: preprocess must be a PreprocessConfig, got {preprocess!r}")
        if not sources:
            raise Seg2RefineError("patch dataset: no volumes to sample from")
        if with_s and any(src.s is None for src in sources):
            raise Seg2RefineError("patch dataset: with_s needs an S file for every volume")
        self.sources = list(sources)
        self.config = config
        self.with_s = with_s
        self.preprocess = preprocess
        self.augmentation = Augmentation(config.augment, ndim=3)
        self.max_open = max_open
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.sources)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Memory maps ``(HU, T, S or None)`` of source ``index`` (the ``max_open`` latest stay open)."""
        if index in self._open:
            self._open.move_to_end(index)
        else:
            src = self.sources[index]
            s = np.load(src.s, mmap_mode="r") if self.with_s and src.s is not None else None
            self._open[index] = (np.load(src.hu, mmap_mode="r"), np.load(src.label, mmap_mode="r"), s)
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return self._open[index]

    def patch(self, index: int, seed: int) -> Patch:
        """The patch of source ``index`` drawn from ``seed`` (deterministic)."""
        src = self.sources[index]
        hu, label, s = self.arrays(index)
        return draw_patch(seed, hu, label, src.label_counts, self.config, s, src.s_counts if self.with_s else None,
                          preprocess=self.preprocess, spacing=src.spacing, augmentation=self.augmentation)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        p = self.patch(int(index), int(seed))
        channels = [p.image] + ([p.s.astype(np.float32)] if self.with_s else [])
        return {
            "input": torch.from_numpy(np.stack(channels)),
            "label": torch.from_numpy(p.label.astype(np.float32)[None]),
            "kind": torch.tensor(p.kind),
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state


def patch_sampler(
    num_sources: int, patches_per_epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> BalancedSampler:
    """(source index, patch seed) pairs, uniform over sources, from ``(seed, epoch)``; rank ``r`` takes its share.

    Call ``set_epoch(epoch)`` before each epoch. ``patches_per_epoch`` is rounded up to a multiple of
    ``world_size``.
    """
    return BalancedSampler(num_sources, np.arange(num_sources), patches_per_epoch, positive_fraction=0.0,
                           seed=seed, rank=rank, world_size=world_size)


def patch_sources(
    cache: CacheIndex, case_ids: Sequence[str], s_files: dict[str, tuple[Path, tuple[int, ...]]] | None = None
) -> list[PatchSource]:
    """:class:`PatchSource` per case from the HU cache (and the S cache when given)."""
    sources = []
    for case_id in case_ids:
        cached = cache[case_id]
        if cached.label_path is None or cached.vessel_pixels is None:
            raise Seg2RefineError(f"case {case_id!r} has no label in the cache at {cache.root}")
        s_path, s_counts = s_files[case_id] if s_files is not None else (None, None)
        sources.append(PatchSource(case_id, cached.hu_path, cached.label_path, cached.vessel_pixels, s_path,
                                   s_counts, cached.spacing))
    return sources


def patch_loader(
    dataset: PatchDataset,
    *,
    batch_size: int,
    patches_per_epoch: int,
    seed: int,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[DataLoader, BalancedSampler]:
    """DataLoader of ``dataset`` batches and its :func:`patch_sampler` (this rank's share of each epoch).

    Call ``sampler.set_epoch(epoch, skip)`` before iterating an epoch.
    """
    sampler = patch_sampler(len(dataset), patches_per_epoch, seed, rank, world_size)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=num_workers > 0,
    )
    return loader, sampler
