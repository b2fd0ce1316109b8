"""Inference: stage 1 slice by slice (S), stage 2 as a Gaussian-blended sliding window (Y), and both in a pipeline.

Memory stays bounded by the batch of slices (stage 1) and the window batch (stage 2): no whole-volume
activations are ever held. Arrays are (z, y, x); probabilities float32 in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg2refine_core.data.preprocess import PreprocessConfig, preprocess
from seg2refine_core.devices import autocast_dtype
from seg2refine_core.errors import CheckpointError
from seg2refine_core.io.checkpoint import load_checkpoint
from seg2refine_core.progress import ProgressFn, StopFn, check_stop

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
BUNDLED = {"stage1": WEIGHTS_DIR / "stage1.safetensors", "stage2": WEIGHTS_DIR / "stage2.safetensors"}
DEFAULT_PATCH = (64, 64, 64)


def bundled_checkpoint(stage: str) -> Path:
    """Path of the demo weights shipped inside the package for ``stage`` ('stage1' or 'stage2')."""
    path = BUNDLED[stage]
    if not path.is_file():
        raise CheckpointError(f"{path}: bundled demo weights are missing; build them with `make demo-weights`")
    return path


@dataclass
class LoadedModel:
    """A model in eval mode with its checkpoint config and the path it came from."""

    model: nn.Module
    config: dict[str, Any]
    path: Path

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.config.get("preprocess", {}))


def load_stage(stage: str, path: str | Path | None, device: torch.device) -> LoadedModel:
    """Load a stage's checkpoint (``None`` → the bundled demo weights) and check it is the right kind of model."""
    path = Path(path) if path is not None else bundled_checkpoint(stage)
    model, config = load_checkpoint(path, device=device)
    expected = {"stage1": ("sfanet",), "stage2": ("attention-gan-3d", "monai-unet-3d")}[stage]
    if config["architecture"] not in expected:
        raise CheckpointError(
            f"{path}: a {config['architecture']} checkpoint cannot be used for {stage} (expected {expected[0]})"
        )
    return LoadedModel(model=model, config=config, path=path)


def _autocast(device: torch.device):
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


def use_channels_last(device: torch.device | str, spatial_dims: int) -> bool:
    """Whether models run channels-last (NHWC / NDHWC) on ``device``.

    CUDA: always (tensor-core convolutions want it). CPU: for 2D models only; measured with
    ``benchmarks/compare_options.py`` (1 thread, process CPU time): SFANet w=16 at 512² runs in 0.77-0.90 of the
    contiguous time, the 3D generator in 1.10 of it (see ``benchmarks/README.md``).
    """
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and spatial_dims == 2)


