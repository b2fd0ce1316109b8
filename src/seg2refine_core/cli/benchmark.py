"""`seg2refine benchmark`: speed and memory of both stages, the pipeline and training, beside their peers."""

from __future__ import annotations

import argparse
from pathlib import Path

from seg2refine_core.cli import add_threads_option
from seg2refine_core.devices import DEVICE_CHOICES

SECTION_NAMES = ("stage1", "stage2", "pipeline", "training", "memory")  # tools.benchmark.SECTIONS, without torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="time stage 1, stage 2, the pipeline and training; peak memory; FLOP/s vs a large conv",
        description=(
            "Warm, median-of-repeats timings with randomly initialised models: stage 1 (ms/slice) for UNet, "
            "AG-UNet, AG-Att-UNet and SFANet at the same width; stage 2 (s/volume, sliding window) for the "
            "Attention-GAN generator and a MONAI 3D UNet of similar size; the whole pipeline (s/volume); "
            "stage-1 training (slices/s); the pipeline's peak memory in a fresh process; achieved FLOP/s over "
            "the FLOP/s of one large convolution on the same device. Prints a table, with each section's CPU share "
            "(process CPU time / wall / threads) and a warning when other processes took the cores; --json writes "
            "all numbers. See benchmarks/README.md for how to read them."
        ),
    )
    p.add_argument("--device", default="auto", help=f"one of {', '.join(DEVICE_CHOICES)} (default auto)")
    p.add_argument("--width", type=int, default=None, help="SFANet and generator width w (default 16)")
    p.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="volume size; stage 1 runs on Z slices of Y x X (default 32 256 256)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement, median taken (default 3)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="stage-1 slices per batch (default: as predict, ~256² pixels per batch on CPU, 8 on GPUs)")
    p.add_argument("--train-batch", type=int, default=None, help="slices per training step (default 4)")
    p.add_argument("--patch", type=int, nargs=3, default=None, metavar=("PZ", "PY", "PX"),
                   help="stage-2 window, multiples of 16 (default 64 64 64)")
    p.add_argument("--sw-batch-size", type=int, default=None,
                   help="stage-2 windows per forward (default: 1 on CPU, 8 on GPUs)")
    add_threads_option(p)  # also used for the memory subprocess
    p.add_argument("--sections", nargs="+", choices=SECTION_NAMES, default=list(SECTION_NAMES),
                   help="what to measure (default all)")
    p.add_argument("--compile", action="store_true",
                   help="training section: also time SFANet's step through torch.compile (minutes to compile)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: checks that it works (CI)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from seg2refine_core.io.atomic import write_text_atomic
    from seg2refine_core.progress import tqdm_progress
    from seg2refine_core.tools.benchmark import QUICK, BenchmarkConfig, format_table, run_benchmark

    settings = dict(QUICK) if args.quick else {}
    given = {
        "width": args.width, "shape": args.shape, "repeats": args.repeats, "batch_size": args.batch_size,
        "train_batch": args.train_batch, "patch_size": args.patch,
    }
    settings.update({k: v for k, v in given.items() if v is not None})
    cfg = BenchmarkConfig(
        device=args.device, sw_batch_size=args.sw_batch_size, sections=tuple(args.sections), threads=args.threads,
        compile=args.compile, **settings,
    )
    with tqdm_progress("benchmark", unit="section") as progress:
        report = run_benchmark(cfg, progress=progress)
    print(format_table(report))
    if args.json is not None:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
