"""`seg2refine train <stage>`: train a model. Each stage is a sub-command of :data:`STAGES`, and ``demo``.

Every option of a sub-command is generated from the fields of its config dataclass
(:mod:`seg2refine_core.training.configs`, :class:`~seg2refine_core.training.demo_weights.DemoWeightsConfig`): flag,
type, default and help (:func:`~seg2refine_core.training.options.option_specs`), so the command line cannot drift
from the core. Options left out take the config's defaults, or with ``--resume`` the resumed run's values.

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
from typing import Any, NamedTuple

from seg2refine_core.training.configs import Baseline3dTrainConfig, Stage1TrainConfig, Stage2TrainConfig
from seg2refine_core.training.demo_weights import DemoWeightsConfig
from seg2refine_core.training.options import GROUPS, OptionSpec, option_specs

_RESUME_NOTE = "Options left out take the defaults shown, or with --resume the run's own values."


class Stage(NamedTuple):
    """A ``train`` sub-command: its config class, one-line help, description, and the function that runs it."""

    config_class: type
    help: str
    description: str
    run: Callable[[argparse.Namespace], int]


def add_config_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One option per command-line field of ``config_class`` (:func:`option_specs`), in the groups of
    :data:`GROUPS`. An option left out is absent from the parsed namespace (so the config's default, or with
    ``--resume`` the run's value, applies). ``--out`` is always required; the other fields without a default are
    required unless ``--resume`` (checked by :func:`config_from_args`), or by argparse when the config cannot be
    resumed."""
    resumable = "resume" in {f.name for f in fields(config_class)}
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for spec in option_specs(config_class):
        if not spec.cli:
            continue
        kwargs: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS, "help": option_help_line(spec)}
        if spec.kind is bool:
            kwargs.update(action="store_const", const=not spec.default)
        else:
            kwargs.update(type=spec.kind, metavar=spec.metavar, choices=spec.choices, nargs=spec.length)
        if spec.required and (spec.name == "out" or not resumable):
            kwargs["required"] = True
        groups[spec.group].add_argument(spec.flag, **kwargs)


def option_help_line(spec: OptionSpec) -> str:
    """The field's help text with its default appended (when it has one to show), escaped for argparse."""
    text = spec.help.replace("%", "%%")
    if spec.required or spec.default is None or spec.kind is bool:
        return text
    shown = " ".join(map(str, spec.default)) if spec.length is not None else str(spec.default)
    return f"{text} (default: {shown})"


def config_from_args(args: argparse.Namespace, config_class: type, stored: Callable[[Path], Any] | None = None):
    """The ``config_class`` of the parsed options: options left out take the defaults, or with ``--resume`` the
    values of ``stored(out)`` (the resumed run's options). The config's ``command`` records this command line.

    Raises :class:`~seg2refine_core.errors.Seg2RefineError` naming the required options left out.
    """
    from seg2refine_core.errors import Seg2RefineError

    specs = option_specs(config_class)
    given = {spec.name: getattr(args, spec.name) for spec in specs if spec.cli and hasattr(args, spec.name)}
    for spec in specs:
        if spec.length is not None and spec.name in given:
            given[spec.name] = tuple(given[spec.name])
    if any(spec.name == "command" for spec in specs):
        given["command"] = " ".join(sys.argv)
    if given.get("resume") and stored is not None:
        return replace(stored(given["out"]), **given)
    missing = [spec.flag for spec in specs if spec.required and spec.name not in given]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise Seg2RefineError(f"{' and '.join(missing)} {verb} required (unless --resume)")
    return config_class(**given)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a stage's model",
                       description="Train a model: " + ", ".join([*STAGES, "demo"]))
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, stage in STAGES.items():
        parser = stages.add_parser(name, help=stage.help, description=f"{stage.description} {_RESUME_NOTE}")
        add_config_options(parser, stage.config_class)
        parser.set_defaults(run=stage.run)
    demo = stages.add_parser(
        "demo",
        help="build the bundled demo weights (both stages) from synthetic phantoms",
        description=(
            "Makes legacy phantoms (seeds 0..N-1) and cohort phantoms (seeds 0..M-1), trains SFANet on a hold-out "
            "split of them, trains the 3D Attention-GAN on S for the cases stage 1 did not train on, and installs "
            "both best checkpoints (float16) in --out. "
            "This is what `make demo-weights` runs; the defaults are the recipe of the bundled weights."
        ),
    )
    add_config_options(demo, DemoWeightsConfig)
    demo.set_defaults(run=run_demo)


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


def run_stage1(args: argparse.Namespace) -> int:
    from seg2refine_core.training.stage1 import Stage1Trainer

    return _run_trainer("stage1", Stage1Trainer, args, _slice_size)


