"""Stage 1 at inference: a 2D model over every axial slice of X', in batches → S probabilities (z, y, x).

Memory stays bounded by the batch of slices: no whole-volume activations are ever held.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from seg2refine_core.inference.models import autocast, memory_layout, prepare_for_inference
from seg2refine_core.progress import ProgressFn, StopFn, check_stop


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
    """Stage 1: run a 2D model on every axial slice of ``xprime`` (z, y, x) in [0, 1] → probabilities (z, y, x)
    float32.

    Slices go through in batches of ``batch_size`` (memory ∝ batch, not volume); autocast on CUDA. ``progress``
    counts slices, shifted by ``progress_offset`` out of ``progress_total`` (default: the number of slices) when
    the caller reports several steps in one bar. Raises :class:`~seg2refine_core.errors.StopRequested` when
    ``should_stop()`` says so (checked before every batch).
    """
    device = torch.device(device)
    layout = memory_layout(device, 2)
    model = prepare_for_inference(model, device, 2)
    depth = xprime.shape[0]
    out = np.empty(xprime.shape, dtype=np.float32)
    total = progress_total if progress_total is not None else depth
    for z0 in range(0, depth, batch_size):
        check_stop(should_stop)
        z1 = min(z0 + batch_size, depth)
        batch = torch.from_numpy(np.ascontiguousarray(xprime[z0:z1], dtype=np.float32)).unsqueeze(1).to(device)
        batch = batch.contiguous(memory_format=layout)
        with autocast(device):
            logits = model(batch)
        out[z0:z1] = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
        if progress is not None:
            progress(progress_offset + z1, total, f"stage 1: slice {z1}/{depth}")
    return out
