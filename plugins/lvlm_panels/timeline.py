"""The token timeline: per answer token, log-probability, visual relevance and entropy, as plots.

Three plots share one token axis (labelled with the tokens). A confident token (high
log-probability, low entropy) that the image made likely (high LLR) is grounded; one with LLR near
zero came from the language prior. Clicking a point, or anywhere over a token's column, selects
that token; a ring marks the selected token in each plot. Visual relevance and entropy take three forward
passes, computed once per answer when the panel first needs them.

log p is drawn from 0 (certain) down to at least ``LOG_P_FLOOR`` nats (p = 0.1): autoscaled to its
own range it made a 0.99998 token look like a deep dip among 0.99999 ones.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from lvlm_studio.gui.api import BACKGROUND, FOREGROUND, PanelContext, SpacedAxis

SERIES = (  # attribute, title, unit, colour
    ("logprob", "log p", "nats", "#8ab4f8"),
    ("llr", "visual relevance (LLR)", "nats", "#81c995"),
    ("entropy", "entropy", "nats", "#fdd663"),
)
MAX_LABEL = 10  # characters of a token shown on the axis
LOG_P_FLOOR = -2.5  # nats: the log p axis spans at least p = 0.08 to 1
PLOT_MIN_HEIGHT = 48  # pixels per plot: lower, a plot's title runs into its points


class TimelinePanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.plots: dict[str, pg.PlotItem] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.markers: dict[str, pg.ScatterPlotItem] = {}
        for row, (name, title, _unit, colour) in enumerate(SERIES):
            axes = {"bottom": SpacedAxis("bottom"), "left": SpacedAxis("left")}  # labels never overlap
            plot = self.graphics.addPlot(row=row, col=0, axisItems=axes)
            plot.setMenuEnabled(False)
            plot.setMouseEnabled(x=False, y=False)
            plot.disableAutoRange()  # ranges are set once per answer, never while stepping
            plot.hideButtons()
            plot.showGrid(x=False, y=True, alpha=0.2)
            plot.getAxis("left").setWidth(54)
            plot.getAxis("left").setTextPen(FOREGROUND)
            plot.getAxis("bottom").setTextPen(FOREGROUND)
            plot.setTitle(f"{title} ({_unit})", color=colour, size="9pt", justify="left")
            plot.titleLabel.setMaximumHeight(16)
            plot.layout.setRowFixedHeight(0, 16)
            if row < len(SERIES) - 1:
                plot.getAxis("bottom").setStyle(showValues=False)
                plot.getAxis("bottom").setHeight(4)
            if row:
                plot.setXLink(self.plots[SERIES[0][0]])
            curve = plot.plot([], [], pen=pg.mkPen(colour, width=1.5), symbol="o", symbolSize=8,
                              symbolBrush=colour, symbolPen=None)
            curve.sigPointsClicked.connect(self._on_points_clicked)
            # The selected token: a ring around its point. A small item, so moving it repaints a
            # few pixels (a full-height cursor line would repaint the axes on every step).
            marker = pg.ScatterPlotItem(symbol="o", size=16, pen=pg.mkPen("#f28b82", width=2.5), brush=None)
            marker.setZValue(3)
            plot.addItem(marker, ignoreBounds=True)
            self.plots[name], self.curves[name], self.markers[name] = plot, curve, marker
        self.graphics.setMinimumHeight(len(SERIES) * PLOT_MIN_HEIGHT)
        self.graphics.scene().sigMouseClicked.connect(self._on_scene_clicked)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.caption)
        context.subscribe(self._on_change, self)
        self._rebuild()

    def _on_change(self, name: str) -> None:
        if name in ("trace", "stats"):
            self._rebuild()
        elif name == "selected":
            self._show_selection()
        elif name == "activity":
            self._update_caption()

    def series(self) -> dict[str, np.ndarray]:
        """What is plotted now: log p always; LLR and entropy once computed."""
        trace, stats = self.context.trace, self.context.stats
        if trace is None:
            return {}
        found = {"logprob": np.asarray(trace.logprobs, dtype=np.float64)}
        if stats is not None:
            found.update(llr=stats.llr, entropy=stats.entropy)
        return found

    def _rebuild(self) -> None:
        trace = self.context.trace
        if trace is not None and self.context.stats is None:
            self.context.request_stats()
        data = self.series()
        count = len(trace.answer_tokens) if trace is not None else 0
        x = np.arange(count, dtype=np.float64)
        ticks = [[(i, _label(t)) for i, t in enumerate(trace.answer_tokens)]] if trace is not None else [[]]
        for name, _title, _unit, _colour in SERIES:
            values = data.get(name)
            self.curves[name].setData(x, values) if values is not None else self.curves[name].setData([], [])
            self.plots[name].getAxis("bottom").setTicks(ticks)
            if count:
                self.plots[name].setXRange(-0.5, count - 0.5, padding=0.02)
            if values is not None and len(values):
                self.plots[name].setYRange(*y_range(name, values), padding=0)
        self._show_selection()
        self._update_caption()

    def _show_selection(self) -> None:
        selected, data = self.context.selected, self.series()
        for name, marker in self.markers.items():
            values = data.get(name)
            if selected is None or values is None or not 0 <= selected < len(values):
                marker.setData([], [])
            else:
                marker.setData([selected], [float(values[selected])])

    @property
    def marked(self) -> int | None:
        """The token the rings mark (for tests)."""
        x, _ = self.markers["logprob"].getData()
        return int(x[0]) if len(x) else None

    def _update_caption(self) -> None:
        trace, stats = self.context.trace, self.context.stats
        if trace is None:
            text = "Per token: log-probability, visual relevance and entropy appear here after an answer."
        elif stats is None and self.context.is_running("stats"):
            text = "Computing visual relevance and entropy (three forward passes)\u2026"
        elif stats is None:
            text = "Log-probability per token. Visual relevance and entropy need the model."
        else:
            relevant = [trace.answer_tokens[i].strip() for i in np.flatnonzero(stats.relevant)]
            text = (f"Visually relevant: {', '.join(relevant) or 'none'}. "
                    "Click a point to select its token.")
        self.caption.setText(text)

    def _on_points_clicked(self, item, points, *args) -> None:
        if len(points):
            self.context.select(int(round(points[0].pos().x())))

    def _on_scene_clicked(self, event) -> None:
        """A click anywhere over a token's column selects it (points are small targets)."""
        trace = self.context.trace
        if trace is None or event.isAccepted():
            return
        for plot in self.plots.values():
            if plot.sceneBoundingRect().contains(event.scenePos()):
                x = plot.vb.mapSceneToView(event.scenePos()).x()
                index = int(round(x))
                if 0 <= index < len(trace.answer_tokens):
                    self.context.select(index)
                return


def y_range(name: str, values: np.ndarray) -> tuple[float, float]:
    """The y range a series is drawn on: log p from 0 down to its lowest value or ``LOG_P_FLOOR``
    (whichever is lower), the others their own range with a margin."""
    low, high = float(np.min(values)), float(np.max(values))
    if name == "logprob":
        low = min(low, LOG_P_FLOOR)
        return low * 1.06, -0.06 * low  # a margin so that points at 0 and at the bottom show whole
    span = high - low or max(abs(high), 1e-6)
    return low - 0.15 * span, high + 0.15 * span


def _label(token: str) -> str:
    text = token.strip() or repr(token)
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "\u2026"
