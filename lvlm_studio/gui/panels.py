"""What a panel gets: a narrow context over the analysis, never the main window.

Plugins declare panels as ``PanelSpec`` data (``lvlm_studio_panels`` hook); the window imports a
panel's factory only when the panel is first shown and calls it with a ``PanelContext``. Through
the context a panel reads the current trace, explanations, selection and results, listens for
changes, and asks for work (an explanation, a metric, token statistics, a job of its own). A panel
that raises while being built or while following a change is reported once and disconnected; the
window and the other panels go on.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QWidget

from lvlm_studio.core.errors import PluginError
from lvlm_studio.core.plugin.contracts import declared_directions

if TYPE_CHECKING:
    from PIL import Image

    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.plugin.contracts import MetricResult, PanelSpec
    from lvlm_studio.core.plugin.explanation import Explanation
    from lvlm_studio.core.tracing.head_attention import HeadAttention
    from lvlm_studio.core.tracing.token_stats import TokenStats
    from lvlm_studio.core.tracing.trace import Trace
    from lvlm_studio.gui.analysis import Analysis, Work
    from lvlm_studio.gui.worker import Job

log = logging.getLogger(__name__)


class PanelContext:
    """The public face of the analysis for one panel (``panel_id``).

    Answer tokens are named by their 0-based index into ``trace.answer_ids`` everywhere here
    (``selected``, ``select``, ``pixels``, ``metric_result``, ``request_metric``); the window shows
    index ``i`` as "token i+1 of n". Methods and metrics are named by their plugin ids.
    """

    def __init__(self, analysis: Analysis, panel_id: str) -> None:
        self._analysis = analysis
        self._state = analysis.state
        self.panel_id = panel_id
        self._listeners: list[Callable[[str], None]] = []
        self._broken = False
        self._state.subscribe(self._dispatch)
        analysis.activity.connect(lambda: self._dispatch("activity"))
        analysis.registry_ready.connect(lambda: self._dispatch("registry"))

    # -- reading -------------------------------------------------------------------------------
    @property
    def trace(self) -> Trace | None:
        return self._state.trace

    @property
    def image(self) -> Image.Image | None:
        """The image as the model is given it."""
        return self._state.image

    @property
    def shown_image(self) -> Image.Image | None:
        """The image as the user chose to see it: a DICOM or more-than-8-bit image in the window set in
        the Image box (a "window" change), else the same as ``image``. For drawing, never for the model."""
        return self._state.shown_image

    @property
    def model(self) -> LoadedModel | None:
        """The loaded model, for panels whose analyses run it (feature tools). Use it only inside
        ``run_job`` work: the worker thread is where models run."""
        return self._state.model

    @property
    def explanations(self) -> dict[str, Explanation]:
        return dict(self._state.explanations)

    @property
    def selected(self) -> int | None:
        """The selected answer token: a 0-based index into ``trace.answer_ids`` (the window shows
        index 2 as "token 3 of n"), or None when no token is selected."""
        return self._state.selected

    @property
    def selected_token(self) -> str | None:
        """The selected answer token's text, or None."""
        return self._state.selected_token

    @property
    def method(self) -> str:
        """The id of the chosen explanation method (a key of ``methods()``, e.g. "raw_attention"),
        not an index: its maps are ``explanations[method]``."""
        return self._state.method

    @property
    def masks(self) -> dict[str, np.ndarray]:
        return dict(self._state.masks)

    @property
    def stats(self) -> TokenStats | None:
        return self._state.stats

    @property
    def heads(self) -> HeadAttention | None:
        return self._state.heads

    @property
    def view(self) -> dict[str, Any]:
        """How maps are drawn: opacity, colormap, threshold, and whether every token's map shares one
        colour scale (``shared_scale``)."""
        state = self._state
        return {"opacity": state.opacity, "colormap": state.colormap, "threshold": state.threshold,
                "shared_scale": state.shared_scale}

    def params(self, method: str) -> dict[str, Any]:
        """The parameters chosen for ``method`` in this window that differ from its defaults (its maps
        in ``explanations`` were made with them; the explanation's own ``params`` has them all)."""
        return dict(self._state.params.get(method, {}))

    def metric_result(self, metric: str, method: str, token: int) -> MetricResult | None:
        return self._state.metrics.get((method, token, metric))

    def pixels(self, method: str, token: int) -> tuple[np.ndarray, tuple[float, float]] | None:
        """A map on image pixels and its colour levels (cached), or None when not computed."""
        return self._state.pixels(method, token)

    def map_style(self, method: str) -> tuple[str, bool, str]:
        """How ``method``'s maps are coloured: colormap (diverging for signed maps), whether they are
        signed, and a colour-bar label saying what the values are."""
        return self._state.map_style(method)

    def methods(self) -> dict[str, str]:
        """Explanation methods, id -> title."""
        return {mid: e.title or mid for mid, e in self._analysis.explainers.items()}

    def metrics(self) -> dict[str, str]:
        """Metrics, id -> title."""
        return {mid: m.title or mid for mid, m in self._analysis.metrics.items()}

    def metric_needs(self, metric: str) -> frozenset[str]:
        found = self._analysis.metrics.get(metric)
        return found.needs if found is not None else frozenset()

    def metric_direction(self, metric: str, value: str) -> str | None:
        """"higher" or "lower": which is better for value ``value`` of ``metric``, as the metric declares
        it (``Metric.directions``); None when it declares none."""
        return declared_directions(self._analysis.metrics.get(metric)).get(value)

    def title_of(self, method: str) -> str:
        return self.methods().get(method) or (self.explanations[method].provenance.get("method", method)
                                              if method in self._state.explanations else method)

    def is_running(self, key: str) -> bool:
        """Keys: "explain:METHOD", "stats", "heads", "metric:METRIC:METHOD:TOKEN"."""
        return self._analysis.is_running(key)

    def has_failed(self, key: str) -> bool:
        return self._analysis.has_failed(key)

    # -- listening -----------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[str], None], widget: QWidget | None = None) -> None:
        """Call ``listener(name)`` on every change: the state's names ("trace", "selected",
        "method", "explanations", "params", "view", "stats", "metrics", "heads", "masks", ...), "registry"
        when plugins are known, and "activity" when a job starts or ends.

        With ``widget``, changes that happen while the widget is hidden (a dock tabbed away or
        closed) are held and replayed, once each and in order, when it is shown again: a hidden
        panel costs nothing while the user steps through tokens."""
        self._listeners.append(listener if widget is None else _WhileShown(self, widget, listener))

    def _dispatch(self, name: str) -> None:
        for listener in list(self._listeners):
            if not self._call(listener, name):
                return

    def _call(self, listener: Callable[[str], None], name: str) -> bool:
        """Run one listener; a panel that raises is reported once and disconnected (False)."""
        if self._broken:
            return False
        try:
            listener(name)
        except Exception as exc:  # noqa: BLE001 - a broken panel must not break the window
            self._broken = True
            self._state.unsubscribe(self._dispatch)
            self._analysis.report_panel_failure(self.panel_id, exc)
            return False
        return True

    @property
    def broken(self) -> bool:
        return self._broken

    # -- doing ---------------------------------------------------------------------------------
    def select(self, token: int | None) -> None:
        """Select answer token ``token`` (0-based index into ``trace.answer_ids``), or none."""
        self._state.select(token)

    def set_method(self, method: str) -> None:
        """Choose the explanation method by its id."""
        self._state.set_method(method)

    def set_view(self, **changes: Any) -> None:
        """Change opacity, colormap, threshold or chip_mode for every view."""
        self._state.set_view(**changes)

    def request_explanation(self, method: str, retry: bool = False) -> Job | None:
        return self._analysis.explain(method, retry=retry)

    def request_stats(self) -> Job | None:
        return self._analysis.token_stats()

    def request_heads(self) -> Job | None:
        return self._analysis.head_attention()

    def show_head(self, layer: int, head: int) -> None:
        self._analysis.show_head(layer, head)

    def request_metric(self, metric: str, method: str, token: int) -> Job | None:
        return self._analysis.score(metric, method, token)

    def run_job(self, title: str, work: Work, done: Callable[[Any], None]) -> Job:
        """Run ``work(report, cancel)`` on the worker thread (progress bar, Cancel, error dialog)."""
        return self._analysis.start(title, work, done)

    def show_message(self, text: str) -> None:
        self._analysis.message.emit(text)


