"""Choosers shared by the widgets: a checkpoint for one model role, and the device, both built from the core's lists.

:class:`ModelChooser` offers the demo weights the core bundles for the role (:data:`seg2refine_core.inference.roles.
BUNDLED`), every checkpoint registered in this session (:mod:`._registry`: trained by the Train widget or picked
before) and a file picker. :class:`DeviceCombo` offers :data:`seg2refine_core.devices.DEVICE_CHOICES` and can show
what ``auto`` resolves to. Neither imports torch until a device is resolved.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QToolButton, QWidget

from seg2refine_core.devices import DEVICE_CHOICES
from seg2refine_core.inference.roles import BUNDLED, ROLE_TITLES

from ._registry import registry


class ModelChooser(QWidget):
    """Checkpoint chooser for one role ("stage1", "stage2", "baseline3d"): the bundled demo weights (when the core
    ships some for the role), the registered checkpoints and a file picker ("…")."""

    def __init__(self, role: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.role = role
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(18)
        self.browse = QToolButton()
        self.browse.setText("…")
        self.browse.setToolTip(f"Choose a {ROLE_TITLES[role]} checkpoint (.safetensors with its .json)")
        self.browse.clicked.connect(self.pick_file)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse)
        registry.changed.connect(self.refresh)
        self.destroyed.connect(lambda *_: registry.changed.disconnect(self.refresh, missing_ok=True))
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the entries; a newly registered checkpoint becomes the selection."""
        previous = {self.combo.itemData(i) for i in range(self.combo.count())}
        current = self.combo.currentData()
        self.combo.clear()
        if self.role in BUNDLED:
            missing = "" if BUNDLED[self.role].is_file() else " (not built)"
            self.combo.addItem(f"bundled demo weights{missing}", None)
        for item in registry.items(self.role):
            self.combo.addItem(item.label, str(item.path))
            self.combo.setItemData(self.combo.count() - 1, str(item.path), Qt.ItemDataRole.ToolTipRole)
        new = [self.combo.itemData(i) for i in range(self.combo.count()) if self.combo.itemData(i) not in previous]
        choice = new[-1] if new else current
        self.combo.setCurrentIndex(max(self.combo.findData(choice), 0))

    def pick_file(self) -> None:
        """Ask for a checkpoint file and select it."""
        path, _ = QFileDialog.getOpenFileName(
            self, f"{ROLE_TITLES[self.role]} checkpoint", "", "Seg2Refine checkpoints (*.safetensors *.json)"
        )
        if path:
            self.add(path)

    def add(self, path: str | Path) -> None:
        """Register ``path`` (``.json`` or ``.safetensors``) for this role and select it."""
        item = registry.add(self.role, path)
        self.combo.setCurrentIndex(self.combo.findData(str(item.path)))

    def checkpoint(self) -> str | None:
        """The chosen checkpoint path; None means the bundled demo weights (or nothing chosen, for a role without
        them)."""
        return self.combo.currentData()

    def path(self) -> Path:
        """The chosen checkpoint's ``.safetensors`` path, the bundled file's for the bundled entry."""
        chosen = self.checkpoint()
        return Path(chosen) if chosen is not None else BUNDLED[self.role]


class DeviceCombo(QComboBox):
    """The devices the core accepts (``auto`` first); :meth:`resolved_label` shows what the choice resolves to."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.addItems(list(DEVICE_CHOICES))
        self.setToolTip("auto: CUDA if present, then Apple MPS, then the CPU")

    def resolved_label(self) -> QLabel:
        """A label that follows the choice: "→ cpu", "→ cuda", or "→ not available"."""
        label = QLabel()

        def show(name: str) -> None:
            from seg2refine_core.devices import resolve_device
            from seg2refine_core.errors import Seg2RefineError

            try:
                label.setText(f"→ {resolve_device(name)}")
            except Seg2RefineError:
                label.setText("→ not available")

        self.currentTextChanged.connect(show)
        show(self.currentText())
        return label
