"""Three attention views as panels: a gallery of every head's map, patch -> text, question -> answer.

- ``HeadGalleryPanel``: for the selected answer token, one small overlay per (layer, head) over a
  chosen layer range, all on one colour scale; clicking a cell shows that head's map everywhere
  (as the attention grid does). It reads the app's per-head attention (one pass per answer).
- ``PatchTextPanel``: click or drag on the image to select patches; the prompt's and the answer's
  tokens are coloured by how much of their attention lands on the selection (and drawn as bars),
  averaged over the chosen layers and heads.
- ``QuestionAnswerPanel``: answer tokens x the question's tokens (or words) as a heat map of the
  decoder's self-attention, averaged over the chosen layers and heads.

The numbers are computed in the core (``lvlm_studio.api``: ``head_gallery``,
``patch_text_attention``, ``question_answer_attention``); one pass per answer, on the worker thread.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QImage, QPainterPath, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QGraphicsPathItem,
    QGraphicsRectItem,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from lvlm_panels.heads import heat_map
from lvlm_studio.api import (
    GALLERY_GAP,
    GALLERY_MARGIN,
    InputError,
    gallery_cell_at,
    head_gallery,
    patch_text_attention,
    patches_in_box,
    question_answer_attention,
    render_gallery,
    run_job,
)
from lvlm_studio.gui.api import BACKGROUND, FOREGROUND, PanelContext

#: Side of one map in the gallery, in pixels: as wide as the panel allows, within these bounds.
SMALLEST_CELL, LARGEST_CELL = 48, 128
#: Layers the gallery shows at first (a real model's 32 layers x 32 heads would be 1,024 maps).
FIRST_LAYERS = 4


def _pixmap(picture: Any) -> QPixmap:
    """A PIL RGB image as a QPixmap (copied: the bytes need not outlive the call)."""
    data = picture.convert("RGB").tobytes()
    image = QImage(data, picture.size[0], picture.size[1], 3 * picture.size[0], QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


def _colormap(context: PanelContext) -> str:
    """The window's colormap, or inferno if matplotlib does not know it."""
    from matplotlib import colormaps

    name = context.view["colormap"]
    return name if name in colormaps else "inferno"


def _choice_edit(tip: str) -> QLineEdit:
    edit = QLineEdit("all")
    edit.setToolTip(tip)
    edit.setMaximumWidth(110)
    return edit


class _PassPanel(QWidget):
    """A panel whose data is one pass per answer, run on the worker thread when first needed."""

    title = ""

    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.data: Any = None
        self._for: Any = None  # the trace ``data`` (or the job running) belongs to
        self._failed: Any = None

    def _averaging_controls(self) -> QHBoxLayout:
        """The "Layers" and "Heads" edits (what the view averages over; editing redraws), in a row."""
        self.layers_edit = _choice_edit("layers to average, e.g. 0-3, 0,2 or -1 (the last)")
        self.heads_edit = _choice_edit("heads to average, e.g. 0,1")
        controls = QHBoxLayout()
        for label, edit in (("Layers", self.layers_edit), ("Heads", self.heads_edit)):
            edit.editingFinished.connect(self.redraw)
            controls.addWidget(QLabel(label))
            controls.addWidget(edit)
        return controls

    def compute(self, trace: Any, model: Any) -> Any:  # the core's job, on the worker thread
        raise NotImplementedError

    def request(self) -> None:
        """Start the pass for the current trace unless it is done, running or has failed."""
        context, trace = self.context, self.context.trace
        if trace is None or context.model is None or self._for is trace or self._failed is trace:
            return
        self._for, self.data, model = trace, None, context.model

        def work(report, cancel):
            return run_job(self.compute(trace, model), report, cancel)

        def done(result: Any) -> None:
            if self._for is trace:
                self.data = result
                self.redraw()

        job = context.run_job(self.title, work, done)
        job.failed.connect(lambda *_: self._mark_failed(trace))
        job.cancelled.connect(lambda: self._mark_failed(trace))

    def _mark_failed(self, trace: Any) -> None:
        if self._for is trace:  # a job for an earlier answer may end after the next one started
            self._failed, self._for = trace, None
            self.redraw()

    def waiting_text(self) -> str | None:
        """What to say instead of the view while there is nothing to show yet, or None."""
        context = self.context
        if context.trace is None:
            return "Ask a question first."
        if self.data is None and context.model is None:
            return "This view needs the model; load it."
        if self.data is None and self._failed is context.trace:
            return "The attention pass was cancelled or failed; ask again to retry."
        if self.data is None:
            return "Computing the attention (one pass)\u2026"
        return None

    def _on_change(self, name: str) -> None:
        if name == "trace":
            self.data, self._for, self._failed = None, None, None
        if name in ("trace", "selected", "view", "heads", "activity"):
            self.redraw()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.redraw()

    def redraw(self) -> None:
        raise NotImplementedError


