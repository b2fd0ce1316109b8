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

from .checkpoint import load_checkpoint
from .devices import autocast_dtype
from .errors import CheckpointError
from .preprocess import PreprocessConfig, preprocess
from .progress import ProgressFn, StopFn, check_stop

WEIGHTS_DIR = Path(__file__).parent / "weights"
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
    model = model.to(device).eval()
    depth = xprime.shape[0]
    out = np.empty(xprime.shape, dtype=np.float32)
    total = progress_total if progress_total is not None else depth
    channels_last = device.type == "cuda"
    for z0 in range(0, depth, batch_size):
        check_stop(should_stop)
        z1 = min(z0 + batch_size, depth)
        batch = torch.from_numpy(np.ascontiguousarray(xprime[z0:z1], dtype=np.float32)).unsqueeze(1).to(device)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
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
    s_mask: np.ndarray,
    *,
    patch_size: Sequence[int] = DEFAULT_PATCH,
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    progress_offset: int = 0,
    progress_total: int | None = None,
) -> np.ndarray:
    """Stage 2: the generator on concat(X', S) over the volume by MONAI sliding windows with Gaussian blending.

    ``xprime`` (z, y, x) in [0, 1], ``s_mask`` (z, y, x) stage-1 mask {0, 1}; returns Y probabilities (z, y, x).
    Windows run on ``device``; the blended output accumulates on the CPU, so GPU memory ∝ window batch.
    """
    from monai.inferers import sliding_window_inference

    device = torch.device(device)
    generator = generator.to(device).eval()
    patch = tuple(int(p) for p in patch_size)
    n_windows = count_windows(xprime.shape, patch, overlap)
    total = progress_total if progress_total is not None else n_windows
    done = [0]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        check_stop(should_stop)
        window = window.to(device)
        if device.type == "cuda":
            window = window.contiguous(memory_format=torch.channels_last_3d)
        with _autocast(device):
            logits = generator(window)
        done[0] = min(done[0] + window.shape[0], n_windows)
        if progress is not None:
            progress(progress_offset + done[0], total, f"stage 2: window {done[0]}/{n_windows}")
        return torch.sigmoid(logits.float())

    inputs = torch.empty((1, 2, *xprime.shape), dtype=torch.float32)
    inputs[0, 0] = torch.from_numpy(np.asarray(xprime, dtype=np.float32))
    inputs[0, 1] = torch.from_numpy(np.asarray(s_mask, dtype=np.float32))
    y = sliding_window_inference(
        inputs, patch, sw_batch_size, predictor, overlap=overlap, mode="gaussian", sw_device=device, device="cpu"
    )
    del inputs
    return y[0, 0].numpy()


@dataclass
class PipelineResult:
    """Outputs of :func:`run_pipeline`; absent stages are ``None``. Masks uint8 {0, 1}, probabilities float32."""

    s_prob: np.ndarray | None = None
    s_mask: np.ndarray | None = None
    y_prob: np.ndarray | None = None
    y_mask: np.ndarray | None = None
    timings_s: dict[str, float] = field(default_factory=dict)


def run_pipeline(
    image_hu: np.ndarray,
    spacing: Sequence[float],
    stage1: LoadedModel | None,
    stage2: LoadedModel | None = None,
    *,
    s_mask: np.ndarray | None = None,
    threshold: float = 0.5,
    batch_size: int = 4,
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PipelineResult:
    """Preprocess ``image_hu`` (z, y, x) and run stage 1 and/or stage 2.

    Stage 2 alone needs ``s_mask`` (an existing S). Progress counts slices then windows in one bar.
    """
    import time

    if stage1 is None and (stage2 is None or s_mask is None):
        raise CheckpointError("nothing to run: give a stage-1 model, or a stage-2 model with an existing S mask")
    device = torch.device(device)
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
        result.s_mask = (result.s_prob >= threshold).astype(np.uint8)
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
        result.y_mask = (result.y_prob >= threshold).astype(np.uint8)
        result.timings_s["stage2"] = time.perf_counter() - t0
    return result
