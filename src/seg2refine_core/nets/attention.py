"""Attention blocks for the skip paths: CBAM (Woo et al. 2018; paper eqs. 5-6) and the additive attention gate.

``ChannelAttention``, ``SpatialAttention`` and ``CBAM`` work for 2D (B, C, H, W) and 3D (B, C, D, H, W)
features (``spatial_dims`` = 2 or 3). The additive attention gate (Oktay et al. 2018) is MONAI's
``AttentionBlock``, re-exported here; see :func:`attention_gate` for its argument order.
"""

from __future__ import annotations

import torch
from monai.networks.layers.factories import Conv
from monai.networks.nets.attentionunet import AttentionBlock
from torch import nn

__all__ = ["CBAM", "AttentionBlock", "ChannelAttention", "SpatialAttention", "attention_gate"]


class ChannelAttention(nn.Module):
    """CBAM channel attention (eq. 5): ``x · σ(MLP(avgpool(x)) + MLP(maxpool(x)))``.

    One shared MLP ``C -> max(C // reduction, 1) -> C`` (ReLU between) processes both pooled descriptors.
    Shapes: ``(B, C, *spatial) -> (B, C, *spatial)``.
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_dims: int = 2):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.spatial_dims = spatial_dims
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, 2 + self.spatial_dims))
        descriptors = torch.cat([x.mean(dim=dims), x.amax(dim=dims)], dim=0)  # (2B, C)
        avg, mx = self.mlp(descriptors).chunk(2, dim=0)
        scale = torch.sigmoid(avg + mx)
        return x * scale.view(*scale.shape, *([1] * self.spatial_dims))


class SpatialAttention(nn.Module):
    """CBAM spatial attention (eq. 6): ``x · σ(conv_k([mean_c(x); max_c(x)]))``, 'same' padding.

    Shapes: ``(B, C, *spatial) -> (B, C, *spatial)``; the attention map is ``(B, 1, *spatial)``.
    """

    def __init__(self, kernel_size: int = 7, spatial_dims: int = 2):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Sequential):
    """Channel attention then spatial attention (the paper's 'Att'). Shapes: ``(B, C, *spatial)`` kept."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7, spatial_dims: int = 2):
        super().__init__(
            ChannelAttention(channels, reduction, spatial_dims),
            SpatialAttention(kernel_size, spatial_dims),
        )


def attention_gate(spatial_dims: int, gate_channels: int, skip_channels: int, inter_channels: int) -> AttentionBlock:
    """MONAI's additive attention gate: ``block(g=gate, x=skip) -> skip · α``, α = σ(BN(ψ(ReLU(W_g g + W_x x)))).

    ``g`` is the gating signal: the decoder feature after up-sampling, with the same spatial size as the
    skip ``x``; ``W_g``, ``W_x`` and ψ are 1×1 convolutions (each followed by BatchNorm), α is (B, 1, ...).
    """
    return AttentionBlock(spatial_dims=spatial_dims, f_int=inter_channels, f_g=gate_channels, f_l=skip_channels)
