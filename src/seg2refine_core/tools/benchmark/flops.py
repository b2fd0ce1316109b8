"""The project's one FLOP counter, used by ``seg2refine models`` and the benchmark.

Convolutions and matrix products are counted by ``torch.utils.flop_counter.FlopCounterMode`` (1 multiply-add = 2
FLOPs). It does not see FFTs, so modules that have a ``fft_flops(size)`` method (SFANet's FFE) add their analytic
estimate (5·N·log2 N per complex FFT of N points, half for a real one), reported apart. Element-wise work
(norms, activations, attention products, pooling) is not counted. The forward runs on the ``meta`` device:
shapes only, no memory or compute, so a w=64 model at 512² costs nothing to count.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one forward: ``counted`` by FlopCounterMode and the analytic ``fft`` estimate."""

    counted: float
    fft: float

    @property
    def total(self) -> float:
        return self.counted + self.fft


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> FlopCount:
    """FLOPs of ``model`` on one input of ``input_shape`` (batch first, e.g. ``(1, 1, H, W)``).

    A model not already on the meta device is copied there (its weights' values do not matter); ``model`` itself
    is left untouched.
    """
    from torch.utils.flop_counter import FlopCounterMode

    on_meta = all(p.is_meta for p in model.parameters())
    meta_model = model if on_meta else copy.deepcopy(model).to("meta")
    fft = [0.0]

    def add_fft(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        fft[0] += args[0].shape[0] * module.fft_flops(tuple(args[0].shape[-2:]))

    hooks = [m.register_forward_hook(add_fft) for m in meta_model.modules() if hasattr(m, "fft_flops")]
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            meta_model(torch.empty(*input_shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return FlopCount(counted=float(counter.get_total_flops()), fft=fft[0])


def n_params(model: nn.Module) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters())
