"""User-facing errors and notices. Each message names the file (or option) and the problem in one line."""

import warnings


class Seg2RefineError(Exception):
    """Base class: the CLI prints the message without a traceback and exits with status 2."""


class VolumeError(Seg2RefineError):
    """A CT volume or mask file that cannot be used (missing, corrupt, wrong shape, bad values)."""


class DatasetError(Seg2RefineError):
    """A dataset folder or split table that cannot be understood."""


class CheckpointError(Seg2RefineError):
    """A checkpoint whose files are missing, unsafe, or do not match their config."""


class Notice(UserWarning):
    """A one-line notice about an input that is used but not as given (a unit read as mm, a probability map
    thresholded, ...). The command line prints ``seg2refine <command>: note: <message>``, the plugin a notification
    (:func:`seg2refine_core.data.canonical.notices_to`); each distinct message once per process."""


warnings.simplefilter("once", Notice)


class StopRequested(Exception):
    """Raised inside long-running work when the caller's ``should_stop()`` returns True."""


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``"<ExceptionType>: <first line of its message>"``, the message cut at ``limit`` characters."""
    first = (str(exc).strip().splitlines() or [""])[0][:limit]
    return f"{type(exc).__name__}: {first}"
