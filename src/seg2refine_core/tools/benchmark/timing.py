"""Warm, interleaved timing: wall and process CPU time per call, medians, paired ratios, and the CPU share.

Models being compared are timed interleaved (A, B, A, B, ...) and their ratios are medians of the paired ratios,
so a load change on a shared machine hits both sides alike. The CPU share (process CPU time over wall time ×
threads) tells how much of its cores the process got: on a busy machine wall times swing up to ~10×.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from seg2refine_core.clock import cpu_share


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op elsewhere."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds per call, wall clock and process CPU time (all threads), for each named function."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def cpu_share(self) -> float:
        """:func:`cpu_share` over all the timed calls."""
        return cpu_share(sum(sum(v) for v in self.cpu.values()), sum(sum(v) for v in self.wall.values()))


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> Timings:
    """Time each function: one warm-up call each, then ``repeats`` rounds calling each in turn."""
    for fn in fns.values():
        fn()
    sync(device)
    timings = Timings({name: [] for name in fns}, {name: [] for name in fns})
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            timings.wall[name].append(time.perf_counter() - w0)
            timings.cpu[name].append(time.process_time() - c0)
    return timings


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median of ``a[i] / b[i]`` over interleaved rounds (robust to load that drifts between rounds)."""
    return float(statistics.median(x / y for x, y in zip(a, b, strict=True)))


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """(max − min) / median: how noisy a series of timings was."""
    med = median(values)
    return float((max(values) - min(values)) / med) if med > 0 else 0.0
