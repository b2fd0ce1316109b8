"""What the trainers (:mod:`~seg2refine_core.training.stage1`, :mod:`~seg2refine_core.training.stage2`,
:mod:`~seg2refine_core.training.baseline3d`) share around their own training steps.

- :func:`options_to_dict` and :func:`options_kwargs`: a run config dataclass to and from its JSON form;
- :func:`labelled_split`: the labelled train/val cases of stage 1 and the 3D baseline;
- :func:`prepare_xprime_cache`: the X' memmap cache, its build shared out between ranks;
- :func:`seed_run` and :func:`wrap_ddp`: the torch set-up of a run; :func:`is_compile_error` and
  :func:`compile_fallback_message` for a run that trains through ``torch.compile``;
- :class:`BestCheckpoint` and :class:`RunHistory`: which epoch ``best`` holds, the epoch records, the rank-0 writes
  at the end of each epoch (``best``, ``last``, ``metrics.jsonl``, ``curves.png``), the provenance that closes a
  checkpoint's ``training`` entry and the summary dict a trainer returns.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from seg2refine_core import distributed
from seg2refine_core.data.cache import CacheIndex, build_cache
from seg2refine_core.data.datasets import Case, discover_cases, holdout_split, read_split, split_cases
from seg2refine_core.data.preprocess import PreprocessConfig
from seg2refine_core.errors import DatasetError, one_line
from seg2refine_core.io.checkpoint import save_checkpoint
from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.training.runlog import append_metrics, plot_curves, truncate_metrics

#: Command-line names of options whose field name differs (in resume refusals).
OPTION_NAMES = {"lam": "--lambda", "patch_size": "--patch", "delta_b0": "--no-delta-b0", "augment": "--no-augment"}

EpochFn = Callable[[dict[str, Any]], None]


def options_to_dict(config: Any, paths: Sequence[str]) -> dict[str, Any]:
    """``asdict`` of the config dataclass ``config`` with its ``paths`` fields as strings (None stays None)."""
    out = asdict(config)
    for key in paths:
        out[key] = None if out[key] is None else str(out[key])
    return out


def options_kwargs(cls: type, data: dict[str, Any], paths: Sequence[str]) -> dict[str, Any]:
    """The entries of ``data`` that are fields of the dataclass ``cls`` (other keys are ignored so old runs stay
    readable), with the ``paths`` fields as :class:`Path` (None stays None)."""
    known = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in known}
    for key in paths:
        if kwargs.get(key) is not None:
            kwargs[key] = Path(kwargs[key])
    return kwargs


class SplitOptions(Protocol):
    """The options that choose a run's cases (fields of the stage-1 and baseline configs)."""

    data: Path
    layout: str
    split: Path | None
    fold: int
    val_fraction: float
    test_fraction: float
    split_seed: int


def labelled_split(config: SplitOptions) -> tuple[list[Case], list[Case]]:
    """Training and validation cases: the split table's ``train``/``val`` of ``fold``, or without a table
    :func:`~seg2refine_core.data.datasets.holdout_split` (``val_fraction``, ``test_fraction``, ``split_seed``).

    Raises :class:`DatasetError` when no training case is left or one of the cases has no label.
    """
    cases = discover_cases(config.data, config.layout)
    if config.split is not None:
        ids = read_split(config.split, config.fold)
    else:
        ids = holdout_split(cases, config.val_fraction, config.test_fraction, config.split_seed)
    parts = split_cases(cases, ids)
    train, val = parts["train"], parts["val"]
    if not train:
        raise DatasetError(f"{config.data}: the split leaves no training case")
    unlabelled = [case.case_id for case in train + val if case.label is None]
    if unlabelled:
        raise DatasetError(f"{config.data}: training/validation case(s) without a label: {', '.join(unlabelled[:5])}")
    return train, val


def split_provenance(config: SplitOptions) -> dict[str, Any]:
    """``data``, ``split`` (the table's path or ``"holdout"``) and ``fold`` (None without a table) of a
    checkpoint's ``training`` entry."""
    return {
        "data": str(config.data),
        "split": str(config.split) if config.split else "holdout",
        "fold": config.fold if config.split else None,
    }


def prepare_xprime_cache(
    cases: Sequence[Case], cache_dir: Path, preprocess: PreprocessConfig, info: distributed.DistInfo,
    progress: ProgressFn | None, should_stop: StopFn | None,
) -> CacheIndex:
    """Build (or reuse) the X' cache of ``cases``, sharing the work between ranks; rank 0 writes the index."""
    report = progress if info.is_main else None
    if info.distributed:
        build_cache(cases[info.rank :: info.world_size], cache_dir, preprocess, report, should_stop, write_index=False)
        distributed.barrier()
    return build_cache(cases, cache_dir, preprocess, report, should_stop, write_index=info.is_main)


def seed_run(seed: int, deterministic: bool, device: torch.device) -> None:
    """Seed torch; on CUDA choose deterministic cuDNN kernels or autotuned (faster) ones."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what a failing ``torch.compile`` raises on the compiled module's first forward or
    backward: Dynamo's errors, Inductor's among them (a missing C++ compiler or Triton surfaces as one of these)."""
    from torch._dynamo.exc import TorchDynamoException  # imported by torch.compile anyway; 1.4 s at start-up

    return isinstance(exc, TorchDynamoException)


