"""The answer as a row of token chips, coloured by how sure the model was of each token, or by how
much the image made it likely (visual relevance).

A ``QListWidget`` in wrapping left-to-right mode gives the flow layout, hit testing, selection and
tooltips; a small delegate paints each item as a rounded chip. Selection lives in the state: a
click selects through it, and the bar follows it.
"""

from __future__ import annotations

import html

import numpy as np
from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QKeyEvent, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QListView,
    QListWidget,
    QListWidgetItem,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QWidget,
)

from lvlm_studio.core.tracing.token_stats import percent
from lvlm_studio.gui.state import StudioState

PROBABILITY_ROLE = Qt.ItemDataRole.UserRole
COLOR_ROLE = Qt.ItemDataRole.UserRole + 1
RELEVANCE_SCALE = 3.0  # nats of LLR that colour a chip fully
CHIP_PADDING = QSize(9, 5)  # inside a chip, around its text
CHIP_MARGIN = 3  # between chips


def probability_color(probability: float) -> QColor:
    """Red for an unsure token, through yellow, to green for a confident one (pastel, so dark text
    stays readable on every chip)."""
    p = float(np.clip(probability, 0.0, 1.0))
    return QColor.fromHsvF(p / 3.0, 0.5, 0.96)  # hue 0 (red) to 1/3 (green)


def relevance_color(llr: float, relevant: bool) -> QColor:
    """Grey for a token the image did not make likely, through to strong blue for one it did
    (LLR of ``RELEVANCE_SCALE`` nats or more); visually relevant tokens are never grey."""
    strength = float(np.clip(llr / RELEVANCE_SCALE, 0.0, 1.0))
    if relevant:
        strength = max(strength, 0.35)
    return QColor.fromHsvF(0.6, 0.08 + 0.5 * strength, 0.93)


def chip_text(token: str) -> str:
    """A token as a chip shows it: visible whitespace, never an empty chip."""
    shown = token.replace("\n", "\u23ce").replace("\t", "\u21e5")
    return shown.strip() or repr(token)


def tooltip(token: str, probability: float, alternatives: list[str], alt_probabilities: np.ndarray) -> str:
    """The token's probability and the model's top alternatives at that step, as a small table."""
    rows = "".join(
        f"<tr><td>{'<b>' if alt == token else ''}{html.escape(chip_text(alt))}{'</b>' if alt == token else ''}"
        f"</td><td align='right'>&nbsp;&nbsp;{percent(p)}</td></tr>"
        for alt, p in zip(alternatives, alt_probabilities)
    )
    return (f"<b>{html.escape(chip_text(token))}</b>: probability {percent(probability)}"
            f"<br>The model's top choices at this step:<table>{rows}</table>")


class ChipDelegate(QStyledItemDelegate):
    """Paints an item as a rounded chip filled with its probability colour; the selected chip gets
    a thick outline in the highlight colour (the fill keeps showing the probability)."""

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex) -> QSize:
        width = QFontMetrics(option.font).horizontalAdvance(index.data(Qt.ItemDataRole.DisplayRole))
        height = option.fontMetrics.height()
        return QSize(width + 2 * CHIP_PADDING.width(), height + 2 * CHIP_PADDING.height())

    def paint(
        self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        rect = QRect(option.rect).adjusted(1, 1, -1, -1)
        fill = index.data(COLOR_ROLE) or probability_color(index.data(PROBABILITY_ROLE))
        outline = option.palette.color(QPalette.ColorRole.Highlight) if selected else fill.darker(130)
        painter.setPen(QPen(outline, 3 if selected else 1))
        painter.setBrush(fill)
        painter.drawRoundedRect(rect, 7, 7)
        painter.setPen(QColor(20, 20, 20))
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, index.data(Qt.ItemDataRole.DisplayRole))
        painter.restore()


class TokenBar(QListWidget):
    """The answer's tokens as chips: click one, or step with Left/Right, to select it."""

    def __init__(self, state: StudioState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(True)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setSpacing(CHIP_MARGIN)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setItemDelegate(ChipDelegate(self))
        self.setAccessibleName("Answer tokens")
        self.currentRowChanged.connect(self._on_current_row)
        state.subscribe(self._on_state)

    def _on_state(self, name: str) -> None:
        if name == "trace":
            self._rebuild()
        elif name == "selected":
            self._show_selection()
        elif name in ("stats", "view"):
            self._recolor()

    def _rebuild(self) -> None:
        self.blockSignals(True)
        self.clear()
        trace = self.state.trace
        if trace is not None:
            for i, token in enumerate(trace.answer_tokens):
                probability = float(trace.probabilities[i])
                item = QListWidgetItem(chip_text(token))
                item.setData(PROBABILITY_ROLE, probability)
                self.addItem(item)
        self.blockSignals(False)
        self._recolor()
        self._show_selection()

    def _recolor(self) -> None:
        """Chip colours (and tooltips) for the chosen colouring; relevance needs the token statistics."""
        trace, stats = self.state.trace, self.state.stats
        if trace is None:
            return
        by_relevance = self.state.chip_mode == "relevance" and stats is not None
        for i in range(self.count()):
            item = self.item(i)
            probability = float(trace.probabilities[i])
            text = tooltip(trace.answer_tokens[i], probability, trace.top_tokens[i], np.exp(trace.top_logprobs[i]))
            if stats is not None:
                text += (f"<br>Visual relevance: {stats.llr[i]:+.2f} nats"
                         f"{' (relevant)' if stats.relevant[i] else ''}; entropy {stats.entropy[i]:.2f} nats")
            item.setToolTip(text)
            item.setData(COLOR_ROLE, relevance_color(stats.llr[i], bool(stats.relevant[i])) if by_relevance else None)
        self.viewport().update()

    def _show_selection(self) -> None:
        self.blockSignals(True)
        if self.state.selected is None:
            self.clearSelection()
            self.setCurrentRow(-1)
        else:
            self.setCurrentRow(self.state.selected)
            self.scrollToItem(self.currentItem())
        self.blockSignals(False)

    def _on_current_row(self, row: int) -> None:
        self.state.select(row if row >= 0 else None)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        # The tokens read as one line even when the chips wrap: Left/Right step through the answer.
        steps = {Qt.Key.Key_Left: -1, Qt.Key.Key_Right: 1}
        if event.key() in steps and event.modifiers() == Qt.KeyboardModifier.NoModifier:
            self.state.step(steps[event.key()])
        elif event.key() == Qt.Key.Key_Home:
            self.state.select(0)
        elif event.key() == Qt.Key.Key_End and self.state.trace is not None:
            self.state.select(len(self.state.trace.answer_tokens) - 1)
        else:
            super().keyPressEvent(event)
