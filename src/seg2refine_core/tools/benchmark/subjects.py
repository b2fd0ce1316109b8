"""What the benchmark times: randomly initialised models (speed does not depend on the weights) and a CT-like input."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seg2refine_core.inference.models import LoadedModel
from seg2refine_core.tools.benchmark.flops import n_params


def build_stage1(variant: str, width: int, size: tuple[int, int], seed: int = 0) -> nn.Module:
    """A randomly initialised Table 1 variant at ``width`` laid out for slices of ``size`` (y, x)."""
    from seg2refine_core.nets.sfanet import build_sfanet

    torch.manual_seed(seed)
    return build_sfanet(variant, width, input_size=size).eval()


def build_generator(width: int, seed: int = 0) -> nn.Module:
    """A randomly initialised stage-2 Attention-GAN generator of ``width``."""
    from seg2refine_core.nets.attention_gan import AttentionGenerator3d

    torch.manual_seed(seed)
    return AttentionGenerator3d(in_channels=2, out_channels=1, width=width).eval()


def monai_unet3d_kwargs(channels: int) -> dict[str, Any]:
    """Constructor arguments of the MONAI 3D UNet peer with first-level ``channels`` (5 levels, 2 res units)."""
    return dict(
        spatial_dims=3, in_channels=2, out_channels=1, channels=tuple(channels * m for m in (1, 2, 4, 8, 16)),
        strides=(2, 2, 2, 2), num_res_units=2,
    )


def matched_monai_unet3d(target_params: int, seed: int = 0) -> tuple[nn.Module, int]:
    """The MONAI 3D UNet whose parameter count is closest to ``target_params``, and its first-level channels."""
    from monai.networks.nets import UNet

    def count(c: int) -> int:
        with torch.device("meta"):
            return n_params(UNet(**monai_unet3d_kwargs(c)))

    lo, hi = 1, 256  # the count grows with c: bisect for the first c at or above the target
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < target_params else (lo, mid)
    best = min({max(lo - 1, 1), lo}, key=lambda c: abs(count(c) - target_params))
    torch.manual_seed(seed)
    return UNet(**monai_unet3d_kwargs(best)).eval(), best


def as_loaded(model: nn.Module, architecture: str, config: dict[str, Any], extra: dict | None = None) -> LoadedModel:
    """``model`` wrapped as a loaded checkpoint (what ``run_pipeline`` takes), with no file behind it."""
    return LoadedModel(
        model=model, config={"architecture": architecture, "model": config, **(extra or {})}, path=Path("random-init")
    )


def random_ct(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A float32 (z, y, x) volume of uniform noise in [-400, 1000] HU, made without float64 temporaries."""
    volume = np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)
    volume *= 1400.0
    volume -= 400.0
    return volume
