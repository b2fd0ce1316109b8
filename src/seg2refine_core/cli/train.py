"""`seg2refine train <stage>`: train a model. Each stage is a sub-command registered in :data:`SUBCOMMANDS`.

Multi-process training: ``torchrun --nproc_per_node=N -m seg2refine_core.cli train stage1 ...`` (DDP; rank 0
shows the progress bar and writes the run folder).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

from seg2refine_core.cli import add_threads_option


def add_stage1_parser(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser(
        "stage1",
        help="train SFANet (or a Table-1 variant) on axial slices",
        description=(
            "Train the stage-1 2D network on a dataset folder (ImageCAS, ASOCA or images/+labels/). Volumes are "
            "preprocessed once into a memory-mapped cache (default RUN_DIR/cache). Each epoch draws "
            "--samples-per-epoch slices, --positive-fraction of them from slices that hold vessel pixels; "
            "validation Dice is computed on whole validation volumes. Writes RUN_DIR/best.*, last.*, "
            "metrics.jsonl and curves.png. Ctrl-C stops after the current step and saves a resumable 'last'. "
            "Unset options take the paper's defaults, or with --resume the run's own values."
        ),
    )
    p.add_argument("--data", type=Path, metavar="DIR", help="dataset folder (required unless --resume)")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder for checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its 'last' state")
    p.add_argument("--split", type=Path, metavar="FILE", help="ImageCAS split table (.xlsx or .csv)")
    p.add_argument("--fold", type=int, metavar="K", help="split column Split-K, 1-4 (default 1)")
    p.add_argument("--val-fraction", type=float, metavar="F", help="validation share without --split (0.1)")
    p.add_argument("--test-fraction", type=float, metavar="F", help="test share kept out without --split (0.2)")
    p.add_argument("--split-seed", type=int, metavar="S", help="seed of the hold-out split without --split (0)")
    p.add_argument("--layout", choices=("auto", "imagecas", "asoca", "generic"), help="dataset layout (auto)")
    p.add_argument("--variant", choices=("unet", "ag-unet", "ag-att-unet", "sfanet"), help="network (sfanet)")
    p.add_argument("--width", type=int, metavar="W", help="channels of the first level (64; 16 is CPU-friendly)")
    p.add_argument("--epochs", type=int, metavar="E", help="epochs (50); with --resume a larger value extends the run")
    p.add_argument("--batch-size", type=int, metavar="B", help="slices per step and rank (8)")
    p.add_argument("--lr", type=float, metavar="LR", help="Adam learning rate (1e-4)")
    p.add_argument("--weight-decay", type=float, metavar="WD", help="Adam weight decay (1e-5)")
    p.add_argument("--samples-per-epoch", type=int, metavar="N", help="slices per epoch (number of training slices)")
    p.add_argument("--positive-fraction", type=float, metavar="P", help="share drawn from vessel slices (0.8)")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="training slice size (see docs)")
    p.add_argument("--num-workers", type=int, metavar="N", help="DataLoader worker processes (2)")
    p.add_argument("--device", metavar="D", help="auto, cuda, mps or cpu (auto)")
    add_threads_option(p)
    p.add_argument("--seed", type=int, metavar="S", help="seed of initialisation, sampling and augmentation (0)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="preprocessed cache, shareable between runs")
    p.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="no mixed precision on CUDA")
    p.add_argument("--compile", action="store_const", const=True,
                   help="train through torch.compile (minutes to compile; eager again if it fails)")
    p.add_argument("--deterministic", action="store_const", const=True, help="deterministic cuDNN kernels (slower)")
    p.set_defaults(run=run_stage1)


#: stage name -> function adding its parser to the ``train`` sub-parsers (each sets ``run``).
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {"stage1": add_stage1_parser}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a stage's model", description="Train a model: " + ", ".join(SUBCOMMANDS))
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for add in SUBCOMMANDS.values():
        add(stages)


@contextmanager
def graceful_interrupt() -> Iterator[Callable[[], bool]]:
    """Yield a ``should_stop`` flag raised by the first Ctrl-C; a second Ctrl-C interrupts at once."""
    requested = [False]
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: object) -> None:
        if requested[0]:
            raise KeyboardInterrupt
        requested[0] = True
        print("\nstopping after this step and saving 'last' (Ctrl-C again to abort)", file=sys.stderr)

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: leave Ctrl-C alone
        previous = None
    try:
        yield lambda: requested[0]
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def stage1_config(args: argparse.Namespace):
    """The :class:`Stage1TrainConfig` for the parsed options (unset options: defaults, or the resumed run's)."""
    from seg2refine_core.data.preprocess import PreprocessConfig
    from seg2refine_core.errors import Seg2RefineError
    from seg2refine_core.training.stage1 import Stage1TrainConfig, stored_run_config

    if args.resume:
        base = stored_run_config(args.out)
    elif args.data is None:
        raise Seg2RefineError("--data is required (unless --resume)")
    else:
        base = Stage1TrainConfig(data=args.data, out=args.out, preprocess=PreprocessConfig())
    given = {f.name: getattr(args, f.name) for f in fields(base) if getattr(args, f.name, None) is not None}
    if given.get("crop") is not None:
        given["crop"] = tuple(given["crop"])
    given.update(out=args.out, resume=bool(args.resume), command=" ".join(sys.argv))
    return replace(base, **given)


def run_stage1(args: argparse.Namespace) -> int:
    from seg2refine_core.training.stage1 import train_stage1

    return _run_trainer("stage1", train_stage1, stage1_config(args), _slice_size)


def _slice_size(summary: dict) -> str:
    return f"slices {summary['slice_size'][0]}x{summary['slice_size'][1]}"


def _patch_size(summary: dict) -> str:
    return "patches " + "x".join(str(p) for p in summary["patch_size"])


def _run_trainer(name: str, train: Callable, config, describe_input: Callable[[dict], str]) -> int:
    """Run ``train(config, progress, should_stop)`` with a progress bar and Ctrl-C handling; print the outcome."""
    from seg2refine_core import distributed
    from seg2refine_core.progress import tqdm_progress

    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        with (
            graceful_interrupt() as should_stop,
            tqdm_progress(f"train {name}", unit="step", disable=not main_rank) as bar,
        ):
            summary = train(config, progress=bar, should_stop=should_stop)
    finally:
        distributed.cleanup()
    if not main_rank:
        return 130 if summary["stopped"] else 0
    run_dir = summary["run_dir"]
    if summary["stopped"]:
        print(
            f"stopped after {summary['epochs_done']} full epoch(s); saved {run_dir}/last.safetensors. "
            f"Continue with: seg2refine train {name} --out {run_dir} --resume",
            file=sys.stderr,
        )
        return 130
    value = summary["best_value"]
    shown = "n/a" if value is None else f"{value:.4f}"
    print(
        f"trained {summary['epochs_done']} epoch(s) on {summary['train_cases']} case(s), {describe_input(summary)}; "
        f"best {summary['best_metric']} {shown} at epoch {summary['best_epoch']}: {summary['best']} "
        f"(last: {summary['last']}); curves: {run_dir}/curves.png"
    )
    return 0


def _add_patch_training_args(p: argparse.ArgumentParser) -> None:
    """Options shared by the 3D patch trainers (stage 2 and the 3D baseline); unset ones stay None."""
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run folder for checkpoints and logs")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its 'last' state")
    p.add_argument("--split", type=Path, metavar="FILE", help="ImageCAS split table (.xlsx or .csv)")
    p.add_argument("--fold", type=int, metavar="K", help="split column Split-K, 1-4 (default 1)")
    p.add_argument("--test-fraction", type=float, metavar="F", help="hold-out share left for testing without --split")
    p.add_argument("--split-seed", type=int, metavar="S", help="seed of the hold-out split without --split")
    p.add_argument("--layout", choices=("auto", "imagecas", "asoca", "generic"), help="dataset layout (auto)")
    p.add_argument("--patch", dest="patch_size", type=int, nargs=3, metavar=("D", "H", "W"),
                   help="training and sliding-window patch, multiples of 16 (64 64 64; 128 128 128 suits a GPU)")
    p.add_argument("--epochs", type=int, metavar="E", help="epochs (50); with --resume a larger value extends the run")
    p.add_argument("--batch-size", type=int, metavar="B", help="patches per step and rank (2)")
    p.add_argument("--patches-per-epoch", type=int, metavar="N", help="patches per epoch over all ranks (200)")
    p.add_argument("--vessel-fraction", type=float, metavar="P", help="share of vessel-centred patches (0.7)")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False,
                   help="no rotation, S masking or noise")
    p.add_argument("--val-overlap", type=float, metavar="F", help="sliding-window overlap in validation (0.25)")
    p.add_argument("--num-workers", type=int, metavar="N", help="DataLoader worker processes (2)")
    p.add_argument("--device", metavar="D", help="auto, cuda, mps or cpu (auto)")
    add_threads_option(p)
    p.add_argument("--seed", type=int, metavar="S", help="seed of initialisation, sampling and augmentation (0)")
    p.add_argument("--cache-dir", type=Path, metavar="DIR", help="preprocessed X' cache, shareable between runs")
    p.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="no mixed precision on CUDA")
    p.add_argument("--deterministic", action="store_const", const=True, help="deterministic cuDNN kernels (slower)")


