"""Stage-1 training: SFANet (or a Table-1 ablation variant) on axial slices, from a memmap cache of the CT in HU.

What one run does (paper: "SFANet is trained using the Adam optimizer ...", design §3 Training, §5, §8):

- Cases come from ``data`` (ImageCAS / ASOCA / generic layout) and are split by the official table
  (``split`` + ``fold``) or, without one, by a seeded hold-out (``val_fraction``, ``test_fraction``, ``split_seed``).
  Test cases are never read. The run works in one canonical space (LPS voxel order; ``target_spacing``, else
  nnU-Net's rule over the training cases' headers: :func:`~seg2refine_core.training.cases.training_space`),
  recorded in its checkpoints so that inference maps every input there. Train and val cases are read once, mapped
  into that space and written into a cache of int16 HU and labels (:mod:`seg2refine_core.data.cache`, default
  ``<out>/cache``), then streamed from memory-mapped arrays.
- Each epoch draws ``samples_per_epoch`` slices with the vessel-aware rule of
  :class:`~seg2refine_core.data.sampling.BalancedSampler` (default: as many samples as there are training slices,
  80 % of them from vessel-bearing slices). Every sample is padded (zeros) and randomly cropped to the slice size
  ``crop`` (default: the common in-plane size when all cases share one, otherwise the largest multiple of 16 not
  above the smallest height and width). The ``augment`` preset (:mod:`seg2refine_core.data.augment`) changes the
  slice's HU (contrast level, scale/shift, noise, blur, low resolution), then X' is made of it (window + unsharp
  mask, as :func:`~seg2refine_core.data.preprocess.preprocess` makes it for a whole volume), then X' and the label
  are flipped, rotated and zoomed together and gamma acts on X' (:class:`~seg2refine_core.data.augment.SliceTransform`).
  ``none`` is the paper's recipe: flips (p 0.5 per axis) and a rotation in ±15° (p 0.5). Random choices come from a
  per-sample seed, so they do not depend on the number of DataLoader workers.
- Loss :class:`~.losses.WeightedBCEDiceLoss` (α = 0.5), Adam (lr 1e-4, weight decay 1e-5), cosine
  learning-rate decay over the epochs (to 1 % of lr, :func:`cosine_decay`), mixed precision (bf16/fp16
  autocast) and channels-last on CUDA only.
- After each epoch every validation volume is segmented whole (every axial slice, threshold 0.5) on its canonical
  grid, Dice is taken per volume against the canonical label with :func:`~.metrics.dice` and averaged. ``best``
  keeps the highest mean validation Dice (the lowest training loss when there are no validation cases); ``last`` is
  the latest state.
- Under ``torchrun`` the model is wrapped in DistributedDataParallel; every rank draws the same epoch sample and
  takes its shard, validation volumes are shared out between ranks, batch-norm buffers are copied from rank 0 at
  the end of each epoch, and only rank 0 writes checkpoints and logs.
- ``resume`` continues exactly where ``last`` stopped, even mid-epoch (a stop request saves ``last`` at once):
  weights from ``last.safetensors``, optimizer, scheduler and loss scaler (with the loop's counters and RNG states)
  from ``last.resume.pt``; ``epochs`` may be raised to extend the run.

The run itself (folder, resume, seeding, DDP, stop, progress, log, checkpoints) is the shared loop of
:mod:`seg2refine_core.training.loop`; :class:`Stage1Trainer` supplies the network, the data, one step and the
validation. The options are :class:`~seg2refine_core.training.configs.Stage1TrainConfig`.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seg2refine_core import distributed
from seg2refine_core.data.augment import AugmentConfig, SliceTransform, augment_preset
from seg2refine_core.data.cache import CacheIndex
from seg2refine_core.data.preprocess import PreprocessConfig
from seg2refine_core.data.sampling import BalancedSampler
from seg2refine_core.errors import one_line
from seg2refine_core.evaluation.metrics import dice
from seg2refine_core.inference.stage1 import segment_slices
from seg2refine_core.io.checkpoint import load_state_strict
from seg2refine_core.nets.sfanet import build_sfanet
from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.training.cases import LabelledCasesTrainer
from seg2refine_core.training.configs import Stage1TrainConfig
from seg2refine_core.training.history import EpochFn
from seg2refine_core.training.loop import StepFn
from seg2refine_core.training.losses import WeightedBCEDiceLoss

THRESHOLD = 0.5
LR_FLOOR = 0.01


class SliceDataset(Dataset):
    """Axial slices ``(case, z)`` of cached HU volumes, read one at a time from the memmaps.

    Item ``i`` (or ``(i, seed)`` from :class:`BalancedSampler`) is a dict with ``image`` (1, H, W) float32 X' in
    [0, 1] and ``label`` (1, H, W) float32 {0, 1}, padded/cropped to ``crop`` and augmented by ``augment`` (a 2D
    :class:`~seg2refine_core.data.augment.AugmentConfig`, e.g. ``augment_preset("default", ndim=2)``) as the module
    doc says; X' is made with ``preprocess`` (the model's preprocessing). An int key uses the index as its seed. At
    most ``max_open`` cases stay mapped per process (each open memmap holds a file descriptor).
    """

    def __init__(
        self, cache: CacheIndex, crop: tuple[int, int], *, augment: AugmentConfig, preprocess: PreprocessConfig,
        max_open: int = 16,
    ) -> None:
        self.cache = cache
        self.crop = (int(crop[0]), int(crop[1]))
        self.max_open = max_open
        self.case_ids = cache.case_ids
        depths = [cache[case_id].shape[0] for case_id in self.case_ids]
        self.offsets = np.concatenate([[0], np.cumsum(depths)]).astype(np.int64)
        self.transform = SliceTransform(augment, preprocess, self.crop)
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
            self._open[position] = (self.cache.hu(case_id), self.cache.label(case_id))
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return self._open[position]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = (key, key) if isinstance(key, int | np.integer) else key
        if not 0 <= index < len(self):
            raise IndexError(f"slice {index} outside 0..{len(self) - 1}")
        position, z = self.locate(int(index))
        hu, label = self._arrays(position)
        return self.transform(hu[z], label[z], int(seed), spacing=self.cache[self.case_ids[position]].spacing)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


def default_crop(shapes: list[tuple[int, int, int]]) -> tuple[int, int]:
    """Training slice size: the common (H, W) if all volumes share it, else the largest multiples of 16 that fit
    in the smallest height and width (at least 16)."""
    sizes = {(int(s[1]), int(s[2])) for s in shapes}
    if len(sizes) == 1:
        return next(iter(sizes))
    return tuple(max(16, min(size[axis] for size in sizes) // 16 * 16) for axis in (0, 1))  # type: ignore[return-value]


def cosine_decay(epochs: int) -> Callable[[int], float]:
    """Learning-rate factor of epoch ``e`` (0-based): cosine from 1 at e = 0 to ``LR_FLOOR`` at e = ``epochs``.

    A closed form of (e, epochs), so a run resumed with a larger ``--epochs`` gets exactly the factors a run
    started with that value would have had from that epoch on.
    """
    return lambda e: LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / epochs))


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what a failing ``torch.compile`` raises on the compiled module's first forward or
    backward: Dynamo's errors, Inductor's among them (a missing C++ compiler or Triton surfaces as one of these)."""
    from torch._dynamo.exc import TorchDynamoException  # imported by torch.compile anyway; 1.4 s at start-up

    return isinstance(exc, TorchDynamoException)


