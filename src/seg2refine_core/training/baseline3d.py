"""A plain 3D baseline for the README comparison: MONAI ``UNet`` on X' patches (one channel), DiceCE loss.

It answers "what does a single 3D network of about the same size get on the same data?" next to the two-stage
Seg2RefineNet (design §7; the paper compares against 3D U-Nets).

- **Cases.** The same rule as stage 1 (:mod:`seg2refine_core.training.stage1`) with the same defaults: the split
  table's ``train``/``val`` cases of ``fold``, or without a table :func:`~seg2refine_core.data.datasets.holdout_split`
  (``val_fraction`` 0.1, ``test_fraction`` 0.2, ``split_seed`` 0). So the baseline trains on stage 1's training
  cases, selects on its validation cases and leaves the same test cases untouched. It trains in its canonical space
  by stage 1's rule (:func:`~seg2refine_core.training.cases.training_space`; the same cases give the same space),
  recorded in its checkpoints. The CT comes from the same memmap cache of HU (:mod:`seg2refine_core.data.cache`;
  pass the stage-1 run's ``--cache-dir`` to reuse it); X' of each patch is made on the fly with ``preprocess``.
- **Model.** ``monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=1, channels=w·(1, 2, 4, 8, 16),
  strides=(2, 2, 2, 2), num_res_units)``, checkpoint architecture ``monai-unet-3d``. With ``w = 16`` and one
  residual unit it has 2.4 M parameters against 3.5 M for the stage-2 generator at width 16 (3D part only).
  A new model's last convolution starts with the generator's vessel prior (:func:`start_at_vessel_prior`), so
  the two are compared from the same starting point: from probability 0.5 everywhere it did not learn in 40
  epochs of 32 patches (validation Dice 0.002).
- **Training.** Patches from :mod:`seg2refine_core.data.patches` (vessel-centred and random; no S), augmented by the
  ``augment`` preset (:mod:`seg2refine_core.data.augment`; ``none``: rotation ≤ 15° and noise on X', the recipe
  before the presets), ``monai.losses.DiceCELoss`` on the logits (sigmoid), Adam (lr 1e-4, weight decay 1e-5 as
  stage 1), mixed precision and channels_last_3d on CUDA only, DistributedDataParallel under ``torchrun``.
- **Validation** after each epoch on whole volumes with :func:`~seg2refine_core.inference.stage2.predict_baseline3d`
  (MONAI sliding window, Gaussian blending, the same path as stage 2), mean Dice and Betti-0 error at threshold
  0.5. ``best`` keeps the highest mean validation Dice (the lowest training loss without validation cases), ``last``
  the latest state; ``resume`` continues exactly, even mid-epoch, from ``last`` + ``last.resume.pt``.

The run itself (folder, resume, seeding, DDP, stop, progress, log, checkpoints) is the shared loop of
:mod:`seg2refine_core.training.loop`; :class:`Baseline3dTrainer` supplies the network, the patches, one step and
the validation. The options are :class:`~seg2refine_core.training.configs.Baseline3dTrainConfig`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from seg2refine_core import distributed
from seg2refine_core.data.augment import augment_preset
from seg2refine_core.data.patches import PatchConfig, PatchDataset, patch_loader, patch_sources
from seg2refine_core.data.sampling import BalancedSampler
from seg2refine_core.evaluation.metrics import betti0_error, dice
from seg2refine_core.inference.models import use_channels_last
from seg2refine_core.inference.stage2 import predict_baseline3d
from seg2refine_core.io.checkpoint import build_model, load_state_strict
from seg2refine_core.nets.attention_gan import OUTPUT_PRIOR
from seg2refine_core.progress import ProgressFn, StopFn
from seg2refine_core.training.cases import LabelledCasesTrainer
from seg2refine_core.training.configs import Baseline3dTrainConfig
from seg2refine_core.training.history import EpochFn
from seg2refine_core.training.loop import StepFn

ARCHITECTURE = "monai-unet-3d"
THRESHOLD = 0.5
PANELS = {"loss": ["train_loss"], "validation": ["val_dice"], "validation Betti-0 error": ["val_b0_error"]}




def start_at_vessel_prior(model: nn.Module, prior: float = OUTPUT_PRIOR) -> None:
    """Set the bias of ``model``'s last convolution to logit(``prior``), as the generator's output layer."""
    last = [m for m in model.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))][-1]
    with torch.no_grad():
        last.bias.fill_(math.log(prior / (1.0 - prior)))


class Baseline3dTrainer(LabelledCasesTrainer[Baseline3dTrainConfig]):
    """The 3D baseline on the shared loop: stage 1's cases, X' patches, MONAI's UNet with Adam and DiceCE, one step
    and the sliding-window validation. Records hold ``train_loss``, ``val_dice``, ``val_b0_error``, ``lr`` and
    ``patches_per_s``."""

    config_class = Baseline3dTrainConfig
    architecture = ARCHITECTURE
    stage = "baseline3d"
    title = "baseline"
    panels = PANELS

    def prepare_data(self) -> tuple[DataLoader, BalancedSampler]:
        config, info = self.config, self.info
        self.cache = self.build_hu_cache()
        self.patch_config = PatchConfig(patch_size=config.patch_size, vessel_fraction=config.vessel_fraction,
                                        s_share=0.0, augment=augment_preset(config.augment, ndim=3))
        dataset = PatchDataset(patch_sources(self.cache, self.cases["train"]), self.patch_config, with_s=False,
                               preprocess=config.preprocess)
        return patch_loader(
            dataset, batch_size=config.batch_size, patches_per_epoch=config.patches_per_epoch, seed=config.seed,
            num_workers=config.num_workers, rank=info.rank, world_size=info.world_size,
            pin_memory=info.device.type == "cuda",
        )

    def build_networks(self, weights: dict[str, torch.Tensor] | None) -> None:
        """MONAI's UNet (a new one at the vessel prior), channels-last-3d where it helps, DDP-wrapped; Adam."""
        config, device = self.config, self.info.device
        model = build_model({"architecture": ARCHITECTURE, "model": config.model_config()})
        if weights is not None:
            load_state_strict(model, weights, "last.safetensors")
        else:
            start_at_vessel_prior(model)
        self.memory_format = torch.channels_last_3d if use_channels_last(device, 3) else torch.contiguous_format
        model.to(device, memory_format=self.memory_format)
        self.model = model
        self.train_model = self.ddp(model)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scaler = self.grad_scaler()
        from monai.losses import DiceCELoss

        self.loss_fn = DiceCELoss(sigmoid=True)
        self.train_model.train()

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, float], int]:
        x = batch["input"].to(self.info.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        t = batch["label"].to(self.info.device, non_blocking=True)
        with self.autocast():
            logits = self.train_model(x)
        loss = self.loss_fn(logits.float(), t)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"train_loss": float(loss.detach())}, x.shape[0]

    def validation(self) -> dict[str, float | None]:
        """Mean Dice and Betti-0 error of the thresholded whole-volume prediction over the validation cases."""
        val_ids, info, config = self.cases["val"], self.info, self.config
        if not val_ids:
            return {"val_dice": None, "val_b0_error": None}
        sums = [0.0, 0.0, 0.0]
        for case_id in val_ids[info.rank :: info.world_size]:
            label = np.asarray(self.cache.label(case_id))
            y = predict_baseline3d(self.model, self.cache.xprime(case_id, config.preprocess),
                                   patch_size=config.patch_size, overlap=config.val_overlap,
                                   sw_batch_size=config.batch_size, device=info.device) >= THRESHOLD
            sums = [sums[0] + dice(y, label), sums[1] + betti0_error(y, label), sums[2] + 1.0]
        total = distributed.all_reduce_sum(sums)
        self.model.train()
        return {"val_dice": total[0] / total[2], "val_b0_error": total[1] / total[2]}

    def learning_rates(self) -> dict[str, float]:
        return {"lr": self.config.lr}

    def checkpoint_entries(self) -> dict[str, Any]:
        return {"model": self.config.model_config(), "preprocess": self.config.preprocess.to_dict(),
                "input": {"patch_size": list(self.config.patch_size), "channels": ["xprime"], "threshold": THRESHOLD}}

    def training_facts(self) -> dict[str, Any]:
        """``loss``, ``patches`` (how they are drawn) and ``augmentation`` (every probability and range of the
        ``augment`` preset, 3D)."""
        patches = self.patch_config.to_dict()
        augmentation = patches.pop("augment")
        return {"loss": "DiceCELoss(sigmoid)", "patches": patches, "augmentation": augmentation}

    def resume_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_resume_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def summary_details(self) -> dict[str, Any]:
        return {"patch_size": list(self.config.patch_size)}


def train_baseline3d(
    config: Baseline3dTrainConfig,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_epoch: EpochFn | None = None,
    on_step: StepFn | None = None,
) -> dict[str, Any]:
    """Train the 3D baseline (module doc) and return the summary of
    :meth:`Trainer.run <seg2refine_core.training.loop.Trainer.run>` (plus ``patch_size``)."""
    return Baseline3dTrainer(config, progress, should_stop, on_epoch, on_step).run()
