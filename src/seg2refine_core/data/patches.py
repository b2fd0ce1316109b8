"""3D training patches for stage 2 (Attention-GAN) and the 3D baseline: sampling, reading and augmentation.

Patches are read straight from memory-mapped volumes (the X' cache, its labels and the stage-1 S cache): only
the patch's box (plus a rotation margin) is touched, never the whole volume. Arrays are ``(z, y, x)``.

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

Augmentation (each step drawn independently per patch; ``augment=False`` switches all off, for checks):

- Rotation (``rotate_prob``): angles uniform in ±``max_rotation_deg`` about each of the three voxel axes
  (paper: up to 15°), applied with MONAI ``Affine`` about the patch centre; X' bilinear, T and S nearest.
  The box read from the volume is enlarged by the rotation's exact reach, so corners come from real data
  (zeros only beyond the volume). Rotation is in voxel space (with anisotropic spacing it is slightly sheared).
- Random masking of S (``mask_prob``, only when the input has S): simulates what stage 1 misses, so G
  learns to restore vessels from X'. Both of (a) each 26-connected S component in the patch is dropped with
  probability ``drop_component_prob`` (a whole missed branch), and (b) 1..``mask_boxes`` boxes, each side a
  uniform ``mask_box_fraction`` share of the patch side, are zeroed in S (gaps in a vessel); a box is centred
  on a random S voxel when S is not empty, so it usually cuts a vessel.
- Gaussian noise on X' (``noise_prob``): ``N(0, sigma)`` with ``sigma`` uniform in (0, ``noise_std``], then
  clipped to [0, 1], the range X' always has.

Determinism: everything about a patch comes from one integer seed. :func:`patch_sampler` draws (case index,
seed) pairs per epoch from ``(seed, epoch)`` with :class:`~seg2refine_core.data.sampling.BalancedSampler` (uniform
over cases), sharded across DistributedDataParallel ranks, so a run is identical for any number of DataLoader
workers and after ``--resume``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cc3d
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seg2refine_core.data.cache import CacheIndex
from seg2refine_core.data.sampling import BalancedSampler
from seg2refine_core.errors import Seg2RefineError

KIND_RANDOM, KIND_VESSEL, KIND_S = 0, 1, 2
KIND_NAMES = ("random", "vessel", "s")


@dataclass(frozen=True)
class PatchConfig:
    """How patches are drawn and augmented (see module doc). ``patch_size`` is ``(d, h, w)`` voxels."""

    patch_size: tuple[int, int, int] = (64, 64, 64)
    vessel_fraction: float = 0.7
    s_share: float = 0.25
    jitter: float = 0.5
    augment: bool = True
    rotate_prob: float = 0.5
    max_rotation_deg: float = 15.0
    mask_prob: float = 0.5
    drop_component_prob: float = 0.2
    mask_boxes: int = 3
    mask_box_fraction: tuple[float, float] = (0.1, 0.3)
    noise_prob: float = 0.5
    noise_std: float = 0.03

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.patch_size)
        if len(size) != 3 or min(size) < 1:
            raise Seg2RefineError(f"patch size must be three positive sides (d h w), got {self.patch_size}")
        object.__setattr__(self, "patch_size", size)
        object.__setattr__(self, "mask_box_fraction", tuple(float(f) for f in self.mask_box_fraction))
        for name in ("vessel_fraction", "s_share", "jitter", "rotate_prob", "mask_prob", "drop_component_prob",
                     "noise_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise Seg2RefineError(f"patch option {name} must be in [0, 1], got {value}")
        low, high = self.mask_box_fraction
        if not 0.0 < low <= high <= 1.0:
            raise Seg2RefineError(f"patch option mask_box_fraction must be 0 < low <= high <= 1, got {(low, high)}")
        if self.max_rotation_deg < 0 or self.noise_std < 0 or self.mask_boxes < 1:
            raise Seg2RefineError("patch options max_rotation_deg and noise_std must be >= 0, mask_boxes >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PatchSource:
    """One volume as ``.npy`` files read by memory map.

    ``image``: X' (z, y, x) float16/32 in [0, 1]; ``label``: T uint8 {0, 1}; ``s``: stage-1 mask uint8 or None.
    ``label_counts`` / ``s_counts``: foreground voxels per axial slice (vessel-centred draws use them).
    """

    case_id: str
    image: Path
    label: Path
    label_counts: tuple[int, ...]
    s: Path | None = None
    s_counts: tuple[int, ...] | None = None


@dataclass
class Patch:
    """A drawn patch: ``image`` X' (d, h, w) float32, ``label`` T uint8, ``s`` S uint8 or None, and its origin."""

    image: np.ndarray
    label: np.ndarray
    s: np.ndarray | None
    kind: int
    start: tuple[int, int, int]
    angles_deg: tuple[float, float, float] | None = None


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


def rotation_matrix(angles_rad: Sequence[float]) -> np.ndarray:
    """The 3×3 rotation MONAI ``Affine(rotate_params=angles_rad)`` applies to voxel coordinates."""
    from monai.transforms.utils import create_rotate

    return np.asarray(create_rotate(3, tuple(float(a) for a in angles_rad)), dtype=np.float64)[:3, :3]


def rotation_margin(angles_rad: Sequence[float], size: Sequence[int]) -> tuple[int, int, int]:
    """Voxels to add on each side of a ``size`` box so that the box rotated by ``angles_rad`` stays inside."""
    r = np.abs(rotation_matrix(angles_rad))
    half = np.asarray(size, dtype=np.float64) / 2
    reach = np.maximum(r @ half, r.T @ half)  # covers either direction of the mapping
    return tuple(max(int(math.ceil(reach[i] - half[i] - 1e-9)), 0) + 1 for i in range(3))  # type: ignore[return-value]