def compile_fallback_message(exc: BaseException) -> str:
    """The warning of a run that goes on eagerly because ``torch.compile`` failed with ``exc``."""
    return f"torch.compile failed ({one_line(exc)}); training goes on without it (eager)"


class Stage1Trainer(LabelledCasesTrainer[Stage1TrainConfig]):
    """Stage 1 on the shared loop: the cases, the slice data, SFANet with Adam and cosine decay, one step (through
    ``torch.compile`` when asked) and the whole-volume validation Dice. Records hold ``train_loss``, ``val_dice``,
    ``lr`` and ``samples_per_s``."""

    config_class = Stage1TrainConfig
    architecture = "sfanet"
    stage = 1
    title = "stage-1"
    rate_key = "samples_per_s"

    def prepare_data(self) -> tuple[DataLoader, BalancedSampler]:
        config, info = self.config, self.info
        self.cache = self.build_hu_cache()
        train_cache = self.cache.subset(self.cases["train"])
        shapes = [train_cache[c].shape for c in self.cases["train"]]
        self.crop: tuple[int, int] = tuple(config.crop) if config.crop else default_crop(shapes)  # type: ignore[assignment]
        self.augmentation = augment_preset(config.augment, ndim=2)
        dataset = SliceDataset(train_cache, self.crop, augment=self.augmentation, preprocess=config.preprocess)
        sampler = BalancedSampler(
            len(dataset), dataset.positive_indices(), config.samples_per_epoch or len(dataset),
            config.positive_fraction, config.seed, info.rank, info.world_size,
        )
        loader = DataLoader(
            dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
            pin_memory=info.device.type == "cuda", persistent_workers=config.num_workers > 0,
        )
        return loader, sampler

    def build_networks(self, weights: dict[str, torch.Tensor] | None) -> None:
        """SFANet (channels-last on CUDA), DDP-wrapped, and through ``torch.compile`` when configured
        (``eager_model`` then keeps the uncompiled one for the fallback); Adam with cosine decay."""
        config, device = self.config, self.info.device
        model = build_sfanet(config.variant, config.width, input_size=self.crop)
        if weights is not None:
            load_state_strict(model, weights, "last.safetensors")
        model.to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        eager_model = self.ddp(model)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_decay(config.epochs))
        self.scaler = self.grad_scaler()
        self.loss_fn = WeightedBCEDiceLoss(alpha=0.5)
        self.train_model, self.eager_model = (
            (torch.compile(eager_model), eager_model) if config.compile else (eager_model, None)
        )
        self.train_model.train()

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], int]:
        """One optimisation step; if compiling the model's forward or backward fails, the step is redone eagerly
        (the optimiser has not stepped; at most BatchNorm's running statistics saw the batch once more) and the
        rest of the run stays eager, with a warning."""
        device = self.info.device
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        if device.type == "cuda":
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
        return {"train_loss": float(loss.detach())}, images.shape[0]

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits = self.train_model(images)
        loss = self.loss_fn(logits.float(), labels)
        self.scaler.scale(loss).backward()
        return loss

    def validation(self) -> dict[str, float | None]:
        """Mean Dice over whole validation volumes (this rank's share, then summed over ranks)."""
        val_ids, info = self.cases["val"], self.info
        if not val_ids:
            return {"val_dice": None}
        total = count = 0.0
        for case_id in val_ids[info.rank :: info.world_size]:
            prob = segment_slices(self.model, self.cache.xprime(case_id, self.config.preprocess),
                                  batch_size=self.config.batch_size, device=info.device)
            total += dice(prob >= THRESHOLD, np.asarray(self.cache.label(case_id)))
            count += 1
        self.model.train()
        total, count = distributed.all_reduce_sum([total, count])
        return {"val_dice": total / count}

    def step_schedulers(self) -> None:
        self.scheduler.step()

    def learning_rates(self) -> dict[str, float]:
        return {"lr": self.optimizer.param_groups[0]["lr"]}

    def checkpoint_entries(self) -> dict[str, Any]:
        return {"model": self.model.config(), "preprocess": self.config.preprocess.to_dict(),
                "input": {"slice_size": list(self.crop), "threshold": THRESHOLD}}

    def training_facts(self) -> dict[str, Any]:
        """``augmentation``: every probability and range of the ``augment`` preset (2D)."""
        return {"augmentation": self.augmentation.to_dict()}

    def resume_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        decay = cosine_decay(self.config.epochs)  # the stored lr follows the old --epochs; re-derive it for this one
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * decay(self.scheduler.last_epoch)
        self.scaler.load_state_dict(state["scaler"])

    def summary_details(self) -> dict[str, Any]:
        """``slice_size`` and ``compiled`` (whether the run still trained through ``torch.compile`` at its end)."""
        return {"slice_size": list(self.crop), "compiled": self.eager_model is not None}


def train_stage1(
    config: Stage1TrainConfig,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_epoch: EpochFn | None = None,
    on_step: StepFn | None = None,
) -> dict[str, Any]:
    """Train stage 1 as the module doc describes and return the summary of
    :meth:`Trainer.run <seg2refine_core.training.loop.Trainer.run>` (plus ``slice_size`` and ``compiled``).

    The callbacks are the loop's; ``progress`` first counts cases while caching.
    """
    return Stage1Trainer(config, progress, should_stop, on_epoch, on_step).run()
