"""Stage 2: the 3D Attention-GAN generator and PatchGAN discriminator (paper Fig. 1 bottom, design section 4).

Tensors are ``(B, C, D, H, W)`` with ``(D, H, W) = (z, y, x)``. Both networks return *logits*; apply
``torch.sigmoid`` (or :meth:`AttentionGenerator3d.probabilities`) for probabilities. A sigmoid on one
channel is the same as the paper's voxel-wise 2-way softmax (``softmax([0, a])[1] == sigmoid(a)``).

Choices where the paper is silent or inconsistent (design section 4 stands):

- Bottleneck convolutions use kernel 3, stride 1, padding 1. The paper's kernel 4 / stride 1 has no symmetric
  padding that keeps the size, and an asymmetric one would shift the grid by half a voxel per layer.
- The final layer is ConvTranspose3d k4 **s2** p1: after four stride-2 down-samplings and three up-samplings a
  stride-1 layer (as printed in the paper) cannot return to the input resolution.
- Each residual block concatenates its output with its input (as the paper says) and fuses the result back to
  the block width with a 1x1x1 convolution, so the four blocks can be chained.
- The attention gates are MONAI's additive gates (Oktay et al.), gated by the up-sampled decoder feature at
  the skip's own resolution. MONAI builds them with BatchNorm (the rest of the network uses InstanceNorm),
  so call ``eval()`` for inference.
- Convolutions followed by InstanceNorm (affine-free, as in pix2pix/Vox2Vox) carry no bias.
- The output layer's bias starts at the logit of :data:`OUTPUT_PRIOR` (1% vessel), so Y starts near the background
  instead of at probability 0.5 everywhere (as in RetinaNet's prior initialisation). Coronaries fill well under 1%
  of a patch; from 0.5 the Dice gradient per voxel is tiny and, within a CPU budget, the adversarial term pushed
  Y to all-vessel (measured: Dice-only loss 0.99 -> 0.98 in 35 steps from 0.5, 0.99 -> 0.70 with the prior).
"""

from __future__ import annotations

import math

import torch
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

__all__ = ["AttentionGenerator3d", "PatchDiscriminator3d"]

_SLOPE = 0.2
#: Initial vessel probability of the generator's output (bias prior; see the module doc).
OUTPUT_PRIOR = 0.01


