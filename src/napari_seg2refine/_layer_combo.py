"""A combo box listing the viewer's layers of one type, kept current as layers come, go and are renamed."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox, QWidget

NONE = "(none)"


class LayerCombo(QComboBox):
    """Layers of ``layer_type`` by name; selects ``preferred`` when it appears and nothing better is chosen.

    With ``optional`` the first entry is "(none)" and :meth:`layer` may return None.
    """

    def __init__(
        self,
        viewer: Any,
        layer_type: type,
        preferred: str | None = None,
        optional: bool = False,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._preferred = preferred
        self._optional = optional
        self._user_choice: str | None = None
        self.activated.connect(lambda _: setattr(self, "_user_choice", self.currentText()))
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.moved, events.reordered):
            event.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        events.inserted.connect(self._watch_name)
        self.refresh()

    def _watch_name(self, event: Any) -> None:
        event.value.events.name.connect(self.refresh)

    def names(self) -> list[str]:
        """Names of the matching layers, top layer first."""
        return [layer.name for layer in reversed(self._viewer.layers) if isinstance(layer, self._type)]

    def refresh(self, *_: Any) -> None:
        """Rebuild the list, keeping the user's choice, else the preferred name, else the top layer."""
        names = ([NONE] if self._optional else []) + self.names()
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        for choice in (self._user_choice, self._preferred if self._preferred in names else None, current):
            if choice in names:
                self.setCurrentText(choice)
                break
        self.blockSignals(False)

    def layer(self) -> Any | None:
        """The chosen layer, or None ("(none)" or no matching layer)."""
        name = self.currentText()
        if not name or name == NONE or name not in self._viewer.layers:
            return None
        layer = self._viewer.layers[name]
        return layer if isinstance(layer, self._type) else None

    def select(self, name: str) -> None:
        """Choose the layer ``name`` as if the user had."""
        self._user_choice = name
        self.setCurrentText(name)
