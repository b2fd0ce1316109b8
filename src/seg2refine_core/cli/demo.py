"""`seg2refine demo`: the two-stage pipeline with the bundled weights on a fresh synthetic phantom."""

from __future__ import annotations

import argparse
from pathlib import Path

from seg2refine_core.cli import add_threads_option
from seg2refine_core.devices import DEVICE_CHOICES


def add_parser(sub: argparse._SubParsersAction) -> None:
    from seg2refine_core.tools.demo import DEMO_SEED

    p = sub.add_parser(
        "demo",
        help="run both stages with the bundled demo weights on a synthetic phantom",
        description=(
            "Makes a synthetic CCTA phantom with a seed never used in training, segments it with the bundled "
            "demo weights (stage 1 then stage 2), and writes S, Y, metrics.json, slice_dice.png and overlay.png."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"phantom seed (default {DEMO_SEED})")
    p.add_argument("--shape", type=int, nargs=3, default=(96, 128, 128), metavar=("Z", "Y", "X"),
                   help="phantom size in voxels: axial slices, rows, columns, at 1.0 x 0.7 x 0.7 mm "
                   "(default 96 128 128)")
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    p.add_argument("--stage1", metavar="CKPT", help="stage-1 checkpoint instead of the bundled weights")
    p.add_argument("--stage2", metavar="CKPT", help="stage-2 checkpoint instead of the bundled weights")
    add_threads_option(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seg2refine_core.progress import tqdm_progress
    from seg2refine_core.tools.demo import format_summary, run_demo

    with tqdm_progress("demo", unit="step") as progress:
        summary = run_demo(args.out, shape=tuple(args.shape), seed=args.seed, device=args.device,
                           stage1=args.stage1, stage2=args.stage2, progress=progress)
    print(format_summary(summary))
    secs = summary["seconds"]
    print(f"pipeline {secs['pipeline']:.1f} s on {summary['device']} (stage 1 {secs.get('stage1', 0):.1f} s, "
          f"stage 2 {secs.get('stage2', 0):.1f} s); total {secs['total']:.1f} s")
    if summary["busy_note"]:
        print(summary["busy_note"])
    print(f"outputs in {args.out}/: demo.s.nii.gz, demo.y.nii.gz, metrics.json, slice_dice.png, overlay.png")
    return 0
