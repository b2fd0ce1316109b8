"""SFANet, the stage-1 2D network (paper: Methods, Fig. 1 top, Fig. 2, Table 1; design §3).

Architecture for width ``w`` (channels ``w·(1, 2, 4, 8, 16)``):

* Encoder, 5 levels: MONAI ``TwoConv`` ([Conv3×3 → BN → ReLU] ×2, no conv bias) at level 1 and MONAI
  ``Down`` (MaxPool 2×2 then the same double conv) at levels 2-5.
* Decoder, 4 levels: the deeper feature goes through a 1×1 conv to the skip's channel count and a bilinear
  ×2 up-sampling (``align_corners=False``). This is the paper's "bilinear interpolation ... to reduce the
  number of feature channels and increase the size"; both steps are linear and commute, so the 1×1 conv runs
  first, at the low resolution (4× cheaper). The skip goes through the SFAM path
  **FFE → CBAM → AG** (each switched by a flag; AG is gated by the up-sampled decoder feature),
  is concatenated with the up-sampled feature (skip first) and fused by a double conv.
* Head: 1×1 conv to ``out_channels`` logits (no sigmoid).

Inputs whose H or W is not a multiple of 16 are zero-padded at the bottom/right to the next multiple and the
output is cropped back (zero is the air/outside-body value of a windowed slice). Output size == input size.

The FFE filters are laid out for ``input_size`` (after padding) and resampled at other sizes.
``VARIANTS`` are the four rows of Table 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets.basic_unet import Down, TwoConv
from torch import nn

from seg2refine_core.nets.attention import CBAM, attention_gate
from seg2refine_core.nets.frequency import FrequencyFeatureEnhancement

__all__ = ["VARIANTS", "SFANet", "SkipPath", "UpBlock", "build_sfanet", "variant_name"]

VARIANTS: dict[str, dict[str, bool]] = {
    "unet": dict(use_ag=False, use_att=False, use_ffe=False),
    "ag-unet": dict(use_ag=True, use_att=False, use_ffe=False),
    "ag-att-unet": dict(use_ag=True, use_att=True, use_ffe=False),
    "sfanet": dict(use_ag=True, use_att=True, use_ffe=True),
}

_DIVISOR = 16  # 4 poolings by 2
_ACT = "relu"
_NORM = "batch"


def _round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


class SkipPath(nn.Module):
    """The processed skip of one decoder level: FFE → CBAM → AG, each optional (identity when off).

    ``forward(skip: (B, C, H, W), gate: (B, C, H, W)) -> (B, C, H, W)``; ``gate`` is the up-sampled
    decoder feature (used by the AG only).
    """

    def __init__(
        self,
        channels: int,
        feature_size: tuple[int, int],
        use_ag: bool,
        use_att: bool,
        use_ffe: bool,
        ffe_k: int,
    ):
        super().__init__()
        self.ffe = FrequencyFeatureEnhancement(channels, ffe_k, feature_size) if use_ffe else None
        self.att = CBAM(channels, spatial_dims=2) if use_att else None
        self.ag = attention_gate(2, channels, channels, max(channels // 2, 1)) if use_ag else None

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        if self.ffe is not None:
            skip = self.ffe(skip)
        if self.att is not None:
            skip = self.att(skip)
        if self.ag is not None:
            skip = self.ag(g=gate, x=skip)
        return skip


class UpBlock(nn.Module):
    """One decoder level: 1×1 conv (C_in → C) + bilinear ×2, skip path, concat [skip, up], double conv.

    ``forward(x: (B, C_in, H/2, W/2), skip: (B, C, H, W)) -> (B, C, H, W)``.
    """

    def __init__(self, in_channels: int, channels: int, skip: SkipPath):
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, channels, kernel_size=1)
        self.skip = skip
        self.fuse = TwoConv(2, 2 * channels, channels, act=_ACT, norm=_NORM, bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(self.reduce(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([self.skip(skip, up), up], dim=1))


class SFANet(nn.Module):
    """Spatio-frequency attention U-Net (and its Table 1 ablations via flags).

    Args:
        in_channels: input channels (1: the preprocessed slice X'_i).
        out_channels: logit channels (1: vessel).
        width: channels of level 1; levels have ``width·(1, 2, 4, 8, 16)``.
        use_ag: additive attention gates on the skips.
        use_att: CBAM (channel + spatial attention) on the skips.
        use_ffe: frequency feature enhancement on the skips.
        ffe_k: K, the low-frequency window is (H/K)×(W/K).
        input_size: slice size (H, W) the FFE filters are laid out for (padded up to a multiple of 16).

    Shapes: ``forward(x: (B, in_channels, H, W)) -> logits (B, out_channels, H, W)``, any H, W >= 1.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        width: int = 64,
        use_ag: bool = True,
        use_att: bool = True,
        use_ffe: bool = True,
        ffe_k: int = 4,
        input_size: tuple[int, int] = (512, 512),
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.width = int(in_channels), int(out_channels), int(width)
        self.use_ag, self.use_att, self.use_ffe = bool(use_ag), bool(use_att), bool(use_ffe)
        self.ffe_k = int(ffe_k)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        ch = [self.width * m for m in (1, 2, 4, 8, 16)]
        self.encoder = nn.ModuleList([TwoConv(2, self.in_channels, ch[0], act=_ACT, norm=_NORM, bias=False)])
        for c_in, c_out in zip(ch[:-1], ch[1:], strict=True):
            self.encoder.append(Down(2, c_in, c_out, act=_ACT, norm=_NORM, bias=False))
        padded = (_round_up(self.input_size[0], _DIVISOR), _round_up(self.input_size[1], _DIVISOR))
        self.decoder = nn.ModuleList()
        for level in (3, 2, 1, 0):  # deepest first
            size = (padded[0] >> level, padded[1] >> level)
            skip = SkipPath(ch[level], size, self.use_ag, self.use_att, self.use_ffe, self.ffe_k)
            self.decoder.append(UpBlock(ch[level + 1], ch[level], skip))
        self.head = nn.Conv2d(ch[0], self.out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        pad_h, pad_w = _round_up(height, _DIVISOR) - height, _round_up(width, _DIVISOR) - width
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.decoder:
            x = block(x, skips.pop())
        logits = self.head(x)
        if pad_h or pad_w:
            logits = logits[..., :height, :width]
        return logits

    @property
    def variant(self) -> str | None:
        """Table 1 name of this model's flags (``unet`` ... ``sfanet``), None for other combinations."""
        return variant_name(self.use_ag, self.use_att, self.use_ffe)

    def config(self) -> dict[str, Any]:
        """The constructor's keyword arguments, JSON-serialisable: ``SFANet(**m.config())`` rebuilds ``m``.

        This is the ``model`` entry of a checkpoint config (architecture ``"sfanet"``).
        """
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "width": self.width,
            "use_ag": self.use_ag,
            "use_att": self.use_att,
            "use_ffe": self.use_ffe,
            "ffe_k": self.ffe_k,
            "input_size": list(self.input_size),
        }


def variant_name(use_ag: bool, use_att: bool, use_ffe: bool) -> str | None:
    """The Table 1 name of a flag combination, or None for a combination outside the table."""
    flags = dict(use_ag=bool(use_ag), use_att=bool(use_att), use_ffe=bool(use_ffe))
    return next((name for name, v in VARIANTS.items() if v == flags), None)


def build_sfanet(variant: str = "sfanet", width: int = 64, **kwargs: Any) -> SFANet:
    """An ``SFANet`` for a Table 1 ``variant`` (``unet``, ``ag-unet``, ``ag-att-unet``, ``sfanet``).

    ``kwargs`` go to ``SFANet`` (e.g. ``in_channels``, ``ffe_k``, ``input_size``) and may not repeat the flags.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown SFANet variant {variant!r}; choose from {', '.join(VARIANTS)}")
    clash = set(kwargs) & set(VARIANTS[variant])
    if clash:
        raise ValueError(f"{', '.join(sorted(clash))} are fixed by variant {variant!r}")
    return SFANet(width=width, **VARIANTS[variant], **kwargs)
