"""Dock widgets that fit a small screen: a widget's controls sit on a page in a vertical scroll area.

A dock widget's minimum height is normally the sum of its controls' minimum heights, and napari's main window
grows rather than squeeze a dock below it: docking the Train widget (about 910 px of controls) beside the others
grew a 1600 × 1000 window to 1600 × 2000. On a scroll page the controls keep their natural size, the dock can be
as short as :data:`MIN_HEIGHT`, and a vertical scroll bar appears when it is shorter than its page. The width is
not scrolled: the dock keeps at least the page's minimum width (plus the scroll bar's), so no control is cut off.

Use it in a widget's constructor, in place of laying out the widget itself::

    layout = QVBoxLayout(scroll_page(self))   # instead of QVBoxLayout(self)
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

#: the least height (px) a dock widget asks for: a few rows of controls, whatever its page holds
MIN_HEIGHT = 90
PAGE_NAME = "seg2refine_scroll_page"


class VerticalScrollArea(QScrollArea):
    """A frameless scroll area whose page scrolls vertically and is never narrower than its minimum width."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        """Pass the page's new size hints on: the page is re-laid out when napari's stylesheet reaches it."""
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()
        return super().eventFilter(watched, event)

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:
        """The page's minimum width plus room for the scroll bar; :data:`MIN_HEIGHT` tall."""
        page = self.widget()
        width = page.minimumSizeHint().width() if page is not None else 0
        return QSize(width + self._extra_width(), MIN_HEIGHT)

    def sizeHint(self) -> QSize:
        """The page's preferred size (width plus the scroll bar's), as tall as Qt's scroll areas allow."""
        page = self.widget()
        hint = super().sizeHint()
        if page is None:
            return hint
        return QSize(page.sizeHint().width() + self._extra_width(), hint.height())


def scroll_page(widget: QWidget) -> QWidget:
    """Fill ``widget`` with a :class:`VerticalScrollArea` and return the page inside it, to be laid out instead.

    ``widget`` must not have a layout yet. Its controls, laid out on the returned page, stay children of
    ``widget`` (through the page), so they are found, shown and destroyed with it.
    """
    area = VerticalScrollArea(widget)
    page = QWidget()
    page.setObjectName(PAGE_NAME)
    area.setWidget(page)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    return page
