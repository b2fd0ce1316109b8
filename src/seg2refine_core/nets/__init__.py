"""Network building blocks and models (torch). Stage 1: ``SFANet`` and its Table 1 variants."""

from __future__ import annotations

from seg2refine_core.nets.attention import CBAM, AttentionBlock, ChannelAttention, SpatialAttention, attention_gate
from seg2refine_core.nets.frequency import FrequencyFeatureEnhancement
from seg2refine_core.nets.sfanet import VARIANTS, SFANet, build_sfanet

__all__ = [
    "CBAM",
    "VARIANTS",
    "AttentionBlock",
    "ChannelAttention",
    "FrequencyFeatureEnhancement",
    "SFANet",
    "SpatialAttention",
    "attention_gate",
    "build_sfanet",
]