def compile_fallback_message(exc: BaseException) -> str:
    """The warning of a run that goes on eagerly because ``torch.compile`` failed with ``exc``."""
    return f"torch.compile failed ({one_line(exc)}); training goes on without it (eager)"


def wrap_ddp(model: nn.Module, info: distributed.DistInfo) -> nn.Module:
    """``model`` in DistributedDataParallel under ``torchrun`` (on this rank's GPU when on CUDA), else itself."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


@dataclass
class BestCheckpoint:
    """Which finished epoch ``best`` holds: chosen by the record key ``metric`` (larger is better when ``higher``,
    smaller otherwise), with that key's ``value`` at ``epoch`` (both None until an epoch has finished)."""

    metric: str
    higher: bool
    value: float | None = None
    epoch: int | None = None

    @classmethod
    def start(cls, score: str, loss: str, validating: bool, stored: dict[str, Any] | None = None) -> BestCheckpoint:
        """By the validation ``score`` (higher is better) when ``validating``, else by the training ``loss``;
        ``stored`` (a resume state's ``best``, as :meth:`to_dict` wrote it) continues a run."""
        if stored is not None:
            return cls(stored["metric"], stored["metric"] == score, stored["value"], stored["epoch"])
        metric = score if validating else loss
        return cls(metric, metric == score)

    def update(self, record: dict[str, Any]) -> bool:
        """Take the epoch ``record`` if it beats the best so far (the first always does); True if taken."""
        value = record[self.metric]
        if self.value is not None and not (value > self.value if self.higher else value < self.value):
            return False
        self.value, self.epoch = value, record["epoch"]
        return True

    def to_dict(self) -> dict[str, Any]:
        """``{"metric", "value", "epoch"}``: the form checkpoints and resume states hold."""
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch}


@dataclass
class RunHistory:
    """The finished epochs of a run in ``run_dir``: their ``records`` (those before a resume on rank 0 only), the
    ``best`` one, and the writes rank 0 makes at the end of each epoch (``panels`` as
    :func:`~seg2refine_core.training.runlog.plot_curves` takes them)."""

    run_dir: Path
    is_main: bool
    best: BestCheckpoint
    records: list[dict[str, Any]] = field(default_factory=list)
    panels: dict[str, Sequence[str]] | None = None
    on_epoch: EpochFn | None = None

    @classmethod
    def start(
        cls, run_dir: Path, is_main: bool, state: dict[str, Any] | None, *, score: str, loss: str, validating: bool,
        panels: dict[str, Sequence[str]] | None = None, on_epoch: EpochFn | None = None,
    ) -> RunHistory:
        """A new run's history, best chosen as :meth:`BestCheckpoint.start` says; with a resume ``state``, its best
        and, on rank 0, the records of the epochs it finished (later lines of ``metrics.jsonl`` are dropped: the
        resumed run repeats those epochs)."""
        best = BestCheckpoint.start(score, loss, validating, None if state is None else state["best"])
        records = truncate_metrics(run_dir, int(state["epoch"])) if state is not None and is_main else []
        return cls(run_dir, is_main, best, records, panels, on_epoch)

    def end_epoch(
        self, record: dict[str, Any], model: nn.Module, checkpoint_config: Callable[[], dict[str, Any]],
        save_last: Callable[[], None],
    ) -> None:
        """Add the finished epoch's ``record`` and update ``best``; rank 0 then saves ``model`` as ``best`` (with
        ``checkpoint_config()``) when it improved, calls ``save_last()``, appends the record to ``metrics.jsonl``,
        redraws ``curves.png`` and passes the record to ``on_epoch``."""
        self.records.append(record)
        improved = self.best.update(record)
        if not self.is_main:
            return
        if improved:
            save_checkpoint(self.run_dir / "best", model, checkpoint_config())
        save_last()
        append_metrics(self.run_dir, record)
        plot_curves(self.run_dir, self.panels)
        if self.on_epoch is not None:
            self.on_epoch(record)

    def provenance(self, world_size: int, command: str | None, run_config: dict[str, Any]) -> dict[str, Any]:
        """The keys that close a checkpoint's ``training`` entry: best, history, world_size, torch_version, date,
        command (``command`` or this process's ``sys.argv``) and config (the run's options)."""
        return {
            "best": self.best.to_dict(),
            "history": self.records,
            "world_size": world_size,
            "torch_version": torch.__version__,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command or " ".join(sys.argv),
            "config": run_config,
        }

    def summary(self, epochs_done: int, stopped: bool, **details: Any) -> dict[str, Any]:
        """A trainer's summary: run_dir, best, last, epochs_done, best_epoch, best_metric, best_value, stopped,
        then ``details`` in their order, then history."""
        return {
            "run_dir": str(self.run_dir),
            "best": str(self.run_dir / "best.safetensors"),
            "last": str(self.run_dir / "last.safetensors"),
            "epochs_done": epochs_done,
            "best_epoch": self.best.epoch,
            "best_metric": self.best.metric,
            "best_value": self.best.value,
            "stopped": stopped,
            **details,
            "history": self.records,
        }