def run_stage2(args: argparse.Namespace) -> int:
    from seg2refine_core.training.stage2 import Stage2Trainer

    return _run_trainer("stage2", Stage2Trainer, args, _patch_size)


def run_baseline3d(args: argparse.Namespace) -> int:
    from seg2refine_core.training.baseline3d import Baseline3dTrainer

    return _run_trainer("baseline3d", Baseline3dTrainer, args, _patch_size)


def _slice_size(summary: dict) -> str:
    return f"slices {summary['slice_size'][0]}x{summary['slice_size'][1]}"


def _patch_size(summary: dict) -> str:
    return "patches " + "x".join(str(p) for p in summary["patch_size"])


def _run_trainer(name: str, trainer_class: Any, args: argparse.Namespace, describe_input: Callable[[dict], str]) -> int:
    """Run ``trainer_class`` on the parsed options with a progress bar and Ctrl-C handling; print the outcome."""
    from seg2refine_core import distributed
    from seg2refine_core.data.canonical import notices_to
    from seg2refine_core.devices import torch_threads
    from seg2refine_core.progress import tqdm_progress

    config = config_from_args(args, trainer_class.config_class, trainer_class.stored_options)
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        with (
            torch_threads(config.threads),
            notices_to(lambda message: print(f"seg2refine train {name}: note: {message}", file=sys.stderr)),
            graceful_interrupt() as should_stop,
            tqdm_progress(f"train {name}", unit="step", disable=not main_rank) as bar,
        ):
            summary = trainer_class(config, progress=bar, should_stop=should_stop).run()
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


def run_demo(args: argparse.Namespace) -> int:
    from seg2refine_core.devices import torch_threads
    from seg2refine_core.progress import tqdm_progress
    from seg2refine_core.training.demo_weights import describe, train_demo_weights

    config = config_from_args(args, DemoWeightsConfig)
    with (
        torch_threads(config.threads),
        graceful_interrupt() as should_stop,
        tqdm_progress("train demo", unit="step") as bar,
    ):
        summary = train_demo_weights(config, progress=bar, should_stop=should_stop)
    if summary["stage1"]["stopped"] or summary["stage2"]["stopped"]:
        return 130
    print(f"demo weights built in {summary['minutes']} min:")
    print(describe(Path(config.out)))
    return 0


#: stage name -> its ``train`` sub-command (``demo`` is added beside them).
STAGES: dict[str, Stage] = {
    "stage1": Stage(
        Stage1TrainConfig, "train SFANet (or a Table-1 variant) on axial slices",
        "Train the stage-1 2D network on a dataset folder (ImageCAS, ASOCA or images/+labels/). The run works in "
        "one canonical space (LPS voxel order at --target-spacing, else derived from the training cases' headers), "
        "recorded in its checkpoints. Volumes are read once, mapped into it and cached as HU in memory-mapped files "
        "(default RUN_DIR/cache); X' of each slice is made on the fly, "
        "after the --augment preset's intensity changes. Each epoch draws "
        "--samples-per-epoch slices, --positive-fraction of them from slices that hold vessel pixels; "
        "validation Dice is computed on whole validation volumes. Writes RUN_DIR/best.*, last.*, "
        "metrics.jsonl and curves.png. Ctrl-C stops after the current step and saves a resumable 'last'.",
        run_stage1,
    ),
    "stage2": Stage(
        Stage2TrainConfig, "train the 3D Attention-GAN refiner on stage-1 output (Algorithm 1)",
        "Train the stage-2 generator G (and discriminator D) on concat(X', S), where S is the given stage-1 "
        "model's mask on volumes it never trained on: the split's val cases with --split, otherwise the "
        "labelled cases that are neither stage-1 training nor held-out test cases (the stage-1 run's hold-out "
        "rule). Overlap with the stage-1 training cases is refused. Stage 2 trains in its own canonical space "
        "(--target-spacing, else derived from its training cases) and S comes from the stage-1 model in the space "
        "that model records. S is computed once and cached beside the HU cache (default: the stage-1 run's "
        "cache). Writes RUN_DIR/best.*, last.* (G), metrics.jsonl and curves.png. Ctrl-C stops after the current "
        "step and saves a resumable 'last'.",
        run_stage2,
    ),
    "baseline3d": Stage(
        Baseline3dTrainConfig, "train a plain 3D UNet on X' patches (comparison baseline)",
        "Train MONAI's 3D UNet on X' patches (one channel) with DiceCE loss, on the same training/validation "
        "cases as stage 1 (split table, or the same hold-out rule and defaults). Validation segments whole "
        "volumes with a sliding window. Writes RUN_DIR/best.*, last.*, metrics.jsonl and curves.png. Ctrl-C "
        "stops after the current step and saves a resumable 'last'.",
        run_baseline3d,
    ),
}
