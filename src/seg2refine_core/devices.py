"""Device selection: ``auto`` picks cuda, then mps, then cpu."""

from __future__ import annotations

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
