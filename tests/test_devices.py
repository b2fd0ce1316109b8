"""CPU thread default: one thread per idle core, at least one (seg2refine_core.devices.default_threads)."""

from __future__ import annotations

import subprocess
import sys
import time

from seg2refine_core.devices import available_cores, default_threads


def test_default_threads_stays_between_one_and_the_cores():
    cores = available_cores()
    assert 1 <= default_threads(sample_s=0.1) <= cores
    assert default_threads(reserve=cores, sample_s=0.1) == 1


def test_default_threads_is_one_when_every_core_is_busy():
    spin = "import time\nend = time.time() + 5\nwhile time.time() < end: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(available_cores())]
    try:
        time.sleep(0.5)  # let them start
        assert default_threads(sample_s=0.5) == 1
    finally:
        for p in spinners:
            p.kill()
            p.wait()
