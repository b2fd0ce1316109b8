"""The CPU share of a job and the note that its timings were inflated by other processes."""

import time

from seg2refine_core.clock import LOW_JOB_SHARE, Stopwatch, cpu_share


def started(wall_ago: float, cpu_ago: float) -> Stopwatch:
    """A stopwatch that has run ``wall_ago`` seconds, of which the process spent ``cpu_ago`` on the CPU."""
    return Stopwatch(wall0=time.perf_counter() - wall_ago, cpu0=time.process_time() - cpu_ago)


def test_cpu_share_is_cpu_time_over_wall_time_and_threads():
    assert cpu_share(3.0, 2.0, threads=2) == 0.75
    assert cpu_share(1.0, 0.0, threads=2) == 0.0


def test_a_job_that_had_its_cores_gets_no_note():
    assert started(10.0, 18.0).busy_note("cpu", threads=2) is None


def test_a_job_starved_of_cpu_gets_a_one_line_note():
    watch = started(10.0, 4.0)
    assert watch.share(threads=2) < LOW_JOB_SHARE
    note = watch.busy_note("cpu", threads=2)
    assert note is not None and "\n" not in note
    assert "other processes took the cores" in note and "of its 2 thread(s)' CPU time" in note
    # on a GPU the host mostly waits, so a low share says nothing about load
    assert watch.busy_note("cuda:0", threads=2) is None


def test_sleeping_is_not_cpu_time():
    watch = Stopwatch()
    time.sleep(0.2)
    assert watch.share(threads=1) < 0.5 and watch.wall_s() >= 0.2
