"""Training augmentation from MONAI dictionary transforms, for stage-1 slices (2D) and 3D patches (stage 2, baseline).

The cache holds HU (:mod:`seg2refine_core.data.cache`), so augmentation works in three steps per sample:

1. **Intensity, on HU, CT only** (before the window): the HU of the slice or patch, read with the context the
   filters need, is changed by the transforms below; S and T are never touched.
2. **X'** = window + in-plane unsharp mask of that HU (:func:`~.preprocess.xprime_box`), exactly as
   :func:`~.preprocess.preprocess` would make it for the whole volume.
3. **Spatial, on X', T and S together** (same random draw for all keys; X' bilinear, T and S nearest, so masks stay
   binary), then gamma on X'.

Transforms and ranges (probabilities are per sample and independent; ``default`` / ``none`` give the preset values):

==================  ====================================================================  ===========  ============
transform           what it does (MONAI transform)                                        default      none
==================  ====================================================================  ===========  ============
flips               mirror each spatial axis with its own coin (``RandFlipd``): 2D y, x;  p 0.5/axis   2D: p 0.5/axis
                    3D z, y, x                                                                         3D: off
rotation            2D: in-plane angle uniform in ±15° (``RandRotated``, paper); 3D: one  p 0.5, ±15°  p 0.5, ±15°
                    angle per voxel axis uniform in ±15° (MONAI ``Affine``, as before)
scaling             isotropic zoom by a factor uniform in [0.8, 1.2] (±20 %): 2D          p 0.3        off
                    ``RandZoomd`` (zero padding); 3D in the same ``Affine`` as rotation
elastic             none: MONAI ``Rand3DElasticd`` costs 450 ms per 64³ patch (11× the    --           --
                    rotation+scaling resample, more than the rest of a patch), measured
contrast level      iodine contrast: HU <= 100 unchanged, HU >= 200 mapped to             p 0.3        off
                    ``100 + k (HU - 100)`` with k uniform in [0.6, 1.6], a quadratic blend
                    in between (monotone, continuous): lumen/blood pool 400 HU -> 280-580
                    HU; myocardium, fat, lung untouched; calcium and bone scale too
                    (:class:`RandContrastLeveld`)
intensity scale     HU x (1 + f), f uniform in ±0.1, around water (``RandScaleIntensityd``)  p 0.3        off
intensity shift     HU + d, d uniform in ±30 HU (``RandShiftIntensityd``)                  p 0.3        off
Gaussian noise      white noise in HU, its std uniform in [0, 30] HU                       p 0.3        off
                    (``RandGaussianNoised``)
blur                Gaussian, sigma uniform in [0.25, 1.0] voxels per axis                 p 0.2        off
                    (``RandGaussianSmoothd``; 2D in-plane, 3D also along z)
low resolution      down-sample (nearest) by a factor uniform in [0.5, 1.0] and back up    p 0.2        off
                    (bi/trilinear) (``RandSimulateLowResolutiond``)
gamma               on X' (in [0, 1]): ``x ** g`` over the sample's range, g uniform in    p 0.3        off
                    [0.7, 1.5] (``RandAdjustContrastd``)
X' noise (3D)       ``N(0, s)`` added to X', s uniform in (0, 0.03], clipped to [0, 1]     off          p 0.5
                    (the former stage-2 patch noise; default uses the HU noise instead)
masking of S (3D)   drop 26-connected S components (p 0.2 each) and zero 1-3 boxes of      p 0.5        p 0.5
                    10-30 % of the patch side, centred on S (:func:`~.patches.mask_s`);
                    only when the input has S (stage 2)
==================  ====================================================================  ===========  ============

``none`` is the paper's recipe, i.e. what training did before this module: stage 1 flips and rotation only (the
same MONAI transforms with the same per-sample seed, so a slice comes out as before up to the float16 rounding of
the former X' cache), stage 2 and the 3D baseline rotation, masking of S and X' noise (the baseline has no S).
``off`` switches everything off (for checks). The intensity ranges widen what the phantom and real scans give
(phantom blood 300-450 HU; real CCTA 250-600 HU, noise 10-50 HU).

Order of the intensity steps: contrast level (the patient), blur and low resolution (the scanner's resolution),
noise (the scanner's noise), then scale and shift (calibration). The context the blur needs beyond the sample is
read from the volume (mirrored HU beyond its edges) and cropped after, so a patch is blurred as inside the volume.

Determinism: everything about a sample comes from one integer seed (the DataLoader's samplers hand one per
sample). MONAI ``Compose.set_random_state`` seeds each group of transforms from it: the 2D spatial group takes
the seed itself (as stage 1 always did), intensity and gamma take seeds derived with ``numpy.random.SeedSequence``.
Results therefore do not depend on DataLoader workers or ranks, and ``--resume`` continues bit-exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

from seg2refine_core.data.preprocess import PreprocessConfig, xprime_box
from seg2refine_core.errors import Seg2RefineError

PRESETS = ("default", "none", "off")
_PROBABILITIES = (
    "flip_prob", "rotate_prob", "scale_prob", "contrast_prob", "intensity_scale_prob", "intensity_shift_prob",
    "noise_prob", "blur_prob", "lowres_prob", "gamma_prob", "xprime_noise_prob", "mask_s_prob",
    "drop_component_prob",
)
_INTENSITY_PROBS = ("contrast_prob", "intensity_scale_prob", "intensity_shift_prob", "noise_prob", "blur_prob",
                    "lowres_prob")
_PAIRS = ("contrast_range", "contrast_hu", "blur_sigma", "lowres_zoom", "gamma_range", "mask_box_fraction")


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (``*_prob``, per sample) and ranges of every transform (module doc). All off by default:
    use :func:`augment_preset` for the presets.

    rotate_deg: maximum angle (°). scale_range: zoom factor in ``1 ± scale_range``. contrast_range: factor k on
    HU above ``contrast_hu[1]`` around ``contrast_hu[0]`` (k >= 0.5 keeps the mapping monotone). intensity_scale:
    f in ±f. intensity_shift_hu, noise_std_hu: HU. blur_sigma: voxels. lowres_zoom: down-sampling factor range in
    (0, 1]. gamma_range: exponent range (> 0). xprime_noise_std: X' units. mask_*: masking of S (3D with S).
    """

    flip_prob: float = 0.0
    rotate_prob: float = 0.0
    rotate_deg: float = 15.0
    scale_prob: float = 0.0
    scale_range: float = 0.2
    contrast_prob: float = 0.0
    contrast_range: tuple[float, float] = (0.6, 1.6)
    contrast_hu: tuple[float, float] = (100.0, 200.0)
    intensity_scale_prob: float = 0.0
    intensity_scale: float = 0.1
    intensity_shift_prob: float = 0.0
    intensity_shift_hu: float = 30.0
    noise_prob: float = 0.0
    noise_std_hu: float = 30.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.25, 1.0)
    lowres_prob: float = 0.0
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    gamma_prob: float = 0.0
    gamma_range: tuple[float, float] = (0.7, 1.5)
    xprime_noise_prob: float = 0.0
    xprime_noise_std: float = 0.03
    mask_s_prob: float = 0.0
    drop_component_prob: float = 0.2
    mask_boxes: int = 3
    mask_box_fraction: tuple[float, float] = (0.1, 0.3)

    def __post_init__(self) -> None:
        for name in _PAIRS:
            value = getattr(self, name)
            if isinstance(value, str) or len(value) != 2:
                raise Seg2RefineError(f"augmentation option {name} must be a (low, high) pair, got {value!r}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        for f in fields(self):
            values = getattr(self, f.name)
            for value in values if isinstance(values, tuple) else (values,):
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise Seg2RefineError(f"augmentation option {f.name} must be finite numbers, got {values!r}")
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise Seg2RefineError(f"augmentation option {name} must be in [0, 1], got {getattr(self, name)}")
        for name in _PAIRS:
            low, high = getattr(self, name)
            if low > high:
                raise Seg2RefineError(f"augmentation option {name} must have low <= high, got {(low, high)}")
        checks = (
            ("rotate_deg", 0.0 <= self.rotate_deg <= 180.0, "in [0, 180]"),
            ("scale_range", 0.0 <= self.scale_range < 1.0, "in [0, 1)"),
            ("contrast_range", self.contrast_range[0] >= 0.5, ">= 0.5 (a monotone HU mapping)"),
            ("contrast_hu", self.contrast_hu[0] < self.contrast_hu[1], "a pair low < high"),
            ("intensity_scale", 0.0 <= self.intensity_scale < 1.0, "in [0, 1)"),
            ("intensity_shift_hu", self.intensity_shift_hu >= 0, ">= 0"),
            ("noise_std_hu", self.noise_std_hu >= 0, ">= 0"),
            ("blur_sigma", self.blur_sigma[0] >= 0, ">= 0"),
            ("lowres_zoom", 0.0 < self.lowres_zoom[0] and self.lowres_zoom[1] <= 1.0, "in (0, 1]"),
            ("gamma_range", self.gamma_range[0] > 0, "> 0"),
            ("xprime_noise_std", self.xprime_noise_std >= 0, ">= 0"),
            ("mask_boxes", self.mask_boxes >= 1 and float(self.mask_boxes).is_integer(), "an integer >= 1"),
            ("mask_box_fraction", 0.0 < self.mask_box_fraction[0] and self.mask_box_fraction[1] <= 1.0,
             "in (0, 1]"),
        )
        for name, ok, what in checks:
            if not ok:
                raise Seg2RefineError(f"augmentation option {name} must be {what}, got {getattr(self, name)!r}")
        object.__setattr__(self, "mask_boxes", int(self.mask_boxes))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of all options (pairs as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_dict`; missing keys take the (off) defaults, unknown keys are an error."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise Seg2RefineError(f"unknown augmentation option(s) {', '.join(map(repr, unknown))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def any_intensity(self) -> bool:
        """Whether any HU transform can fire."""
        return any(getattr(self, name) > 0 for name in _INTENSITY_PROBS)


def augment_preset(name: str, ndim: int) -> AugmentConfig:
    """The preset ``name`` ("default", "none" or "off", module doc) for 2D slices (``ndim=2``) or 3D patches (3)."""
    if ndim not in (2, 3):
        raise Seg2RefineError(f"augmentation is for 2D slices or 3D patches, got ndim={ndim}")
    if name == "off":
        return AugmentConfig()
    if name == "none":
        if ndim == 2:
            return AugmentConfig(flip_prob=0.5, rotate_prob=0.5)
        return AugmentConfig(rotate_prob=0.5, mask_s_prob=0.5, xprime_noise_prob=0.5)
    if name == "default":
        return AugmentConfig(
            flip_prob=0.5, rotate_prob=0.5, scale_prob=0.3, contrast_prob=0.3, intensity_scale_prob=0.3,
            intensity_shift_prob=0.3, noise_prob=0.3, blur_prob=0.2, lowres_prob=0.2, gamma_prob=0.3,
            mask_s_prob=0.5 if ndim == 3 else 0.0,
        )
    raise Seg2RefineError(f"unknown augmentation preset {name!r} (known: {', '.join(PRESETS)})")


def contrast_level(hu: torch.Tensor, factor: float, low_hu: float = 100.0, high_hu: float = 200.0) -> torch.Tensor:
    """Scale contrast-enhanced HU: ``hu + w (factor - 1) (hu - low_hu)``, ``w = clip((hu - low_hu) / (high_hu -
    low_hu), 0, 1)``: below ``low_hu`` unchanged, above ``high_hu`` ``low_hu + factor (hu - low_hu)``. Monotone for
    factor >= 0.5. Any shape; a new tensor."""
    w = ((hu - low_hu) / (high_hu - low_hu)).clamp(0.0, 1.0)
    return hu + w * (factor - 1.0) * (hu - low_hu)


class RandContrastLeveld(RandomizableTransform, MapTransform):
    """MONAI dictionary transform: :func:`contrast_level` of the ``keys`` with a factor uniform in
    ``factor_range``, with probability ``prob`` (seeded by ``set_random_state`` like any MONAI random transform)."""

    def __init__(
        self, keys: Sequence[Hashable] | Hashable, prob: float, factor_range: tuple[float, float],
        low_hu: float = 100.0, high_hu: float = 200.0,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.factor_range = (float(factor_range[0]), float(factor_range[1]))
        self.low_hu, self.high_hu = float(low_hu), float(high_hu)
        self.factor = 1.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self.factor = float(self.R.uniform(*self.factor_range))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = contrast_level(torch.as_tensor(d[key], dtype=torch.float32), self.factor, self.low_hu,
                                        self.high_hu)
        return d


@contextmanager
def plain_tensors() -> Iterator[None]:
    """MONAI returns plain tensors inside (no MetaTensor bookkeeping, which would double the per-sample cost)."""
    from monai.data import get_track_meta, set_track_meta

    tracking = get_track_meta()
    set_track_meta(False)
    try:
        yield
    finally:
        set_track_meta(tracking)


def derived_seed(seed: int, stream: int) -> int:
    """A 32-bit seed for one group of transforms, derived from the sample's ``seed`` (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(seed), int(stream)]).generate_state(1)[0])


class Augmentation:
    """The MONAI transform groups of ``config`` for 2D slices (``ndim=2``) or 3D patches (``ndim=3``).

    ``hu_transform(seed)``: the seeded intensity step for :func:`~.preprocess.xprime_box` (None when off), with
    ``hu_context`` its reach ``(z, y, x)`` in voxels; ``gamma(x, seed)``: gamma of X' ``(1, *spatial)``;
    ``flip(sample, seed)`` (3D): flips of the ``image``/``label``/``s`` arrays ``(1, d, h, w)`` of a dict.
    Build once per dataset (the transforms hold random state; each call re-seeds them).
    """

    def __init__(self, config: AugmentConfig, ndim: int) -> None:
        from monai.transforms import (
            Compose,
            RandAdjustContrastd,
            RandFlipd,
            RandGaussianNoised,
            RandGaussianSmoothd,
            RandScaleIntensityd,
            RandShiftIntensityd,
            RandSimulateLowResolutiond,
        )

        if ndim not in (2, 3):
            raise Seg2RefineError(f"augmentation is for 2D slices or 3D patches, got ndim={ndim}")
        self.config, self.ndim = config, ndim
        c = config
        steps: list[Any] = []
        if c.contrast_prob > 0:
            steps.append(RandContrastLeveld("image", c.contrast_prob, c.contrast_range, *c.contrast_hu))
        reach = 0
        if c.blur_prob > 0:
            sigma = {"sigma_x": c.blur_sigma, "sigma_y": c.blur_sigma, "sigma_z": c.blur_sigma}
            steps.append(RandGaussianSmoothd("image", prob=c.blur_prob, **sigma))
            reach += int(max(c.blur_sigma[1] * 4.0, 0.5) + 0.5)  # MONAI's kernel radius (truncated at 4 sigma)
        if c.lowres_prob > 0:
            steps.append(RandSimulateLowResolutiond(
                "image", prob=c.lowres_prob, zoom_range=c.lowres_zoom,
                upsample_mode="trilinear" if ndim == 3 else "bilinear",
            ))
            reach += math.ceil(1.0 / c.lowres_zoom[0])  # the edge voxels that up-sampling extrapolates
        if c.noise_prob > 0:
            steps.append(RandGaussianNoised("image", prob=c.noise_prob, std=c.noise_std_hu, sample_std=True))
        if c.intensity_scale_prob > 0:
            steps.append(RandScaleIntensityd("image", factors=c.intensity_scale, prob=c.intensity_scale_prob))
        if c.intensity_shift_prob > 0:
            steps.append(RandShiftIntensityd("image", offsets=c.intensity_shift_hu, prob=c.intensity_shift_prob))
        self.intensity = Compose(steps) if steps else None
        self.hu_context = (reach if ndim == 3 else 0, reach, reach)
        self._gamma = (
            Compose([RandAdjustContrastd("image", prob=c.gamma_prob, gamma=c.gamma_range)])
            if c.gamma_prob > 0 else None
        )
        self._flip = (
            Compose([RandFlipd(("image", "label", "s"), prob=c.flip_prob, spatial_axis=axis, allow_missing_keys=True)
                     for axis in range(ndim)])
            if c.flip_prob > 0 and ndim == 3 else None
        )

    def hu_transform(self, seed: int) -> Callable[[np.ndarray], np.ndarray] | None:
        """The intensity step seeded from ``seed``: float32 HU ``(z, y, x)`` -> same shape (2D: ``z`` is 1)."""
        if self.intensity is None:
            return None
        compose = self.intensity
        compose.set_random_state(seed=derived_seed(seed, 1))
        ndim = self.ndim

        def apply(hu: np.ndarray) -> np.ndarray:
            image = hu[None] if ndim == 3 else hu  # channel-first: (1, z, y, x), or (1, y, x) for a slice
            with plain_tensors():
                out = compose({"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))})["image"]
            out = np.asarray(torch.as_tensor(out, dtype=torch.float32))
            return out[0] if ndim == 3 else out

        return apply

    def gamma(self, xprime: torch.Tensor, seed: int) -> torch.Tensor:
        """Gamma of X' ``(1, *spatial)`` in [0, 1] seeded from ``seed`` (unchanged when off)."""
        if self._gamma is None:
            return xprime
        self._gamma.set_random_state(seed=derived_seed(seed, 2))
        with plain_tensors():
            return torch.as_tensor(self._gamma({"image": xprime})["image"], dtype=torch.float32)

    def flip(self, sample: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
        """3D flips of every array in ``sample`` (``image``, ``label``, ``s``; each ``(1, d, h, w)``), one draw."""
        if self._flip is None:
            return sample
        self._flip.set_random_state(seed=derived_seed(seed, 3))
        with plain_tensors():
            return {k: torch.as_tensor(v) for k, v in self._flip(sample).items()}


class SliceTransform:
    """Stage-1 training sample from one axial slice in HU: augmentation, X', crop (module doc).

    ``transform(hu_slice, label_slice, seed, spacing)`` -> ``{"image": (1, H, W) float32 X' in [0, 1],
    "label": (1, H, W) float32 {0, 1}}`` with ``(H, W) = crop``: intensity augmentation on the HU, X' of the whole
    slice (equal to that slice of :func:`~.preprocess.preprocess`), zero padding and a random crop to ``crop``, flips,
    rotation, scaling, then gamma. ``spacing`` ``(sz, sy, sx)`` mm is used only for an unsharp radius in mm.
    With the ``none`` preset this is the former stage-1 transform, drawn from the same seed.
    """

    def __init__(self, augment: AugmentConfig, preprocess: PreprocessConfig, crop: Sequence[int]) -> None:
        from monai.transforms import Compose, RandFlipd, RandRotated, RandSpatialCropd, RandZoomd, SpatialPadd

        self.augment, self.preprocess = augment, preprocess
        self.crop = (int(crop[0]), int(crop[1]))
        self.augmentation = Augmentation(augment, ndim=2)
        keys = ("image", "label")
        steps: list[Any] = [SpatialPadd(keys, spatial_size=self.crop),
                            RandSpatialCropd(keys, roi_size=self.crop, random_size=False)]
        if augment.flip_prob > 0:
            steps += [RandFlipd(keys, prob=augment.flip_prob, spatial_axis=axis) for axis in (0, 1)]
        if augment.rotate_prob > 0 and augment.rotate_deg > 0:
            steps.append(RandRotated(keys, range_x=math.radians(augment.rotate_deg), prob=augment.rotate_prob,
                                     keep_size=True, mode=("bilinear", "nearest"), padding_mode="zeros"))
        if augment.scale_prob > 0 and augment.scale_range > 0:
            steps.append(RandZoomd(keys, prob=augment.scale_prob, min_zoom=1.0 - augment.scale_range,
                                   max_zoom=1.0 + augment.scale_range, mode=("bilinear", "nearest"),
                                   padding_mode="constant", keep_size=True))
        self.spatial = Compose(steps)

    def xprime(self, hu_slice: np.ndarray, seed: int, spacing: Sequence[float] | None = None) -> np.ndarray:
        """X' ``(H, W)`` float32 of the HU slice after the seeded intensity step (no spatial transform)."""
        hu_slice = np.asarray(hu_slice)
        if hu_slice.ndim != 2:
            raise Seg2RefineError(f"a stage-1 sample is one (y, x) slice, got shape {hu_slice.shape}")
        aug = self.augmentation
        return xprime_box(hu_slice[None], (0, 0, 0), (1, *hu_slice.shape), spacing, self.preprocess,
                          hu_transform=aug.hu_transform(seed), hu_context=aug.hu_context)[0]

    def __call__(
        self, hu_slice: np.ndarray, label_slice: np.ndarray, seed: int, spacing: Sequence[float] | None = None
    ) -> dict[str, torch.Tensor]:
        sample = {
            "image": self.xprime(hu_slice, seed, spacing)[None],
            "label": np.asarray(label_slice, dtype=np.float32)[None],
        }
        with plain_tensors():
            self.spatial.set_random_state(seed=int(seed))
            out = self.spatial(sample)
        image = self.augmentation.gamma(torch.as_tensor(out["image"], dtype=torch.float32), seed)
        return {"image": image.contiguous(), "label": torch.as_tensor(out["label"], dtype=torch.float32).contiguous()}

