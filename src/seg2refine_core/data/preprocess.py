"""CT preprocessing (paper: "Data preparation"): HU window, then in-plane unsharp masking => X'.

``X' = clip(W + amount * (W - G_sigma * W), 0, 1)`` with ``W = clip((HU - (center - width/2)) / width, 0, 1)``
(window center 200 HU, width 600 HU: -100 HU -> 0, 200 HU -> 0.5, 500 HU -> 1).

Choices the paper leaves open, fixed here:

- The Gaussian of the unsharp mask is **in-plane only** (sigma 0 along z): stage 1 sees single axial slices
  and the z spacing is usually coarser than the in-plane one, so blurring across slices would mix anatomy.
- ``unsharp_radius`` is the Gaussian sigma in **voxels** by default (``radius_units="voxels"``, default 1.0),
  because neither stage resamples: the networks see the pixel grid, so a pixel-sized sharpening gives them the
  same kind of input whatever the field of view. ``radius_units="mm"`` converts with the in-plane spacing.
- Clipping to [0, 1] after sharpening keeps X' a valid image for both stages (overshoot is cut at the ends).
- ``unsharp_amount=0`` (or radius 0) gives the pure window.

Memory and speed: :func:`preprocess` writes into one float32 output (or a caller's array, e.g. a memory-mapped
cache) and filters at most ``chunk_slices`` axial slices at a time, shared out between ``workers`` threads,
so the extra memory is a few buffers of that many slices, not full-volume temporaries. Since the filter has no
extent along z, chunking and threading give bit-identical results.

Training reads X' of one slice or patch at a time from a HU cache (:mod:`seg2refine_core.data.cache`):
:func:`xprime_box` reads the box with the Gaussian's in-plane reach around it (:func:`unsharp_context`), filters,
and crops, so a patch's X' equals that part of :func:`preprocess` of the whole volume; an optional HU transform
(intensity augmentation, :mod:`seg2refine_core.data.augment`) runs on the HU before the window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from seg2refine_core.errors import Seg2RefineError, VolumeError
from seg2refine_core.progress import ProgressFn, StopFn, check_stop

RADIUS_UNITS = ("voxels", "mm")


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing parameters; stored in checkpoint JSON via :meth:`to_dict` / :meth:`from_dict`.

    window_center, window_width: HU window (paper: 200 / 600).
    unsharp_radius: Gaussian sigma of the unsharp mask, in-plane, in ``radius_units`` ("voxels" or "mm").
    unsharp_amount: gain of the high-pass term; 0 disables sharpening.
    """

    window_center: float = 200.0
    window_width: float = 600.0
    unsharp_radius: float = 1.0
    unsharp_amount: float = 1.0
    radius_units: str = "voxels"

    def __post_init__(self) -> None:
        for name in ("window_center", "window_width", "unsharp_radius", "unsharp_amount"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise Seg2RefineError(f"preprocessing option {name} must be a finite number, got {value!r}")
        if self.window_width <= 0:
            raise Seg2RefineError(f"preprocessing option window_width must be > 0, got {self.window_width}")
        if self.unsharp_radius < 0:
            raise Seg2RefineError(
                f"preprocessing option unsharp_radius must be >= 0, got {self.unsharp_radius}"
            )
        if self.unsharp_amount < 0:
            raise Seg2RefineError(
                f"preprocessing option unsharp_amount must be >= 0, got {self.unsharp_amount}"
            )
        if self.radius_units not in RADIUS_UNITS:
            raise Seg2RefineError(
                f"preprocessing option radius_units must be one of {RADIUS_UNITS}, got {self.radius_units!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of all options."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`. Missing keys take their defaults; unknown keys are an error."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise Seg2RefineError(
                f"unknown preprocessing option(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})"
            )
        return cls(**dict(data))

    def sigma_yx(self, spacing: Sequence[float] | None = None) -> tuple[float, float]:
        """In-plane Gaussian sigma ``(sigma_y, sigma_x)`` in voxels; ``spacing`` is ``(sz, sy, sx)`` mm."""
        if self.radius_units == "voxels":
            return (float(self.unsharp_radius), float(self.unsharp_radius))
        if spacing is None or len(spacing) != 3:
            raise Seg2RefineError(
                f"preprocessing option radius_units='mm' needs the (sz, sy, sx) spacing, got {spacing!r}"
            )
        sy, sx = float(spacing[1]), float(spacing[2])
        if not (sy > 0 and sx > 0):
            raise Seg2RefineError(f"in-plane spacing must be > 0 mm for radius_units='mm', got {spacing!r}")
        return (self.unsharp_radius / sy, self.unsharp_radius / sx)


def hu_window(
    array_hu: np.ndarray, center: float = 200.0, width: float = 600.0, out: np.ndarray | None = None
) -> np.ndarray:
    """Map HU linearly so that ``center -/+ width/2`` -> 0/1, clipped to [0, 1]; float32, same shape.

    ``out`` (float32, same shape) receives the result without a further temporary.
    """
    if not width > 0:
        raise Seg2RefineError(f"HU window width must be > 0, got {width}")
    if out is None:
        out = np.empty(np.shape(array_hu), dtype=np.float32)
    low = np.float32(center - width / 2.0)
    np.subtract(array_hu, low, out=out, casting="unsafe")
    np.multiply(out, np.float32(1.0 / width), out=out)
    return np.clip(out, 0.0, 1.0, out=out)


def unsharp_mask(
    x01: np.ndarray,
    radius: float | Sequence[float] = 1.0,
    amount: float = 1.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """In-plane unsharp mask of a windowed ``(y, x)`` image or ``(z, y, x)`` volume in [0, 1] -> float32.

    ``radius``: Gaussian sigma in voxels, a scalar or ``(sigma_y, sigma_x)``; nothing is blurred along z.
    The whole input is filtered at once: for big volumes use :func:`preprocess`, which works in z-chunks.
    """
    x01 = np.asarray(x01)
    if x01.ndim not in (2, 3):
        raise VolumeError(f"unsharp_mask expects a (y, x) image or (z, y, x) volume, got shape {x01.shape}")
    sigma = (float(radius), float(radius)) if np.isscalar(radius) else tuple(float(r) for r in radius)
    if len(sigma) != 2 or min(sigma) < 0 or amount < 0:
        raise Seg2RefineError(
            f"unsharp_mask needs radius >= 0 (one or two values) and amount >= 0, got {radius}, {amount}"
        )
    if out is None:
        out = np.empty(x01.shape, dtype=np.float32)
    if amount == 0 or max(sigma) == 0:
        return np.clip(x01, 0.0, 1.0, out=out, casting="unsafe")
    from skimage.filters import unsharp_mask as _sk_unsharp_mask  # 0.5 s to import: not at `seg2refine --help`

    full_sigma = sigma if x01.ndim == 2 else (0.0, *sigma)
    sharpened = _sk_unsharp_mask(
        x01.astype(np.float32, copy=False), radius=full_sigma, amount=float(amount), preserve_range=True
    )
    return np.clip(sharpened, 0.0, 1.0, out=out, casting="unsafe")


def preprocess(
    array_hu: np.ndarray,
    spacing: Sequence[float] | None = None,
    config: PreprocessConfig | None = None,
    *,
    out: np.ndarray | None = None,
    chunk_slices: int = 16,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> np.ndarray:
    """HU volume ``(z, y, x)`` (any real dtype) -> X', float32 ``(z, y, x)`` in [0, 1].

    spacing: ``(sz, sy, sx)`` mm, needed only when ``config.radius_units == "mm"``.
    out: optional float32 array of the same shape to fill (e.g. a ``np.memmap`` cache); returned.
    chunk_slices: at most this many axial slices are filtered at once, over all workers (bounds the extra
        memory to a few buffers of that size; results do not depend on it).
    workers: threads filtering chunks at once (SciPy's filters release the GIL), at most ``chunk_slices``;
        None = torch's thread count, so ``--threads`` governs it too. Results do not depend on it.
    """
    config = PreprocessConfig() if config is None else config
    if np.ndim(array_hu) != 3:
        raise VolumeError(f"preprocess expects a (z, y, x) volume, got shape {np.shape(array_hu)}")
    if out is None:
        out = np.empty(array_hu.shape, dtype=np.float32)
    elif out.shape != array_hu.shape or out.dtype != np.float32:
        raise VolumeError(f"preprocess output must be float32 {array_hu.shape}, got {out.dtype} {out.shape}")
    if chunk_slices < 1:
        raise Seg2RefineError(f"chunk_slices must be >= 1, got {chunk_slices}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise Seg2RefineError(f"workers must be >= 1, got {workers}")
    sigma = config.sigma_yx(spacing)
    sharpen = config.unsharp_amount > 0 and max(sigma) > 0
    nz = array_hu.shape[0]
    workers = min(workers, chunk_slices)
    step = max(1, min(chunk_slices // workers, -(-nz // workers)))
    chunks = [(z0, min(z0 + step, nz)) for z0 in range(0, nz, step)]

    def run(bounds: tuple[int, int]) -> int:
        z0, z1 = bounds
        windowed = hu_window(array_hu[z0:z1], config.window_center, config.window_width,
                             out=None if sharpen else out[z0:z1])
        if sharpen:
            unsharp_mask(windowed, sigma, config.unsharp_amount, out=out[z0:z1])
        return z1 - z0

    done = 0
    if workers == 1 or len(chunks) == 1:
        for bounds in chunks:
            check_stop(should_stop)
            done += run(bounds)
            if progress is not None:
                progress(done, nz, "preprocess")
        return out
    check_stop(should_stop)
    pool = ThreadPoolExecutor(max_workers=min(workers, len(chunks)), thread_name_prefix="preprocess")
    try:
        for future in as_completed([pool.submit(run, bounds) for bounds in chunks]):
            done += future.result()
            if progress is not None:
                progress(done, nz, "preprocess")
            check_stop(should_stop)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def default_workers() -> int:
    """Threads for :func:`preprocess` when none are given: ``torch.get_num_threads()``."""
    import torch

    return max(1, torch.get_num_threads())


def preprocess_slice(
    slice_hu: np.ndarray, spacing_yx: Sequence[float] | None = None, config: PreprocessConfig | None = None
) -> np.ndarray:
    """One axial slice ``(y, x)`` in HU -> float32 ``(y, x)`` in [0, 1]; identical to that slice of
    :func:`preprocess` (the filter is in-plane). ``spacing_yx`` is ``(sy, sx)`` mm, only for mm radii."""
    if np.ndim(slice_hu) != 2:
        raise VolumeError(f"preprocess_slice expects a (y, x) slice, got shape {np.shape(slice_hu)}")
    spacing = None if spacing_yx is None else (1.0, *spacing_yx)
    return preprocess(np.asarray(slice_hu)[None], spacing, config)[0]


def unsharp_context(config: PreprocessConfig, spacing: Sequence[float] | None = None) -> tuple[int, int]:
    """In-plane voxels ``(y, x)`` that the unsharp mask's Gaussian reaches on each side (0 without sharpening).

    The reach is SciPy's kernel radius ``int(4 * sigma + 0.5)`` (truncation at 4 sigma, skimage's default), so a
    box read with this much context and cropped after filtering equals the whole volume filtered and cropped.
    """
    sigma = config.sigma_yx(spacing)
    if config.unsharp_amount == 0 or max(sigma) == 0:
        return (0, 0)
    return tuple(int(4.0 * s + 0.5) for s in sigma)  # type: ignore[return-value]


def xprime_box(
    hu: np.ndarray,
    start: Sequence[int],
    size: Sequence[int],
    spacing: Sequence[float] | None = None,
    config: PreprocessConfig | None = None,
    *,
    hu_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    hu_context: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """X' of the box ``hu[start : start + size]`` of a HU volume ``(z, y, x)`` -> float32 ``size``, 0 outside it.

    hu: any real dtype, e.g. the cache's int16 memmap; only the box and its context are read. ``start`` may lie
    outside the volume (a patch bigger than a small volume): X' is 0 there, as the window maps air to 0.
    Without ``hu_transform`` the result equals ``preprocess(hu, spacing, config)`` cropped to the box (to float32
    rounding): the box is read with the unsharp mask's context (:func:`unsharp_context`) and cropped after
    filtering; at the volume's own edges the HU is mirrored (``numpy.pad(mode="symmetric")``, the same extension
    as the filter's ``mode="reflect"``), so edges match as well.
    hu_transform: called on the float32 HU of the box with its context, shape ``(z, y, x)``, before the window
        (intensity augmentation); returns an array of the same shape. ``hu_context``: extra voxels ``(z, y, x)``
        it needs on each side (e.g. a blur's kernel radius); the context beyond the volume is mirrored HU.
    spacing: ``(sz, sy, sx)`` mm, needed only when ``config.radius_units == "mm"``.
    """
    config = PreprocessConfig() if config is None else config
    if np.ndim(hu) != 3 or len(start) != 3 or len(size) != 3:
        raise VolumeError(f"xprime_box expects a (z, y, x) volume and 3D box, got {np.shape(hu)}, {start}, {size}")
    uy, ux = unsharp_context(config, spacing)
    context = [int(c) + u for c, u in zip(hu_context, (0, uy, ux), strict=True)]
    size = [int(n) for n in size]
    out = np.zeros(size, dtype=np.float32)
    read, pads, keep = [], [], []
    for s, n, c, dim in zip(start, size, context, hu.shape, strict=True):
        lo, hi = int(s) - c, int(s) + n + c
        r_lo, r_hi = max(lo, 0), min(hi, dim)
        k_lo, k_hi = max(int(s), 0), min(int(s) + n, dim)
        if r_hi <= r_lo or k_hi <= k_lo:
            return out
        read.append(slice(r_lo, r_hi))
        pads.append((r_lo - lo, hi - r_hi))
        keep.append((k_lo - int(s), k_hi - int(s)))
    region = np.asarray(hu[tuple(read)], dtype=np.float32)
    if any(p != (0, 0) for p in pads):
        region = np.pad(region, pads, mode="symmetric")
    if hu_transform is not None:
        transformed = np.asarray(hu_transform(region), dtype=np.float32)
        if transformed.shape != region.shape:
            raise Seg2RefineError(f"hu_transform changed the shape {region.shape} to {transformed.shape}")
        region = transformed
    xprime = preprocess(region, spacing, config, chunk_slices=max(region.shape[0], 1), workers=1)
    inner = tuple(slice(c + k0, c + k1) for c, (k0, k1) in zip(context, keep, strict=True))
    out[tuple(slice(k0, k1) for k0, k1 in keep)] = xprime[inner]
    return out
