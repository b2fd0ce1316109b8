"""Multi-process training and prediction with ``torchrun``; a no-op in a single plain process.

``torchrun --nproc_per_node=N ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous address);
:func:`init_distributed` reads them and joins the process group: NCCL when the ranks train on CUDA GPUs (one GPU
per local rank), gloo on the CPU. Without those variables (or with ``WORLD_SIZE=1``) nothing is initialised and
every helper here degrades to the single-process answer, so training code calls them unconditionally.
Rank 0 ("main") writes checkpoints and logs; the others only compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from seg2refine_core.devices import resolve_device
from seg2refine_core.errors import Seg2RefineError

#: Collective timeout. Generous because rank 0 may work alone for a while (validation, a cache build).
DEFAULT_TIMEOUT_S = 2 * 3600


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node, its ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise Seg2RefineError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the torchrun process group if there is one and pick this rank's device.

    ``device``: ``auto``/``cuda``/``mps``/``cpu`` as in :func:`~seg2refine_core.devices.resolve_device`. Under
    torchrun with CUDA each rank takes ``cuda:LOCAL_RANK`` and the backend is NCCL; otherwise gloo on the CPU
    (MPS is not used with more than one process). Calling it again returns the same answer.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    resolved = resolve_device(device)
    if world_size <= 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=resolved)
    if resolved.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise Seg2RefineError(
                f"LOCAL_RANK {local_rank} needs a GPU but only {torch.cuda.device_count()} are visible"
            )
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
        backend = "nccl"
    else:
        resolved = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"device_id": resolved} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=resolved)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return not _active() or dist.get_rank() == 0


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of this process in the joined process group; ``(0, 1)`` in a single process."""
    if not _active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _active():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (no-op if none)."""
    if _active():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (any picklable object; returned unchanged in a single process)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (any picklable object), in rank order, on every rank (``[obj]`` in a single process)."""
    if not _active():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64; the list itself in a single process)."""
    if not _active():
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu()]


def average(value: float) -> float:
    """Mean of a scalar over all ranks (the value itself in a single process)."""
    if not _active():
        return float(value)
    return all_reduce_sum([value])[0] / dist.get_world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank (e.g. a stop request seen by one process)."""
    if not _active():
        return bool(flag)
    return all_reduce_sum([1.0 if flag else 0.0])[0] > 0


def sync_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy every buffer (e.g. batch-norm running statistics) of ``module`` from rank ``src`` to all ranks."""
    if not _active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)
