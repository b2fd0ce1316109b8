"""Run one core call in a napari thread worker with a napari progress bar, a stop flag, typed messages and clear
errors.

The worker talks to the GUI thread with small typed messages (the pattern of careamics-napari's workers and
signals): :class:`Progress` for the core's ``progress(done, total, info)`` reports, which drive the
:class:`napari.utils.progress` bar, and any message a widget defines (e.g. the Train widget's step losses and epoch
records), which go to the handler registered for its type. A Qt signal carries each message to the GUI thread.
``stop()`` raises the flag the core polls through ``should_stop()``; the core then raises :class:`StopRequested`
and the job ends as :attr:`JobStatus.STOPPED`. A :class:`Seg2RefineError` is shown with :func:`show_error` as its
one-line message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from seg2refine_core.errors import Seg2RefineError, StopRequested

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps of the running job; ``info`` says which (e.g. "stage 2: window 3/25")."""

    done: int
    total: int
    info: str = ""


class JobStatus(str, Enum):
    """Where a job is; a string equal to its lower-case name ("done" == JobStatus.DONE, str() gives "done")."""

    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


class _Bridge(QObject):
    """Carries typed messages from the worker thread to the GUI thread."""

    message = Signal(object)


class Job:
    """``func(progress, should_stop)`` in a worker thread; ``func(progress, should_stop, post)`` with ``handlers``.

    ``handlers`` maps a message type to the function that receives, in the GUI thread, each message of that type
    the worker passes to ``post``. ``on_result(value)`` runs in the GUI thread when ``func`` returns; ``on_end(status)``
    always runs last, with a :class:`JobStatus` (DONE, STOPPED or FAILED).
    """

    def __init__(
        self,
        func: Callable[..., Any],
        description: str,
        on_result: Callable[[Any], None],
        on_end: Callable[[JobStatus], None] | None = None,
        handlers: Mapping[type, Callable[[Any], None]] | None = None,
    ) -> None:
        self.description = description
        self.status = JobStatus.RUNNING
        self.ended = False
        self._stop = threading.Event()
        self._on_result = on_result
        self._on_end = on_end
        self._handlers: dict[type, Callable[[Any], None]] = {Progress: self._on_progress, **(handlers or {})}
        self._bridge = _Bridge()
        self._bridge.message.connect(self._dispatch)
        post = self._bridge.message.emit

        def report(done: int, total: int, info: str = "") -> None:
            post(Progress(done, total, info))

        args: tuple[Callable[..., Any], ...] = (report, self._stop.is_set) + ((post,) if handlers else ())
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

    def _dispatch(self, message: Any) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            log.error("%s: no handler for the worker message %r", self.description, message)
            return
        handler(message)

    def _on_progress(self, message: Progress) -> None:
        if self.pbar.total != message.total:
            self.pbar.total = message.total
        self.pbar.update(message.done - self.pbar.n)
        if message.info:
            self.pbar.set_description(f"{self.description}: {message.info}")

    def _returned(self, value: Any) -> None:
        self.status = JobStatus.DONE
        self._on_result(value)

    def _errored(self, err: Exception) -> None:
        if isinstance(err, StopRequested):
            self.status = JobStatus.STOPPED
            show_info(f"{self.description}: stopped")
        elif isinstance(err, Seg2RefineError):
            self.status = JobStatus.FAILED
            show_error(str(err))
        else:
            self.status = JobStatus.FAILED
            log.error("%s failed", self.description, exc_info=err)
            show_error(f"{self.description} failed: {type(err).__name__}: {err}")

    def _finished(self) -> None:
        self.pbar.close()
        if self.status == JobStatus.RUNNING:
            self.status = JobStatus.DONE
        try:
            if self._on_end is not None:
                self._on_end(self.status)
        finally:
            self.ended = True