def _down(in_ch: int, out_ch: int, norm: bool) -> nn.Sequential:
    """Conv3d k4 s2 p1 (halves each side) -> [InstanceNorm] -> LeakyReLU(0.2)."""
    layers: list[nn.Module] = [nn.Conv3d(in_ch, out_ch, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.InstanceNorm3d(out_ch))
    layers.append(nn.LeakyReLU(_SLOPE, inplace=True))
    return nn.Sequential(*layers)


def _up(in_ch: int, out_ch: int) -> nn.Sequential:
    """ConvTranspose3d k4 s2 p1 (doubles each side) -> InstanceNorm -> ReLU."""
    return nn.Sequential(
        nn.ConvTranspose3d(in_ch, out_ch, 4, stride=2, padding=1, bias=False),
        nn.InstanceNorm3d(out_ch),
        nn.ReLU(inplace=True),
    )


class _ResidualBlock(nn.Module):
    """Conv3d k3 s1 p1 -> IN -> LeakyReLU, concatenated with the input, fused back by a 1x1x1 conv.

    ``(B, C, d, h, w) -> (B, C, d, h, w)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(channels, channels, 3, stride=1, padding=1, bias=False),
            nn.InstanceNorm3d(channels),
            nn.LeakyReLU(_SLOPE, inplace=True),
        )
        self.fuse = nn.Conv3d(2 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.body(x), x], dim=1))


class AttentionGenerator3d(nn.Module):
    """Generator G: refines ``concat(X', S)`` into vessel logits Y.

    Input ``(B, in_channels, D, H, W)`` float; output logits ``(B, out_channels, D, H, W)``.
    Every side must be a multiple of 16 (four stride-2 levels), e.g. 32, 64, 96, 128; the sliding-window
    callers use such patch sizes. A 16x16x16 input is too small: its bottleneck is a single voxel, which
    InstanceNorm rejects.

    Layout with ``w = width``: encoder ``w, 2w, 4w, 8w`` channels at 1/2, 1/4, 1/8, 1/16 resolution (no norm
    on the first block); bottleneck of four residual blocks at ``8w``; decoder ``4w, 2w, w`` at 1/8, 1/4, 1/2,
    each concatenated with its attention-gated encoder skip; final ConvTranspose3d to ``out_channels`` at full
    size.
    """

    def __init__(self, in_channels: int = 2, out_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        if min(in_channels, out_channels, width) < 1:
            raise ValueError(
                f"in_channels, out_channels and width must be >= 1, "
                f"got {in_channels}, {out_channels}, {width}"
            )
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        w = width
        self.enc1 = _down(in_channels, w, norm=False)
        self.enc2 = _down(w, 2 * w, norm=True)
        self.enc3 = _down(2 * w, 4 * w, norm=True)
        self.enc4 = _down(4 * w, 8 * w, norm=True)
        self.bottleneck = nn.Sequential(*(_ResidualBlock(8 * w) for _ in range(4)))
        self.up1 = _up(8 * w, 4 * w)
        self.gate1 = _gate(4 * w)
        self.up2 = _up(8 * w, 2 * w)
        self.gate2 = _gate(2 * w)
        self.up3 = _up(4 * w, w)
        self.gate3 = _gate(w)
        self.head = nn.ConvTranspose3d(2 * w, out_channels, 4, stride=2, padding=1)
        nn.init.constant_(self.head.bias, math.log(OUTPUT_PRIOR / (1.0 - OUTPUT_PRIOR)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, D, H, W)`` -> logits ``(B, out_channels, D, H, W)``; sides multiples of 16."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        if any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"input sides {tuple(x.shape[2:])} must be multiples of 16")
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        h = self.bottleneck(self.enc4(e3))
        u = self.up1(h)
        h = torch.cat([u, self.gate1(g=u, x=e3)], dim=1)
        u = self.up2(h)
        h = torch.cat([u, self.gate2(g=u, x=e2)], dim=1)
        u = self.up3(h)
        h = torch.cat([u, self.gate3(g=u, x=e1)], dim=1)
        return self.head(h)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Vessel probabilities in [0, 1]: ``sigmoid(forward(x))``, shape ``(B, out_channels, D, H, W)``."""
        return torch.sigmoid(self.forward(x))

    def config(self) -> dict:
        """Constructor keyword arguments, for checkpoints (``checkpoint.build_model``)."""
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "width": self.width,
        }


def _gate(channels: int) -> AttentionBlock:
    """MONAI additive attention gate for a skip of ``channels`` gated by a decoder feature of equal width.

    ``forward(g=decoder, x=skip)`` returns ``skip * alpha`` with ``alpha`` in (0, 1), one per voxel; both
    inputs share the same spatial size. Intermediate width ``channels // 2`` as in MONAI's AttentionUnet.
    """
    return AttentionBlock(spatial_dims=3, f_int=max(channels // 2, 1), f_g=channels, f_l=channels)


class PatchDiscriminator3d(nn.Module):
    """Discriminator D: a 3D PatchGAN on ``concat(mask, X', S)`` (mask = T for real, Y for fake).

    Input ``(B, in_channels, D, H, W)``; output logits ``(B, 1, D//16 - 1, H//16 - 1, W//16 - 1)``: four
    blocks Conv3d k4 s2 p1 (each halves the sides, rounding down) -> InstanceNorm (not on the first) ->
    LeakyReLU(0.2), then Conv3d k4 s1 **p1** as in pix2pix's PatchGAN, which takes one off each side. So
    sides must be at least 32 (64^3 -> 3^3, 128^3 -> 7^3). Train with BCE-with-logits (see
    ``seg2refine_core.training.gan_losses``).
    """

    def __init__(self, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        if min(in_channels, width) < 1:
            raise ValueError(f"in_channels and width must be >= 1, got {in_channels}, {width}")
        self.in_channels, self.width = in_channels, width
        w = width
        self.blocks = nn.Sequential(
            _down(in_channels, w, norm=False),
            _down(w, 2 * w, norm=True),
            _down(2 * w, 4 * w, norm=True),
            _down(4 * w, 8 * w, norm=True),
        )
        self.head = nn.Conv3d(8 * w, 1, 4, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, D, H, W)`` -> patch logits ``(B, 1, D//16 - 1, H//16 - 1, W//16 - 1)``."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        if min(x.shape[2:]) < 32:
            raise ValueError(f"input sides {tuple(x.shape[2:])} must be at least 32")
        return self.head(self.blocks(x))

    def config(self) -> dict:
        """Constructor keyword arguments, for checkpoints (``checkpoint.build_model``)."""
        return {"in_channels": self.in_channels, "width": self.width}
