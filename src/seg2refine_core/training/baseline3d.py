"""A plain 3D baseline for the README comparison: MONAI ``UNet`` on X' patches (one channel), DiceCE loss.

It answers "what does a single 3D network of about the same size get on the same data?" next to the two-stage
Seg2RefineNet (design §7; the paper compares against 3D U-Nets).

- **Cases.** The same rule as stage 1 (:mod:`seg2refine_core.training.stage1`) with the same defaults: the split
  table's ``train``/``val`` cases of ``fold``, or without a table :func:`~seg2refine_core.data.datasets.holdout_split`
  (``val_fraction`` 0.1, ``test_fraction`` 0.2, ``split_seed`` 0). So the baseline trains on stage 1's training
  cases, selects on its validation cases and leaves the same test cases untouched. X' comes from the same
  memmap cache (:mod:`seg2refine_core.data.cache`; pass the stage-1 run's ``--cache-dir`` to reuse it).
- **Model.** ``monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=w·(1, 2, 4, 8, 16),
  strides=(2, 2, 2, 2), num_res_units)``, checkpoint architecture ``monai-unet-3d``. With ``w = 16`` and one
  residual unit it has 2.4 M parameters against 3.5 M for the stage-2 generator at width 16 (3D part only).
  A new model's last convolution starts with the generator's vessel prior (:func:`start_at_vessel_prior`), so
  the two are compared from the same starting point: from probability 0.5 everywhere it did not learn in 40
  epochs of 32 patches (validation Dice 0.002).
- **Training.** Patches from :mod:`seg2refine_core.data.patches` (vessel-centred and random, rotation ≤ 15°, Gaussian
  noise; no S), ``monai.losses.DiceCELoss`` on the logits (sigmoid), Adam (lr 1e-4, weight decay 1e-5 as stage 1),
  mixed precision and channels_last_3d on CUDA only, DistributedDataParallel under ``torchrun``.
- **Validation** after each epoch on whole volumes with :func:`~seg2refine_core.inference.stage2.predict_baseline3d`
  (MONAI sliding window, Gaussian blending, the same path as stage 2), mean Dice and Betti-0 error at threshold
  0.5. ``best`` keeps the highest mean validation Dice (the lowest training loss without validation cases), ``last``
  the latest state; ``resume`` continues exactly, even mid-epoch, from ``last`` + ``last.resume.pt``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg2refine_core import distributed
from seg2refine_core.data.datasets import Case
from seg2refine_core.data.patches import PatchConfig, PatchDataset, patch_loader, patch_sources
from seg2refine_core.data.preprocess import PreprocessConfig
from seg2refine_core.devices import autocast_dtype
from seg2refine_core.errors import CheckpointError, Seg2RefineError
from seg2refine_core.evaluation.metrics import betti0_error, dice
from seg2refine_core.inference.models import use_channels_last
from seg2refine_core.inference.stage2 import predict_baseline3d
from seg2refine_core.io.checkpoint import build_model, load_state_strict, read_config, save_checkpoint
from seg2refine_core.nets.attention_gan import OUTPUT_PRIOR
from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.training.common import (
    OPTION_NAMES,
    EpochFn,
    RunHistory,
    labelled_split,
    options_kwargs,
    options_to_dict,
    prepare_xprime_cache,
    seed_run,
    split_provenance,
    wrap_ddp,
)
from seg2refine_core.training.runlog import (
    capture_rng_state,
    check_resume_options,
    open_run,
    restore_rng_state,
    resume_path,
    save_resume_state,
)

ARCHITECTURE = "monai-unet-3d"
THRESHOLD = 0.5
RUN_DEFINING = (
    "split", "fold", "val_fraction", "test_fraction", "split_seed", "layout", "width", "num_res_units",
    "patch_size", "batch_size", "patches_per_epoch", "lr", "weight_decay", "vessel_fraction", "augment", "seed",
    "preprocess",
)  # fmt: skip
PATH_OPTIONS = ("data", "out", "split", "cache_dir")
PANELS = {"loss": ["train_loss"], "validation": ["val_dice"], "validation Betti-0 error": ["val_b0_error"]}


@dataclass
class Baseline3dTrainConfig:
    """Options of a baseline run (CLI: ``seg2refine train baseline3d``); see the module doc.

    Split options as stage 1. width: channels of the first UNet level; num_res_units: residual units per level.
    patch_size: (d, h, w), multiples of 16. patches_per_epoch: over all ranks. cache_dir: None → ``<out>/cache``.
    """

    data: Path
    out: Path
    split: Path | None = None
    fold: int = 1
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    layout: str = "auto"
    width: int = 16
    num_res_units: int = 1
    patch_size: tuple[int, int, int] = (64, 64, 64)
    epochs: int = 50
    batch_size: int = 2
    patches_per_epoch: int = 200
    lr: float = 1e-4
    weight_decay: float = 1e-5
    vessel_fraction: float = 0.7
    augment: bool = True
    val_overlap: float = 0.25
    num_workers: int = 2
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    amp: bool = True
    deterministic: bool = False
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    cache_dir: Path | None = None
    command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (paths as strings, ``preprocess`` as a dict, ``patch_size`` as a list)."""
        out = options_to_dict(self, PATH_OPTIONS)
        out["preprocess"] = self.preprocess.to_dict()
        out["patch_size"] = [int(p) for p in self.patch_size]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline3dTrainConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        kwargs = options_kwargs(cls, data, PATH_OPTIONS)
        if "patch_size" in kwargs:
            kwargs["patch_size"] = tuple(int(p) for p in kwargs["patch_size"])
        if "preprocess" in kwargs:
            kwargs["preprocess"] = PreprocessConfig.from_dict(kwargs["preprocess"])
        return cls(**kwargs)

    def check(self) -> None:
        """Raise :class:`Seg2RefineError` naming the first invalid option."""
        for name in ("width", "epochs", "batch_size", "patches_per_epoch"):
            if getattr(self, name) < 1:
                raise Seg2RefineError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.num_res_units < 0:
            raise Seg2RefineError(f"--num-res-units must be >= 0, got {self.num_res_units}")
        if len(self.patch_size) != 3 or any(p < 16 or p % 16 for p in self.patch_size):
            raise Seg2RefineError(f"--patch needs three sides, multiples of 16, got {self.patch_size}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise Seg2RefineError(f"--lr must be > 0 and weight decay >= 0, got {self.lr}, {self.weight_decay}")
        if not 0.0 <= self.val_overlap < 1.0:
            raise Seg2RefineError(f"--val-overlap must be in [0, 1), got {self.val_overlap}")
        if self.num_workers < 0:
            raise Seg2RefineError(f"--num-workers must be >= 0, got {self.num_workers}")

    def model_config(self) -> dict[str, Any]:
        """Keyword arguments of ``monai.networks.nets.UNet`` (the checkpoint's ``model`` entry)."""
        return {
            "spatial_dims": 3, "in_channels": 1, "out_channels": 1,
            "channels": [self.width * m for m in (1, 2, 4, 8, 16)], "strides": [2, 2, 2, 2],
            "num_res_units": self.num_res_units,
        }


def stored_run_config(run_dir: str | Path) -> Baseline3dTrainConfig:
    """The options a baseline run was started with, from ``run_dir/last.json`` (for ``--resume``)."""
    config = read_config(Path(run_dir) / "last")
    stored = config.get("training", {}).get("config")
    if config.get("architecture") != ARCHITECTURE or not isinstance(stored, dict):
        raise CheckpointError(f"{Path(run_dir) / 'last.json'}: holds no baseline training options to resume")
    return Baseline3dTrainConfig.from_dict(stored)


def start_at_vessel_prior(model: nn.Module, prior: float = OUTPUT_PRIOR) -> None:
    """Set the bias of ``model``'s last convolution to logit(``prior``), as the generator's output layer."""
    last = [m for m in model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))][-1]
    with torch.no_grad():
        last.bias.fill_(math.log(prior / (1.0 - prior)))


