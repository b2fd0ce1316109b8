"""Robustness study (issue #14): S and Y of several weight sets on held-out cohort phantoms across voxel size,
contrast/noise level and a real-size scan.

Cells. Every case is a cohort phantom (real-size heart; ``seg2refine_core.data.phantom.cohort``) from seeds never
used for training (2000 and up), with the looped left main every cohort case had when the study ran
(``LOOPED_LEFT_MAIN``), so that it reproduces:

* ``<v> mm, <level>`` for v in 0.4, 0.7, 1.2 (isotropic voxels) and two contrast/noise levels, ``high`` (blood
  450 HU, noise std 20 HU) and ``low`` (blood 300 HU, noise std 45 HU): a heart-centred box of 120 x 140 x 140 mm
  (z, y, x) around the coronary tree, the same anatomy in every cell of a seed;
* ``real size``: the drawn real-size scan of the seed (512 x 512 in-plane at 0.3-0.5 mm, slices 0.25-1.0 mm, whole
  chest, contrast and noise drawn).

Weight sets: ``NAME=STAGE1,STAGE2`` checkpoints (the bundled ones are ``bundled``). A checkpoint that records no
canonical space runs on the file's raw voxel grid, as the product did before canonical space (``robustness.sh``
makes such a copy of the weights bundled before the rebuild). Per case and weight set it scores S and Y against the
label with ``evaluate_case`` (Dice, HD95 mm, Betti-0 error, clDice), appends one line per (case, weights) to
``results.jsonl`` (a rerun skips what is there) and writes ``summary.md``: per cell the mean of each metric, then
per weight set the spread of Y Dice across cells and whether Y >= S in every cell.

Usage: python experiments/robustness.py --out DIR --weights new=bundled,bundled old=S1,S2 [--seeds 2000 2001 2002]
       [--real-seeds 2000 2001] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

VOXELS_MM = (0.4, 0.7, 1.2)
LEVELS = {"high": (450.0, 20.0), "low": (300.0, 45.0)}  # (blood HU, noise std HU)
BOX_MM = (120.0, 140.0, 140.0)
METRICS = ("dice", "hd95_mm", "betti0_error", "cldice")


def cells(seeds: list[int], real_seeds: list[int]) -> list[tuple[str, int, dict]]:
    """(cell name, seed, make_phantom keyword arguments) of every case."""
    from seg2refine_core.data.phantom import LOOPED_LEFT_MAIN, PhantomOptions

    loop = PhantomOptions(left_main_mm=LOOPED_LEFT_MAIN)
    out = []
    for seed in seeds:
        for v in VOXELS_MM:
            shape = tuple(int(round(b / v)) for b in BOX_MM)
            for level, (blood, noise) in LEVELS.items():
                options = PhantomOptions(blood_hu=blood, noise_sd_hu=noise, left_main_mm=LOOPED_LEFT_MAIN)
                out.append((f"{v} mm, {level}", seed,
                            {"seed": seed, "cohort": True, "shape": shape, "spacing": (v, v, v), "options": options}))
    out += [("real size", seed, {"seed": seed, "cohort": True, "options": loop}) for seed in real_seeds]
    return out


def load_done(path: Path) -> set[tuple[str, int, str]]:
    if not path.is_file():
        return set()
    return {(r["cell"], r["seed"], r["weights"]) for r in map(json.loads, path.read_text().splitlines())}


def run(out: Path, weights: dict[str, tuple[str, str]], seeds: list[int], real_seeds: list[int]) -> None:
    from seg2refine_core.data.phantom import make_phantom
    from seg2refine_core.evaluation.metrics import evaluate_case
    from seg2refine_core.inference.predictor import Predictor
    from seg2refine_core.io.volume import Volume

    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = load_done(results)
    predictors = {name: Predictor.from_checkpoints(s1, s2, device="cpu") for name, (s1, s2) in weights.items()}
    for cell, seed, kwargs in cells(seeds, real_seeds):
        todo = [name for name in weights if (cell, seed, name) not in done]
        if not todo:
            continue
        phantom = make_phantom(**kwargs)
        volume = Volume(array=phantom.image, spacing=phantom.spacing, affine=phantom.affine)
        for name in todo:
            t0 = time.perf_counter()
            result = predictors[name].predict_volume(volume)
            seconds = time.perf_counter() - t0
            row = {"cell": cell, "seed": seed, "weights": name, "shape": list(phantom.image.shape),
                   "spacing": [round(s, 4) for s in phantom.spacing], "predict_s": round(seconds, 1)}
            for kind, mask in (("S", result.s_mask), ("Y", result.y_mask)):
                scores = evaluate_case(mask, phantom.label, phantom.spacing)
                row[kind] = {k: scores[k] for k in METRICS}
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{cell:>15} seed {seed} {name:>4}: S {row['S']['dice']:.3f} Y {row['Y']['dice']:.3f} "
                  f"({seconds:.0f} s, {phantom.image.shape})", flush=True)
    summarize(results, out / "summary.md", list(weights))


def _mean(rows: list[dict], kind: str, metric: str) -> float:
    values = [r[kind][metric] for r in rows if r[kind][metric] is not None]
    return float(np.mean(values)) if values else float("nan")


def summarize(results: Path, path: Path, names: list[str]) -> None:
    """Write the per-cell table and per-weights verdicts (markdown) to ``path`` and print them."""
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    order = list(dict.fromkeys(c for c, _, _ in cells([0], [0])))
    lines = ["| weights | cell | cases | S Dice | Y Dice | S HD95 mm | Y HD95 mm | S Betti-0 err | Y Betti-0 err "
             "| S clDice | Y clDice |", "|" + "---|" * 11]
    verdicts = []
    for name in names:
        y_means, y_ge_s = [], True
        for cell in order:
            sel = [r for r in rows if r["weights"] == name and r["cell"] == cell]
            if not sel:
                continue
            m = {(k, x): _mean(sel, k, x) for k in ("S", "Y") for x in METRICS}
            y_means.append(m["Y", "dice"])
            y_ge_s &= m["Y", "dice"] >= m["S", "dice"]
            lines.append(f"| {name} | {cell} | {len(sel)} | {m['S', 'dice']:.3f} | **{m['Y', 'dice']:.3f}** | "
                         f"{m['S', 'hd95_mm']:.1f} | {m['Y', 'hd95_mm']:.1f} | {m['S', 'betti0_error']:.0f} | "
                         f"{m['Y', 'betti0_error']:.0f} | {m['S', 'cldice']:.3f} | {m['Y', 'cldice']:.3f} |")
        if y_means:
            spread = max(y_means) - min(y_means)
            verdicts.append(f"- {name}: Y Dice {min(y_means):.3f}-{max(y_means):.3f} across {len(y_means)} cells "
                            f"(spread {spread:.3f}; target >= 0.75 in every cell, spread <= 0.05); "
                            f"Y >= S in every cell: {'yes' if y_ge_s else 'no'}")
    text = "\n".join(lines + [""] + verdicts) + "\n"
    path.write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/robustness"))
    parser.add_argument("--weights", nargs="+", default=["new=bundled,bundled"], metavar="NAME=STAGE1,STAGE2")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2000, 2001, 2002])
    parser.add_argument("--real-seeds", type=int, nargs="*", default=[2000, 2001])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    weights = {}
    for item in args.weights:
        name, _, pair = item.partition("=")
        s1, _, s2 = pair.partition(",")
        weights[name] = (s1, s2)
    run(args.out, weights, args.seeds, args.real_seeds)


if __name__ == "__main__":
    main()
