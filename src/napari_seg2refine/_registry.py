"""Checkpoints known to the running napari session, beyond the bundled demo weights.

The Train widget registers each finished run's best checkpoint, and the Segment widget's file pickers register
what the user picks; every Segment widget lists them and refreshes on :attr:`CheckpointRegistry.changed`, so a
model trained a moment ago is selectable without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from seg2refine_core.inference.roles import ROLE_TITLES


@dataclass(frozen=True)
class RegisteredCheckpoint:
    """A checkpoint for the model role ``role`` ('stage1', 'stage2' or 'baseline3d') at ``path`` (the
    ``.safetensors`` file), shown as ``label``."""

    role: str
    path: Path
    label: str


class CheckpointRegistry:
    """An ordered, duplicate-free list of checkpoints per role; emits ``changed`` after every addition."""

    changed = Signal()

    def __init__(self) -> None:
        self._items: list[RegisteredCheckpoint] = []

    def add(self, role: str, path: str | Path, label: str | None = None) -> RegisteredCheckpoint:
        """Register ``path`` (the ``.safetensors`` or ``.json`` file, or the stem) for ``role``; registering it
        again moves it to the end with the new label. Emits ``changed``."""
        if role not in ROLE_TITLES:
            raise ValueError(f"role must be one of {', '.join(ROLE_TITLES)}, got {role!r}")
        path = Path(path).resolve()
        path = path.with_suffix(".safetensors") if path.suffix in (".json", "") else path
        item = RegisteredCheckpoint(role, path, label or f"{path.parent.name}/{path.name}")
        self._items = [i for i in self._items if (i.role, i.path) != (role, path)] + [item]
        self.changed.emit()
        return item

    def items(self, role: str) -> list[RegisteredCheckpoint]:
        """The checkpoints registered for ``role``, oldest first."""
        return [i for i in self._items if i.role == role]

    def clear(self) -> None:
        """Forget every registered checkpoint and emit ``changed``."""
        self._items = []
        self.changed.emit()


#: The session-wide registry shared by all widgets.
registry = CheckpointRegistry()
