"""Progress for command lines: a tqdm bar on a terminal, plain lines every 10 % or 30 s in a log."""

import io

from seg2refine_core.progress import LineProgress, tqdm_progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_lines_every_tenth_and_at_the_end_with_elapsed_and_remaining_time():
    clock, out = FakeClock(), io.StringIO()
    progress = LineProgress("predict", "step", out, clock=clock)
    for done in range(1, 101):
        clock.now += 0.5
        progress(done, 100, f"case 7: slice {done}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in out.getvalue()
    assert lines[0] == "predict:  10% 10/100 step | case 7: slice 10 | 5.0 s, ~45.0 s left"
    assert [line.split("%")[0].split()[-1] for line in lines] == [str(p) for p in range(10, 101, 10)]
    assert lines[-1] == "predict: 100% 100/100 step | case 7: slice 100 | 50.0 s"


def test_a_slow_phase_logs_every_30_s_and_a_new_total_or_a_restart_starts_a_new_phase():
    clock, out = FakeClock(), io.StringIO()
    progress = LineProgress("train", "step", out, clock=clock)
    progress(1, 1000)
    clock.now += 29.0
    progress(2, 1000)
    assert out.getvalue() == ""  # under 10 % and under 30 s: quiet
    clock.now += 1.0
    progress(3, 1000, "epoch 1/5")
    assert out.getvalue() == "train:   0% 3/1000 step | epoch 1/5 | 30.0 s, ~9970.0 s left\n"
    clock.now += 5.0
    progress(5, 10)  # a new total: its own steps and elapsed time
    progress(2, 10)  # the count goes back: the next case of a cohort
    progress(1, 0)  # an unknown total only logs on time
    # each phase's time counts from the report before it
    assert out.getvalue().splitlines()[1:] == ["train:  50% 5/10 step | 5.0 s, ~5.0 s left",
                                               "train:  20% 2/10 step | 0.0 s, ~0.0 s left"]


def test_tqdm_progress_picks_lines_off_a_terminal_a_bar_on_one_and_nothing_when_disabled():
    log = io.StringIO()
    with tqdm_progress("demo", unit="step", stream=log) as progress:
        for done in range(1, 5):
            progress(done, 4, "")
    assert [line.split("|")[0] for line in log.getvalue().splitlines()] == [
        "demo:  25% 1/4 step ", "demo:  50% 2/4 step ", "demo:  75% 3/4 step ", "demo: 100% 4/4 step "]
    terminal = Terminal()
    with tqdm_progress("demo", unit="step", stream=terminal) as progress:
        progress(2, 4, "half")
    assert "\r" in terminal.getvalue() and "2/4" in terminal.getvalue()
    quiet = Terminal()
    with tqdm_progress("demo", stream=quiet, disable=True) as progress:
        progress(1, 2, "")
    assert quiet.getvalue() == ""