def _rotate(arrays: np.ndarray, angles_rad: Sequence[float], size: Sequence[int], mode: str) -> np.ndarray:
    """Rotate channels ``(C, *enlarged)`` about their centre and cut the central ``size`` box → ``(C, *size)``."""
    from monai.transforms import Affine

    affine = Affine(
        rotate_params=tuple(float(a) for a in angles_rad), spatial_size=tuple(size), mode=mode,
        padding_mode="zeros", image_only=True, dtype=torch.float32,
    )
    return np.asarray(affine(torch.from_numpy(np.ascontiguousarray(arrays, dtype=np.float32))))


def mask_s(rng: np.random.Generator, s: np.ndarray, config: PatchConfig) -> np.ndarray:
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
    rng: np.random.Generator,
    image: np.ndarray,
    label: np.ndarray,
    label_counts: Sequence[int],
    config: PatchConfig,
    s: np.ndarray | None = None,
    s_counts: Sequence[int] | None = None,
) -> Patch:
    """Draw, read and augment one patch (module doc) from volumes ``image``/``label``/``s`` (z, y, x, memmaps)."""
    size = config.patch_size
    shape = image.shape
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
    augment = config.augment
    angles = None
    if augment and config.max_rotation_deg > 0 and rng.random() < config.rotate_prob:
        angles = tuple(float(a) for a in rng.uniform(-config.max_rotation_deg, config.max_rotation_deg, 3))
    if angles is None:
        x = read_region(image, start, size, np.float32)
        t = read_region(label, start, size, np.uint8)
        sp = read_region(s, start, size, np.uint8) if s is not None else None
    else:
        radians = np.deg2rad(angles)
        margin = rotation_margin(radians, size)
        big_start = [a - m for a, m in zip(start, margin, strict=True)]
        big_size = [n + 2 * m for n, m in zip(size, margin, strict=True)]
        x = _rotate(read_region(image, big_start, big_size, np.float32)[None], radians, size, "bilinear")[0]
        masks = [read_region(label, big_start, big_size, np.uint8)]
        if s is not None:
            masks.append(read_region(s, big_start, big_size, np.uint8))
        rotated = _rotate(np.stack(masks), radians, size, "nearest") > 0.5
        t = rotated[0].astype(np.uint8)
        sp = rotated[1].astype(np.uint8) if s is not None else None
    if augment and sp is not None and rng.random() < config.mask_prob:
        sp = mask_s(rng, sp, config)
    if augment and config.noise_std > 0 and rng.random() < config.noise_prob:
        sigma = config.noise_std * (1.0 - rng.random())
        x = np.clip(x + rng.normal(0.0, sigma, x.shape).astype(np.float32), 0.0, 1.0)
    return Patch(image=np.clip(x, 0.0, 1.0, out=x), label=t, s=sp, kind=kind, start=start, angles_deg=angles)


class PatchDataset(Dataset):
    """Patches of :class:`PatchSource` volumes for a DataLoader driven by :func:`patch_sampler`.

    ``dataset[(case_index, seed)]`` → dict of tensors: ``input`` ``(C, d, h, w)`` float32 (C = 2: X', S as
    float {0, 1} when ``with_s``; C = 1: X'), ``label`` ``(1, d, h, w)`` float32 {0, 1}, ``kind`` (0 random,
    1 label-centred, 2 S-centred). Memory maps are opened lazily per process (safe with worker processes); at
    most ``max_open`` volumes stay mapped (each map holds a file descriptor).
    """

    def __init__(
        self, sources: Sequence[PatchSource], config: PatchConfig, with_s: bool, max_open: int = 16
    ) -> None:
        if not sources:
            raise Seg2RefineError("patch dataset: no volumes to sample from")
        if with_s and any(src.s is None for src in sources):
            raise Seg2RefineError("patch dataset: with_s needs an S file for every volume")
        self.sources = list(sources)
        self.config = config
        self.with_s = with_s
        self.max_open = max_open
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.sources)

    def arrays(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Memory maps ``(X', T, S or None)`` of source ``index`` (the ``max_open`` latest stay open)."""
        if index in self._open:
            self._open.move_to_end(index)
        else:
            src = self.sources[index]
            s = np.load(src.s, mmap_mode="r") if self.with_s and src.s is not None else None
            self._open[index] = (np.load(src.image, mmap_mode="r"), np.load(src.label, mmap_mode="r"), s)
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return self._open[index]

    def patch(self, index: int, seed: int) -> Patch:
        """The patch of source ``index`` drawn from ``seed`` (deterministic)."""
        src = self.sources[index]
        image, label, s = self.arrays(index)
        return draw_patch(np.random.default_rng(seed), image, label, src.label_counts, self.config, s,
                          src.s_counts if self.with_s else None)

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
    """:class:`PatchSource` per case from the X' cache (and the S cache when given)."""
    sources = []
    for case_id in case_ids:
        cached = cache[case_id]
        if cached.label_path is None or cached.vessel_pixels is None:
            raise Seg2RefineError(f"case {case_id!r} has no label in the cache at {cache.root}")
        s_path, s_counts = s_files[case_id] if s_files is not None else (None, None)
        sources.append(PatchSource(case_id, cached.image_path, cached.label_path, cached.vessel_pixels, s_path,
                                   s_counts))
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
