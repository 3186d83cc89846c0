"""The attention grid: layers x heads, how much of the selected token's attention lands on the image.

Each cell is the share of one head's attention (from the query that predicts the selected token)
that falls on image tokens: bright heads look at the picture, dark ones at the text. Clicking a
cell shows that head's map in every map view (it becomes the method "head:Ll.Hh"). The numbers
come from one eager pass per answer, in the core (``lvlm_studio.core.tracing.head_attention``).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QGraphicsRectItem, QLabel, QVBoxLayout, QWidget

from lvlm_studio.gui.api import BACKGROUND, FOREGROUND, PanelContext


def heat_map(left: str, bottom: str, marker: str, marker_width: int):
    """A clickable heat map on the app's dark background: (graphics, plot, image, marker, bar), the
    rows going down, one cell per row and column, a rectangle outlining the chosen cell (``marker``
    says which) and a viridis colour bar."""
    graphics = pg.GraphicsLayoutWidget()
    graphics.setBackground(BACKGROUND)
    plot = graphics.addPlot(row=0, col=0)
    plot.setMenuEnabled(False)
    plot.setMouseEnabled(x=False, y=False)
    plot.hideButtons()
    plot.invertY(True)
    plot.setLabel("left", left, color=FOREGROUND)
    plot.setLabel("bottom", bottom, color=FOREGROUND)
    for axis in ("left", "bottom"):
        plot.getAxis(axis).setTextPen(FOREGROUND)
    image = pg.ImageItem()
    image.setColorMap(pg.colormap.get("viridis"))
    plot.addItem(image)
    outline = QGraphicsRectItem(0, 0, 1, 1)
    outline.setToolTip(marker)
    outline.setPen(pg.mkPen("#f28b82", width=marker_width, cosmetic=True))
    outline.setZValue(2)
    outline.hide()
    plot.addItem(outline)
    bar = pg.ColorBarItem(colorMap=pg.colormap.get("viridis"), values=(0, 1), width=14,
                          interactive=False, colorMapMenu=False)
    bar.axis.setTextPen(FOREGROUND)
    graphics.addItem(bar, row=0, col=1)
    return graphics, plot, image, outline, bar


class AttentionGridPanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.graphics, self.plot, self.image, self.marker, self.bar = heat_map(
            "layer", "head", "the chosen head", marker_width=3)
        self.image.mouseClickEvent = self._on_click  # type: ignore[method-assign]
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        # Two lines kept: a caption that wraps for one token and not the next would resize the grid
        # (and re-lay its axes) on every switch.
        self.caption.setMinimumHeight(2 * self.caption.fontMetrics().lineSpacing() + 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.caption)
        self.chosen: tuple[int, int] | None = None
        self._shape: tuple[int, ...] = ()
        context.subscribe(self._on_change, self)
        self.redraw()

    def _on_change(self, name: str) -> None:
        if name == "trace":
            self.chosen = None
        if name in ("trace", "heads", "selected", "activity", "method"):
            self.redraw()

    def mass(self) -> np.ndarray | None:
        """[layers, heads] image share for the selected token, or None."""
        heads, selected = self.context.heads, self.context.selected
        if heads is None or selected is None:
            return None
        return heads.image_mass(selected)

    def redraw(self) -> None:
        context = self.context
        if context.trace is not None and context.heads is None and self.isVisible():
            context.request_heads()
        mass = self.mass()
        self.marker.setVisible(mass is not None and self.chosen is not None)
        if mass is None:
            self.image.clear()
        else:
            levels = (0.0, 1.0)  # a share of the attention: the same scale for every token and model
            self.image.setImage(mass, autoLevels=False, levels=levels)  # row-major: rows are layers
            self.bar.setLevels(values=levels)
            if mass.shape != self._shape:  # axes only change with the model
                self._shape = mass.shape
                self.plot.setRange(xRange=(0, mass.shape[1]), yRange=(0, mass.shape[0]), padding=0.02)
                for axis, count in (("bottom", mass.shape[1]), ("left", mass.shape[0])):
                    step = max(1, count // 16)  # at most about 16 labels
                    self.plot.getAxis(axis).setTicks([[(i + 0.5, str(i)) for i in range(0, count, step)], []])
            if self.chosen is not None:
                self.marker.setRect(self.chosen[1], self.chosen[0], 1, 1)
        self._update_caption(mass)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self.context.trace is not None and self.context.heads is None:
            self.context.request_heads()

    def _update_caption(self, mass: np.ndarray | None) -> None:
        context = self.context
        if context.trace is None:
            text = "After an answer: per layer and head, the share of the selected token's attention on the image."
        elif context.heads is None and context.is_running("heads"):
            text = "Computing every head's attention (one pass)\u2026"
        elif context.heads is None:
            text = "Attention per head needs the model."
        elif mass is None:
            text = "Select a token to see how much each head attends to the image."
        else:
            layer, head = np.unravel_index(int(np.argmax(mass)), mass.shape)
            text = (f"\u201c{(context.selected_token or '').strip()}\u201d: image share {mass.min():.2f} to "
                    f"{mass.max():.2f}, most in layer {layer}, head {head}. Click a cell to show that head's map.")
        self.caption.setText(text)

    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        """(layer, head) under image coordinates (x = head, y = layer), or None outside."""
        mass = self.mass()
        if mass is None:
            return None
        layer, head = int(np.floor(y)), int(np.floor(x))
        if 0 <= layer < mass.shape[0] and 0 <= head < mass.shape[1]:
            return layer, head
        return None

    def choose(self, layer: int, head: int) -> None:
        """Show head (layer, head)'s map in the map views."""
        self.chosen = (layer, head)
        self.context.show_head(layer, head)
        self.redraw()

    def _on_click(self, event) -> None:
        position = event.pos()
        cell = self.cell_at(position.x(), position.y())
        if cell is not None:
            event.accept()
            self.choose(*cell)
