"""The demo job: a fresh synthetic phantom through both stages with the bundled weights, scored and plotted.

Writes into ``out_dir``: the phantom (``<id>.img.nii.gz``, ``<id>.label.nii.gz``, ``<id>.preview.png``), S and Y
(``<id>.s.nii.gz``, ``<id>.y.nii.gz``), ``metrics.json`` (S, Y and an oracle HU-threshold baseline),
``slice_dice.png`` (S and Y along z) and ``overlay.png`` (false positives blue, false negatives brown).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from seg2refine_core.io.atomic import write_text_atomic
from seg2refine_core.progress import ProgressFn, StopFn

#: Phantom seeds at or above this value are never used to train the bundled weights.
DEMO_SEED = 1000
CASE_ID = "demo"


def run_demo(
    out_dir: str | Path,
    *,
    shape: tuple[int, int, int] = (96, 128, 128),
    spacing: tuple[float, float, float] | None = None,
    seed: int = DEMO_SEED,
    device: str = "auto",
    stage1: str | Path | None = None,
    stage2: str | Path | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Run the demo and return the metrics written to ``metrics.json``.

    A phantom of ``shape`` (z, y, x) voxels and ``spacing`` (sz, sy, sx) mm (the phantom's default when None) from
    ``seed``, segmented by a :class:`~seg2refine_core.inference.predictor.Predictor` with the checkpoints
    ``stage1``/``stage2`` (None: the bundled demo weights) on ``device``.
    """
    from seg2refine_core.clock import Stopwatch
    from seg2refine_core.data.phantom import make_phantom, preview_png, write_phantom_case
    from seg2refine_core.evaluation.figures import plot_overlay, plot_slice_dice
    from seg2refine_core.evaluation.metrics import evaluate_case
    from seg2refine_core.evaluation.threshold_oracle import best_threshold
    from seg2refine_core.inference.predictor import BUNDLED_CHOICE, Predictor
    from seg2refine_core.io.volume import read_volume

    out = Path(out_dir)
    t0 = time.perf_counter()
    predictor = Predictor.from_checkpoints(stage1 or BUNDLED_CHOICE, stage2 or BUNDLED_CHOICE, device=device)
    phantom = make_phantom(shape=shape, seed=seed, **({"spacing": spacing} if spacing else {}))
    image_path, label_path = write_phantom_case(phantom, out, CASE_ID)
    preview_png(phantom, out / f"{CASE_ID}.preview.png")
    volume = read_volume(image_path)
    clock = Stopwatch()
    result = predictor.predict_volume(volume, progress=progress, should_stop=should_stop)
    pipeline_s = clock.wall_s()
    busy_note = clock.busy_note(str(predictor.device))
    predictor.write_outputs(CASE_ID, result, volume, out)

    gt = phantom.label
    threshold_hu, _ = best_threshold(volume.array, gt)
    baseline = (volume.array >= threshold_hu).astype(np.uint8)
    cases = {
        "S": evaluate_case(result.s_mask, gt, volume.spacing),
        "Y": evaluate_case(result.y_mask, gt, volume.spacing),
        "threshold": evaluate_case(baseline, gt, volume.spacing),
    }
    plot_slice_dice(
        {k: np.array([np.nan if v is None else v for v in cases[k]["slice_dice"]]) for k in ("S", "Y")},
        out / "slice_dice.png", title=f"Slice-wise Dice on phantom seed {seed}",
    )
    plot_overlay(
        gt, {"S": result.s_mask, "Y": result.y_mask}, volume.spacing, out / "overlay.png",
        scores={k: f"Dice {cases[k]['dice']:.3f}, HD95 {_fmt(cases[k]['hd95_mm'])} mm" for k in ("S", "Y")},
    )
    summary = {
        "phantom": {"seed": seed, "shape": list(shape), "spacing_mm": list(volume.spacing)},
        "weights": {"stage1": str(predictor.stage1.path), "stage2": str(predictor.stage2.path)},
        "device": str(predictor.device),
        "threshold_hu": threshold_hu,
        "busy_note": busy_note,
        "seconds": {"pipeline": round(pipeline_s, 2), **{k: round(v, 2) for k, v in result.timings_s.items()},
                    "total": round(time.perf_counter() - t0, 2)},
        "metrics": {k: {m: v for m, v in c.items() if m != "slice_dice"} for k, c in cases.items()},
        "slice_dice": {k: cases[k]["slice_dice"] for k in ("S", "Y")},
    }
    write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_summary(summary: dict[str, Any]) -> str:
    """A small text table of the demo's metrics."""
    rows = [f"{'':>24} {'Dice':>7} {'HD95 mm':>8} {'HD mm':>8} {'B0 err':>7} {'clDice':>7}"]
    names = {"S": "S (stage 1, SFANet)", "Y": "Y (stage 2, refined)",
             "threshold": f"HU >= {summary['threshold_hu']:.0f} (oracle)"}
    for key, label in names.items():
        m = summary["metrics"][key]
        rows.append(f"{label:>24} {m['dice']:7.3f} {_fmt(m['hd95_mm']):>8} {_fmt(m['hd_mm']):>8} "
                    f"{m['betti0_error']:7d} {m['cldice']:7.3f}")
    return "\n".join(rows)
