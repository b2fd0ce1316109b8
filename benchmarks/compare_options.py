"""A/B timings of the inference options behind the choices in ``seg2refine_core.inference`` (models, stage1, stage2).

Stage 1 (SFANet forward on a batch of slices): contiguous vs channels-last, batch size, BatchNorm folded
into the convolutions (+ in-place ReLU), ``torch.compile``. Stage 2 (generator on windows): contiguous vs
channels-last-3d, windows per batch. Variants are timed interleaved (A, B, A, B, ...), warm, median of
``--repeats``; both wall and process CPU time are printed, and each group's CPU share (a warning when low).
With ``--threads 1`` the CPU time barely depends on other processes' load, so it is the fairer number on a
shared machine.

    .venv/bin/python benchmarks/compare_options.py --threads 1 --width 16 --size 256 --batch 4
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import torch

from seg2refine_core.clock import LOW_CPU_SHARE
from seg2refine_core.inference.models import fold_batchnorm
from seg2refine_core.tools.benchmark import build_generator, build_stage1, time_interleaved
from seg2refine_core.tools.benchmark.timing import median


def measure(cases: dict[str, Callable[[], object]], repeats: int) -> None:
    """Print warm medians of wall and CPU time for each case, timed interleaved, and the CPU share of the run."""
    timings = time_interleaved(cases, repeats, torch.device("cpu"))
    base = median(timings.cpu[next(iter(cases))])
    for name in cases:
        w, c = median(timings.wall[name]), median(timings.cpu[name])
        print(f"  {name:<34} wall {w * 1e3:9.1f} ms   cpu {c * 1e3:9.1f} ms   cpu vs first {c / base:5.2f}")
    share = timings.cpu_share()
    print(f"  CPU share {share:.2f} (process CPU / wall / threads)")
    if share < LOW_CPU_SHARE:
        print("  WARNING: other processes took the cores: the wall times are inflated (up to ~10x); compare CPU times")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="stage-1 slice side")
    parser.add_argument("--batch", type=int, default=4, help="stage-1 slices per batch")
    parser.add_argument("--patch", type=int, default=64, help="stage-2 window side")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--skip-batch", action="store_true", help="skip the batch-size sweep (and stage 2)")
    parser.add_argument("--skip-stage2", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cl, cl3 = torch.channels_last, torch.channels_last_3d
    print(f"threads={torch.get_num_threads()} width={args.width} size={args.size} batch={args.batch}")

    with torch.inference_mode():
        model = build_stage1("sfanet", args.width, (args.size, args.size))
        unet = build_stage1("unet", args.width, (args.size, args.size))
        x = torch.rand(args.batch, 1, args.size, args.size)
        folded, unet_folded = fold_batchnorm(model), fold_batchnorm(unet)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-3, atol=1e-3)
        model_cl = copy.deepcopy(model).to(memory_format=cl)
        x_cl = x.contiguous(memory_format=cl)
        folded_cl = copy.deepcopy(folded).to(memory_format=cl)
        print("stage 1, SFANet, one batch:")
        cases = {
            "sfanet contiguous": lambda: model(x),
            "sfanet channels_last": lambda: model_cl(x_cl),
            "sfanet folded BN + inplace ReLU": lambda: folded(x),
            "sfanet channels_last + folded": lambda: folded_cl(x_cl),
            "unet contiguous": lambda: unet(x),
            "unet folded BN + inplace ReLU": lambda: unet_folded(x),
        }
        if args.compile:
            compiled = torch.compile(model)
            t0 = time.perf_counter()
            compiled(x)
            print(f"  torch.compile first call {time.perf_counter() - t0:.1f} s")
            cases["sfanet torch.compile"] = lambda: compiled(x)
        measure(cases, args.repeats)
        if args.skip_batch:
            return
        print("stage 1, SFANet, batch size (same number of slices, 16):")
        slices = torch.rand(16, 1, args.size, args.size)
        measure(
            {f"batch {b}": (lambda b=b: [model(slices[i : i + b]) for i in range(0, 16, b)]) for b in (1, 4, 8, 16)},
            max(1, args.repeats // 2),
        )
        if args.skip_stage2:
            return
        gen = build_generator(args.width)
        gen_cl = copy.deepcopy(gen).to(memory_format=cl3)
        win = torch.rand(4, 2, args.patch, args.patch, args.patch)
        win_cl = win.contiguous(memory_format=cl3)
        print("stage 2, generator, 4 windows:")
        measure(
            {
                "contiguous, 1 window per batch": lambda: [gen(win[i : i + 1]) for i in range(4)],
                "channels_last_3d, 1 per batch": lambda: [gen_cl(win_cl[i : i + 1]) for i in range(4)],
                "contiguous, 2 per batch": lambda: [gen(win[i : i + 2]) for i in (0, 2)],
                "contiguous, 4 per batch": lambda: gen(win),
            },
            max(1, args.repeats // 2),
        )


if __name__ == "__main__":
    main()
