"""Non-learned reference segmentations, to show what the models must beat."""

from __future__ import annotations

import numpy as np

from seg2refine_core.evaluation.metrics import dice


def best_threshold(
    image_hu: np.ndarray, label: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[float, float]:
    """The single HU threshold with the highest Dice against ``label`` (an oracle: it peeks at the answer).

    ``image_hu`` and ``label`` are (z, y, x); returns ``(threshold_hu, dice)``. Default sweep: 0-1200 HU by 10.
    """
    thresholds = np.arange(0.0, 1201.0, 10.0) if thresholds is None else np.asarray(thresholds, dtype=float)
    scores = [dice(image_hu >= t, label) for t in thresholds]
    best = int(np.argmax(scores))
    return float(thresholds[best]), float(scores[best])
