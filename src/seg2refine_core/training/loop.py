"""The one training loop of every trainer: :class:`Trainer`, a short :meth:`~Trainer.run` made of hooks in the
style of nnU-Net v2's ``nnUNetTrainer``. A trainer (stage 1, stage 2, the 3D baseline) subclasses it and supplies
only what is its own; the loop does the rest the same way for all of them.

The loop owns:

- **the run folder**: the overwrite guard; ``--resume``, refusing a changed run-defining option
  (:meth:`TrainOptions.run_defining <seg2refine_core.training.options.TrainOptions.run_defining>`) or other cases;
  at the end of each epoch ``metrics.jsonl``, ``curves.png``, ``best`` (by the validation score, else the training
  loss) and ``last`` (:mod:`~seg2refine_core.training.history`, :mod:`~seg2refine_core.training.runlog`), whose JSON
  records the canonical space the trainer's data were mapped to (``canonical_space``, set in
  :meth:`~Trainer.prepare_data`; :mod:`seg2refine_core.data.canonical`) and how it was chosen;
- **exact resume, also mid-epoch**: ``last.resume.pt`` holds the epoch and step counters, the summed step values of
  the unfinished epoch, the RNG states and the trainer's own state (optimizers, schedulers, loss scalers, ...); the
  sampler skips what the run already drew, and the RNG states of a mid-epoch stop are restored after the resumed
  epoch's loader has drawn its seed, so a resumed run ends bit-identical to a straight one, even with random
  draws (dropout, noise) in the step;
- **seeding** (torch, cuDNN's deterministic switch) and torch's CPU **threads** for the run;
- **DDP** under ``torchrun`` (:mod:`seg2refine_core.distributed`: NCCL on GPUs, gloo on the CPU): networks wrapped
  by :meth:`Trainer.ddp`, stop requests and epoch sums all-reduced, the model's buffers copied from rank 0 each
  epoch; only rank 0 writes and reports;
- **stopping**: ``should_stop()`` (Ctrl-C in the CLI, Stop in napari) is polled after every step on every rank; a stop
  saves a resumable ``last`` at once and the run returns with ``stopped=True``;
- **progress**: ``progress(done, total, info)`` over the optimisation steps of the run, ``on_step(step, loss)`` and
  ``on_epoch(record)``.

A trainer sets the class attributes ``config_class``, ``architecture``, ``stage``, ``title`` and, where they differ
from the defaults, ``score`` / ``loss`` (the record keys that choose ``best``), ``rate_key`` and ``panels``, and
implements :meth:`~Trainer.select_cases`, :meth:`~Trainer.prepare_data`, :meth:`~Trainer.build_networks`,
:meth:`~Trainer.train_step`, :meth:`~Trainer.validation`, :meth:`~Trainer.learning_rates`,
:meth:`~Trainer.checkpoint_entries`, :meth:`~Trainer.resume_state` and :meth:`~Trainer.load_resume_state`; it may
extend :meth:`~Trainer.check_resume`, :meth:`~Trainer.step_schedulers`, :meth:`~Trainer.loss_terms`,
:meth:`~Trainer.progress_text`, :meth:`~Trainer.training_facts`, :meth:`~Trainer.recorded_cases` and
:meth:`~Trainer.summary_details`. The order of :meth:`~Trainer.run` fixes the order of the random draws, which is
what makes runs reproducible::

    config.check()     the options (before anything runs)
    on_train_start()   distributed set-up, run folder, cases, resume checks, seed, data, networks, resume state
    while epochs remain and no stop is requested:
        on_epoch_start()   sampler position, learning rates, clock
        train_epoch()      train_step() per batch, progress, stop polling  (a stop: on_stop() saves 'last')
        on_epoch_end()     sums over ranks, validation(), step_schedulers(), record, best / last
    on_train_end()     the summary
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from seg2refine_core import distributed
from seg2refine_core.data.canonical import CONFIG_KEY, CanonicalSpace
from seg2refine_core.data.sampling import BalancedSampler
from seg2refine_core.devices import autocast_dtype
from seg2refine_core.errors import CheckpointError, Seg2RefineError
from seg2refine_core.io.checkpoint import read_config, save_checkpoint
from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.training.history import EpochFn, RunHistory
from seg2refine_core.training.options import TrainOptions
from seg2refine_core.training.runlog import (
    capture_rng_state,
    check_resume_options,
    open_run,
    restore_rng_state,
    resume_path,
    save_resume_state,
)

StepFn = Callable[[int, float], None]
Config = TypeVar("Config", bound=TrainOptions)


def seed_run(seed: int, deterministic: bool, device: torch.device) -> None:
    """Seed torch; on CUDA choose deterministic cuDNN kernels or autotuned (faster) ones."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic


