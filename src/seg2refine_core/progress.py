"""Progress reporting and cooperative stopping shared by the CLI, the plugin and scripts.

Long-running core functions take ``progress(done, total, info)`` and ``should_stop()`` callables. The CLI
passes :func:`tqdm_progress` (a tqdm bar on a terminal, plain log lines when its output goes to a file or a pipe),
the plugin a napari progress bar and its Stop button.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from seg2refine_core.errors import StopRequested

ProgressFn = Callable[[int, int, str], None]
StopFn = Callable[[], bool]


def no_progress(done: int, total: int, info: str = "") -> None:
    """A progress callback that does nothing."""


def never_stop() -> bool:
    """A stop flag that is never raised."""
    return False


def check_stop(should_stop: StopFn | None) -> None:
    """Raise :class:`StopRequested` if ``should_stop()`` says so."""
    if should_stop is not None and should_stop():
        raise StopRequested("stopped on request")


class LineProgress:
    """A ``progress(done, total, info)`` callback that writes plain lines for logs: one each time another tenth
    of the total is done (``steps`` per phase), one when ``interval_s`` seconds have passed since the last line,
    whichever comes first, so 100 % is always logged. No carriage returns or escape codes: a redirected
    ``seg2refine predict ... 2> log`` shows how far a long job has got.

    A new ``total`` (or a count that goes back, e.g. the next case of a cohort) starts a new phase with its own
    steps and elapsed time, counted from the previous report (the first phase: from the callback's creation).
    Line: ``<desc>: 40% 12/30 <unit> | <info> | 3.2 s, ~4.8 s left``.
    """

    def __init__(
        self, desc: str, unit: str, stream: TextIO, *, steps: int = 10, interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.unit, self.stream = desc, unit, stream
        self.steps, self.interval_s, self.clock = steps, interval_s, clock
        self._total: int | None = None
        self._done = self._step = 0
        self._start = self._last_line = self._last_call = clock()

    def __call__(self, done: int, total: int, info: str = "") -> None:
        now = self.clock()
        if total != self._total or done < self._done:  # a new phase began after the last report of the previous
            start = self._start if self._total is None else self._last_call
            self._total, self._step, self._start, self._last_line = total, 0, start, start
        self._done, self._last_call = done, now
        step = done * self.steps // total if total > 0 else 0
        if step > self._step or now - self._last_line >= self.interval_s:
            self._step = max(step, self._step)
            self._last_line = now
            self.stream.write(self._line(done, total, info, now - self._start) + "\n")
            self.stream.flush()

    def _line(self, done: int, total: int, info: str, elapsed: float) -> str:
        if total > 0:
            head = f"{self.desc}: {100 * done / total:3.0f}% {done}/{total} {self.unit}"
            left = f", ~{elapsed * (total - done) / done:.1f} s left" if 0 < done < total else ""
        else:
            head, left = f"{self.desc}: {done} {self.unit}", ""
        return f"{head}{f' | {info}' if info else ''} | {elapsed:.1f} s{left}"


@contextmanager
def tqdm_progress(
    desc: str, unit: str = "it", disable: bool = False, stream: TextIO | None = None
) -> Iterator[ProgressFn]:
    """Yield a ``progress(done, total, info)`` callback for a command line: a tqdm bar when ``stream`` (default
    ``sys.stderr``) is a terminal, :class:`LineProgress` lines otherwise; nothing at all with ``disable`` (e.g. on
    the ranks other than 0 of a ``torchrun`` job)."""
    stream = sys.stderr if stream is None else stream
    if disable:
        yield no_progress
        return
    if not stream.isatty():
        yield LineProgress(desc, unit, stream)
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit=unit, file=stream, dynamic_ncols=True)

    def update(done: int, total: int, info: str = "") -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        if info:
            bar.set_postfix_str(info, refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
