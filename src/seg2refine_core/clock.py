"""Wall and CPU time of a piece of work, and whether the process had its cores while it ran.

Printed timings swing up to ~10× when other processes share the CPU. The **CPU share** tells: process CPU time
(all threads) over wall time × torch threads, 1 when the process had every core it asked for, lower when others
took them. The benchmark records it per section; the demo and ``predict`` print a note when a whole job got less
than :data:`LOW_JOB_SHARE` (a job also spends single-threaded time reading and writing files, so its share is
lower than a benchmark section's even on an idle machine). On CUDA the host mostly waits for the GPU, so there
the share says nothing about load and no note is given.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

#: Below this CPU share a benchmark section's wall times are inflated by other processes (the report warns).
LOW_CPU_SHARE = 0.8
#: Below this CPU share a whole job (demo, predict) was slowed by other processes (a note is printed).
LOW_JOB_SHARE = 0.5


def torch_threads() -> int:
    """torch's intra-op CPU threads (imports torch)."""
    import torch

    return torch.get_num_threads()


def cpu_share(cpu_s: float, wall_s: float, threads: int | None = None) -> float:
    """Process CPU seconds over wall seconds × ``threads`` (None: torch's thread count); 0 for no wall time."""
    threads = threads or torch_threads()
    return cpu_s / (wall_s * threads) if wall_s > 0 else 0.0


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass
class Stopwatch:
    """Started when made: :meth:`wall_s`, :meth:`cpu_s` and :meth:`share` since then, and :meth:`busy_note`."""

    wall0: float = field(default_factory=time.perf_counter)
    cpu0: float = field(default_factory=time.process_time)

    def wall_s(self) -> float:
        """Wall-clock seconds since the start."""
        return time.perf_counter() - self.wall0

    def cpu_s(self) -> float:
        """Process CPU seconds (all threads) since the start."""
        return time.process_time() - self.cpu0

    def share(self, threads: int | None = None) -> float:
        """:func:`cpu_share` since the start."""
        return cpu_share(self.cpu_s(), self.wall_s(), threads)

    def busy_note(self, device: str = "cpu", threads: int | None = None) -> str | None:
        """One line saying that other processes took the cores (so the timings printed are inflated), or None when
        the share was at least :data:`LOW_JOB_SHARE` or the work ran on a GPU."""
        if device.startswith("cuda"):
            return None
        threads = threads or torch_threads()
        share = self.share(threads)
        if share >= LOW_JOB_SHARE:
            return None
        load = load_average()
        load_text = f", load average {load:.1f} on {os.cpu_count()} CPUs" if load is not None else ""
        return (f"note: this process got {share:.0%} of its {threads} thread(s)' CPU time{load_text}: other "
                "processes took the cores, so the timings above are inflated (up to ~10x on a busy machine)")
