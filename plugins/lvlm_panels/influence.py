"""Text vs image influence: for each answer token, the share of its relevance on the image and on the
prompt's words, and each prompt word's share for the selected token.

The shares come from relevancy (the method that keeps relevance on the text positions too) through
``influence_shares`` in the core: image share + the prompt words' shares = 1 for every token. The
top plot stacks the image's share (blue) on the prompt text's (orange) per answer token, or per
answer word with "Join sub-word tokens"; clicking a bar selects its token. The bottom plot splits
the selected token's relevance over the prompt's words (sub-word tokens joined into words).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from lvlm_studio.api import InfluenceShares, LVLMError, influence_shares
from lvlm_studio.gui.api import BACKGROUND, FOREGROUND, PanelContext

#: The method whose relevance covers the prompt text as well as the image.
METHOD = "relevancy"
IMAGE_COLOUR, TEXT_COLOUR = "#4e8fd8", "#e8a33c"


class InfluencePanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.words_box = QCheckBox("Join sub-word tokens of the answer into words")
        self.words_box.toggled.connect(lambda _: self.redraw())
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.tokens_plot = self._plot(0, "%", "answer token: image vs prompt text")
        self.tokens_plot.setYRange(0, 100, padding=0.02)
        self.tokens_plot.getAxis("left").setTicks([[(v, str(v)) for v in (0, 50, 100)], []])
        self.words_plot = self._plot(1, "%", "prompt word: share of the selected token")
        self.image_bars = pg.BarGraphItem(x=[], height=[], width=0.7, brush=IMAGE_COLOUR)
        self.text_bars = pg.BarGraphItem(x=[], height=[], y0=[], width=0.7, brush=TEXT_COLOUR)
        self.chosen = pg.BarGraphItem(x=[], height=[], width=0.8, brush=pg.mkBrush(0, 0, 0, 0),
                                     pen=pg.mkPen("#f28b82", width=2))  # outlines the selected token
        for item in (self.image_bars, self.text_bars, self.chosen):
            self.tokens_plot.addItem(item)
        self.word_bars = pg.BarGraphItem(x=[], height=[], width=0.7, brush=TEXT_COLOUR)
        self.words_plot.addItem(self.word_bars)
        self.tokens_plot.scene().sigMouseClicked.connect(self._on_click)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        key = QLabel(f'<span style="color:{IMAGE_COLOUR}">\u25a0</span> image &nbsp; '
                     f'<span style="color:{TEXT_COLOUR}">\u25a0</span> prompt text')
        top = QHBoxLayout()
        top.addWidget(self.words_box)
        top.addStretch(1)
        top.addWidget(key)
        layout.addLayout(top)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.caption)
        self.shares: InfluenceShares | None = None
        self._made_from: tuple[int, int, bool] | None = None  # (trace, explanation, words) the shares are of
        self.problem: str | None = None
        context.subscribe(self._on_change, self)
        self.redraw()

    def _plot(self, row: int, left: str, bottom: str) -> pg.PlotItem:
        plot = self.graphics.addPlot(row=row, col=0)
        plot.setMenuEnabled(False)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        plot.setLabel("left", left, color=FOREGROUND)
        plot.setLabel("bottom", bottom, color=FOREGROUND)
        for axis in ("left", "bottom"):
            plot.getAxis(axis).setTextPen(FOREGROUND)
        plot.getAxis("left").enableAutoSIPrefix(False)
        return plot

    def _on_change(self, name: str) -> None:
        if name in ("trace", "explanations", "selected", "activity", "registry"):
            self.redraw()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.redraw()

    # -- computing ---------------------------------------------------------------------------------
    def compute(self) -> InfluenceShares | None:
        """The shares of the current answer (cached per trace, explanation and word mode), or None."""
        context = self.context
        trace, explanation = context.trace, context.explanations.get(METHOD)
        if trace is None or explanation is None or context.model is None:
            return None
        # the maps of a method that works token by token arrive one at a time into one explanation
        key = (id(trace), id(explanation), len(explanation.maps), self.words_box.isChecked())
        if key != self._made_from:
            self._made_from, self.problem = key, None
            try:
                self.shares = influence_shares(trace, explanation, context.model.processor.tokenizer,
                                               answer_words=self.words_box.isChecked())
            except LVLMError as exc:
                self.shares, self.problem = None, str(exc)
        return self.shares

    def selected_row(self) -> int | None:
        """The row (answer token or word) that holds the selected token."""
        selected = self.context.selected
        if self.shares is None or selected is None:
            return None
        return next((row for row, tokens in enumerate(self.shares.tokens) if selected in tokens), None)

    # -- drawing -----------------------------------------------------------------------------------
    def redraw(self) -> None:
        context = self.context
        if (context.trace is not None and METHOD not in context.explanations and self.isVisible()
                and METHOD in context.methods()):
            context.request_explanation(METHOD)
        shares = self.compute()
        if shares is None:
            for bars in (self.image_bars, self.chosen, self.word_bars):
                bars.setOpts(x=[], height=[])
            self.text_bars.setOpts(x=[], y0=[], height=[])
            self._caption(None)
            return
        x = np.arange(len(shares.labels))
        image = 100 * np.nan_to_num(shares.image)  # drawn in percent
        self.image_bars.setOpts(x=x, height=image)
        self.text_bars.setOpts(x=x, y0=image, height=100 * np.nan_to_num(shares.text))
        self.tokens_plot.getAxis("bottom").setTicks([[(i, label) for i, label in enumerate(shares.labels)], []])
        self.tokens_plot.setXRange(-0.6, len(x) - 0.4, padding=0)
        row = self.selected_row()
        self.chosen.setOpts(x=[] if row is None else [row], height=[] if row is None else [100.0])
        values = 100 * (np.nan_to_num(shares.word_shares[row]) if row is not None else np.zeros(len(shares.words)))
        self.word_bars.setOpts(x=np.arange(len(shares.words)), height=values)
        self.words_plot.getAxis("bottom").setTicks([[(i, w) for i, w in enumerate(shares.words)], []])
        self.words_plot.setXRange(-0.6, max(len(shares.words), 1) - 0.4, padding=0)
        self.words_plot.setYRange(0, max(float(values.max(initial=0.0)), 5.0) * 1.1, padding=0)
        self._caption(row)

    def _caption(self, row: int | None) -> None:
        context, shares = self.context, self.shares
        if context.trace is None:
            text = "After an answer: how much of each answer token's relevance lies on the image vs the prompt's words."
        elif METHOD not in context.methods():
            text = "Needs the relevancy method, which is not installed."
        elif context.is_running(f"explain:{METHOD}"):
            text = "Computing relevancy over the image and the prompt\u2026"
        elif self.problem is not None:
            text = self.problem
        elif shares is None:
            text = "Relevancy could not be computed for this answer." if context.has_failed(
                f"explain:{METHOD}") else "Relevancy needs the model."
        elif row is None:
            text = "Select a token to split its relevance over the prompt's words."
        else:
            top = int(np.nanargmax(shares.word_shares[row])) if shares.words and np.isfinite(
                shares.word_shares[row]).any() else None
            text = (f"\u201c{shares.labels[row]}\u201d: image {shares.image[row]:.0%}, prompt text "
                    f"{shares.text[row]:.0%}" + (f", most on \u201c{shares.words[top]}\u201d "
                                                 f"({shares.word_shares[row, top]:.0%})" if top is not None else "")
                    + ". Shares of relevancy's relevance; image + words = 100%.")
        self.caption.setText(text)

    def _on_click(self, event) -> None:
        if self.shares is None:
            return
        point = self.tokens_plot.vb.mapSceneToView(event.scenePos())
        row = int(round(point.x()))
        if 0 <= row < len(self.shares.tokens) and self.tokens_plot.sceneBoundingRect().contains(event.scenePos()):
            self.context.select(self.shares.tokens[row][0])
