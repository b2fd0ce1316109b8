"""Run one core call in a napari thread worker with a napari progress bar, a stop flag and clear errors.

The core reports ``progress(done, total, info)`` from the worker thread; a Qt signal carries each report to the
GUI thread, which updates the :class:`napari.utils.progress` bar. ``stop()`` raises the flag the core polls
through ``should_stop()``; the core then raises :class:`StopRequested` and the job ends as "stopped".
A :class:`Seg2RefineError` is shown with :func:`show_error` as its one-line message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from seg2refine_core.errors import Seg2RefineError, StopRequested

log = logging.getLogger(__name__)


class _Bridge(QObject):
    """Carries progress reports and other messages from the worker thread to the GUI thread."""

    progressed = Signal(int, int, str)
    message = Signal(object)


class Job:
    """``func(progress, should_stop)`` in a worker thread; ``func(progress, should_stop, post)`` with ``on_message``.

    ``on_result(value)`` runs in the GUI thread when ``func`` returns; ``on_end(status)`` always runs last, with
    status "done", "stopped" or "failed". ``on_message`` receives, in the GUI thread, whatever the worker
    passes to ``post`` (e.g. training records).
    """

    def __init__(
        self,
        func: Callable[..., Any],
        description: str,
        on_result: Callable[[Any], None],
        on_end: Callable[[str], None] | None = None,
        on_message: Callable[[Any], None] | None = None,
    ) -> None:
        self.description = description
        self.status = "running"
        self.ended = False
        self._stop = threading.Event()
        self._on_result = on_result
        self._on_end = on_end
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        args: tuple[Callable[..., Any], ...] = (self._bridge.progressed.emit, self._stop.is_set)
        if on_message is not None:
            self._bridge.message.connect(on_message)
            args += (self._bridge.message.emit,)
        self.pbar = progress(total=0, desc=description)
        self.worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    @property
    def running(self) -> bool:
        """True until the worker has finished and ``on_end`` has run."""
        return not self.ended

    def stop(self) -> None:
        """Ask the core to stop at its next check."""
        self._stop.set()

    def _on_progress(self, done: int, total: int, info: str) -> None:
        if self.pbar.total != total:
            self.pbar.total = total
        self.pbar.update(done - self.pbar.n)
        if info:
            self.pbar.set_description(f"{self.description}: {info}")

    def _returned(self, value: Any) -> None:
        self.status = "done"
        self._on_result(value)

    def _errored(self, err: Exception) -> None:
        if isinstance(err, StopRequested):
            self.status = "stopped"
            show_info(f"{self.description}: stopped")
        elif isinstance(err, Seg2RefineError):
            self.status = "failed"
            show_error(str(err))
        else:
            self.status = "failed"
            log.error("%s failed", self.description, exc_info=err)
            show_error(f"{self.description} failed: {type(err).__name__}: {err}")

    def _finished(self) -> None:
        self.pbar.close()
        if self.status == "running":
            self.status = "done"
        try:
            if self._on_end is not None:
                self._on_end(self.status)
        finally:
            self.ended = True
