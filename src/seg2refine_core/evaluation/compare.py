"""Comparing a mask with a reference: the TP/FP/FN difference map and a one-line metric summary.

The difference map is what the paper's Fig. 6 shows in colour (false negatives brown, false positives blue);
the plugin draws it as a labels layer, the CLI can write it as a volume. Masks are ``(z, y, x)``, any non-zero
voxel is foreground; spacing ``(sz, sy, sx)`` in mm. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seg2refine_core.evaluation.metrics import betti0, dice, hausdorff, slice_dice

BACKGROUND, TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE = 0, 1, 2, 3
DIFFERENCE_NAMES = {TRUE_POSITIVE: "TP", FALSE_POSITIVE: "FP", FALSE_NEGATIVE: "FN"}


def difference_map(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Voxel-wise agreement of ``pred`` with ``ref`` as uint8 labels (z, y, x).

    0 background (neither), 1 TP (both), 2 FP (``pred`` only), 3 FN (``ref`` only).
    """
    p = np.asarray(pred) != 0
    r = np.asarray(ref) != 0
    if p.shape != r.shape:
        raise ValueError(f"mask shape {p.shape} does not match reference shape {r.shape}")
    out = np.zeros(p.shape, dtype=np.uint8)
    out[p & r] = TRUE_POSITIVE
    out[p & ~r] = FALSE_POSITIVE
    out[~p & r] = FALSE_NEGATIVE
    return out


def mask_summary(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict:
    """Dice, HD95 (mm, ``inf`` when exactly one mask is empty), B0 of both and slice-wise Dice along z.

    Keys: ``dice``, ``hd95_mm``, ``b0_pred``, ``b0_ref``, ``slice_dice`` (float64 (z,), NaN where both slices
    are empty). Cheaper than :func:`~seg2refine_core.evaluation.metrics.evaluate_case` (no HD max, no clDice skeletons),
    so it suits interactive use.
    """
    return {
        "dice": dice(pred, ref),
        "hd95_mm": hausdorff(pred, ref, spacing, percentile=95),
        "b0_pred": betti0(pred),
        "b0_ref": betti0(ref),
        "slice_dice": slice_dice(pred, ref),
    }
