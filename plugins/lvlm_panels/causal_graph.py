"""The causal token subset's graph and its validation, for the selected answer token.

The causal-subset method learns, per attention head of one layer, a graph over a few tokens (image
tokens, text tokens and the query that predicts the answer token) and takes the image tokens near
that query as the explaining subset. Left: the union of the heads' graphs (``causal_graph`` in the
core): the target query in the centre, the other tokens on rings by their number of edges from it;
image tokens blue, text tokens grey, the chosen subset red and sized by its weight; a thicker edge
was learned by more heads. Right: the validation: the drop in the token's log-odds when the
subset's patches are blurred (red line) against the drops for random subsets of the same size
(grey points, their median dashed).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from lvlm_studio.api import CausalGraph, LVLMError, causal_graph
from lvlm_studio.gui.api import BACKGROUND, FOREGROUND, PanelContext

METHOD = "causal"
COLOURS = {"image": "#4e8fd8", "text": "#9aa0a6", "target": "#e8a33c"}
SUBSET = "#e5484d"


class CausalGraphPanel(QWidget):
    def __init__(self, context: PanelContext, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.context = context
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.graph_plot = self.graphics.addPlot(row=0, col=0)
        self.graph_plot.setAspectLocked(True)
        self.graph_plot.hideAxis("left")
        self.graph_plot.hideAxis("bottom")
        self.graph_plot.setMenuEnabled(False)
        self.check_plot = self.graphics.addPlot(row=0, col=1)
        self.check_plot.setMenuEnabled(False)
        self.check_plot.setMouseEnabled(x=False, y=False)
        self.check_plot.hideButtons()
        self.check_plot.setLabel("left", "drop in log-odds, subset blurred", color=FOREGROUND)
        self.check_plot.getAxis("left").enableAutoSIPrefix(False)
        self.check_plot.getAxis("bottom").setTicks([[(0, "random"), (1, "chosen")], []])
        for plot, title in ((self.graph_plot, "causal graph (union over heads)"),
                            (self.check_plot, "validation")):
            plot.setTitle(title, color=FOREGROUND)
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setTextPen(FOREGROUND)
        self.graphics.ci.layout.setColumnStretchFactor(0, 3)
        self.graphics.ci.layout.setColumnStretchFactor(1, 2)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.caption)
        self.graph: CausalGraph | None = None
        self.problem: str | None = None
        self.labels: list[pg.TextItem] = []
        context.subscribe(self._on_change, self)
        self.redraw()

    def _on_change(self, name: str) -> None:
        if name in ("trace", "explanations", "selected", "activity", "registry"):
            self.redraw()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.redraw()

    def compute(self) -> CausalGraph | None:
        """The selected token's graph, or None (``problem`` says why when the explanation has none)."""
        context = self.context
        trace, explanation, token = context.trace, context.explanations.get(METHOD), context.selected
        self.problem = None
        if trace is None or explanation is None or token is None:
            return None
        try:
            return causal_graph(trace, explanation, token)
        except LVLMError as exc:
            self.problem = str(exc)
            return None

    def redraw(self) -> None:
        context = self.context
        if (context.trace is not None and METHOD not in context.explanations and self.isVisible()
                and METHOD in context.methods()):
            context.request_explanation(METHOD)
        self.graph = self.compute()
        self.graph_plot.clear()
        self.check_plot.clear()
        self.labels = []
        if self.graph is not None:
            self._draw_graph(self.graph)
            self._draw_validation(self.graph.validation)
        self._caption()

    def _draw_graph(self, graph: CausalGraph) -> None:
        xy = graph.layout()
        for a, b, heads in graph.edges:
            line = pg.PlotCurveItem(x=xy[[a, b], 0], y=xy[[a, b], 1],
                                    pen=pg.mkPen(FOREGROUND, width=0.6 + 0.8 * heads, cosmetic=True))
            line.setOpacity(0.55)
            self.graph_plot.addItem(line)
        largest = max([n.weight for n in graph.nodes] + [1e-9])
        sizes = [14 + 16 * (n.weight / largest) if n.in_subset else 14 if n.kind == "target" else 10
                 for n in graph.nodes]
        brushes = [pg.mkBrush(SUBSET if n.in_subset else COLOURS[n.kind]) for n in graph.nodes]
        pens = [pg.mkPen("#ffffff" if n.in_subset or n.kind == "target" else BACKGROUND, width=1.5)
                for n in graph.nodes]
        self.graph_plot.addItem(pg.ScatterPlotItem(x=xy[:, 0], y=xy[:, 1], size=sizes, brush=brushes, pen=pens))
        for node, (x, y) in zip(graph.nodes, xy):
            label = f"\u2192 {self.context.selected_token or ''}".strip() if node.kind == "target" else node.label
            item = pg.TextItem(label, color=FOREGROUND if node.in_subset or node.kind == "target" else "#b0b4b8",
                               anchor=(0.5, -0.35))
            item.setPos(float(x), float(y))
            self.graph_plot.addItem(item)
            self.labels.append(item)
        self.graph_plot.autoRange(padding=0.15)

    def _draw_validation(self, validation: dict) -> None:
        randoms = np.asarray(validation.get("random_log_odds_drops", []), dtype=float)
        chosen = validation.get("subset_log_odds_drop")
        if len(randoms):
            jitter = np.linspace(-0.15, 0.15, len(randoms))
            self.check_plot.addItem(pg.ScatterPlotItem(x=jitter, y=randoms, size=8, brush=pg.mkBrush("#9aa0a6"),
                                                       pen=None))
            median = float(np.median(randoms))
            self.check_plot.addItem(pg.PlotCurveItem(x=[-0.3, 1.3], y=[median, median],
                                                     pen=pg.mkPen("#9aa0a6", width=1, style=Qt.PenStyle.DashLine)))
        if chosen is not None:
            self.check_plot.addItem(pg.PlotCurveItem(x=[0.7, 1.3], y=[chosen, chosen], pen=pg.mkPen(SUBSET, width=3)))
        self.check_plot.addItem(pg.PlotCurveItem(x=[-0.3, 1.3], y=[0, 0], pen=pg.mkPen("#5f6368", width=1)))
        self.check_plot.setXRange(-0.4, 1.4, padding=0)

    def _caption(self) -> None:
        context, graph = self.context, self.graph
        if context.trace is None:
            text = "After an answer: the causal token subset's graph for the selected token, and its validation."
        elif METHOD not in context.methods():
            text = "Needs the causal token subset method, which is not installed."
        elif context.is_running(f"explain:{METHOD}"):
            text = "Learning the causal graphs and validating the subsets\u2026"
        elif self.problem is not None:
            text = self.problem
        elif graph is None:
            failed = context.has_failed(f"explain:{METHOD}")
            text = ("The causal subset could not be computed for this answer." if failed
                    else "Select a token to see its causal graph." if METHOD in context.explanations
                    else "The causal subset needs the model.")
        else:
            check = graph.validation
            subset = len(graph.subset)
            text = (f"\u201c{(context.selected_token or '').strip()}\u201d: {len(graph.nodes)} tokens, "
                    f"{len(graph.edges)} edges; subset of {subset} image token{'s' if subset != 1 else ''} (red). ")
            if check.get("outcome") == "empty":
                text += "No image token is linked to the target: nothing to validate."
            elif "subset_drop" in check:
                text += (f"Blurring it drops p by {check['subset_drop']:.4f} vs {check.get('random_drop', 0):.4f} "
                         f"on average for random subsets of the same size: {check.get('outcome', '?')} random.")
        self.caption.setText(text)
