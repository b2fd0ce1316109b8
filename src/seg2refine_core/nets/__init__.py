"""Network building blocks and models (torch). Stage 1: ``SFANet`` and its Table 1 variants."""

from __future__ import annotations

from .attention import CBAM, AttentionBlock, ChannelAttention, SpatialAttention, attention_gate
from .frequency import FrequencyFeatureEnhancement
from .sfanet import VARIANTS, SFANet, build_sfanet

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
