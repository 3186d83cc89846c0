"""The image, with the selected token's explanation map laid over it and a colour bar beside it.

Two stacked ``ImageItem``s in one aspect-locked ``ViewBox`` (wheel zooms, drag pans): the image
below, the map above with a colormap and the state's opacity. The map arrives already resampled to
image pixels by the core (``to_pixels``); this view only colours and draws it. Its levels are set
explicitly, so redraws never rescan the data.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QStackedLayout, QWidget

from lvlm_studio.gui.state import StudioState, display_levels

COLORMAP = "inferno"
BACKGROUND = "#202124"
FOREGROUND = "#dadce0"
COLOR_BAR_WIDTH = 16
COLOR_BAR_COLUMN = 80  # the bar, its tick labels and a margin
EMPTY_HINT = "Open an image (File \u203a Open image\u2026), or drop one here."


class ImageView(QWidget):
    """Shows ``state.image`` and, when there is one, the map of ``state.selected`` token."""

    def __init__(self, state: StudioState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.colormap = pg.colormap.get(COLORMAP)

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.view = self.graphics.addViewBox(row=0, col=0, lockAspect=True, invertY=True)
        self.image_item = pg.ImageItem()
        self.overlay_item = pg.ImageItem()
        self.overlay_item.setColorMap(self.colormap)
        self.overlay_item.setZValue(1)
        self.overlay_item.setOpacity(state.opacity)
        self.view.addItem(self.image_item)
        self.view.addItem(self.overlay_item)
        # Not linked to the overlay item: the overlay's levels are set in one place, _show_map.
        self.color_bar = pg.ColorBarItem(colorMap=self.colormap, values=(0, 1), width=COLOR_BAR_WIDTH,
                                         interactive=False, colorMapMenu=False)
        self.color_bar.axis.setTextPen(FOREGROUND)
        self.graphics.addItem(self.color_bar, row=0, col=1)
        self.graphics.ci.layout.setColumnFixedWidth(1, COLOR_BAR_COLUMN)
        self.color_bar.hide()

        self.empty_hint = QLabel(EMPTY_HINT)
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setStyleSheet(f"background: {BACKGROUND}; color: #bdc1c6; font-size: 15px;")
        self.stack = QStackedLayout(self)
        self.stack.addWidget(self.empty_hint)
        self.stack.addWidget(self.graphics)

        state.subscribe(self._on_state)

    def set_hint(self, text: str | None = None) -> None:
        """What the view says while it has no image (None: how to open one)."""
        self.empty_hint.setText(text or EMPTY_HINT)

    def _on_state(self, name: str) -> None:
        if name == "image":
            self._show_image()
        elif name == "opacity":
            self.overlay_item.setOpacity(self.state.opacity)
        if name in ("image", "trace", "selected", "method", "explanations"):
            self._show_map()

    def _show_image(self) -> None:
        image = self.state.image
        if image is None:
            self.stack.setCurrentWidget(self.empty_hint)
            return
        pixels = np.asarray(image.convert("RGB"))
        self.image_item.setImage(pixels, autoLevels=False, levels=(0, 255))
        self.view.autoRange(padding=0.02)
        self.stack.setCurrentWidget(self.graphics)

    def _show_map(self) -> None:
        pixels = self.state.selected_pixels()
        if pixels is None:
            self.overlay_item.clear()
            self.color_bar.hide()
            return
        levels = display_levels(pixels)
        self.overlay_item.setImage(pixels, autoLevels=False, levels=levels)
        self.color_bar.setLevels(values=levels)
        self.color_bar.show()

    @property
    def overlay(self) -> np.ndarray | None:
        """The map currently drawn over the image (for tests and screenshots)."""
        return self.overlay_item.image
