"""The dock every panel lives in, and the scrolling that lets a small window keep every panel usable.

A panel's layout has a minimum size (its controls, its tables, its plots). Docked beside others in a
window of 1024 x 700, that minimum would either push the window larger than the screen or squeeze
the panel below it, where widgets overlap. ``PanelDock`` puts the panel in a scroll area instead:
the dock may shrink to ``PANEL_MIN`` (or the panel's own minimum, when that is smaller), and below
the panel's minimum the panel keeps its size and scrolls. ``widget()`` still returns the panel.
"""

from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtWidgets import QDockWidget, QFrame, QScrollArea, QWidget

PANEL_MIN = QSize(240, 130)  # the smallest a dock gets; smaller than most panels' layouts need


def scrolling(widget: QWidget, minimum: QSize) -> QScrollArea:
    """``widget`` in a frameless scroll area that fills the space it gets, scrolling only below the
    widget's minimum size; the area itself shrinks to ``minimum`` (bounded by the widget's own)."""
    area = QScrollArea()
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidgetResizable(True)
    area.setWidget(widget)
    area.setMinimumSize(minimum.boundedTo(widget.minimumSizeHint().expandedTo(QSize(1, 1))))
    return area


class PanelDock(QDockWidget):
    """A dock holding one panel in a scroll area (see the module's docstring)."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(title, parent)
        self.panel: QWidget | None = None

    def set_panel(self, panel: QWidget) -> None:
        self.panel = panel
        self.setWidget(scrolling(panel, PANEL_MIN))

    def widget(self) -> QWidget:  # type: ignore[override]
        """The panel (not the scroll area around it), as every caller of a dock's widget means."""
        return self.panel if self.panel is not None else super().widget()
