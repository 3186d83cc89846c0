"""Logit lens across layers, for the selected answer token or an image patch.

After each decoder layer, the residual stream at one position is read out through the model's final
norm and LM head (``lens_at`` in the core; the same read-out as the "when vision enters" study's
lens): at the query that predicts the selected answer token, or at one image token ("what does
this patch say"). The plot gives the probability of the selected answer token per layer (at the
last layer, at the query, it is the model's own probability); the table the ``k`` most likely
tokens per layer, the answer token in bold. One forward pass per position, on the worker thread,
cached per answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.api import LensAt, lens_at
from lvlm_studio.gui.api import BACKGROUND, FOREGROUND, PanelContext

ANSWER, PATCH = "at the answer token", "at an image patch"


class LogitLensPanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.where = QComboBox()
        self.where.addItems([ANSWER, PATCH])
        self.patch_box = QSpinBox()
        self.patch_box.setPrefix("image token ")
        self.patch_label = QLabel()
        self.k_box = QSpinBox()
        self.k_box.setRange(1, 20)
        self.k_box.setValue(5)
        self.k_box.setPrefix("top ")
        controls = QHBoxLayout()
        for widget in (QLabel("Lens"), self.where, self.patch_box, self.patch_label, self.k_box):
            controls.addWidget(widget)
        controls.addStretch(1)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.plot = self.graphics.addPlot()
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setLabel("left", "p(answer token)", color=FOREGROUND)
        self.plot.setLabel("bottom", "layer", color=FOREGROUND)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen(FOREGROUND)
        self.plot.setYRange(0, 1, padding=0.02)
        self.curve = self.plot.plot([], [], pen=pg.mkPen("#e8a33c", width=2), symbol="o", symbolSize=6,
                                    symbolBrush="#e8a33c")
        self.table = QTableWidget()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        splitter = QSplitter()
        splitter.addWidget(self.graphics)
        splitter.addWidget(self.table)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 2)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(controls)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.caption)
        self.cache: dict[tuple[int, int, int | None, int], LensAt] = {}
        self.running: set[tuple[int, int, int | None, int]] = set()
        self.failed: dict[tuple[int, int, int | None, int], str] = {}
        for box in (self.patch_box, self.k_box):
            box.valueChanged.connect(lambda _: self.redraw())
        self.where.currentIndexChanged.connect(lambda _: self.redraw())
        context.subscribe(self._on_change, self)
        self.redraw()

    def _on_change(self, name: str) -> None:
        if name == "trace":
            self.cache.clear()
            self.failed.clear()
        if name in ("trace", "selected", "activity"):
            self.redraw()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.redraw()

    # -- what is asked -----------------------------------------------------------------------------
    def patch(self) -> int | None:
        """The chosen image token (an index into ``trace.image_positions``), or None at the answer."""
        return self.patch_box.value() if self.where.currentText() == PATCH else None

    def key(self) -> tuple[int, int, int | None, int] | None:
        trace, token = self.context.trace, self.context.selected
        if trace is None or token is None:
            return None
        return id(trace), token, self.patch(), self.k_box.value()

    def set_patch(self, index: int) -> None:
        """Read the lens at image token ``index`` (an index into ``trace.image_positions``)."""
        self.where.setCurrentText(PATCH)
        self.patch_box.setValue(index)

    def request(self) -> None:
        """Start the lens for the current choice on the worker thread, unless it is known or running."""
        context, key = self.context, self.key()
        if key is None or context.model is None or key in self.cache or key in self.running or key in self.failed:
            return
        trace, model, (_, token, patch, k) = context.trace, context.model, key
        self.running.add(key)

        def work(report: Any, cancel: Any) -> LensAt:
            return lens_at(model, trace, token, k=k, patch=patch)

        def done(found: LensAt) -> None:
            self.running.discard(key)
            self.cache[key] = found
            self.redraw()

        job = context.run_job("Logit lens", work, done)
        job.failed.connect(lambda exc, _details: self._failed(key, exc))
        job.cancelled.connect(lambda: self.running.discard(key))

    def _failed(self, key: tuple, exc: BaseException) -> None:
        self.running.discard(key)
        self.failed[key] = str(exc)
        self.redraw()

    # -- drawing -----------------------------------------------------------------------------------
    def redraw(self) -> None:
        trace = self.context.trace
        patches = len(trace.image_positions) if trace is not None else 0
        self.patch_box.setRange(0, max(patches - 1, 0))
        self.patch_box.setEnabled(self.where.currentText() == PATCH and patches > 0)
        self.patch_label.setText(self._patch_name())
        if self.isVisible():
            self.request()
        key = self.key()
        found = self.cache.get(key) if key is not None else None
        self._fill(found)
        self._caption(key, found)

    def _patch_name(self) -> str:
        trace = self.context.trace
        if trace is None or self.patch() is None or not len(trace.image_positions):
            return ""
        index = self.patch()
        for region in trace.regions:
            if index < len(region.positions):
                row, col = divmod(index, region.grid[1])
                return f"(row {row}, column {col})"
            index -= len(region.positions)
        return ""

    def _fill(self, found: LensAt | None) -> None:
        if found is None:
            self.curve.setData([], [])
            self.table.clear()
            self.table.setRowCount(0)
            self.table.setColumnCount(0)
            return
        layers = len(found.token_prob)
        self.curve.setData(np.arange(layers), found.token_prob)
        self.plot.setXRange(-0.5, layers - 0.5, padding=0)
        k = found.top_ids.shape[1]
        self.table.setRowCount(layers)
        self.table.setColumnCount(k + 1)
        self.table.setHorizontalHeaderLabels(["answer: p, rank", *[f"#{i + 1}" for i in range(k)]])
        self.table.setVerticalHeaderLabels([f"layer {layer}" for layer in range(layers)])
        bold = QFont()
        bold.setBold(True)
        for layer in range(layers):
            item = QTableWidgetItem(f"{found.token_prob[layer]:.3f}, #{found.token_rank[layer] + 1}")
            item.setBackground(_shade(found.token_prob[layer]))
            self.table.setItem(layer, 0, item)
            for i in range(k):
                text, prob = found.top_tokens[layer][i], found.top_probs[layer, i]
                item = QTableWidgetItem(f"{(text.strip() or repr(text))[:12]} {prob:.2f}")
                item.setToolTip(f"{text!r}: p = {prob:.4f}")
                item.setBackground(_shade(prob))
                if int(found.top_ids[layer, i]) == found.token_id:
                    item.setFont(bold)
                self.table.setItem(layer, i + 1, item)

    def _caption(self, key: tuple | None, found: LensAt | None) -> None:
        context = self.context
        token = (context.selected_token or "").strip()
        if context.trace is None:
            text = "After an answer: what each layer would predict, for the selected token or an image patch."
        elif key is None:
            text = "Select an answer token to read the lens for it."
        elif key in self.failed:
            text = self.failed[key]
        elif found is None:
            text = "Reading every layer out through the LM head\u2026" if key in self.running else \
                "The logit lens needs the model."
        else:
            where = f"image token {key[2]} {self._patch_name()}" if key[2] is not None else \
                f"the query that predicts \u201c{token}\u201d"
            below = np.flatnonzero(found.token_rank != 0)
            stays = 0 if not len(below) else int(below[-1]) + 1  # on top from this layer to the last
            text = (f"Lens at {where}: p(\u201c{token}\u201d) after the last layer {found.token_prob[-1]:.3f}"
                    + (f"; the top token from layer {stays} on" if stays < len(found.token_rank)
                       else "; not the top token after the last layer")
                    + ". The answer token is in bold; # is the rank (1 = top).")
        self.caption.setText(text)


def _shade(prob: float) -> QBrush:
    """A cell's background: transparent at p = 0, a clear orange at p = 1."""
    return QBrush(QColor(232, 163, 60, int(round(200 * float(np.clip(prob, 0, 1))))))
