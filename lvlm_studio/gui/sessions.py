"""The window's analysis on disk: save and open sessions, autosave, restore after a crash, the PDF report.

A session is everything on screen (prompt, image, answer, maps, metrics and the view) as a
``Session`` from ``lvlm_studio.core.formats.session``. Reading and the report run as jobs on the
worker thread; saving is quick and runs here. Autosave writes the same file to this window's own
autosave file, after every job and on a timer, so a crash loses at most a moment's work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Slot
from PySide6.QtWidgets import QFileDialog, QMessageBox

from lvlm_studio.gui.autosave import Autosave, claim_orphans
from lvlm_studio.gui.worker import Job

if TYPE_CHECKING:
    from lvlm_studio.gui.main_window import MainWindow

log = logging.getLogger(__name__)


class Sessions(QObject):
    """Save, open, autosave and restore the analysis of ``window``; ``autosave_ms`` is how often it is
    autosaved besides after every job (0: never autosave)."""

    def __init__(self, window: MainWindow, autosave_ms: int) -> None:
        super().__init__(window)
        self.window = window
        self.state = window.state
        self.path: Path | None = None  # the session file Save writes to
        self.autosaver = Autosave(window.settings.autosave_folder)
        self._autosave_after_jobs = autosave_ms > 0
        self._closed = False  # a job that ends after the window closed must not autosave again
        self._saved_revision = 0  # the state's revision in the autosave file
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.autosave)
        if autosave_ms > 0:
            self.timer.start(autosave_ms)
        window.runner.job_started.connect(self._on_job_started)

    def current_session(self) -> Any:
        """The analysis as a ``Session`` (what Save writes)."""
        from lvlm_studio.core.formats.session import MetricRecord, Session, run_record

        state = self.state
        return Session(
            prompt=self.window.prompt_edit.toPlainText(),
            image=state.image,
            image_name=state.image_name,
            model_source=state.model_source,
            trace=state.trace,
            explanations=dict(state.explanations),
            metrics=[MetricRecord(m, t, k, r, self._directions(k, r)) for (m, t, k), r in state.metrics.items()],
            masks=dict(state.masks),
            view={"selected": state.selected, "method": state.method, "opacity": state.opacity,
                  "colormap": state.colormap, "threshold": state.threshold, "chip_mode": state.chip_mode,
                  "shared_scale": state.shared_scale,
                  "stats": _stats_to_json(state.stats), "params": _params_to_json(state.params)},
            record=run_record(state.trace, self.providers(), state.explanations),
        )

    def providers(self) -> dict[str, Any]:
        """Who provided each method, metric and panel in use: plugin, distribution and version."""
        registry = self.window.analysis.registry
        if registry is None:
            return {}
        state = self.state
        return registry.providers_of(methods=sorted(state.explanations),
                                     metrics=sorted({metric for _, _, metric in state.metrics}),
                                     panels=sorted(self.window.open_panels()))

    def _directions(self, metric_id: str, result: Any) -> dict[str, str]:
        """Which way each value of ``result`` is better, as metric ``metric_id`` declares it."""
        from lvlm_studio.core.plugin.contracts import declared_directions

        declared = declared_directions(self.window.analysis.metrics.get(metric_id))
        return {name: declared[name] for name in result.values if name in declared}

    def save_session(self, path: str | Path | None = None, ask: bool = False) -> Path | None:
        """Save the analysis (to ``path``, the current session file, or a file the user picks)."""
        from lvlm_studio.core.formats.session import FILE_FILTER, save_session

        if path is None and (ask or self.path is None):
            chosen, _ = QFileDialog.getSaveFileName(self.window, "Save session", "analysis.lvlm", FILE_FILTER)
            if not chosen:
                return None
            path = chosen
        target = Path(path) if path is not None else self.path
        assert target is not None
        try:
            saved = save_session(self.current_session(), target)
        except Exception as exc:  # noqa: BLE001 - shown, never raised into Qt
            import traceback

            self.window.show_error("Saving the session", exc, traceback.format_exc())
            return None
        self.path = saved
        self.window.settings.add_recent_session(str(saved.resolve()))
        self.window.statusBar().showMessage(f"Saved {saved.name}.")
        return saved

    def choose_session(self) -> None:
        from lvlm_studio.core.formats.session import FILE_FILTER

        path, _ = QFileDialog.getOpenFileName(self.window, "Open session", "", FILE_FILTER)
        if path:
            self.open_session(path)

    def open_session(self, path: str | Path, remember: bool = True) -> Job:
        """Read a session on the worker thread, then show it as it was saved."""
        path = Path(path)

        def work(report: Callable[..., None], cancel: Any) -> Any:
            from lvlm_studio.core.formats.session import load_session

            return load_session(path)

        def done(session: Any) -> None:
            self.apply_session(session)
            if remember:
                self.path = path
                self.window.settings.add_recent_session(str(path.resolve()))
            self.window.statusBar().showMessage(f"Opened {path.name}.")

        return self.window.analysis.start(f"Opening {path.name}", work, done)

    def apply_session(self, session: Any) -> None:
        """Show a loaded session: image, masks, prompt, answer, maps, metrics and the view."""
        state, view = self.state, session.view
        if session.image is not None:
            state.set_image(session.image, session.image_name, session.masks)
        self.window.prompt_edit.setPlainText(session.prompt)
        params = view.get("params") if isinstance(view.get("params"), dict) else {}
        if session.trace is not None:
            state.set_trace(session.trace)
        for method in {**state.params, **params}:  # before the maps: they were made with these parameters
            state.set_params(method, params.get(method, {}))
        if session.trace is not None:
            stats = _stats_from_json(view.get("stats"), session.trace)
            if stats is not None:
                state.set_stats(session.trace, stats)
            for method, explanation in session.explanations.items():
                state.add_explanation(session.trace, method, explanation, params.get(method, {}))
            for record in session.metrics:
                state.add_metric(session.trace, (record.method, record.token, record.metric), record.result)
        names = ("opacity", "colormap", "threshold", "chip_mode", "shared_scale")
        state.set_view(**{k: view[k] for k in names if k in view})
        if isinstance(view.get("method"), str):
            state.set_method(view["method"])
        if isinstance(view.get("selected"), int):
            state.select(view["selected"])

    def choose_report(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self.window, "Export report", "report.pdf", "PDF (*.pdf)")
        if path:
            self.export_report(path)

    def export_report(self, path: str | Path) -> Job:
        """Write the PDF report on the worker thread (matplotlib, no Qt)."""
        session = self.current_session()
        providers = session.record.get("providers")
        session.record = {}

        def work(report: Callable[..., None], cancel: Any) -> Any:
            from lvlm_studio.core.formats.report import write_report
            from lvlm_studio.core.formats.session import run_record

            session.record = run_record(session.trace, providers, session.explanations)
            return write_report(session, path)

        def done(written: Path) -> None:
            self.window.statusBar().showMessage(f"Wrote {Path(written).name}.")

        return self.window.analysis.start("Writing the report", work, done)

    @Slot()
    def autosave(self) -> Path | None:
        """Save the analysis to this window's autosave file when it changed since the last autosave."""
        if self._closed or (self.state.trace is None and self.state.image is None):
            return None
        if self.state.revision == self._saved_revision and self.autosaver.path.exists():
            return None
        try:
            path = self.autosaver.save(self.current_session())
        except Exception:  # noqa: BLE001 - an autosave failure must not interrupt the user
            log.warning("autosave failed", exc_info=True)
            return None
        self._saved_revision = self.state.revision
        return path

    def offer_restore(self) -> bool:
        """Offer the autosave of a window that did not close normally (True: restoring). Autosaves of
        windows still open are locked by them and never offered; with several left, the newest is
        offered and the others wait for a later start."""
        orphans = claim_orphans(self.window.settings.autosave_folder)
        if not orphans:
            return False
        orphan, *later = orphans
        for other in later:
            other.release()
        box = QMessageBox(QMessageBox.Icon.Question, "LVLM Studio: restore the last analysis?",
                          "LVLM Studio did not close normally last time.",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self.window)
        box.setInformativeText("Restore the analysis that was autosaved? (No discards it.)")
        if box.exec() != QMessageBox.StandardButton.Yes:
            orphan.delete()
            return False
        job = self.open_session(orphan.path, remember=False)

        def restored(_session: Any) -> None:  # now in this window's own autosave: the old file can go
            if self.autosave() is not None:
                orphan.delete()
            else:
                orphan.release()

        job.finished.connect(restored)
        job.failed.connect(orphan.release)
        job.cancelled.connect(orphan.release)
        return True

    def close(self) -> None:
        """The window closes normally: no more autosaves, and nothing left to restore."""
        self._closed = True
        self.timer.stop()
        self.autosaver.discard()

    @Slot(object)
    def _on_job_started(self, job: Job) -> None:
        if self._autosave_after_jobs:  # an answer, a map, a score: autosaved the moment it is there
            job.ended.connect(self.autosave)


def _params_to_json(params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The parameters chosen for each method (only those that differ from its defaults)."""
    from lvlm_studio.core.io.records import jsonable

    return {method: jsonable(chosen) for method, chosen in params.items() if chosen}


def _stats_to_json(stats: Any) -> dict[str, list] | None:
    if stats is None:
        return None
    return {"llr": stats.llr.tolist(), "relevant": stats.relevant.tolist(), "entropy": stats.entropy.tolist()}


def _stats_from_json(data: Any, trace: Any) -> Any:
    if not isinstance(data, dict):
        return None
    import numpy as np

    from lvlm_studio.core.tracing.token_stats import TokenStats

    try:
        return TokenStats(np.asarray(trace.logprobs, dtype=np.float64), np.asarray(data["llr"], dtype=np.float64),
                          np.asarray(data["relevant"], dtype=bool), np.asarray(data["entropy"], dtype=np.float64))
    except (KeyError, TypeError, ValueError):
        return None
