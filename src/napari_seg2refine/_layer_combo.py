"""A combo box listing the viewer's layers of one type, kept current as layers come, go and are renamed.

A chooser picks a layer by itself only when the layer fits its role: a mask has one (S, Y or ground truth), so
a labels chooser selects the layer named after its role ("S (stage 1)", or "S (stage 1) [1]" as napari names
a second one) and otherwise starts empty, saying so, rather than offer the ground truth as S. Any image may be
the CT, so an image chooser falls back to the top image layer. The user may still choose any listed layer.
"""

from __future__ import annotations

from typing import Any

from napari.layers import Labels
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QPushButton, QWidget

NONE = "(none)"


class LayerCombo(QComboBox):
    """Layers of ``layer_type`` by name; selects the user's choice, else the ``preferred`` layer (see the module).

    With ``optional`` the first entry is "(none)" and :meth:`layer` may return None; without it, and with no
    fitting layer, nothing is selected and a placeholder says what to choose. ``fallback``: select the top layer
    of the type when no layer fits (default: for images, not for labels). :attr:`changed` is emitted whenever
    the chosen layer may have changed (a user's choice, layers added, removed or renamed).
    """

    changed = Signal()

    def __init__(
        self,
        viewer: Any,
        layer_type: type,
        preferred: str | None = None,
        optional: bool = False,
        fallback: bool | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._type = layer_type
        self._preferred = preferred
        self._optional = optional
        self._fallback = not issubclass(layer_type, Labels) if fallback is None else fallback
        self._user_choice: str | None = None
        self.activated.connect(lambda _: setattr(self, "_user_choice", self.currentText()))
        self.currentIndexChanged.connect(lambda _: self.changed.emit())
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

    def fitting(self, names: list[str]) -> str | None:
        """The layer of ``names`` that fits the role: named ``preferred``, else the top one named ``preferred …``;
        without one, the top layer when ``fallback`` is on, else None."""
        if self._preferred in names:
            return self._preferred
        prefixed = [name for name in names if self._preferred and name.startswith(f"{self._preferred} ")]
        if prefixed:
            return prefixed[0]
        return names[0] if self._fallback and names else None

    def refresh(self, *_: Any) -> None:
        """Rebuild the list, keeping the user's choice, else the fitting layer, else the current one, else none."""
        names = self.names()
        entries = ([NONE] if self._optional else []) + names
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        self.addItems(entries)
        for choice in (self._user_choice, self.fitting(names), current, NONE if self._optional else None):
            if choice in entries:
                self.setCurrentText(choice)
                break
        else:
            self.setCurrentIndex(-1)
        kind = "labels" if issubclass(self._type, Labels) else "image"
        self.setPlaceholderText(f"(choose a {kind} layer)" if names else f"(no {kind} layer)")
        self.blockSignals(False)
        self.changed.emit()

    def layer(self) -> Any | None:
        """The chosen layer, or None ("(none)", nothing chosen, or no matching layer)."""
        name = self.currentText()
        if not name or name == NONE or name not in self._viewer.layers:
            return None
        layer = self._viewer.layers[name]
        return layer if isinstance(layer, self._type) else None

    def select(self, name: str) -> None:
        """Choose the layer ``name`` as if the user had."""
        self._user_choice = name
        self.setCurrentText(name)


def show_missing(button: QPushButton, title: str, missing: tuple[str, str] | None, tooltip: str) -> None:
    """Enable ``button`` as ``title`` when nothing is missing, else disable it and say what is missing.

    ``missing`` is (a few words for the button's text, a sentence for its tooltip), e.g.
    ``("no Y", "Choose a Y layer: there is no 'Y (refined)' layer yet; run Segment first")``.
    """
    button.setEnabled(missing is None)
    button.setText(title if missing is None else f"{title} ({missing[0]})")
    button.setToolTip(tooltip if missing is None else missing[1])
