"""Small widget builders the window's parts share, so every box and row looks the same."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QComboBox, QGroupBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

HINT_STYLE = "color: palette(placeholder-text);"


def wrapping_label(text: str, lines: int = 1) -> QLabel:
    """A label that wraps and keeps room for ``lines`` lines."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setMinimumHeight(lines * label.fontMetrics().lineSpacing() + 4)
    return label


def fill_group(box: QGroupBox, *items: QWidget) -> QGroupBox:
    """``items`` one under the other in ``box``."""
    layout = QVBoxLayout(box)
    layout.setContentsMargins(8, 6, 8, 6)
    for item in items:
        layout.addWidget(item)
    return box


def group(title: str, *items: QWidget) -> QGroupBox:
    return fill_group(QGroupBox(title), *items)


def row(*widgets: QWidget, stretch: int) -> QWidget:
    """Widgets side by side; the one at index ``stretch`` takes the spare width."""
    line = QWidget()
    layout = QHBoxLayout(line)
    layout.setContentsMargins(0, 0, 0, 0)
    for i, widget in enumerate(widgets):
        layout.addWidget(widget, stretch=1 if i == stretch else 0)
    return line


def combo(items: tuple[str, ...], current: str, tip: str) -> QComboBox:
    box = QComboBox()
    box.addItems(list(items))
    box.setCurrentText(current)
    box.setToolTip(tip)
    return box
