"""`seg2refine models`: parameter counts and compute of the four stage-1 variants (paper Table 1)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the stage-1 variants (UNet ... SFANet) with parameters and GFLOPs per slice",
        description=(
            "Print each Table 1 variant (unet, ag-unet, ag-att-unet, sfanet) with its parameter count and the "
            "forward GFLOPs for one slice. FLOPs come from torch's FlopCounterMode (convolutions and matrix "
            "products, 1 multiply-add = 2 FLOPs); the FFTs of FFE are not seen by the counter and are listed "
            "separately as an analytic estimate (5·N·log2 N per complex FFT of N points, half for a real one). "
            "Element-wise work (norms, activations, attention products, pooling) is not counted."
        ),
    )
    p.add_argument("--width", type=int, default=64, metavar="W", help="channels of level 1 (default 64, the paper)")
    p.add_argument(
        "--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"), help="slice size (default 512 512)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from seg2refine_core.errors import Seg2RefineError

    height, width_px = args.size
    if args.width < 1:
        raise Seg2RefineError(f"--width must be >= 1, got {args.width}")
    if height < 1 or width_px < 1:
        raise Seg2RefineError(f"--size must be two positive integers, got {height} {width_px}")
    rows = model_table(args.width, (height, width_px))
    print(f"Stage-1 variants at width {args.width}, one {height}x{width_px} slice (batch 1):")
    print(f"{'variant':<12} {'params':>12} {'GFLOPs':>9} {'FFT GFLOPs*':>12} {'total':>9}")
    for row in rows:
        total = row["gflops"] + row["fft_gflops"]
        print(
            f"{row['variant']:<12} {row['params']:>12,} {row['gflops']:>9.2f} {row['fft_gflops']:>12.3f} {total:>9.2f}"
        )
    print("GFLOPs: convolutions and matrix products (FlopCounterMode, 1 multiply-add = 2 FLOPs).")
    print("* FFE transforms, analytic estimate (5·N·log2 N per complex FFT of N points); not seen by the counter.")
    return 0


def model_table(width: int, size: tuple[int, int]) -> list[dict]:
    """One dict per variant: ``variant``, ``params``, ``gflops`` (counted) and ``fft_gflops`` (estimated), from the
    benchmark's FLOP counter (:func:`~seg2refine_core.tools.benchmark.flops.count_flops`).

    The models are built and run on the ``meta`` device: shapes only, no memory or compute.
    """
    import torch

    from seg2refine_core.nets.sfanet import VARIANTS, build_sfanet
    from seg2refine_core.tools.benchmark.flops import count_flops, n_params

    rows = []
    for name in VARIANTS:
        with torch.device("meta"):
            model = build_sfanet(name, width, input_size=size).eval()
        flops = count_flops(model, (1, 1, *size))
        rows.append({"variant": name, "params": n_params(model), "gflops": flops.counted / 1e9,
                     "fft_gflops": flops.fft / 1e9})
    return rows
