"""Stage 2 at inference: a 3D model over the whole volume by MONAI sliding windows with Gaussian blending → Y.

The same path serves the 3D baseline (one input channel, X' alone; :func:`predict_baseline3d`). Memory stays
bounded by the window batch plus a few volume-sized arrays (see :func:`refine_volume`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from seg2refine_core.inference.models import LoadedModel, autocast, memory_layout, prepare_for_inference
from seg2refine_core.progress import ProgressFn, StopFn, check_stop

DEFAULT_PATCH = (64, 64, 64)


def window_size(model: LoadedModel) -> tuple[int, int, int]:
    """The sliding-window size (d, h, w) of a 3D model: the patch size it was trained on (checkpoint
    ``input.patch_size``), :data:`DEFAULT_PATCH` when the checkpoint does not say."""
    return tuple(int(p) for p in model.config.get("input", {}).get("patch_size", DEFAULT_PATCH))  # type: ignore[return-value]


def default_sw_batch_size(device: torch.device | str) -> int:
    """Stage-2 windows per forward when none is given: 8 on GPUs (one 64³ window is too little work to keep a GPU
    busy between launches), 1 on CPU, where more gain nothing: 25 windows of the bundled generator took 0.80 /
    0.77 / 0.87 s at 1 / 2 / 4 per forward (2 threads), and each extra window adds ~25 MiB of activations."""
    return 8 if torch.device(device).type != "cpu" else 1


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

    ``xprime`` (z, y, x) in [0, 1], ``s_mask`` (z, y, x) stage-1 mask {0, 1}; returns Y probabilities (z, y, x)
    float32. With ``s_mask=None`` the model gets X' alone (one channel): the 3D baseline.
    Windows run on ``device``. When ``device`` is CUDA and X', S, MONAI's blended output and weight map fit in a
    quarter of its free memory, X' and S are moved to the GPU once and windows are cut and blended there (per-window
    host work and transfers otherwise cost about as much as the GPU's compute); GPU memory is then
    ∝ window batch + 3.25 volumes (S as uint8), else ∝ window batch and everything volume-sized stays on the CPU.
    ``sw_batch_size``: windows per forward (None: :func:`default_sw_batch_size` for ``device``). ``progress``
    counts windows (shifted by ``progress_offset`` out of ``progress_total``, as in stage 1); ``should_stop`` is
    polled before every window batch (:class:`~seg2refine_core.errors.StopRequested`).

    Memory: MONAI slides over X' alone (a zero-copy view of a float32 ``xprime``) and each window's S is cut
    from ``s_mask`` by the window's coordinates, so no (2, z, y, x) float32 input is built. The extra host
    memory is MONAI's float32 output and weight map (two volumes); a volume smaller than the patch is first
    zero-padded the way MONAI would pad it. Raises ValueError when the shapes of X' and S differ.
    """
    from monai.inferers import sliding_window_inference

    if np.ndim(xprime) != 3 or (s_mask is not None and np.shape(xprime) != np.shape(s_mask)):
        raise ValueError(f"xprime {np.shape(xprime)} and s_mask {np.shape(s_mask)} must be equal (z, y, x) shapes")
    device = torch.device(device)
    layout = memory_layout(device, 3)
    generator = prepare_for_inference(generator, device, 3)
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
        with autocast(device):
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


def predict_baseline3d(
    model: nn.Module,
    xprime: np.ndarray,
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
    """Vessel probabilities (z, y, x) float32 of a one-channel 3D model (the 3D baseline) on X' (z, y, x) in
    [0, 1]: :func:`refine_volume` without an S channel, so the baseline and stage 2 share windows, blending,
    devices, progress and stop."""
    return refine_volume(
        model, xprime, None, patch_size=patch_size, overlap=overlap, sw_batch_size=sw_batch_size, device=device,
        progress=progress, should_stop=should_stop, progress_offset=progress_offset, progress_total=progress_total,
    )


def _accumulation_device(device: torch.device, nbytes: int) -> torch.device:
    """Where X' and S sit and the sliding window accumulates: the CUDA ``device`` if ``nbytes`` (X', S, the
    blended output and the weight map) fit in a quarter of its free memory, else the CPU."""
    if device.type != "cuda":
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes <= free // 4 else torch.device("cpu")