class _WhileShown(QObject):
    """A listener that only runs while its widget is visible and catches up when it is shown."""

    def __init__(self, context: PanelContext, widget: QWidget, listener: Callable[[str], None]) -> None:
        super().__init__(widget)
        self.context, self.widget, self.listener = context, widget, listener
        self.pending: list[str] = []
        widget.installEventFilter(self)

    def __call__(self, name: str) -> None:
        if self.widget.isVisible():
            self.listener(name)
        elif name not in self.pending:
            self.pending.append(name)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Show and self.pending:
            names, self.pending = self.pending, []
            for name in names:
                if not self.context._call(self.listener, name):
                    break
        return False


def load_factory(spec: PanelSpec) -> Callable[[PanelContext], QWidget]:
    """Import ``spec.factory`` ("package.module:callable"), only now that the panel is shown."""
    module_name, _, attribute = spec.factory.partition(":")
    if not module_name or not attribute:
        raise PluginError(f"panel {spec.id!r} has factory {spec.factory!r}.",
                          "A panel factory is written \"package.module:callable\".")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise PluginError(f"panel {spec.id!r}: {module_name} has no {attribute!r}.",
                          "Fix the factory path in the plugin's PanelSpec.") from None


def build_panel(spec: PanelSpec, context: PanelContext) -> QWidget:
    """The panel's widget; anything but a widget is the plugin's bug, reported as such."""
    widget = load_factory(spec)(context)
    if not isinstance(widget, QWidget):
        raise PluginError(f"panel {spec.id!r}: its factory returned {type(widget).__name__}, not a QWidget.",
                          "A panel factory must return a QWidget.")
    return widget
