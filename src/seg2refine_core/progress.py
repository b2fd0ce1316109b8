"""Progress reporting and cooperative stopping shared by the CLI, the plugin and scripts.

Long-running core functions take ``progress(done, total, info)`` and ``should_stop()`` callables. The CLI
passes a tqdm bar, the plugin a napari progress bar and its Stop button.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


@contextmanager
def tqdm_progress(desc: str, unit: str = "it", disable: bool | None = None) -> Iterator[ProgressFn]:
    """Yield a ``progress(done, total, info)`` callback that drives a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True)

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