def baseline_split(config: Baseline3dTrainConfig) -> tuple[list[Case], list[Case]]:
    """Training and validation cases by stage 1's rule (module doc); DatasetError for unlabelled ones."""
    return labelled_split(config)


def _validate(
    model: nn.Module, cache: Any, val_ids: list[str], config: Baseline3dTrainConfig, info: distributed.DistInfo
) -> dict[str, float | None]:
    if not val_ids:
        return {"val_dice": None, "val_b0_error": None}
    sums = [0.0, 0.0, 0.0]
    for case_id in val_ids[info.rank :: info.world_size]:
        label = np.asarray(cache.label(case_id))
        y = predict_baseline3d(model, cache.image(case_id), patch_size=config.patch_size, overlap=config.val_overlap,
                               sw_batch_size=config.batch_size, device=info.device) >= THRESHOLD
        sums = [sums[0] + dice(y, label), sums[1] + betti0_error(y, label), sums[2] + 1.0]
    total = distributed.all_reduce_sum(sums)
    return {"val_dice": total[0] / total[2], "val_b0_error": total[1] / total[2]}


def train_baseline3d(
    config: Baseline3dTrainConfig,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_epoch: EpochFn | None = None,
) -> dict[str, Any]:
    """Train the 3D baseline (module doc) and return a summary dict like stage 2's.

    progress counts cases while caching, then optimisation steps; should_stop() is polled after every step (a stop
    saves a resumable ``last`` and returns ``stopped=True``); on_epoch(record) gets each epoch's record (rank 0).
    """
    config.check()
    info = distributed.init_distributed(config.device)
    run_dir = Path(config.out)
    state = open_run(run_dir, config.resume)
    train_cases, val_cases = baseline_split(config)
    train_ids, val_ids = [c.case_id for c in train_cases], [c.case_id for c in val_cases]
    case_ids = {"train": train_ids, "val": val_ids}
    if state is not None:
        check_resume_options(config.out, config.to_dict(), state["config"], RUN_DEFINING, OPTION_NAMES)
        if case_ids != state["cases"]:
            raise Seg2RefineError(f"{config.data}: the training/validation cases differ from the resumed run's")
    seed_run(config.seed, config.deterministic, info.device)

    cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "cache"
    cache = prepare_xprime_cache(train_cases + val_cases, cache_dir, config.preprocess, info, progress, should_stop)
    patch_config = PatchConfig(patch_size=config.patch_size, vessel_fraction=config.vessel_fraction, s_share=0.0,
                               augment=config.augment)
    dataset = PatchDataset(patch_sources(cache, train_ids), patch_config, with_s=False)
    loader, sampler = patch_loader(
        dataset, batch_size=config.batch_size, patches_per_epoch=config.patches_per_epoch, seed=config.seed,
        num_workers=config.num_workers, rank=info.rank, world_size=info.world_size,
        pin_memory=info.device.type == "cuda",
    )
    steps_per_epoch = math.ceil(sampler.per_rank / config.batch_size)

    model_config = config.model_config()
    model = build_model({"architecture": ARCHITECTURE, "model": model_config})
    if state is not None:
        from safetensors.torch import load_file

        load_state_strict(model, load_file(str(run_dir / "last.safetensors")), "last.safetensors")
    else:
        start_at_vessel_prior(model)
    memory_format = torch.channels_last_3d if use_channels_last(info.device, 3) else torch.contiguous_format
    model.to(info.device, memory_format=memory_format)
    train_model = wrap_ddp(model, info)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    amp_dtype = autocast_dtype(info.device) if config.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    from monai.losses import DiceCELoss

    loss_fn = DiceCELoss(sigmoid=True)

    epoch, step_in_epoch, loss_sum, loss_count = 0, 0, 0.0, 0
    history = RunHistory.start(run_dir, info.is_main, state, score="val_dice", loss="train_loss",
                               validating=bool(val_ids), panels=PANELS, on_epoch=on_epoch)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        epoch, step_in_epoch = int(state["epoch"]), int(state["step"])
        if info.is_main:
            loss_sum, loss_count = float(state["loss_sum"]), int(state["loss_count"])
    run_config = config.to_dict()

    def checkpoint_config() -> dict[str, Any]:
        return {
            "architecture": ARCHITECTURE,
            "model": model_config,
            "preprocess": config.preprocess.to_dict(),
            "input": {"patch_size": list(config.patch_size), "channels": ["xprime"], "threshold": THRESHOLD},
            "training": {
                "stage": "baseline3d",
                **split_provenance(config),
                "cases": case_ids,
                "epochs_done": epoch,
                "step_in_epoch": step_in_epoch,
                "epochs": config.epochs,
                "seed": config.seed,
                "loss": "DiceCELoss(sigmoid)",
                **history.provenance(info.world_size, config.command, run_config),
            },
        }

    def save_last() -> None:
        if not info.is_main:
            return
        save_checkpoint(run_dir / "last", model, checkpoint_config())
        save_resume_state(
            resume_path(run_dir / "last"),
            {
                "epoch": epoch, "step": step_in_epoch, "loss_sum": loss_sum, "loss_count": loss_count,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "best": history.best.to_dict(),
                "rng": capture_rng_state(), "config": run_config, "cases": case_ids,
            },
        )

    total_steps = config.epochs * steps_per_epoch
    global_step = epoch * steps_per_epoch + step_in_epoch
    stopped = False
    train_model.train()
    while epoch < config.epochs and not stopped:
        sampler.set_epoch(epoch, skip=step_in_epoch * config.batch_size)
        t0 = time.perf_counter()
        seen = 0
        for batch in loader:
            x = batch["input"].to(info.device, non_blocking=True)
            t = batch["label"].to(info.device, non_blocking=True)
            x = x.contiguous(memory_format=memory_format)
            with torch.autocast(info.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = train_model(x)
            loss = loss_fn(logits.float(), t)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loss_sum, loss_count = loss_sum + float(loss.detach()), loss_count + 1
            seen += x.shape[0]
            step_in_epoch += 1
            global_step += 1
            if info.is_main and progress is not None:
                info_text = f"epoch {epoch + 1}/{config.epochs} loss {loss_sum / loss_count:.4f}"
                progress(global_step, total_steps, info_text)
            if distributed.any_rank(should_stop is not None and bool(should_stop())):
                stopped = True
                break
        train_time = time.perf_counter() - t0
        if stopped:
            loss_sum, loss_count = distributed.all_reduce_sum([loss_sum, loss_count])
            save_last()
            break
        if info.distributed:
            distributed.sync_buffers(model)
        total_loss, total_count = distributed.all_reduce_sum([loss_sum, loss_count])
        if info.is_main and progress is not None:
            progress(global_step, total_steps, f"epoch {epoch + 1}/{config.epochs}: validating")
        metrics = _validate(model, cache, val_ids, config, info)
        model.train()
        epoch += 1
        record = {
            "epoch": epoch, "train_loss": total_loss / max(total_count, 1), **metrics, "lr": config.lr,
            "time_s": time.perf_counter() - t0,
            "patches_per_s": distributed.all_reduce_sum([seen])[0] / max(train_time, 1e-9),
        }
        step_in_epoch, loss_sum, loss_count = 0, 0.0, 0
        history.end_epoch(record, model, checkpoint_config, save_last)
    distributed.barrier()
    return history.summary(epoch, stopped, train_cases=len(train_ids), val_cases=len(val_ids),
                           patch_size=list(config.patch_size))