def wrap_ddp(model: nn.Module, info: distributed.DistInfo) -> nn.Module:
    """``model`` in DistributedDataParallel under ``torchrun`` (on this rank's GPU when on CUDA), else itself."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op CPU threads set to ``threads`` inside the block (None: left as they are), then restored."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Trainer(ABC, Generic[Config]):
    """One training run of ``config``: call :meth:`run`. See the module doc for what the loop does and what a
    subclass supplies.

    progress(done, total, info) counts optimisation steps over all epochs (a trainer may report its data
    preparation first); on_epoch(record) gets each epoch's record and on_step(step, loss) each step's ``loss``
    value (these three on rank 0 only); should_stop() is polled after every step on every rank. A record (also a line of
    ``metrics.jsonl``) holds ``epoch`` (1-based), the mean of each :meth:`loss_terms` value over the epoch's steps
    on all ranks, the :meth:`validation` metrics (None without validation cases), the :meth:`learning_rates` of the
    epoch, ``time_s`` (wall time, validation included) and ``rate_key`` (training samples per second over all
    ranks, validation excluded).
    """

    config_class: ClassVar[type[TrainOptions]]
    #: The checkpoint's ``architecture`` (what :func:`~seg2refine_core.io.checkpoint.build_model` builds).
    architecture: ClassVar[str]
    #: The checkpoint's ``training.stage``.
    stage: ClassVar[int | str]
    #: How messages name the run's kind, e.g. "stage-1".
    title: ClassVar[str]
    #: Record key of the validation score (higher is better) and of the training loss (lower is better): ``best``
    #: follows the score, or the loss when the run has no validation cases.
    score: ClassVar[str] = "val_dice"
    loss: ClassVar[str] = "train_loss"
    #: Record key of the training throughput.
    rate_key: ClassVar[str] = "patches_per_s"
    #: ``curves.png`` panels, as :func:`~seg2refine_core.training.runlog.plot_curves` takes them (None: by key).
    panels: ClassVar[dict[str, Sequence[str]] | None] = None

    def __init__(
        self, config: Config, progress: ProgressFn | None = None, should_stop: StopFn | None = None,
        on_epoch: EpochFn | None = None, on_step: StepFn | None = None,
    ) -> None:
        self.config = config
        self.progress, self.should_stop = progress, should_stop
        self.on_epoch, self.on_step = on_epoch, on_step
        self.run_dir = Path(config.out)
        self.model: nn.Module  # what 'best' and 'last' hold: the plain network, set by build_networks
        self.epoch = self.step = self.count = self.seen = 0
        self.sums: dict[str, float] = {}
        self.stopped = False
        self.pending_rng: dict[str, Any] | None = None  # RNG states to restore once a resumed epoch has begun
        self.space: CanonicalSpace | None = None  # the canonical space the run trains in, set by prepare_data
        self.space_rule = ""  # how it was chosen (checkpoint provenance)

    # ------------------------------------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        """Train as the module doc describes; returns the summary: run_dir, best (None until an epoch has
        finished), last, epochs_done, best_epoch, best_metric, best_value, stopped, train_cases, val_cases, the
        trainer's :meth:`summary_details`, history."""
        self.config.check()
        with cpu_threads(self.config.threads):
            self.on_train_start()
            while self.epoch < self.config.epochs and not self.stopped:
                self.on_epoch_start()
                self.train_epoch()
                if self.stopped:
                    self.on_stop()
                else:
                    self.on_epoch_end()
            return self.on_train_end()

    def on_train_start(self) -> None:
        """Join the process group, open the run folder, choose the cases (refusing a resume that changes them),
        seed, prepare the data, build the networks and, when resuming, restore the run's state."""
        config = self.config
        self.info = distributed.init_distributed(config.device)
        state = open_run(self.run_dir, config.resume)
        self.cases = self.select_cases()
        if state is not None:
            self.check_resume(state)
        seed_run(config.seed, config.deterministic, self.info.device)
        self.amp_dtype = autocast_dtype(self.info.device) if config.amp else None
        self.loader, self.sampler = self.prepare_data()
        self.steps_per_epoch = math.ceil(self.sampler.per_rank / config.batch_size)
        self.build_networks(None if state is None else self._last_weights())
        self.terms = self.loss_terms()
        self.sums = dict.fromkeys(self.terms, 0.0)
        self.history = RunHistory.start(self.run_dir, self.info.is_main, state, score=self.score, loss=self.loss,
                                        validating=bool(self.cases["val"]), panels=self.panels,
                                        on_epoch=self.on_epoch)
        if state is not None:
            self._restore(state)
        self.run_config = config.to_dict()

    def on_epoch_start(self) -> None:
        """Position the sampler (past the samples already drawn when resuming mid-epoch) and note the epoch's
        learning rates and start time."""
        self.sampler.set_epoch(self.epoch, skip=self.step * self.config.batch_size)
        self.epoch_lrs = self.learning_rates()
        self.epoch_start = time.perf_counter()
        self.seen = 0

    def train_epoch(self) -> None:
        """:meth:`train_step` on each batch of the epoch's share; report progress; stop when any rank is asked to."""
        total = self.config.epochs * self.steps_per_epoch
        batches = iter(self.loader)  # draws the epoch's loader seed from torch's RNG
        if self.pending_rng is not None:  # resumed mid-epoch: the saved states already include that draw
            restore_rng_state(self.pending_rng)
            self.pending_rng = None
        for batch in batches:
            values, size = self.train_step(batch)
            self.sums = {key: self.sums[key] + values[key] for key in self.terms}
            self.count, self.step, self.seen = self.count + 1, self.step + 1, self.seen + size
            done = self.epoch * self.steps_per_epoch + self.step
            if self.info.is_main and self.progress is not None:
                means = {key: value / self.count for key, value in self.sums.items()}
                self.progress(done, total, f"epoch {self.epoch + 1}/{self.config.epochs} {self.progress_text(means)}")
            if self.info.is_main and self.on_step is not None:
                self.on_step(done, values[self.loss])
            if distributed.any_rank(self.should_stop is not None and bool(self.should_stop())):
                self.stopped = True
                break
        self.train_time = time.perf_counter() - self.epoch_start

    def on_stop(self) -> None:
        """Sum the unfinished epoch's step values over the ranks and save a resumable ``last``."""
        totals = distributed.all_reduce_sum([*self.sums.values(), self.count])
        self.sums, self.count = dict(zip(self.terms, totals[:-1], strict=True)), int(totals[-1])
        self.save_last()

    def on_epoch_end(self) -> None:
        """Copy the model's buffers from rank 0, average the step values over all ranks, validate, step the
        schedulers, then record the epoch and write ``best``/``last`` and the log (rank 0)."""
        distributed.sync_buffers(self.model)
        totals = distributed.all_reduce_sum([*self.sums.values(), self.count, self.seen])
        means = {key: value / max(totals[-2], 1) for key, value in zip(self.terms, totals[:-2], strict=True)}
        if self.info.is_main and self.progress is not None:
            done = self.epoch * self.steps_per_epoch + self.step
            self.progress(done, self.config.epochs * self.steps_per_epoch,
                          f"epoch {self.epoch + 1}/{self.config.epochs}: validating")
        metrics = self.validation()
        self.step_schedulers()
        self.epoch, self.step, self.count = self.epoch + 1, 0, 0
        self.sums = dict.fromkeys(self.terms, 0.0)
        record = {
            "epoch": self.epoch, **means, **metrics, **self.epoch_lrs,
            "time_s": time.perf_counter() - self.epoch_start,
            self.rate_key: totals[-1] / max(self.train_time, 1e-9),
        }
        self.history.end_epoch(record, self.model, self.checkpoint_config, self.save_last)

    def on_train_end(self) -> dict[str, Any]:
        """Wait for every rank and return the summary (see :meth:`run`)."""
        distributed.barrier()
        summary = self.history.summary(self.epoch, self.stopped, train_cases=len(self.cases["train"]),
                                       val_cases=len(self.cases["val"]), **self.summary_details())
        if self.history.best.epoch is None:  # no epoch has finished: there is no best checkpoint yet
            summary["best"] = None
        return summary

    # ------------------------------------------------------------------------------------ checkpoints and resume

    def checkpoint_config(self) -> dict[str, Any]:
        """The JSON config saved beside the model's weights in ``best`` and ``last``."""
        config = self.config
        return {
            "architecture": self.architecture,
            **self.checkpoint_entries(),
            **({CONFIG_KEY: self.space.to_dict()} if self.space is not None else {}),
            "training": {
                "stage": self.stage,
                "data": str(config.data),
                "split": str(config.split) if config.split else "holdout",
                "fold": config.fold if config.split else None,
                "cases": self.recorded_cases(),
                "epochs_done": self.epoch,
                "step_in_epoch": self.step,
                "epochs": config.epochs,
                "seed": config.seed,
                **({"target_spacing": self.space_rule} if self.space_rule else {}),
                **self.training_facts(),
                **self.history.provenance(self.info.world_size, config.command, self.run_config),
            },
        }

    def save_last(self) -> None:
        """Rank 0: the model as ``last`` and, beside it, everything :meth:`on_train_start` needs to continue."""
        if not self.info.is_main:
            return
        save_checkpoint(self.run_dir / "last", self.model, self.checkpoint_config())
        state = {
            "epoch": self.epoch, "step": self.step, "sums": self.sums, "count": self.count, **self.resume_state(),
            "best": self.history.best.to_dict(), "rng": capture_rng_state(), "config": self.run_config,
            "cases": self.cases,
        }
        save_resume_state(resume_path(self.run_dir / "last"), state)

    def check_resume(self, state: dict[str, Any]) -> None:
        """Refuse to resume with another value of a run-defining option, or with other cases. The stored options
        are read as :meth:`~seg2refine_core.training.options.TrainOptions.from_dict` reads them, so a run stored by an
        older version compares by what its values mean now (e.g. ``augment: true`` is the ``none`` preset)."""
        names = self.config_class.run_defining()
        stored = self.config_class.from_dict(state["config"]).to_dict()
        check_resume_options(self.run_dir, self.config.to_dict(), stored, names,
                             {name: self.config_class.flag(name) for name in names})
        if self.cases != state["cases"]:
            raise Seg2RefineError(f"{self.config.data}: the training/validation cases differ from the resumed run's")

    def _last_weights(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(str(self.run_dir / "last.safetensors"))

    def _restore(self, state: dict[str, Any]) -> None:
        self.load_resume_state(state)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        if self.step == 0:
            restore_rng_state(state["rng"])
        else:  # saved mid-epoch, after the epoch's loader had drawn its seed: restore once the resumed one has
            self.pending_rng = state["rng"]
        if self.info.is_main:  # the stored sums are over all ranks; rank 0 carries them
            # resume states written before the shared loop hold one training loss as loss_sum / loss_count
            sums = state["sums"] if "sums" in state else {self.loss: state["loss_sum"]}
            self.sums = {key: float(sums[key]) for key in self.terms}
            self.count = int(state["count"] if "count" in state else state["loss_count"])

    @classmethod
    def stored_options(cls, run_dir: str | Path) -> TrainOptions:
        """The options the run in ``run_dir`` was started with, from ``last.json`` (``--resume`` without repeating
        them). :class:`Seg2RefineError` when there is nothing to resume, :class:`CheckpointError` when ``last``
        is another trainer's."""
        path = Path(run_dir) / "last.json"
        if not path.is_file():
            raise Seg2RefineError(f"{run_dir}: nothing to resume (no last.json); start without --resume")
        config = read_config(Path(run_dir) / "last")
        stored = config.get("training", {}).get("config")
        if config.get("architecture") != cls.architecture or not isinstance(stored, dict):
            raise CheckpointError(f"{path}: holds no {cls.title} training options to resume")
        return cls.config_class.from_dict(stored)

    # ------------------------------------------------------------------------------------- helpers for trainers

    def ddp(self, model: nn.Module) -> nn.Module:
        """``model`` as it trains on this rank: in DistributedDataParallel under ``torchrun``, else itself."""
        return wrap_ddp(model, self.info)

    def autocast(self) -> AbstractContextManager:
        """Mixed precision on CUDA when the config allows it (bf16 where supported, else fp16), else nothing."""
        return torch.autocast(self.info.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, active only under fp16 autocast."""
        return torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    # ------------------------------------------------------------------------------------ what a trainer supplies

    @abstractmethod
    def select_cases(self) -> dict[str, list[str]]:
        """``{"train": ids, "val": ids}``: the cases the run trains and validates on (stored for resume)."""

    @abstractmethod
    def prepare_data(self) -> tuple[Iterable[Any], BalancedSampler]:
        """``(loader, sampler)``: batches of this rank's share of an epoch, and the sampler that draws it. Sets
        ``self.space`` (the canonical space the data were mapped to, recorded in the checkpoints as
        :data:`~seg2refine_core.data.canonical.CONFIG_KEY`) and ``self.space_rule`` (how it was chosen)."""

    @abstractmethod
    def build_networks(self, weights: dict[str, torch.Tensor] | None) -> None:
        """Build the networks (``self.model`` is the one ``best``/``last`` hold; ``weights`` are its state when
        resuming), put them on ``self.info.device`` in training mode, and set up the optimizers."""

    @abstractmethod
    def train_step(self, batch: Any) -> tuple[dict[str, float], int]:
        """One optimisation step on ``batch``; ``({term: value} for every :meth:`loss_terms` key, batch size)``."""

    @abstractmethod
    def validation(self) -> dict[str, float | None]:
        """The epoch's validation metrics (None each without validation cases); networks back in training mode."""

    @abstractmethod
    def learning_rates(self) -> dict[str, float]:
        """The learning rates this epoch trains with, as record entries (e.g. ``{"lr": 1e-4}``)."""

    @abstractmethod
    def checkpoint_entries(self) -> dict[str, Any]:
        """The checkpoint JSON's ``model``, ``preprocess`` and ``input`` entries."""

    @abstractmethod
    def resume_state(self) -> dict[str, Any]:
        """The trainer's part of ``last.resume.pt`` (optimizer, scheduler and scaler states, ...)."""

    @abstractmethod
    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`resume_state` saved."""

    def loss_terms(self) -> tuple[str, ...]:
        """The keys of :meth:`train_step`'s values, averaged into each epoch record."""
        return (self.loss,)

    def step_schedulers(self) -> None:
        """Advance learning-rate schedules at the end of an epoch (none by default)."""

    def progress_text(self, means: dict[str, float]) -> str:
        """What the progress bar shows after ``epoch e/E``, from the epoch's running means."""
        return f"loss {means[self.loss]:.4f}"

    def recorded_cases(self) -> dict[str, list[str]]:
        """The checkpoint's ``training.cases``."""
        return self.cases

    def training_facts(self) -> dict[str, Any]:
        """The trainer's own entries of the checkpoint's ``training`` record."""
        return {}

    def summary_details(self) -> dict[str, Any]:
        """The trainer's own entries of the summary :meth:`run` returns."""
        return {}
