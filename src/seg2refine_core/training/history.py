"""A run's finished epochs: which one ``best`` holds (:class:`BestCheckpoint`), their records, and what rank 0
writes at the end of each (:class:`RunHistory`: ``best``, ``last``, ``metrics.jsonl``, ``curves.png``), the
provenance that closes a checkpoint's ``training`` entry and the summary a trainer returns.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seg2refine_core.io.checkpoint import save_checkpoint
from seg2refine_core.training.runlog import append_metrics, plot_curves, truncate_metrics

EpochFn = Callable[[dict[str, Any]], None]


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