def add_stage2_parser(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser(
        "stage2",
        help="train the 3D Attention-GAN refiner on stage-1 output (Algorithm 1)",
        description=(
            "Train the stage-2 generator G (and discriminator D) on concat(X', S), where S is the given stage-1 "
            "model's mask on volumes it never trained on: the split's val cases with --split, otherwise the "
            "labelled cases that are neither stage-1 training nor held-out test cases (the stage-1 run's hold-out "
            "rule). Overlap with the stage-1 training cases is refused. S is computed once and cached beside the "
            "X' cache (default: the stage-1 run's cache). Writes RUN_DIR/best.*, last.* (G), metrics.jsonl and "
            "curves.png. Ctrl-C stops after the current step and saves a resumable 'last'. Unset options take "
            "the defaults, or with --resume the run's own values."
        ),
    )
    p.add_argument("--data", type=Path, metavar="DIR", help="dataset folder (required unless --resume)")
    p.add_argument("--stage1", type=Path, metavar="CKPT", help="stage-1 checkpoint (required unless --resume)")
    _add_patch_training_args(p)
    p.add_argument("--val-fraction", type=float, metavar="F", help="share of stage-2 cases for validation (0.2)")
    p.add_argument("--width", type=int, metavar="W", help="generator width (16)")
    p.add_argument("--disc-width", type=int, metavar="W", help="discriminator width (the generator's)")
    p.add_argument("--lambda", dest="lam", type=float, metavar="L", help="weight of the Dice term in G's loss (5)")
    p.add_argument("--no-delta-b0", dest="delta_b0", action="store_const", const=False,
                   help="leave the Betti-0 term (eq. 11) out of G's loss (it is logged either way)")
    p.add_argument("--topology", choices=("cldice",), help="add a differentiable topology term to G's loss")
    p.add_argument("--topology-weight", type=float, metavar="W", help="weight of the topology term (1)")
    p.add_argument("--lr-g", type=float, metavar="LR", help="generator Adam learning rate (2e-4)")
    p.add_argument("--lr-d", type=float, metavar="LR", help="discriminator Adam learning rate (2e-4)")
    p.add_argument("--s-batch-size", type=int, metavar="N", help="slices per batch when making S (4)")
    p.add_argument("--allow-unknown-stage1", action="store_const", const=True,
                   help="accept a stage-1 checkpoint that records no training cases (leakage is not checked)")
    p.set_defaults(run=run_stage2)


def add_baseline3d_parser(stages: argparse._SubParsersAction) -> None:
    p = stages.add_parser(
        "baseline3d",
        help="train a plain 3D UNet on X' patches (comparison baseline)",
        description=(
            "Train MONAI's 3D UNet on X' patches (one channel) with DiceCE loss, on the same training/validation "
            "cases as stage 1 (split table, or the same hold-out rule and defaults). Validation segments whole "
            "volumes with a sliding window. Writes RUN_DIR/best.*, last.*, metrics.jsonl and curves.png."
        ),
    )
    p.add_argument("--data", type=Path, metavar="DIR", help="dataset folder (required unless --resume)")
    _add_patch_training_args(p)
    p.add_argument("--val-fraction", type=float, metavar="F", help="validation share without --split (0.1)")
    p.add_argument("--width", type=int, metavar="W", help="channels of the first UNet level (16)")
    p.add_argument("--num-res-units", type=int, metavar="N", help="residual units per UNet level (1)")
    p.add_argument("--lr", type=float, metavar="LR", help="Adam learning rate (1e-4)")
    p.add_argument("--weight-decay", type=float, metavar="WD", help="Adam weight decay (1e-5)")
    p.set_defaults(run=run_baseline3d)


def _patch_trainer_config(args: argparse.Namespace, stored: Callable, make: Callable, required: tuple[str, ...]):
    """A trainer config from parsed options: unset options take the defaults, or with --resume the run's values."""
    from seg2refine_core.errors import Seg2RefineError

    if args.resume:
        base = stored(args.out)
    else:
        missing = [f"--{name}" for name in required if getattr(args, name) is None]
        if missing:
            raise Seg2RefineError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required "
                                  "(unless --resume)")
        base = make(args)
    given = {f.name: getattr(args, f.name) for f in fields(base) if getattr(args, f.name, None) is not None}
    if given.get("patch_size") is not None:
        given["patch_size"] = tuple(given["patch_size"])
    given.update(out=args.out, resume=bool(args.resume), command=" ".join(sys.argv))
    return replace(base, **given)


