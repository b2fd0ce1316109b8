"""The config of each trainer: stage 1, stage 2 (Algorithm 1) and the 3D baseline.

Each is a :class:`~seg2refine_core.training.options.TrainOptions` dataclass with the trainer's own fields; the
trainers (:mod:`~seg2refine_core.training.stage1`, :mod:`~seg2refine_core.training.stage2`,
:mod:`~seg2refine_core.training.baseline3d`) describe what the options do. They live here, apart from the
trainers, because the command line builds its options from them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seg2refine_core.data.preprocess import PreprocessConfig
from seg2refine_core.errors import Seg2RefineError
from seg2refine_core.training.options import PatchTrainOptions, TrainOptions, option

#: The Table-1 variants of :data:`seg2refine_core.nets.sfanet.VARIANTS` (a test keeps the two equal).
SFANET_VARIANTS = ("unet", "ag-unet", "ag-att-unet", "sfanet")
#: The topology terms of :data:`seg2refine_core.training.gan_losses.TOPOLOGY_TERMS` (a test keeps the two equal).
TOPOLOGY_TERMS = ("cldice",)

_PREPROCESS_HELP = "X' preprocessing: HU window and unsharp mask (stored in every checkpoint)"


@dataclass(kw_only=True)
class Stage1TrainConfig(TrainOptions):
    """Options of a stage-1 training run (``seg2refine train stage1``): SFANet or a Table-1 variant on slices."""

    variant: str = option("sfanet", help="stage-1 network: a Table-1 variant", choices=SFANET_VARIANTS,
                          defines_run=True)
    width: int = option(64, help="channels of the first level (the paper's 64; 16 is CPU-friendly)", metavar="W",
                        defines_run=True)
    batch_size: int = option(8, help="slices per optimisation step and rank", metavar="B", defines_run=True)
    lr: float = option(1e-4, help="Adam learning rate, decayed by a cosine to 1% (the paper's 1e-4; the demo weights "
                                  "needed 1e-3 to learn within a CPU budget, see 'train demo')",
                       metavar="LR", defines_run=True)
    weight_decay: float = option(1e-5, help="Adam weight decay (the paper's)", metavar="WD", defines_run=True)
    samples_per_epoch: int | None = option(None, help="slices drawn per epoch over all ranks (default: the number "
                                                      "of training slices)", metavar="N", defines_run=True)
    positive_fraction: float = option(0.8, help="share of the slices drawn from slices holding vessel pixels",
                                      metavar="P", defines_run=True)
    crop: tuple[int, int] | None = option(None, help="training slice size, each >= 16 (default: the common slice "
                                                     "size, else the largest multiples of 16 that fit every case)",
                                          metavar=("H", "W"), defines_run=True)
    compile: bool = option(False, help="train through torch.compile (minutes to compile, pays on GPUs; goes on "
                                       "eagerly if compiling fails)", group="system")
    preprocess: PreprocessConfig = option(help=_PREPROCESS_HELP, factory=PreprocessConfig, defines_run=True, cli=False)

    def check(self) -> None:
        if self.variant not in SFANET_VARIANTS:
            raise Seg2RefineError(f"--variant {self.variant!r}: expected one of {', '.join(SFANET_VARIANTS)}")
        super().check()
        self.check_at_least(1, "width")
        if self.samples_per_epoch is not None:
            self.check_at_least(1, "samples_per_epoch")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise Seg2RefineError(f"--lr must be > 0 and weight decay >= 0, got {self.lr}, {self.weight_decay}")
        if self.crop is not None and (len(self.crop) != 2 or min(self.crop) < 16):
            raise Seg2RefineError(f"--crop needs two sizes >= 16 (H W), got {self.crop}")


@dataclass(kw_only=True)
class Stage2TrainConfig(PatchTrainOptions):
    """Options of a stage-2 training run (``seg2refine train stage2``): the 3D Attention-GAN refiner."""

    stage1: Path = option(help="stage-1 checkpoint whose S the refiner learns to correct (required unless --resume)",
                          metavar="CKPT", group="run")
    allow_unknown_stage1: bool = option(False, help="accept a stage-1 checkpoint that records no training cases "
                                                    "(leakage is then not checked)", group="run")
    val_fraction: float = option(0.2, help="share of the stage-2 cases (volumes the stage-1 model never saw) kept "
                                           "for validation", metavar="F", defines_run=True, group="cases")
    test_fraction: float | None = option(None, help="hold-out test share without a split table (default: the "
                                                    "stage-1 run's, else 0.2)", metavar="F", defines_run=True,
                                         group="cases")
    split_seed: int | None = option(None, help="seed of the hold-out split without a split table (default: the "
                                               "stage-1 run's, else 0)", metavar="S", defines_run=True, group="cases")
    width: int = option(16, help="generator width", metavar="W", defines_run=True)
    disc_width: int | None = option(None, help="discriminator width (default: the generator's)", metavar="W",
                                    defines_run=True)
    lam: float = option(5.0, help="weight λ of the Dice term in G's loss (Vox2Vox's)", flag="--lambda",
                        metavar="L", defines_run=True)
    delta_b0: bool = option(True, help="leave the Betti-0 term ΔB0 (eq. 11) out of G's loss (it is logged either "
                                       "way)", defines_run=True)
    topology: str | None = option(None, help="add a differentiable topology term to G's loss",
                                  choices=TOPOLOGY_TERMS, defines_run=True)
    topology_weight: float = option(1.0, help="weight of the topology term", metavar="W", defines_run=True)
    lr_g: float = option(2e-4, help="generator Adam learning rate, constant (pix2pix/Vox2Vox)", metavar="LR",
                         defines_run=True)
    lr_d: float = option(2e-4, help="discriminator Adam learning rate, constant (pix2pix/Vox2Vox)", metavar="LR",
                         defines_run=True)
    s_batch_size: int = option(4, help="slices per batch when making S with the stage-1 model", metavar="N",
                               group="system")

    def check(self) -> None:
        super().check()
        self.check_at_least(1, "width", "s_batch_size")
        if self.disc_width is not None:
            self.check_at_least(1, "disc_width")
        if len(self.patch_size) != 3 or any(p < 32 or p % 16 for p in self.patch_size):
            raise Seg2RefineError(f"--patch needs three sides, multiples of 16 and >= 32, got {self.patch_size}")
        if self.topology is not None and self.topology not in TOPOLOGY_TERMS:
            raise Seg2RefineError(f"--topology {self.topology!r}: expected one of {', '.join(TOPOLOGY_TERMS)}")
        if not (self.lr_g > 0 and self.lr_d > 0 and self.lam >= 0 and self.topology_weight >= 0):
            raise Seg2RefineError("--lr-g and --lr-d must be > 0, --lambda and --topology-weight >= 0")
        self.check_share("val_fraction")


@dataclass(kw_only=True)
class Baseline3dTrainConfig(PatchTrainOptions):
    """Options of a 3D-baseline run (``seg2refine train baseline3d``): MONAI's 3D UNet on X' patches, on stage 1's
    cases with stage 1's split defaults."""

    width: int = option(16, help="channels of the first UNet level", metavar="W", defines_run=True)
    num_res_units: int = option(1, help="residual units per UNet level", metavar="N", defines_run=True)
    lr: float = option(1e-4, help="Adam learning rate, constant (stage 1's)", metavar="LR", defines_run=True)
    weight_decay: float = option(1e-5, help="Adam weight decay (stage 1's)", metavar="WD", defines_run=True)
    preprocess: PreprocessConfig = option(help=_PREPROCESS_HELP, factory=PreprocessConfig, defines_run=True, cli=False)

    def check(self) -> None:
        super().check()
        self.check_at_least(1, "width")
        self.check_at_least(0, "num_res_units")
        if len(self.patch_size) != 3 or any(p < 16 or p % 16 for p in self.patch_size):
            raise Seg2RefineError(f"--patch needs three sides, multiples of 16, got {self.patch_size}")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise Seg2RefineError(f"--lr must be > 0 and weight decay >= 0, got {self.lr}, {self.weight_decay}")

    def model_config(self) -> dict[str, Any]:
        """Keyword arguments of ``monai.networks.nets.UNet`` (the checkpoint's ``model`` entry)."""
        return {
            "spatial_dims": 3, "in_channels": 1, "out_channels": 1,
            "channels": [self.width * m for m in (1, 2, 4, 8, 16)], "strides": [2, 2, 2, 2],
            "num_res_units": self.num_res_units,
        }
