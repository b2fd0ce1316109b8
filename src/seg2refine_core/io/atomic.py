"""Atomic file output: write to a hidden temporary file beside the target, then rename over it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` in one rename.

    The temporary name ends with the target's full name, so extension-based writers (``.nii.gz``) still
    pick the right format. On any exception the temporary file is removed and ``path`` is left untouched; an
    :class:`OSError` about the temporary file names ``path`` instead.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".partial-{uuid.uuid4().hex[:8]}-{target.name}"
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as err:
        if err.filename is not None and Path(err.filename) == tmp:  # name the file the user asked for
            err.filename = str(target)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def check_output(target: Path, inputs: set[Path], overwrite: bool, choose: str = "another output") -> None:
    """Refuse ``target`` as an output: :class:`~seg2refine_core.errors.Seg2RefineError` when it resolves to one of
    ``inputs`` (resolved paths), or exists (a dangling link included) without ``overwrite``. ``choose`` completes
    the first message ("choose another --out")."""
    from seg2refine_core.errors import Seg2RefineError

    if target.resolve() in inputs:
        raise Seg2RefineError(f"{target}: output would overwrite an input file; choose {choose}")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise Seg2RefineError(f"{target}: already exists; pass --overwrite to replace outputs")