def run_stage2(args: argparse.Namespace) -> int:
    from seg2refine_core.training.stage2 import Stage2TrainConfig, stored_run_config, train_stage2

    config = _patch_trainer_config(
        args, stored_run_config, lambda a: Stage2TrainConfig(data=a.data, stage1=a.stage1, out=a.out),
        ("data", "stage1"),
    )
    return _run_trainer("stage2", train_stage2, config, _patch_size)


def run_baseline3d(args: argparse.Namespace) -> int:
    from seg2refine_core.data.preprocess import PreprocessConfig
    from seg2refine_core.training.baseline3d import Baseline3dTrainConfig, stored_run_config, train_baseline3d

    config = _patch_trainer_config(
        args, stored_run_config,
        lambda a: Baseline3dTrainConfig(data=a.data, out=a.out, preprocess=PreprocessConfig()), ("data",),
    )
    return _run_trainer("baseline3d", train_baseline3d, config, _patch_size)


def add_demo_parser(stages: argparse._SubParsersAction) -> None:
    from seg2refine_core.training.demo_weights import DemoWeightsConfig

    defaults = DemoWeightsConfig(out=Path("."), work=Path("."))
    p = stages.add_parser(
        "demo",
        help="build the bundled demo weights (both stages) from synthetic phantoms",
        description=(
            "Makes phantoms (seeds 0..N-1), trains SFANet on a hold-out split of them, trains the 3D Attention-GAN "
            "on S for the cases stage 1 did not train on, and installs both best checkpoints (float16) in --out. "
            "This is what `make demo-weights` runs."
        ),
    )
    p.add_argument("--out", type=Path, required=True, help="where stage1/stage2 .safetensors + .json go")
    p.add_argument("--work", type=Path, default=Path("runs/demo-weights"), help="phantoms, runs and caches")
    p.add_argument("--cases", type=int, default=defaults.n_cases, help=f"phantoms (default {defaults.n_cases})")
    p.add_argument("--width", type=int, default=defaults.width, help=f"both models (default {defaults.width})")
    p.add_argument("--stage1-epochs", type=int, default=defaults.stage1_epochs)
    p.add_argument("--stage1-lr", type=float, default=defaults.stage1_lr)
    p.add_argument("--stage2-epochs", type=int, default=defaults.stage2_epochs)
    p.add_argument("--shape", type=int, nargs=3, default=defaults.shape, metavar=("Z", "Y", "X"))
    p.add_argument("--device", default="auto")
    add_threads_option(p)
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from seg2refine_core.progress import tqdm_progress
    from seg2refine_core.training.demo_weights import DemoWeightsConfig, describe, train_demo_weights

    config = DemoWeightsConfig(
        out=args.out, work=args.work, n_cases=args.cases, width=args.width, shape=tuple(args.shape),
        stage1_epochs=args.stage1_epochs, stage1_lr=args.stage1_lr, stage2_epochs=args.stage2_epochs,
        device=args.device,
    )
    with graceful_interrupt() as should_stop, tqdm_progress("train demo", unit="step") as bar:
        summary = train_demo_weights(config, progress=bar, should_stop=should_stop)
    if summary["stage1"]["stopped"] or summary["stage2"]["stopped"]:
        return 130
    print(f"demo weights built in {summary['minutes']} min:")
    print(describe(Path(args.out)))
    return 0


SUBCOMMANDS.update(stage2=add_stage2_parser, baseline3d=add_baseline3d_parser, demo=add_demo_parser)