# -- 1. the gallery -------------------------------------------------------------------------------
class HeadGalleryPanel(QWidget):
    """Every (layer, head)'s map of the selected token over a layer range, on one colour scale."""

    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.first = QSpinBox()
        self.last = QSpinBox()
        for box, tip in ((self.first, "first layer shown"), (self.last, "last layer shown")):
            box.setToolTip(tip)
            box.valueChanged.connect(self.redraw)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Layers"))
        controls.addWidget(self.first)
        controls.addWidget(QLabel("to"))
        controls.addWidget(self.last)
        controls.addStretch(1)
        self.picture = QLabel()
        self.picture.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        self.picture.mousePressEvent = self._on_press  # type: ignore[method-assign]
        self.scroll = QScrollArea()
        self.scroll.setWidget(self.picture)
        self.scroll.setWidgetResizable(True)
        self.scroll.setStyleSheet(f"background: {BACKGROUND};")
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(controls)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.caption)
        self.gallery: Any = None
        self.cell = SMALLEST_CELL
        self._layers = 0
        context.subscribe(self._on_change, self)
        self.redraw()

    def _on_change(self, name: str) -> None:
        if name in ("trace", "heads", "selected", "view", "activity"):
            self.redraw()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.redraw()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.gallery is not None and self._cell_size(self.gallery.heads) != self.cell:
            self.redraw()

    def _cell_size(self, heads: int) -> int:
        """The side of one map that fits every head of a row into the panel's width."""
        room = self.scroll.viewport().width() - GALLERY_MARGIN - 4
        return int(min(LARGEST_CELL, max(SMALLEST_CELL, room // max(heads, 1) - GALLERY_GAP)))

    def _fit_range(self, layers: int) -> None:
        """Layer spin boxes for a model of ``layers`` layers (the first few chosen at first)."""
        if layers == self._layers:
            return
        self._layers = layers
        for box in (self.first, self.last):
            box.blockSignals(True)
            box.setRange(0, layers - 1)
        self.first.setValue(0)
        self.last.setValue(min(layers, FIRST_LAYERS) - 1)
        for box in (self.first, self.last):
            box.blockSignals(False)

    def redraw(self) -> None:
        context = self.context
        heads, token = context.heads, context.selected
        if context.trace is not None and heads is None and self.isVisible():
            context.request_heads()
        self.gallery = None
        if heads is None or token is None or context.trace is None:
            self.picture.clear()
            self.caption.setText(self._waiting_text())
            return
        self._fit_range(heads.shape[0])
        first, last = sorted((self.first.value(), self.last.value()))
        self.gallery = head_gallery(heads, context.trace, token, list(range(first, last + 1)))
        colormap = _colormap(context)
        self.cell = self._cell_size(heads.shape[1])
        picture = render_gallery(self.gallery, context.trace, colormap, self.cell)
        self.picture.setPixmap(_pixmap(picture))
        self.picture.setFixedSize(picture.size[0], picture.size[1])
        peaks = np.max([m.reshape(*m.shape[:2], -1).max(-1) for m in self.gallery.maps], axis=0)  # [layers, heads]
        strongest = np.unravel_index(int(np.argmax(peaks)), peaks.shape)
        self.caption.setText(
            f"\u201c{(context.selected_token or '').strip()}\u201d, layers {first} to {last} of {heads.shape[0]}, "
            f"{heads.shape[1]} heads each, one colour scale 0 to {self.gallery.levels[1]:.3f} (attention weight). "
            f"Strongest: layer {self.gallery.layers[strongest[0]]}, head {strongest[1]}. "
            "Click a map to show that head in every view.")

    def _waiting_text(self) -> str:
        context = self.context
        if context.trace is None:
            return "After an answer: every head's map of the selected token, layer by layer."
        if context.heads is None and context.is_running("heads"):
            return "Computing every head's attention (one pass)\u2026"
        if context.heads is None:
            return "Attention per head needs the model."
        return "Select an answer token."

    def cell_at(self, x: float, y: float) -> tuple[int, int] | None:
        """(layer, head) under a point of the picture, or None."""
        if self.gallery is None or self.context.trace is None:
            return None
        return gallery_cell_at(self.gallery, self.context.trace, self.cell, x, y)

    def _on_press(self, event) -> None:
        point = event.position()
        cell = self.cell_at(point.x(), point.y())
        if cell is not None:
            self.context.show_head(*cell)


# -- 2. patch -> text -----------------------------------------------------------------------------
class PatchTextPanel(_PassPanel):
    """Select image patches; see which prompt and answer tokens attend to them."""

    title = "Patch \u2192 text attention"

    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        clear = QPushButton("Clear selection")
        clear.clicked.connect(lambda: self.select_patches([]))
        controls = self._averaging_controls()
        controls.addWidget(clear)
        controls.addStretch(1)

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.view = self.graphics.addViewBox(lockAspect=True, invertY=True)
        self.view.setMenuEnabled(False)
        self.view.setMouseEnabled(x=False, y=False)
        self.image_item = pg.ImageItem()
        self.view.addItem(self.image_item)
        self.selection_item = QGraphicsPathItem()
        self.selection_item.setPen(pg.mkPen("#4cc9f0", width=2, cosmetic=True))
        self.selection_item.setBrush(pg.mkBrush(76, 201, 240, 70))
        self.selection_item.setZValue(2)
        self.view.addItem(self.selection_item)
        self.band = QGraphicsRectItem()
        self.band.setPen(pg.mkPen("#f28b82", width=1, cosmetic=True, style=Qt.PenStyle.DashLine))
        self.band.setZValue(3)
        self.band.hide()
        self.view.addItem(self.band)
        self.image_item.mouseClickEvent = self._on_click  # type: ignore[method-assign]
        self.image_item.mouseDragEvent = self._on_drag  # type: ignore[method-assign]

        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextFormat(Qt.TextFormat.RichText)
        self.bars = pg.PlotWidget(background=BACKGROUND)
        self.bars.setMenuEnabled(False)
        self.bars.setMouseEnabled(x=False, y=False)
        self.bars.hideButtons()
        self.bars.setLabel("bottom", "share of attention on the selection", color=FOREGROUND)
        self.bars.getAxis("bottom").enableAutoSIPrefix(False)
        self.bars.invertY(True)  # the first token at the top, as it is read
        for axis in ("left", "bottom"):
            self.bars.getAxis(axis).setTextPen(FOREGROUND)
        self.bars.setMinimumHeight(150)
        self.bar_item = pg.BarGraphItem(x0=[], y=[], width=[], height=0.8)
        self.bars.addItem(self.bar_item)
        self.caption = QLabel()
        self.caption.setWordWrap(True)

        right = QVBoxLayout()
        right.addWidget(self.text)
        right.addWidget(self.bars, 1)
        body = QHBoxLayout()
        body.addWidget(self.graphics, 1)
        body.addLayout(right, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(controls)
        layout.addLayout(body, 1)
        layout.addWidget(self.caption)
        self.patches: list[int] = []
        self.scores: np.ndarray | None = None
        self._image_of: Any = None
        context.subscribe(self._on_change, self)
        self.redraw()

    def compute(self, trace: Any, model: Any) -> Any:
        return patch_text_attention(trace, model)

    def _on_change(self, name: str) -> None:
        if name == "trace":
            self.patches = []
        super()._on_change(name)

    # -- selecting ------------------------------------------------------------------------------
    def select_box(self, box: tuple[float, float, float, float]) -> None:
        """Select the patches a box (left, top, right, bottom in image pixels) touches; a point box
        selects the patches under that point."""
        trace = self.context.trace
        if trace is not None:
            self.select_patches(patches_in_box(trace.regions, box))

    def select_patches(self, patches: list[int]) -> None:
        self.patches = sorted(set(int(p) for p in patches))
        self.redraw()

    def _on_click(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        event.accept()
        point = event.pos()
        self.select_box((point.x(), point.y(), point.x(), point.y()))

    def _on_drag(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            event.ignore()
            return
        event.accept()
        start, end = event.buttonDownPos(), event.pos()
        rect = QRectF(start, end).normalized()
        if event.isFinish():
            self.band.hide()
            self.select_box((rect.left(), rect.top(), rect.right(), rect.bottom()))
        else:
            self.band.setRect(rect)
            self.band.show()

    # -- drawing --------------------------------------------------------------------------------
    def redraw(self) -> None:
        if self.isVisible():
            self.request()
        self._draw_image()
        self._draw_selection()
        waiting = self.waiting_text()
        self.scores = None
        if waiting is None and not self.patches:
            waiting = "Click or drag on the image to select patches."
        if waiting is None:
            try:
                self.scores = self.data.scores(self.patches, self.layers_edit.text(), self.heads_edit.text())
            except InputError as exc:
                waiting = str(exc)
        self._draw_scores()
        if waiting is not None:
            self.caption.setText(waiting)
            return
        data, scores = self.data, self.scores
        best = int(np.argmax(scores))
        blind = int((~data.sees_image).sum())
        self.caption.setText(
            f"{len(self.patches)} patches selected. Each token's share of attention on them (its query; an answer "
            f"token's is the query that predicted it), averaged over layers {self.layers_edit.text()} and heads "
            f"{self.heads_edit.text()}. Most: \u201c{data.labels[best].strip()}\u201d ({scores[best]:.3f})."
            + (f" {blind} prompt tokens come before the image and cannot attend to it (grey)." if blind else ""))

    def _draw_image(self) -> None:
        image = self.context.shown_image
        if image is self._image_of:
            return
        self._image_of = image
        if image is None:
            self.image_item.clear()
            return
        self.image_item.setImage(np.asarray(image.convert("RGB")), autoLevels=False, levels=(0, 255))
        self.view.autoRange(padding=0.02)

    def _draw_selection(self) -> None:
        trace, path = self.context.trace, QPainterPath()
        if trace is not None and self.patches:
            chosen, start = set(self.patches), 0
            for region in trace.regions:
                rows, cols = region.grid
                left, top, right, bottom = region.box
                width, height = (right - left) / cols, (bottom - top) / rows
                for index in range(rows * cols):
                    if start + index in chosen:
                        r, c = divmod(index, cols)
                        path.addRect(QRectF(left + c * width, top + r * height, width, height))
                start += rows * cols
        self.selection_item.setPath(path)

    def _draw_scores(self) -> None:
        data, scores = self.data, self.scores
        if data is None or scores is None:
            self.text.setText("")
            self.bar_item.setOpts(x0=[], y=[], width=[])
            return
        top = float(scores.max()) or 1.0
        from matplotlib import colormaps

        colormap = colormaps[_colormap(self.context)]
        pieces = {"prompt": [], "answer": []}
        for label, kind, score, sees in zip(data.labels, data.kinds, scores, data.sees_image):
            word = html.escape(label.strip() or "\u2423")
            if not sees:
                pieces[kind].append(f'<span style="color:#80868b">{word}</span>')
                continue
            red, green, blue, _ = colormap(float(score) / top)
            text = "#000000" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "#ffffff"
            colour = f"#{int(red * 255):02x}{int(green * 255):02x}{int(blue * 255):02x}"
            pieces[kind].append(f'<span style="background:{colour}; color:{text}">&nbsp;{word}&nbsp;</span>')
        self.text.setText(f"<b>Prompt:</b> {' '.join(pieces['prompt']) or '(not found)'}<br>"
                          f"<b>Answer:</b> {' '.join(pieces['answer'])}")
        brushes = [pg.mkBrush("#e8743b" if kind == "answer" else "#4e79a7") for kind in data.kinds]
        self.bar_item.setOpts(x0=np.zeros(len(scores)), y=np.arange(len(scores)), width=scores, height=0.8,
                              brushes=brushes)
        ticks = [(i, label.strip() or "\u2423") for i, label in enumerate(data.labels)]
        self.bars.getAxis("left").setTicks([ticks, []])
        self.bars.setYRange(-0.6, len(scores) - 0.4, padding=0)
        self.bars.setXRange(0, top * 1.05, padding=0)


# -- 3. question -> answer ------------------------------------------------------------------------
class QuestionAnswerPanel(_PassPanel):
    """Answer tokens x the question's tokens or words: how much each answer token attends to each."""

    title = "Question \u2192 answer attention"

    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(context, parent)
        self.words_box = QCheckBox("Words")
        self.words_box.setToolTip("join sub-word tokens into words (a question word's column sums its tokens' "
                                  "attention; an answer word's row averages its tokens')")
        self.words_box.setChecked(True)
        self.words_box.toggled.connect(self.redraw)
        controls = self._averaging_controls()
        controls.addWidget(self.words_box)
        controls.addStretch(1)

        self.graphics, self.plot, self.image, self.marker, self.bar = heat_map(
            "answer", "question", "the selected answer token's row", marker_width=2)
        self.image.mouseClickEvent = self._on_click  # type: ignore[method-assign]
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(controls)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.caption)
        self.matrix: np.ndarray | None = None
        self.rows: list[str] = []
        self.columns: list[str] = []
        context.subscribe(self._on_change, self)
        self.redraw()

    def compute(self, trace: Any, model: Any) -> Any:
        return question_answer_attention(trace, model)

    def _row_of_token(self, token: int | None) -> int | None:
        """The matrix row that holds answer token ``token`` (its word's row with Words on)."""
        if token is None or self.data is None:
            return None
        if not self.words_box.isChecked():
            return token
        return next((i for i, w in enumerate(self.data.answer_words) if token in w.tokens), None)

    def redraw(self) -> None:
        if self.isVisible():
            self.request()
        waiting = self.waiting_text()
        self.matrix = None
        if waiting is None:
            try:
                self.matrix, self.rows, self.columns = self.data.matrix(
                    self.layers_edit.text(), self.heads_edit.text(), words=self.words_box.isChecked())
            except InputError as exc:
                waiting = str(exc)
        if self.matrix is None:
            self.image.clear()
            self.marker.hide()
            self.caption.setText(waiting or "")
            return
        matrix = self.matrix
        high = float(matrix.max()) if matrix.max() > 0 else 1.0
        self.image.setImage(matrix, autoLevels=False, levels=(0.0, high))  # row-major: rows are answer tokens
        self.bar.setLevels(values=(0.0, high))
        self.plot.setRange(xRange=(0, matrix.shape[1]), yRange=(0, matrix.shape[0]), padding=0.02)
        self.plot.getAxis("bottom").setTicks([[(i + 0.5, c.strip()) for i, c in enumerate(self.columns)], []])
        self.plot.getAxis("left").setTicks([[(i + 0.5, r.strip()) for i, r in enumerate(self.rows)], []])
        row = self._row_of_token(self.context.selected)
        self.marker.setVisible(row is not None)
        if row is not None:
            self.marker.setRect(0, row, matrix.shape[1], 1)
        r, c = np.unravel_index(int(np.argmax(matrix)), matrix.shape)
        self.caption.setText(
            f"Attention of each answer {'word' if self.words_box.isChecked() else 'token'} (the query that "
            f"predicted it) to the question, averaged over layers {self.layers_edit.text()} and heads "
            f"{self.heads_edit.text()}. Strongest: \u201c{self.rows[r].strip()}\u201d \u2192 "
            f"\u201c{self.columns[c].strip()}\u201d ({matrix[r, c]:.3f}). Click a row to select its token.")

    def _on_click(self, event) -> None:
        if self.matrix is None or self.data is None:
            return
        row = int(np.floor(event.pos().y()))
        if not 0 <= row < self.matrix.shape[0]:
            return
        event.accept()
        token = self.data.answer_words[row].tokens[0] if self.words_box.isChecked() else row
        self.context.select(token)