def _to_device(model: nn.Module, device: torch.device, layout: torch.memory_format) -> nn.Module:
    """``model`` in eval mode on ``device``, its weights in ``layout`` where their rank allows it."""
    model = model.to(device).eval()
    if layout != torch.contiguous_format:
        rank = 4 if layout == torch.channels_last else 5
        for param in model.parameters():
            if param.dim() == rank:
                param.data = param.data.contiguous(memory_format=layout)
    return model


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _foldable_pairs(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """``(conv_owner, conv_name, norm_owner, norm_name)`` for each eval BatchNorm fed directly by a convolution.

    Two layouts are recognised: a MONAI ``Convolution`` whose ADN block starts with a BatchNorm (``N``), and a
    ``Sequential`` in which a convolution (bare, or a conv-only MONAI ``Convolution``) is followed by a BatchNorm.
    """
    from monai.networks.blocks import ADN, Convolution

    pairs = []
    for module in model.modules():
        adn = getattr(module, "adn", None)
        if isinstance(module, Convolution) and isinstance(adn, ADN) and isinstance(module.conv, _CONVS):
            first = next(iter(adn._modules), None)
            if first == "N" and isinstance(adn.N, nn.modules.batchnorm._BatchNorm):
                pairs.append((module, "conv", adn, "N"))
        elif isinstance(module, nn.Sequential) and not isinstance(module, Convolution | ADN):
            names = list(module._modules)
            for a, b in zip(names, names[1:], strict=False):
                first, second = module._modules[a], module._modules[b]
                if not isinstance(second, nn.modules.batchnorm._BatchNorm):
                    continue
                if isinstance(first, _CONVS):
                    pairs.append((module, a, module, b))
                elif isinstance(first, Convolution) and list(first._modules) == ["conv"]:
                    pairs.append((first, "conv", module, b))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """For inference: an eval-mode copy of ``model`` with every BatchNorm that directly follows a convolution
    folded into that convolution's weights, and the ReLU of each MONAI ADN block made in-place; ``model``
    itself (untouched) when it has nothing to fold.

    Same outputs up to float rounding, two fewer passes over each activation: SFANet w=16 at 512² ran in
    0.75-0.95 of its CPU time (``benchmarks/compare_options.py``). The copy costs one set of weights.
    """
    import copy

    from monai.networks.blocks import ADN
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training or not _foldable_pairs(model):
        return model
    model = copy.deepcopy(model)
    for conv_owner, conv_name, norm_owner, norm_name in _foldable_pairs(model):
        conv, norm = getattr(conv_owner, conv_name), getattr(norm_owner, norm_name)
        setattr(conv_owner, conv_name, fuse_conv_bn_eval(conv, norm))
        setattr(norm_owner, norm_name, nn.Identity())
    for module in model.modules():
        if isinstance(module, ADN) and isinstance(getattr(module, "A", None), nn.ReLU):
            module.A.inplace = True  # its input is a fresh convolution output
    return model


@torch.inference_mode()
def segment_slices(
    model: nn.Module,
    xprime: np.ndarray,
    *,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> np.ndarray:
    """Stage 1: run a 2D model on every axial slice of ``xprime`` (z, y, x) in [0, 1] → probabilities (z, y, x).

    Slices go through in batches of ``batch_size`` (memory ∝ batch, not volume); autocast on CUDA.
    """
    device = torch.device(device)
    layout = torch.channels_last if use_channels_last(device, 2) else torch.contiguous_format
    model = _to_device(fold_batchnorm(model.to(device).eval()), device, layout)
    depth = xprime.shape[0]
    out = np.empty(xprime.shape, dtype=np.float32)
    total = progress_total if progress_total is not None else depth
    for z0 in range(0, depth, batch_size):
        check_stop(should_stop)
        z1 = min(z0 + batch_size, depth)
        batch = torch.from_numpy(np.ascontiguousarray(xprime[z0:z1], dtype=np.float32)).unsqueeze(1).to(device)
        batch = batch.contiguous(memory_format=layout)
        with _autocast(device):
            logits = model(batch)
        out[z0:z1] = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        if progress is not None:
            progress(progress_offset + z1, total, f"stage 1: slice {z1}/{depth}")
    return out


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of sliding windows MONAI visits for ``shape`` with window ``roi`` and fractional ``overlap``."""
    n = 1
    for size, r in zip(shape, roi, strict=True):
        step = max(int(r * (1 - overlap)), 1)
        n *= 1 if size <= r else math.ceil((size - r) / step) + 1
    return n


@torch.inference_mode()
def refine_volume(
    generator: nn.Module,
    xprime: np.ndarray,
    s_mask: np.ndarray | None,
    *,
    patch_size: Sequence[int] = DEFAULT_PATCH,
    overlap: float = 0.25,
    sw_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> np.ndarray:
    """Stage 2: the generator on concat(X', S) over the volume by MONAI sliding windows with Gaussian blending.

    ``xprime`` (z, y, x) in [0, 1], ``s_mask`` (z, y, x) stage-1 mask {0, 1}; returns Y probabilities (z, y, x).
    With ``s_mask=None`` the model gets X' alone (one channel): the 3D baseline of ``train_baseline3d``.
    Windows run on ``device``. When ``device`` is CUDA and X', S, MONAI's blended output and weight map fit in a
    quarter of its free memory, X' and S are moved to the GPU once and windows are cut and blended there (per-window
    host work and transfers otherwise cost about as much as the GPU's compute); GPU memory is then
    ∝ window batch + 3.25 volumes (S as uint8), else ∝ window batch and everything volume-sized stays on the CPU.
    ``sw_batch_size``: windows per forward (None: :func:`default_sw_batch_size` for ``device``).

    Memory: MONAI slides over X' alone (a zero-copy view of a float32 ``xprime``) and each window's S is cut
    from ``s_mask`` by the window's coordinates, so no (2, z, y, x) float32 input is built. The extra host
    memory is MONAI's float32 output and weight map (two volumes); a volume smaller than the patch is first
    zero-padded the way MONAI would pad it.
    """
    from monai.inferers import sliding_window_inference

    if np.ndim(xprime) != 3 or (s_mask is not None and np.shape(xprime) != np.shape(s_mask)):
        raise ValueError(f"xprime {np.shape(xprime)} and s_mask {np.shape(s_mask)} must be equal (z, y, x) shapes")
    device = torch.device(device)
    layout = torch.channels_last_3d if use_channels_last(device, 3) else torch.contiguous_format
    generator = _to_device(fold_batchnorm(generator.to(device).eval()), device, layout)
    patch = tuple(int(p) for p in patch_size)
    shape = tuple(int(n) for n in np.shape(xprime))
    n_windows = count_windows(shape, patch, overlap)
    total = progress_total if progress_total is not None else n_windows
    done = [0]
    # MONAI pads a side shorter than the patch by (diff // 2, diff - diff // 2); do it here for both channels.
    pad = [((r - n) // 2, r - n - (r - n) // 2) if n < r else (0, 0) for n, r in zip(shape, patch, strict=True)]
    xprime = np.ascontiguousarray(xprime, dtype=np.float32)
    if any(any(p) for p in pad):
        xprime = np.pad(xprime, pad)
        s_mask = None if s_mask is None else np.pad(s_mask, pad)
    sw_batch_size = default_sw_batch_size(device) if sw_batch_size is None else sw_batch_size
    s_mask = None if s_mask is None else np.ascontiguousarray(s_mask)
    home = _accumulation_device(device, 3 * xprime.nbytes + (0 if s_mask is None else s_mask.nbytes))
    source = torch.from_numpy(xprime)[None, None].to(home)
    s_source = None if s_mask is None else torch.from_numpy(s_mask).to(home)

    def predictor(window: torch.Tensor, coords: list[list[slice]]) -> torch.Tensor:
        check_stop(should_stop)
        batch = window.to(device)
        if s_source is not None:
            s_win = torch.stack([s_source[tuple(c[2:])] for c in coords]).unsqueeze(1)
            batch = torch.cat([batch, s_win.to(device=device, dtype=window.dtype)], dim=1)
        batch = batch.contiguous(memory_format=layout)
        with _autocast(device):
            logits = generator(batch)
        done[0] = min(done[0] + batch.shape[0], n_windows)
        if progress is not None:
            progress(progress_offset + done[0], total, f"stage 2: window {done[0]}/{n_windows}")
        return torch.sigmoid(logits.float())

    y = sliding_window_inference(
        source, patch, sw_batch_size, predictor, overlap=overlap, mode="gaussian",
        sw_device=device, device=home, with_coord=True,
    )[0, 0]
    if any(any(p) for p in pad):
        y = y[tuple(slice(lo, lo + n) for (lo, _), n in zip(pad, shape, strict=True))].contiguous()
    return y.cpu().numpy()


def _accumulation_device(device: torch.device, nbytes: int) -> torch.device:
    """Where X' and S sit and the sliding window accumulates: the CUDA ``device`` if ``nbytes`` (X', S, the
    blended output and the weight map) fit in a quarter of its free memory, else the CPU."""
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes <= free // 4 else torch.device("cpu")


def _threshold(prob: np.ndarray, threshold: float) -> np.ndarray:
    """``prob >= threshold`` as uint8 {0, 1}, written straight into the uint8 array (no bool temporary)."""
    return np.greater_equal(prob, np.float32(threshold), out=np.empty(prob.shape, dtype=np.uint8))


@dataclass
class PipelineResult:
    """Outputs of :func:`run_pipeline`; absent stages are ``None``. Masks uint8 {0, 1}, probabilities float32."""

    s_prob: np.ndarray | None = None
    s_mask: np.ndarray | None = None
    y_prob: np.ndarray | None = None
    y_mask: np.ndarray | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


def default_batch_size(device: torch.device | str, slice_size: Sequence[int] | None = None) -> int:
    """Stage-1 slices per batch when none is given: 8 on GPUs; on CPU about 256² pixels per batch (one slice of
    256² or more, four of 128²), capped at 8, and 1 when ``slice_size`` (H, W) is not known.

    Measured with the bundled SFANet w=16, 2 threads: at 128² batch 4 takes 15.1 ms/slice against 20.8 for batch 1;
    at 256² batch 1 61 ms against 66 for batch 4; at 512² batch 1 0.61 of batch 4's CPU time (larger batches'
    activations overflow the L3 cache; ``benchmarks/README.md``).
    """
    if torch.device(device).type != "cpu":
        return 8
    if slice_size is None:
        return 1
    return int(min(8, max(1, 256 * 256 // (int(slice_size[0]) * int(slice_size[1])))))


def default_sw_batch_size(device: torch.device | str) -> int:
    """Stage-2 windows per forward when none is given: 8 on GPUs (one 64³ window is too little work to keep a GPU
    busy between launches), 1 on CPU, where more gain nothing: 25 windows of the bundled generator took 0.80 /
    0.77 / 0.87 s at 1 / 2 / 4 per forward (2 threads), and each extra window adds ~25 MiB of activations."""
    return 8 if torch.device(device).type != "cpu" else 1


def run_pipeline(
    image_hu: np.ndarray,
    spacing: Sequence[float],
    stage1: LoadedModel | None,
    stage2: LoadedModel | None = None,
    *,
    s_mask: np.ndarray | None = None,
    threshold: float = 0.5,
    batch_size: int | None = None,
    overlap: float = 0.25,
    sw_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PipelineResult:
    """Preprocess ``image_hu`` (z, y, x) and run stage 1 and/or stage 2.

    Stage 2 alone needs ``s_mask`` (an existing S). Progress counts slices then windows in one bar.
    ``batch_size``: stage-1 slices per batch (None: :func:`default_batch_size` for ``device`` and the slice size).
    ``sw_batch_size``: stage-2 windows per forward (None: :func:`default_sw_batch_size` for ``device``).
    """
    import time

    if stage1 is None and (stage2 is None or s_mask is None):
        raise CheckpointError("nothing to run: give a stage-1 model, or a stage-2 model with an existing S mask")
    device = torch.device(device)
    batch_size = default_batch_size(device, image_hu.shape[1:]) if batch_size is None else batch_size
    result = PipelineResult()
    patch = tuple((stage2.config.get("input", {}) if stage2 else {}).get("patch_size", DEFAULT_PATCH))
    total = (image_hu.shape[0] if stage1 else 0) + (count_windows(image_hu.shape, patch, overlap) if stage2 else 0)
    cache: dict[PreprocessConfig, np.ndarray] = {}

    def xprime_for(model: LoadedModel) -> np.ndarray:
        cfg = model.preprocess_config
        if cfg not in cache:
            cache[cfg] = preprocess(image_hu, spacing, cfg)
        return cache[cfg]

    if stage1 is not None:
        t0 = time.perf_counter()
        result.s_prob = segment_slices(
            stage1.model, xprime_for(stage1), batch_size=batch_size, device=device,
            progress=progress, should_stop=should_stop, progress_total=total,
        )
        result.s_mask = _threshold(result.s_prob, threshold)
        result.timings_s["stage1"] = time.perf_counter() - t0
        s_mask = result.s_mask
    if stage2 is not None:
        t0 = time.perf_counter()
        xp = xprime_for(stage2)
        cache.clear()
        result.y_prob = refine_volume(
            stage2.model, xp, s_mask, patch_size=patch, overlap=overlap, sw_batch_size=sw_batch_size,
            device=device, progress=progress, should_stop=should_stop,
            progress_offset=image_hu.shape[0] if stage1 else 0, progress_total=total,
        )
        result.y_mask = _threshold(result.y_prob, threshold)
        result.timings_s["stage2"] = time.perf_counter() - t0
    return result
