"""What the benchmark measures: :class:`BenchmarkConfig`, its sections and the ``--quick`` sizes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from seg2refine_core.errors import Seg2RefineError

SECTIONS = ("stage1", "stage2", "pipeline", "training", "memory")
STAGE1_VARIANTS = ("unet", "ag-unet", "ag-att-unet", "sfanet")


@dataclass
class BenchmarkConfig:
    """What to measure. ``shape`` is the volume ``(z, y, x)``; stage 1 runs on its ``z`` slices of ``y × x``.

    width: SFANet and generator width ``w``. batch_size: stage-1 slices per batch (None: what inference uses,
    :func:`~seg2refine_core.inference.stage1.default_batch_size`). train_batch: slices per training step. patch_size /
    overlap / sw_batch_size: stage-2 sliding window (sw_batch_size None: the device's default,
    :func:`~seg2refine_core.inference.stage2.default_sw_batch_size`). sections: subset of
    :data:`SECTIONS`. compile: also time SFANet's training step through ``torch.compile`` (compile time
    reported apart). threads: ``torch.set_num_threads`` for this run and the memory subprocess (None: torch's
    default). On a CPU shared with other busy processes, fewer threads than cores can be much faster: OpenMP
    threads that wait on a descheduled peer stall the whole operation.
    """

    device: str = "auto"
    width: int = 16
    shape: tuple[int, int, int] = (32, 256, 256)
    repeats: int = 3
    batch_size: int | None = None
    train_batch: int = 4
    patch_size: tuple[int, int, int] = (64, 64, 64)
    overlap: float = 0.25
    sw_batch_size: int | None = None
    sections: tuple[str, ...] = SECTIONS
    threads: int | None = None
    compile: bool = False
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.patch_size = tuple(int(s) for s in self.patch_size)  # type: ignore[assignment]
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise Seg2RefineError(f"--shape needs three positive sizes Z Y X, got {self.shape}")
        if any(p % 16 or p < 32 for p in self.patch_size):
            raise Seg2RefineError(f"--patch sides must be multiples of 16 and >= 32, got {self.patch_size}")
        sizes = (self.width, self.repeats, self.batch_size, self.train_batch, self.sw_batch_size)
        if min(size for size in sizes if size is not None) < 1:
            raise Seg2RefineError("--width, --repeats, --batch-size, --train-batch and --sw-batch-size must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise Seg2RefineError(f"--threads must be >= 1, got {self.threads}")
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise Seg2RefineError(f"--sections: unknown {', '.join(unknown)} (known: {', '.join(SECTIONS)})")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists)."""
        data = asdict(self)
        data.update(shape=list(self.shape), patch_size=list(self.patch_size), sections=list(self.sections))
        return data


#: ``--quick``: tiny sizes for CI (a test that the benchmark works, not a measurement).
QUICK = dict(width=4, shape=(8, 64, 64), repeats=1, batch_size=4, train_batch=2, patch_size=(32, 32, 32))
