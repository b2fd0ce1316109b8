"""Every widget docked at once fits a 1366 × 768 window beside a usable canvas (the shared scroll pages)."""

from __future__ import annotations

import pytest
from qtpy.QtCore import QRect

from napari_seg2refine._scroll import MIN_HEIGHT, VerticalScrollArea, scroll_page
from plugin_support import add_phantom

pytestmark = pytest.mark.gui

WIDGETS = ("Segment", "Compare S and Y", "Slice-wise Dice", "Train", "Vessel analysis")
SCREEN = (1366, 768)


def test_all_widgets_docked_fit_a_small_screen(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*SCREEN)
    add_phantom(viewer)
    qtbot.wait(50)
    # as the README's first session does: each widget from the Plugins menu, docked on the right
    added = [viewer.window.add_plugin_dock_widget("napari-seg2refine", name) for name in WIDGETS]
    docks = [d for d, _ in added]
    widgets = {name: widget for name, (_, widget) in zip(WIDGETS, added, strict=True)}

    def fits() -> None:
        assert (window.width(), window.height()) == SCREEN
        canvas = viewer.window._qt_viewer.canvas.native
        assert canvas.width() >= 400 and canvas.height() >= 600, canvas.size()
        for name, widget in widgets.items():
            area = widget.findChild(VerticalScrollArea)
            assert widget.minimumSizeHint().height() == MIN_HEIGHT, name
            # the page scrolls vertically only: never wider than what the dock shows, so no control is cut off
            assert area.widget().width() <= area.viewport().width(), name

    # the main window shows its new docks, napari's stylesheet reaches the pages, the docks are laid out again
    qtbot.waitUntil(lambda: all(dock.isVisible() for dock in docks), timeout=10_000)
    qtbot.wait(500)
    qtbot.waitUntil(fits, timeout=10_000)

    # the Train widget's controls (over 900 px) scroll; its Start button can be brought into view
    train = widgets["Train"]
    area = train.findChild(VerticalScrollArea)
    assert area.verticalScrollBar().maximum() > 0
    area.ensureWidgetVisible(train.start_button)
    qtbot.wait(50)
    corner = train.start_button.mapTo(area.viewport(), train.start_button.rect().topLeft())
    assert area.viewport().rect().contains(QRect(corner, train.start_button.size()))


def test_scroll_page_takes_the_widget_s_controls(qtbot):
    from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

    widget = QWidget()
    qtbot.addWidget(widget)
    layout = QVBoxLayout(scroll_page(widget))
    labels = [QLabel(f"row {i}") for i in range(40)]
    for label in labels:
        layout.addWidget(label)
    widget.resize(200, 150)
    widget.show()
    area = widget.findChild(VerticalScrollArea)
    qtbot.waitUntil(area.verticalScrollBar().isVisible)
    assert all(label.window() is widget for label in labels)  # found, shown and destroyed with the widget
    assert widget.minimumSizeHint().height() == MIN_HEIGHT
    assert widget.minimumSizeHint().width() >= area.widget().minimumSizeHint().width()
    assert not area.horizontalScrollBar().isVisible()
    assert area.widget().height() > widget.height()
