"""Device selection (``auto`` picks cuda, then mps, then cpu) and the CPU thread count."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from seg2refine_core.errors import Seg2RefineError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``name`` (one of :data:`DEVICE_CHOICES`, or e.g. ``cuda:1``)."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = name.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise Seg2RefineError(f"--device {name!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise Seg2RefineError(f"--device {name!r}: CUDA is not available on this machine")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise Seg2RefineError(f"--device {name!r}: MPS is not available on this machine")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype to use on ``device`` (bf16 on capable CUDA GPUs, fp16 on older), or None."""
    import torch

    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, so container and ``taskset`` limits count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(reserve: int = 0, sample_s: float = 0.25) -> int:
    """CPU threads for torch when ``--threads`` is not given: the cores that are idle now, less ``reserve``, >= 1.

    Busy cores are measured over ``sample_s`` seconds (``psutil.cpu_percent``, all processes); idle cores =
    available cores - busy cores, rounded to the nearest whole core. On an idle machine this is one thread per core
    (torch's own default); on a shared one it drops to what is free, down to 1. The reason (benchmarks/README.md,
    "Threads under contention"): an OpenMP thread that shares its core with another busy process waits for its time
    slice and stalls every parallel region of its team, so one thread per core is the worst choice there. Measured
    on this project's 2-core machine, bundled SFANet at 128², batch 4: at load 8 one thread per core ran 643 ms per
    slice, one thread 93, this default 54; with two more spinning processes 1346 against 248 and 204.
    ``reserve`` keeps cores free for the caller's own work. Under ``torchrun`` the idle cores are shared out between
    the processes on this machine (``LOCAL_WORLD_SIZE``). Sampled once per call: call it again per volume or per
    epoch to follow a changing load. The result is between 1 and :func:`available_cores`.
    """
    import psutil

    cores = available_cores()
    busy = psutil.cpu_percent(interval=sample_s) / 100.0 * (psutil.cpu_count() or cores)
    idle = int(cores - busy + 0.5)
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, (min(cores, idle) - max(0, reserve)) // local_processes)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op CPU threads set to ``threads`` inside the block (None: :func:`default_threads`), then
    restored; yields the count used. The napari widgets run their core call inside it, the command line sets the same
    default for the whole command (``--threads``)."""
    import torch

    before = torch.get_num_threads()
    count = default_threads() if threads is None else int(threads)
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(before)
