"""An image with a map laid over it and, optionally, a colour bar: the view every map panel uses.

Two stacked ``ImageItem``s in one aspect-locked ``ViewBox`` (wheel zooms, drag pans): the image
below, the map above with a colormap and an opacity. Maps arrive already on image pixels (the
core's ``to_pixels``), with their levels; this view only colours and draws them, and sets levels
explicitly so that a redraw never rescans the data. NaN pixels (not covered, or under the
threshold) draw transparent. Signed maps get a diverging colormap whose centre (0) is transparent,
so values near 0 leave the picture as it is; the colour bar shows the colormap opaque, with a label.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGraphicsItem, QLabel, QStackedLayout, QWidget

BACKGROUND = "#202124"
FOREGROUND = "#dadce0"
COLOR_BAR_WIDTH = 16
COLOR_BAR_COLUMN = 80  # the bar, its tick labels and a margin
EMPTY_HINT = "Open an image (File \u203a Open image\u2026), or drop one here."


class ImageView(QWidget):
    """An image, a map over it, a title above and (with ``color_bar``) a colour bar beside it."""

    def __init__(self, color_bar: bool = True, parent: QWidget | None = None, hint: str = EMPTY_HINT) -> None:
        super().__init__(parent)
        self._colormap_name: tuple[str, bool] = ("", False)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.title_item = self.graphics.addLabel("", row=0, col=0, color=FOREGROUND, size="10pt")
        self.title_item.hide()
        self.view = self.graphics.addViewBox(row=1, col=0, lockAspect=True, invertY=True)
        self.view.setMenuEnabled(False)
        self.image_item = pg.ImageItem()
        # The picture changes with the image, not with the token: kept as a pixmap at screen
        # resolution, a repaint after a token switch blits it instead of scaling the image again.
        self.image_item.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.overlay_item = pg.ImageItem()
        self.overlay_item.setZValue(1)
        self.view.addItem(self.image_item)
        self.view.addItem(self.overlay_item)
        self.color_bar: pg.ColorBarItem | None = None
        if color_bar:
            self.color_bar = pg.ColorBarItem(colorMap=pg.colormap.get("inferno"), values=(0, 1),
                                             width=COLOR_BAR_WIDTH, interactive=False, colorMapMenu=False)
            self.color_bar.axis.setTextPen(FOREGROUND)
            self.graphics.addItem(self.color_bar, row=1, col=1)
            self.graphics.ci.layout.setColumnFixedWidth(1, COLOR_BAR_COLUMN)
            self.color_bar.hide()
        self.set_colormap("inferno")

        self.empty_hint = QLabel(hint)
        self.empty_hint.setWordWrap(True)
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_hint.setStyleSheet(f"background: {BACKGROUND}; color: #bdc1c6; font-size: 14px; padding: 12px;")
        self.stack = QStackedLayout(self)
        self.stack.addWidget(self.empty_hint)
        self.stack.addWidget(self.graphics)
        self._image_shape: tuple[int, ...] | None = None
        self._pixels: np.ndarray | None = None

    def set_hint(self, text: str | None = None) -> None:
        """What the view says while it has no image (None: how to open one)."""
        self.empty_hint.setText(text or EMPTY_HINT)

    def set_title(self, text: str) -> None:
        self.title_item.setText(text)
        self.title_item.setVisible(bool(text))

    def set_image(self, pixels: np.ndarray | None) -> None:
        """An RGB uint8 (rows, cols, 3) image, or None for the empty hint."""
        if pixels is None:
            self._image_shape = None
            self._pixels = None
            self.image_item.clear()
            self.stack.setCurrentWidget(self.empty_hint)
            return
        if pixels is self._pixels:  # the same array again: nothing to redraw
            return
        self._pixels = pixels
        self.image_item.setImage(pixels, autoLevels=False, levels=(0, 255))
        if pixels.shape != self._image_shape:
            self._image_shape = pixels.shape
            self.view.autoRange(padding=0.02)
        self.stack.setCurrentWidget(self.graphics)

    def set_colormap(self, name: str, signed: bool = False) -> None:
        """Colour maps with ``name``; a ``signed`` map (levels symmetric about 0) fades to transparent
        at the colormap's centre, as the core's ``overlay`` and figures draw it."""
        if (name, signed) == self._colormap_name:
            return
        self._colormap_name = (name, signed)
        colormap = _colormap(name)
        self.overlay_item.setColorMap(_centre_faded(colormap) if signed else colormap)
        if self.color_bar is not None:
            self.color_bar.setColorMap(colormap)

    def set_label(self, text: str) -> None:
        """The colour bar's label: what the map's values are."""
        if self.color_bar is not None:
            self.color_bar.axis.setLabel(text, color=FOREGROUND)

    def set_map(self, pixels: np.ndarray | None, levels: tuple[float, float] = (0.0, 1.0),
                opacity: float = 0.6) -> None:
        """Draw ``pixels`` (same size as the image; NaN transparent) with ``levels``, or clear the map."""
        if pixels is None:
            self.overlay_item.clear()
            if self.color_bar is not None:
                self.color_bar.hide()
            return
        self.overlay_item.setImage(pixels, autoLevels=False, levels=levels)
        self.overlay_item.setOpacity(opacity)
        if self.color_bar is not None:
            self.color_bar.setLevels(values=levels)
            self.color_bar.show()

    def reset_zoom(self) -> None:
        self.view.autoRange(padding=0.02)

    @property
    def overlay(self) -> np.ndarray | None:
        """The map currently drawn over the image (for tests and screenshots)."""
        return self.overlay_item.image


def _colormap(name: str) -> pg.ColorMap:
    """pyqtgraph's colormap of that name, else matplotlib's (the diverging one of signed maps)."""
    try:
        return pg.colormap.get(name)
    except (FileNotFoundError, KeyError, ValueError):
        return pg.colormap.getFromMatplotlib(name)


def _centre_faded(colormap: pg.ColorMap, steps: int = 256) -> pg.ColorMap:
    """``colormap`` with its opacity growing from 0 at its centre to full at either end."""
    positions = np.linspace(0.0, 1.0, steps)
    colours = colormap.map(positions, mode=pg.ColorMap.BYTE).astype(np.uint8)
    colours[:, 3] = np.round(np.abs(positions - 0.5) * 2 * 255).astype(np.uint8)
    return pg.ColorMap(positions, colours)
