"""Stage-1 training: SFANet (or a Table-1 ablation variant) on axial slices, from a preprocessed memmap cache.

What one run does (paper: "SFANet is trained using the Adam optimizer ...", design §3 Training, §5, §8):

- Cases come from ``data`` (ImageCAS / ASOCA / generic layout) and are split by the official table
  (``split`` + ``fold``) or, without one, by a seeded hold-out (``val_fraction``, ``test_fraction``, ``split_seed``).
  Test cases are never read. Train and val cases are preprocessed once into a cache
  (:mod:`seg2refine_core.data.cache`, default ``<out>/cache``) and streamed from memory-mapped arrays.
- Each epoch draws ``samples_per_epoch`` slices with the vessel-aware rule of
  :class:`~seg2refine_core.data.sampling.BalancedSampler` (default: as many samples as there are training slices,
  80 % of them from vessel-bearing slices). Every sample is padded (zeros) and randomly cropped to the slice size
  ``crop`` (default: the common in-plane size when all cases share one, otherwise the largest multiple of 16 not
  above the smallest height and width), then augmented (MONAI): horizontal and vertical flips, each with
  probability 0.5, and with probability 0.5 a rotation by a uniform angle in [-15°, 15°] (bilinear for the image,
  nearest for the label, zero padding). Random choices come from a per-sample seed, so they do not depend on
  the number of DataLoader workers.
- Loss :class:`~.losses.WeightedBCEDiceLoss` (α = 0.5), Adam (lr 1e-4, weight decay 1e-5), cosine
  learning-rate decay over the epochs (to 1 % of lr, :func:`cosine_decay`), mixed precision (bf16/fp16
  autocast) and channels-last on CUDA only.
- After each epoch every validation volume is segmented whole (every axial slice, threshold 0.5), Dice is taken
  per volume with :func:`~.metrics.dice` and averaged. ``best`` keeps the highest mean validation
  Dice (the lowest training loss when there are no validation cases); ``last`` is the latest state.
- Under ``torchrun`` the model is wrapped in DistributedDataParallel; every rank draws the same epoch sample and
  takes its shard, validation volumes are shared out between ranks, batch-norm buffers are copied from rank 0 at
  the end of each epoch, and only rank 0 writes checkpoints and logs.
- ``resume`` continues exactly where ``last`` stopped, even mid-epoch (a stop request saves ``last`` at once):
  weights from ``last.safetensors``, optimizer, scheduler, counters and RNG states from ``last.resume.pt``.
  Options that define the run must stay the same (:data:`RUN_DEFINING`); ``epochs`` may be raised to extend it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seg2refine_core import distributed
from seg2refine_core.data.cache import CacheIndex
from seg2refine_core.data.preprocess import PreprocessConfig
from seg2refine_core.data.sampling import BalancedSampler
from seg2refine_core.devices import autocast_dtype
from seg2refine_core.errors import CheckpointError, Seg2RefineError
from seg2refine_core.evaluation.metrics import dice
from seg2refine_core.inference.stage1 import segment_slices
from seg2refine_core.io.checkpoint import load_state_strict, read_config, save_checkpoint
from seg2refine_core.nets.sfanet import VARIANTS, build_sfanet
from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.training.common import (
    EpochFn,
    RunHistory,
    compile_fallback_message,
    is_compile_error,
    labelled_split,
    options_kwargs,
    options_to_dict,
    prepare_xprime_cache,
    seed_run,
    split_provenance,
    wrap_ddp,
)
from seg2refine_core.training.losses import WeightedBCEDiceLoss
from seg2refine_core.training.runlog import (
    capture_rng_state,
    check_resume_options,
    open_run,
    restore_rng_state,
    resume_path,
    save_resume_state,
)

ROTATION_DEG = 15.0
FLIP_PROB = 0.5
ROTATION_PROB = 0.5
THRESHOLD = 0.5
LR_FLOOR = 0.01
#: Options that define a run; ``resume`` refuses values that differ from the stored run's.
RUN_DEFINING = (
    "split", "fold", "val_fraction", "test_fraction", "split_seed", "layout", "variant", "width", "batch_size",
    "lr", "weight_decay", "samples_per_epoch", "positive_fraction", "crop", "seed", "preprocess",
)  # fmt: skip
PATH_OPTIONS = ("data", "out", "split", "cache_dir")

StepFn = Callable[[int, float], None]


@dataclass
class Stage1TrainConfig:
    """Options of a stage-1 training run (CLI: ``seg2refine train stage1``).

    data: dataset folder; out: run folder. split/fold: official split table and fold (1-4); without ``split``
    a seeded hold-out split (val_fraction, test_fraction, split_seed). variant: a key of ``nets.sfanet.VARIANTS``;
    width: channels of the first level (paper 64). samples_per_epoch: slices drawn per epoch over all ranks
    (None: the number of training slices). crop: training slice size (H, W) (None: see module doc).
    device: auto/cuda/mps/cpu. amp: autocast on CUDA. compile: train through ``torch.compile`` (falls back to eager
    if compiling fails; on this project's 2-core CPU it does not pay, see ``benchmarks/README.md``).
    cache_dir: None → ``<out>/cache``.
    """

    data: Path
    out: Path
    split: Path | None = None
    fold: int = 1
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    layout: str = "auto"
    variant: str = "sfanet"
    width: int = 64
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-5
    samples_per_epoch: int | None = None
    positive_fraction: float = 0.8
    crop: tuple[int, int] | None = None
    num_workers: int = 2
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    amp: bool = True
    compile: bool = False
    deterministic: bool = False
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    cache_dir: Path | None = None
    command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, ``preprocess`` as a dict, ``crop`` as a list)."""
        out = options_to_dict(self, PATH_OPTIONS)
        out["preprocess"] = self.preprocess.to_dict()
        out["crop"] = None if self.crop is None else [int(c) for c in self.crop]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage1TrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored so old runs stay readable)."""
        kwargs = options_kwargs(cls, data, PATH_OPTIONS)
        if kwargs.get("crop") is not None:
            kwargs["crop"] = tuple(int(c) for c in kwargs["crop"])
        if "preprocess" in kwargs:
            kwargs["preprocess"] = PreprocessConfig.from_dict(kwargs["preprocess"])
        return cls(**kwargs)

    def check(self) -> None:
        """Raise :class:`Seg2RefineError` naming the first invalid option."""
        if self.variant not in VARIANTS:
            raise Seg2RefineError(f"--variant {self.variant!r}: expected one of {', '.join(VARIANTS)}")
        for name in ("width", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise Seg2RefineError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise Seg2RefineError(f"--samples-per-epoch must be >= 1, got {self.samples_per_epoch}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise Seg2RefineError(f"--lr must be > 0 and weight decay >= 0, got {self.lr}, {self.weight_decay}")
        if self.num_workers < 0:
            raise Seg2RefineError(f"--num-workers must be >= 0, got {self.num_workers}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 16):
            raise Seg2RefineError(f"--crop needs two sizes >= 16 (H W), got {self.crop}")


def stored_run_config(run_dir: str | Path) -> Stage1TrainConfig:
    """The options a run was started with, from ``run_dir/last.json`` (for ``--resume`` without repeating them)."""
    if not (Path(run_dir) / "last.json").is_file():
        raise Seg2RefineError(f"{run_dir}: nothing to resume (no last.json); start without --resume")
    config = read_config(Path(run_dir) / "last")
    stored = config.get("training", {}).get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{Path(run_dir) / 'last.json'}: holds no stage-1 training options to resume")
    return Stage1TrainConfig.from_dict(stored)


class SliceDataset(Dataset):
    """Axial slices ``(case, z)`` of cached volumes, read one at a time from the memmaps.

    Item ``i`` (or ``(i, seed)`` from :class:`BalancedSampler`) is a dict with ``image`` (1, H, W) float32 in [0, 1]
    and ``label`` (1, H, W) float32 {0, 1}, padded/cropped to ``crop`` and, with ``augment``, flipped and rotated
    as the module doc says. An int key uses the index as its seed. At most ``max_open`` cases stay mapped per
    process (each open memmap holds a file descriptor).
    """

    def __init__(
        self, cache: CacheIndex, crop: tuple[int, int], augment: bool = True, max_open: int = 16
    ) -> None:
        self.cache = cache
        self.crop = (int(crop[0]), int(crop[1]))
        self.augment = augment
        self.max_open = max_open
        self.case_ids = cache.case_ids
        depths = [cache[case_id].shape[0] for case_id in self.case_ids]
        self.offsets = np.concatenate([[0], np.cumsum(depths)]).astype(np.int64)
        self.transform = _slice_transform(self.crop, augment)
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def positive_indices(self) -> np.ndarray:
        """Indices of slices with at least one vessel pixel."""
        pixels = [np.asarray(self.cache[c].vessel_pixels, dtype=np.int64) for c in self.case_ids]
        return np.flatnonzero(np.concatenate(pixels) > 0)

    def locate(self, index: int) -> tuple[int, int]:
        """``(case position, z)`` of item ``index``."""
        position = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return position, int(index - self.offsets[position])

    def _arrays(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        if position in self._open:
            self._open.move_to_end(position)
        else:
            case_id = self.case_ids[position]
            self._open[position] = (self.cache.image(case_id), self.cache.label(case_id))
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return self._open[position]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = (key, key) if isinstance(key, int | np.integer) else key
        if not 0 <= index < len(self):
            raise IndexError(f"slice {index} outside 0..{len(self) - 1}")
        position, z = self.locate(int(index))
        image, label = self._arrays(position)
        sample = {
            "image": np.asarray(image[z], dtype=np.float32)[None],
            "label": np.asarray(label[z], dtype=np.float32)[None],
        }
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: MONAI's metadata bookkeeping would double the per-slice cost
        try:
            self.transform.set_random_state(seed=int(seed))
            out = self.transform(sample)
        finally:
            set_track_meta(tracking)
        return {k: torch.as_tensor(out[k], dtype=torch.float32).contiguous() for k in ("image", "label")}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


def _slice_transform(crop: tuple[int, int], augment: bool):
    from monai.transforms import Compose, RandFlipd, RandRotated, RandSpatialCropd, SpatialPadd

    keys = ("image", "label")
    steps = [SpatialPadd(keys, spatial_size=crop), RandSpatialCropd(keys, roi_size=crop, random_size=False)]
    if augment:
        angle = math.radians(ROTATION_DEG)
        steps += [
            RandFlipd(keys, prob=FLIP_PROB, spatial_axis=0),
            RandFlipd(keys, prob=FLIP_PROB, spatial_axis=1),
            RandRotated(
                keys, range_x=angle, prob=ROTATION_PROB, keep_size=True,
                mode=("bilinear", "nearest"), padding_mode="zeros",
            ),
        ]
    return Compose(steps)


def default_crop(shapes: list[tuple[int, int, int]]) -> tuple[int, int]:
    """Training slice size: the common (H, W) if all volumes share it, else the largest multiples of 16 that fit
    in the smallest height and width (at least 16)."""
    sizes = {(int(s[1]), int(s[2])) for s in shapes}
    if len(sizes) == 1:
        return next(iter(sizes))
    return tuple(max(16, min(size[axis] for size in sizes) // 16 * 16) for axis in (0, 1))  # type: ignore[return-value]


def _check_resume(config: Stage1TrainConfig, state: dict[str, Any], split_ids: dict[str, list[str]]) -> None:
    check_resume_options(config.out, config.to_dict(), state["config"], RUN_DEFINING)
    if split_ids != state["cases"]:
        raise Seg2RefineError(f"{config.data}: the training/validation cases differ from the resumed run's")


def _validate(
    model: nn.Module, cache: CacheIndex, val_ids: list[str], info: distributed.DistInfo, batch_size: int
) -> float | None:
    """Mean Dice over whole validation volumes (this rank's share, then summed over ranks); None without any."""
    if not val_ids:
        return None
    total = count = 0.0
    for case_id in val_ids[info.rank :: info.world_size]:
        prob = segment_slices(model, cache.image(case_id), batch_size=batch_size, device=info.device)
        total += dice(prob >= THRESHOLD, np.asarray(cache.label(case_id)))
        count += 1
    model.train()
    total, count = distributed.all_reduce_sum([total, count])
    return total / count


@dataclass
class _Counters:
    """Where a run stands: finished ``epoch``s, ``step``s done in the current one and their summed loss."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0


@dataclass
class _Learner:
    """The model (plain, and as trained: DDP-wrapped or not, compiled or not) with its optimiser, scheduler and
    loss. ``eager_model`` is the uncompiled ``train_model`` while ``train_model`` is compiled, else None."""

    model: nn.Module
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    device: torch.device
    eager_model: nn.Module | None = None
    loss_fn: nn.Module = field(default_factory=lambda: WeightedBCEDiceLoss(alpha=0.5))

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
        """One optimisation step on ``batch``; returns ``(loss, batch size)``.

        If compiling the model's forward or backward fails, the step is redone eagerly (the optimiser has not
        stepped; at most BatchNorm's running statistics saw the batch once more) and the rest of the run stays
        eager, with a warning.
        """
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        try:
            loss = self._forward_backward(images, labels)
        except Exception as exc:
            if self.eager_model is None or not is_compile_error(exc):
                raise
            warnings.warn(compile_fallback_message(exc), RuntimeWarning, stacklevel=2)
            self.train_model, self.eager_model = self.eager_model, None
            loss = self._forward_backward(images, labels)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), images.shape[0]

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.train_model(images)
        loss = self.loss_fn(logits.float(), labels)
        self.scaler.scale(loss).backward()
        return loss


def _make_learner(
    config: Stage1TrainConfig, crop: tuple[int, int], info: distributed.DistInfo, weights: Path | None
) -> _Learner:
    """Build the network (from ``weights`` when resuming), wrap it for DDP, and set up Adam + cosine decay."""
    model = build_sfanet(config.variant, config.width, input_size=crop)
    if weights is not None:
        from safetensors.torch import load_file

        load_state_strict(model, load_file(str(weights)), weights.name)
    model.to(info.device)
    if info.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    eager_model = wrap_ddp(model, info)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_decay(config.epochs))
    amp_dtype = autocast_dtype(info.device) if config.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if not config.compile:
        return _Learner(model, eager_model, optimizer, scheduler, scaler, amp_dtype, info.device)
    return _Learner(model, torch.compile(eager_model), optimizer, scheduler, scaler, amp_dtype, info.device,
                    eager_model=eager_model)


def cosine_decay(epochs: int) -> Callable[[int], float]:
    """Learning-rate factor of epoch ``e`` (0-based): cosine from 1 at e = 0 to ``LR_FLOOR`` at e = ``epochs``.

    A closed form of (e, epochs), so a run resumed with a larger ``--epochs`` gets exactly the factors a run
    started with that value would have had from that epoch on.
    """
    return lambda e: LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / epochs))


def train_stage1(
    config: Stage1TrainConfig,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_epoch: EpochFn | None = None,
    on_step: StepFn | None = None,
) -> dict[str, Any]:
    """Train stage 1 as the module doc describes and return a summary dict.

    progress(done, total, info) counts optimisation steps over all epochs (first cases while caching);
    should_stop() is polled after every step: a stop saves ``last`` (resumable) and returns with
    ``stopped=True``. on_epoch(record) gets each epoch's metrics record, on_step(step, loss) each step's loss
    (both on rank 0 only). A record (also a line of ``metrics.jsonl``) holds ``epoch`` (1-based), ``train_loss``
    (mean step loss over all ranks), ``val_dice`` (None without validation cases), ``lr`` (used in that epoch),
    ``time_s`` (epoch wall time, validation included) and ``samples_per_s`` (training slices per second over all
    ranks, validation excluded). Summary keys: run_dir, best (None until an epoch has finished), last,
    epochs_done, best_epoch, best_metric, best_value, stopped, slice_size, train_cases, val_cases, compiled (whether
    the run still trained through ``torch.compile`` at its end), history.
    """
    config.check()
    info = distributed.init_distributed(config.device)
    run_dir = Path(config.out)
    state = open_run(run_dir, config.resume)
    train_cases, val_cases = labelled_split(config)
    split_ids = {"train": [c.case_id for c in train_cases], "val": [c.case_id for c in val_cases]}
    if state is not None:
        _check_resume(config, state, split_ids)
    seed_run(config.seed, config.deterministic, info.device)

    cache_dir = config.cache_dir or run_dir / "cache"
    cache = prepare_xprime_cache(train_cases + val_cases, cache_dir, config.preprocess, info, progress, should_stop)
    train_cache = cache.subset(split_ids["train"])
    shapes = [train_cache[c].shape for c in split_ids["train"]]
    crop: tuple[int, int] = tuple(config.crop) if config.crop else default_crop(shapes)  # type: ignore[assignment]
    dataset = SliceDataset(train_cache, crop)
    sampler = BalancedSampler(
        len(dataset), dataset.positive_indices(), config.samples_per_epoch or len(dataset),
        config.positive_fraction, config.seed, info.rank, info.world_size,
    )
    loader = DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
        pin_memory=info.device.type == "cuda", persistent_workers=config.num_workers > 0,
    )
    steps_per_epoch = math.ceil(sampler.per_rank / config.batch_size)
    learner = _make_learner(config, crop, info, run_dir / "last.safetensors" if state is not None else None)
    model_config = learner.model.config()
    run_config = config.to_dict()

    at = _Counters()
    history = RunHistory.start(run_dir, info.is_main, state, score="val_dice", loss="train_loss",
                               validating=bool(split_ids["val"]), on_epoch=on_epoch)
    if state is not None:
        learner.optimizer.load_state_dict(state["optimizer"])
        learner.scheduler.load_state_dict(state["scheduler"])
        decay = cosine_decay(config.epochs)  # the stored lr follows the old --epochs; re-derive it for this one
        for group, base_lr in zip(learner.optimizer.param_groups, learner.scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * decay(learner.scheduler.last_epoch)
        learner.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        at = _Counters(int(state["epoch"]), int(state["step"]))
        if info.is_main:  # the stored sums are over all ranks; rank 0 carries them
            at.loss_sum, at.loss_count = float(state["loss_sum"]), int(state["loss_count"])

    def checkpoint_config() -> dict[str, Any]:
        return {
            "architecture": "sfanet",
            "model": model_config,
            "preprocess": config.preprocess.to_dict(),
            "input": {"slice_size": list(crop), "threshold": THRESHOLD},
            "training": {
                "stage": 1,
                **split_provenance(config),
                "cases": split_ids,
                "epochs_done": at.epoch,
                "step_in_epoch": at.step,
                "epochs": config.epochs,
                "seed": config.seed,
                **history.provenance(info.world_size, config.command, run_config),
            },
        }

    def save_last() -> None:
        save_checkpoint(run_dir / "last", learner.model, checkpoint_config())
        resume_state = {
            "epoch": at.epoch, "step": at.step, "loss_sum": at.loss_sum, "loss_count": at.loss_count,
            "optimizer": learner.optimizer.state_dict(), "scheduler": learner.scheduler.state_dict(),
            "scaler": learner.scaler.state_dict(), "best": history.best.to_dict(), "rng": capture_rng_state(),
            "config": run_config, "cases": split_ids,
        }
        save_resume_state(resume_path(run_dir / "last"), resume_state)

    total_steps = config.epochs * steps_per_epoch
    stopped = False
    learner.train_model.train()
    while at.epoch < config.epochs and not stopped:
        sampler.set_epoch(at.epoch, skip=at.step * config.batch_size)
        lr = learner.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        seen = 0
        for batch in loader:
            loss, size = learner.step(batch)
            at.loss_sum, at.loss_count, at.step, seen = at.loss_sum + loss, at.loss_count + 1, at.step + 1, seen + size
            done = at.epoch * steps_per_epoch + at.step
            if info.is_main and progress is not None:
                mean_loss = at.loss_sum / at.loss_count
                progress(done, total_steps, f"epoch {at.epoch + 1}/{config.epochs} loss {mean_loss:.4f}")
            if info.is_main and on_step is not None:
                on_step(done, loss)
            if distributed.any_rank(should_stop is not None and bool(should_stop())):
                stopped = True
                break
        train_time = time.perf_counter() - t0
        if stopped:
            at.loss_sum, at.loss_count = distributed.all_reduce_sum([at.loss_sum, at.loss_count])
            if info.is_main:
                save_last()
            break
        distributed.sync_buffers(learner.model)
        loss_sum, loss_count, seen_all = distributed.all_reduce_sum([at.loss_sum, at.loss_count, seen])
        if info.is_main and progress is not None:
            progress(at.epoch * steps_per_epoch + at.step, total_steps, f"epoch {at.epoch + 1}: validating")
        val_dice = _validate(learner.model, cache, split_ids["val"], info, config.batch_size)
        learner.scheduler.step()
        at = _Counters(epoch=at.epoch + 1)
        record = {
            "epoch": at.epoch,
            "train_loss": loss_sum / max(loss_count, 1),
            "val_dice": val_dice,
            "lr": lr,
            "time_s": time.perf_counter() - t0,
            "samples_per_s": seen_all / max(train_time, 1e-9),
        }
        history.end_epoch(record, learner.model, checkpoint_config, save_last)
    distributed.barrier()
    summary = history.summary(at.epoch, stopped, slice_size=list(crop), train_cases=len(split_ids["train"]),
                              val_cases=len(split_ids["val"]), compiled=learner.eager_model is not None)
    if history.best.epoch is None:  # no epoch has finished: there is no best checkpoint yet
        summary["best"] = None
    return summary
