"""The ``seg2refine`` command line. Each subcommand lives in its own module with ``add_parser`` and ``run``.

Subcommand modules import heavy libraries inside ``run`` so that ``seg2refine --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Huge pages for PyTorch's large CPU tensors (0.74-0.81 of the time in benchmarks/README.md); must be set before
# torch is imported.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from seg2refine_core.errors import Seg2RefineError, StopRequested

SUBCOMMANDS = ("phantom", "evaluate", "models", "train", "predict", "benchmark", "demo", "analyze")


#: The help of every command's ``--threads`` (``train``'s comes from its config, with the same default).
THREADS_HELP = ("CPU threads for torch (default: one per core that is idle when the command starts, at least 1; "
                "fewer leave cores to napari or other jobs)")


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: CPU threads for torch in this command (applied by :func:`main` before the command runs)."""
    parser.add_argument("--threads", type=int, default=None, metavar="N", help=THREADS_HELP)


def apply_threads(threads: int | None) -> int:
    """``torch.set_num_threads(threads)``, with None meaning :func:`seg2refine_core.devices.default_threads` (one
    thread per core idle now: on a busy machine one thread per core is several times slower, see
    ``benchmarks/README.md``, "Threads under contention"). Returns the thread count before; Seg2RefineError below 1.
    """
    if threads is not None and threads < 1:
        raise Seg2RefineError(f"--threads must be >= 1, got {threads}")
    import torch

    from seg2refine_core.devices import default_threads

    before = torch.get_num_threads()
    torch.set_num_threads(default_threads() if threads is None else threads)
    return before


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seg2refine",
        description="Coronary artery segmentation in CCTA: SFANet (2D, stage 1) + 3D Attention-GAN (stage 2).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    before = None
    try:
        # commands with --threads (train sets its own: the run's config, defaulting the same way)
        if hasattr(args, "threads") and args.command != "train":
            before = apply_threads(args.threads)
        result = args.run(args)
    except Seg2RefineError as err:
        print(f"seg2refine {args.command}: error: {err}", file=sys.stderr)
        return 2
    except StopRequested:
        print(f"seg2refine {args.command}: stopped", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"seg2refine {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if before is not None:  # an in-process caller (a script, a test) gets its thread count back
            import torch

            torch.set_num_threads(before)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
