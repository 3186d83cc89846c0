"""Metrics: score the shown map (method and token in the overlay) and see the numbers and curves.

Any ``Metric`` plugin works: its ``MetricResult`` values go in the table, its curves (deletion,
insertion, ...) in the plot. Plausibility metrics compare against ground-truth masks, which come
with the demo scenes (File \u203a New demo scene, one mask per object word); the mask the selected
word names is drawn over the image beside the numbers. Scoring runs as a job (Cancel stops it).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.gui.api import BACKGROUND, FOREGROUND, ImageView, PanelContext

CURVE_COLOURS = ("#f28b82", "#8ab4f8", "#81c995", "#fdd663", "#c58af9")
ARROWS = {"higher": "\u2191", "lower": "\u2193"}


class MetricsPanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.metric_combo = QComboBox()
        self.metric_combo.setToolTip("The metric to score the shown map with")
        self.metric_combo.setMinimumContentsLength(14)
        self.run_button = QPushButton("Score")
        self.run_button.setToolTip("Score the overlay's method on the selected token")
        self.run_button.clicked.connect(self.run)
        self.mask_combo = QComboBox()
        self.mask_combo.setToolTip("The ground-truth mask drawn (demo scenes have one per object word)")
        self.mask_combo.currentIndexChanged.connect(lambda _: self._draw_mask())
        top = QHBoxLayout()
        top.addWidget(QLabel("Metric"))
        top.addWidget(self.metric_combo, 1)
        top.addWidget(self.run_button)
        top.addWidget(QLabel("Mask"))
        top.addWidget(self.mask_combo, 1)

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["measure", "value", "better"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.plot = pg.PlotWidget(background=BACKGROUND)
        self.plot.addLegend(offset=(-10, 10), labelTextColor=FOREGROUND)
        self.plot.setMenuEnabled(False)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setTextPen(FOREGROUND)
        self.mask_view = ImageView(color_bar=False, hint="No ground-truth mask for this image.")
        splitter = QSplitter()
        splitter.addWidget(self.table)
        splitter.addWidget(self.plot)
        splitter.addWidget(self.mask_view)
        splitter.setSizes([240, 320, 200])
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)
        layout.addWidget(self.caption)
        self._mask_shown: tuple[object, object] = (None, None)
        self._fill_metrics()
        self._fill_masks()
        context.subscribe(self._on_change, self)
        self.redraw()

    # -- following ------------------------------------------------------------------------------
    def _on_change(self, name: str) -> None:
        if name == "registry":
            self._fill_metrics()
        if name in ("masks", "image"):
            self._fill_masks()
        if name in ("selected", "trace"):
            self._pick_mask_for_token()
        if name in ("registry", "trace", "selected", "method", "explanations", "metrics", "activity", "view"):
            self.redraw()

    def _fill_metrics(self) -> None:
        current = self.metric_combo.currentData()
        self.metric_combo.clear()
        for metric, title in self.context.metrics().items():
            self.metric_combo.addItem(title, metric)
        if current is not None:
            self.metric_combo.setCurrentIndex(max(self.metric_combo.findData(current), 0))

    def _fill_masks(self) -> None:
        self.mask_combo.blockSignals(True)
        self.mask_combo.clear()
        for name in self.context.masks:
            if isinstance(name, str):  # word masks; token-index masks are for the metrics only
                self.mask_combo.addItem(name, name)
        self.mask_combo.blockSignals(False)
        self._pick_mask_for_token()

    def _pick_mask_for_token(self) -> None:
        """The mask whose name contains the selected word ("red" -> "red circle"), if any."""
        word = (self.context.selected_token or "").strip().lower()
        for i in range(self.mask_combo.count()):
            if word and word in self.mask_combo.itemData(i).split():
                self.mask_combo.setCurrentIndex(i)
                break
        self._draw_mask()

    # -- doing -----------------------------------------------------------------------------------
    def run(self) -> None:
        """Score the overlay's method on the selected token with the chosen metric."""
        context, metric = self.context, self.metric_combo.currentData()
        if metric is None or context.selected is None:
            context.show_message("Select a token and a metric first.")
            return
        if context.method not in context.explanations:
            context.request_explanation(context.method)
            context.show_message("The map is being computed; press Score again when it is shown.")
            return
        if "masks" in context.metric_needs(metric) and not context.masks:
            context.show_message("This metric needs ground-truth masks: open a demo scene "
                                 "(File \u203a New demo scene).")
            return
        context.request_metric(metric, context.method, context.selected)
        self.redraw()

    def result(self):
        context, metric = self.context, self.metric_combo.currentData()
        if metric is None or context.selected is None:
            return None
        return context.metric_result(metric, context.method, context.selected)

    def redraw(self) -> None:
        result, metric = self.result(), self.metric_combo.currentData()
        values = result.values if result is not None else {}
        self.table.setRowCount(len(values))
        for row, (name, value) in enumerate(values.items()):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            item = QTableWidgetItem("n/a" if np.isnan(value) else f"{value:.4g}")
            if np.isnan(value):
                item.setToolTip("Not defined for this map (e.g. no word of that kind in the answer)")
            self.table.setItem(row, 1, item)
            direction = self.context.metric_direction(metric, name) if metric is not None else None
            better = QTableWidgetItem(f"{ARROWS[direction]} {direction}" if direction else "")
            better.setToolTip(f"{direction.capitalize()} is better, as the metric declares it" if direction
                              else "The metric declares no better direction for this value")
            self.table.setItem(row, 2, better)
        self.plot.clear()
        self.plot.setVisible(result is None or bool(result.curves))
        if result is not None:
            for i, (name, (x, y)) in enumerate(result.curves.items()):
                colour = CURVE_COLOURS[i % len(CURVE_COLOURS)]
                self.plot.plot(np.asarray(x, dtype=float), np.asarray(y, dtype=float), name=name,
                               pen=pg.mkPen(colour, width=2))
        self.run_button.setEnabled(self.metric_combo.count() > 0 and self.context.selected is not None)
        self._update_caption(result)

    def _draw_mask(self) -> None:
        context, name = self.context, self.mask_combo.currentData()
        image = context.image
        if image is self._mask_shown[0] and name == self._mask_shown[1]:
            return
        self._mask_shown = (image, name)
        self.mask_view.set_image(None if image is None or name is None else np.asarray(image.convert("RGB")))
        if image is None or name is None:
            self.mask_view.set_map(None)
            return
        mask = context.masks[name]
        self.mask_view.set_colormap("inferno")  # its 0 is black: everything outside the mask is dimmed
        self.mask_view.set_map(np.where(mask, np.nan, 0.0), (0.0, 1.0), 0.75)
        self.mask_view.set_title(f"mask: {name}")

    def _update_caption(self, result) -> None:
        context, metric = self.context, self.metric_combo.currentData()
        if not self.metric_combo.count():
            text = "No metric plugins are installed."
        elif context.trace is None or context.selected is None:
            text = "Select a token; Score rates the overlay's map of it."
        else:
            key = f"metric:{metric}:{context.method}:{context.selected}"
            token = (context.selected_token or "").strip()
            title = context.title_of(context.method)
            if result is not None:
                text = f"{self.metric_combo.currentText()} of {title} for \u201c{token}\u201d."
            elif context.is_running(key):
                text = f"Scoring {title} for \u201c{token}\u201d\u2026"
            elif context.has_failed(key):
                text = "Scoring failed; press Score to try again."
            else:
                text = f"Press Score to rate {title}'s map of \u201c{token}\u201d."
        self.caption.setText(text)
