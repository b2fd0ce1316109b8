"""The array-level pipeline: preprocess a CT (z, y, x) in HU once per preprocessing, then stage 1 (S), stage 2
(Y) or the 3D baseline (B), with one progress count over all of them.

Works in the models' space: it knows nothing of files or of the input's orientation; :mod:`.predictor` maps an
input volume there and back. Probabilities float32 in [0, 1], masks uint8 {0, 1}.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from seg2refine_core.data.preprocess import PreprocessConfig, preprocess
from seg2refine_core.errors import CheckpointError
from seg2refine_core.inference.models import LoadedModel
from seg2refine_core.inference.stage1 import default_batch_size, segment_slices
from seg2refine_core.inference.stage2 import count_windows, predict_baseline3d, refine_volume, window_size
from seg2refine_core.progress import ProgressFn, StopFn

#: Output keys in pipeline order: S (stage 1), Y (stage 2), B (3D baseline); also the output file name tags.
OUTPUT_KEYS = ("s", "y", "b")


def threshold_mask(prob: np.ndarray, threshold: float) -> np.ndarray:
    """``prob >= threshold`` as uint8 {0, 1}, written straight into the uint8 array (no bool temporary)."""
    return np.greater_equal(prob, np.float32(threshold), out=np.empty(prob.shape, dtype=np.uint8))


@dataclass
class PipelineResult:
    """Outputs of :func:`run_pipeline` (and of a :class:`~.predictor.Predictor`); absent ones are ``None``.

    Masks uint8 {0, 1}, probabilities float32 (z, y, x); ``timings_s`` holds the seconds of each stage run
    ("stage1", "stage2", "baseline3d") and, from a :class:`~.predictor.Predictor`, of mapping between the input's
    grid and the models' ("mapping"); ``grids`` says, per role that ran, on which grid
    (:func:`~seg2refine_core.data.canonical.describe_mapping`; Predictor only).
    """

    s_prob: np.ndarray | None = None
    s_mask: np.ndarray | None = None
    y_prob: np.ndarray | None = None
    y_mask: np.ndarray | None = None
    b_prob: np.ndarray | None = None
    b_mask: np.ndarray | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    grids: dict[str, str] = field(default_factory=dict)

    def outputs(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """``{key: (mask, probabilities)}`` for each output present, keys from :data:`OUTPUT_KEYS` in order."""
        return {
            key: (getattr(self, f"{key}_mask"), getattr(self, f"{key}_prob"))
            for key in OUTPUT_KEYS if getattr(self, f"{key}_mask") is not None
        }


def run_pipeline(
    image_hu: np.ndarray,
    spacing: Sequence[float],
    stage1: LoadedModel | None,
    stage2: LoadedModel | None = None,
    *,
    baseline3d: LoadedModel | None = None,
    s_mask: np.ndarray | None = None,
    threshold: float = 0.5,
    batch_size: int | None = None,
    overlap: float = 0.25,
    sw_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> PipelineResult:
    """Preprocess ``image_hu`` (z, y, x) with spacing (sz, sy, sx) mm and run stage 1, stage 2 and/or the 3D
    baseline; each model gets X' made with its own checkpoint's preprocessing (computed once per preprocessing).

    Stage 2 without stage 1 needs ``s_mask`` (an existing S, uint8 (z, y, x)). Progress counts slices, then
    windows, in one bar. ``batch_size``: stage-1 slices per batch (None: :func:`~.stage1.default_batch_size` for
    ``device`` and the slice size). ``sw_batch_size``: stage-2 and baseline windows per forward (None:
    :func:`~.stage2.default_sw_batch_size`). Raises :class:`CheckpointError` when there is nothing to run or
    stage 2 has no S, :class:`~seg2refine_core.errors.StopRequested` on a stop.
    """
    if stage1 is None and stage2 is None and baseline3d is None:
        raise CheckpointError("nothing to run: give a stage-1, stage-2 or 3D baseline model")
    if stage2 is not None and stage1 is None and s_mask is None:
        raise CheckpointError("stage 2 refines S: give a stage-1 model or an existing S mask")
    device = torch.device(device)
    batch_size = default_batch_size(device, image_hu.shape[1:]) if batch_size is None else batch_size
    result = PipelineResult()
    windows = {name: count_windows(image_hu.shape, window_size(m), overlap)
               for name, m in (("stage2", stage2), ("baseline3d", baseline3d)) if m is not None}
    total = (image_hu.shape[0] if stage1 else 0) + sum(windows.values())
    done = 0
    cache: dict[PreprocessConfig, np.ndarray] = {}

    def xprime_for(model: LoadedModel, last: bool) -> np.ndarray:
        cfg = model.preprocess_config
        if cfg not in cache:
            cache[cfg] = preprocess(image_hu, spacing, cfg)
        xprime = cache[cfg]
        if last:
            cache.clear()
        return xprime

    if stage1 is not None:
        t0 = time.perf_counter()
        result.s_prob = segment_slices(
            stage1.model, xprime_for(stage1, last=not windows), batch_size=batch_size, device=device,
            progress=progress, should_stop=should_stop, progress_total=total,
        )
        result.s_mask = threshold_mask(result.s_prob, threshold)
        result.timings_s["stage1"] = time.perf_counter() - t0
        s_mask = result.s_mask
        done = image_hu.shape[0]
    if stage2 is not None:
        t0 = time.perf_counter()
        result.y_prob = refine_volume(
            stage2.model, xprime_for(stage2, last=baseline3d is None), s_mask, patch_size=window_size(stage2),
            overlap=overlap, sw_batch_size=sw_batch_size, device=device, progress=progress,
            should_stop=should_stop, progress_offset=done, progress_total=total,
        )
        result.y_mask = threshold_mask(result.y_prob, threshold)
        result.timings_s["stage2"] = time.perf_counter() - t0
        done += windows["stage2"]
    if baseline3d is not None:
        t0 = time.perf_counter()
        result.b_prob = predict_baseline3d(
            baseline3d.model, xprime_for(baseline3d, last=True), patch_size=window_size(baseline3d),
            overlap=overlap, sw_batch_size=sw_batch_size, device=device, progress=progress,
            should_stop=should_stop, progress_offset=done, progress_total=total,
        )
        result.b_mask = threshold_mask(result.b_prob, threshold)
        result.timings_s["baseline3d"] = time.perf_counter() - t0
    return result
