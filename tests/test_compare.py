"""The TP/FP/FN difference map and the interactive metric summary on small hand-made masks."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from seg2refine_core.evaluation.compare import (
    FALSE_NEGATIVE,
    FALSE_POSITIVE,
    TRUE_POSITIVE,
    difference_map,
    mask_summary,
)


def test_difference_map_labels_each_voxel_by_agreement():
    ref = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    ref[0, :2, :2] = 1  # 4 voxels
    pred[0, :2, :1] = 1  # 2 overlap
    pred[1, 3, 3] = 7  # any non-zero voxel counts: one false positive on another slice
    out = difference_map(pred, ref)
    assert out.dtype == np.uint8 and out.shape == ref.shape
    assert (TRUE_POSITIVE, FALSE_POSITIVE, FALSE_NEGATIVE) == (1, 2, 3)
    assert np.count_nonzero(out == TRUE_POSITIVE) == 2
    assert np.count_nonzero(out == FALSE_NEGATIVE) == 2
    assert out[1, 3, 3] == FALSE_POSITIVE and np.count_nonzero(out == FALSE_POSITIVE) == 1
    assert np.count_nonzero(out) == 5
    # Swapping the roles swaps FP and FN and keeps TP.
    swapped = difference_map(ref, pred)
    assert np.array_equal(swapped == FALSE_POSITIVE, out == FALSE_NEGATIVE)
    assert np.array_equal(swapped == TRUE_POSITIVE, out == TRUE_POSITIVE)


def test_difference_map_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="does not match"):
        difference_map(np.zeros((2, 3, 3)), np.zeros((3, 3, 3)))


def test_mask_summary_uses_physical_spacing_and_leaves_empty_slices_undefined():
    ref = np.zeros((4, 16, 16), np.uint8)
    ref[1:3, 4:8, 4:8] = 1
    pred = np.zeros_like(ref)
    pred[1:3, 4:8, 6:10] = 1  # shifted 2 voxels along x
    pred[3, 12, 12] = 1  # a stray blob on a slice where ref is empty
    summary = mask_summary(pred, ref, spacing=(2.0, 0.5, 0.5))
    assert summary["dice"] == pytest.approx(2 * 16 / (33 + 32))
    assert summary["b0_pred"] == 2 and summary["b0_ref"] == 1
    sd = summary["slice_dice"]
    assert math.isnan(sd[0]) and sd[3] == 0.0 and sd[1] == pytest.approx(0.5)
    # The 2-voxel shift along x is 1 mm at sx = 0.5 mm and 4 mm at sx = 2 mm.
    assert summary["hd95_mm"] == pytest.approx(1.0)
    assert mask_summary(pred, ref, spacing=(0.5, 0.5, 2.0))["hd95_mm"] == pytest.approx(4.0)
    assert math.isinf(mask_summary(pred, np.zeros_like(ref), (1, 1, 1))["hd95_mm"])


def test_module_does_not_import_torch():
    code = "import sys, seg2refine_core.evaluation.compare; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
