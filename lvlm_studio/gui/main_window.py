"""The main window: the question and its answer in the middle, every other view a dockable panel.

The middle (central widget) is where an analysis starts: the model, the image, the question and
the answer as token chips. Everything else (the image overlay, the token timeline, the attention
grid, method comparison, metrics, and any third-party panel) is contributed by plugins through the
``lvlm_studio_panels`` hook and added by one function, ``toggle_panel``. Work runs as jobs of the
window's ``Analysis`` on a worker thread; the views redraw from the Qt-free ``StudioState``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSize, Qt, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.core.errors import UnsafeModelError
from lvlm_studio.gui.analysis import Analysis
from lvlm_studio.gui.autosave import Autosave, claim_orphans
from lvlm_studio.gui.dialogs import error_box
from lvlm_studio.gui.panels import PanelContext, build_panel
from lvlm_studio.gui.settings import DEVICES, DTYPES, StudioSettings
from lvlm_studio.gui.state import StudioState
from lvlm_studio.gui.token_bar import TokenBar
from lvlm_studio.gui.worker import Job

if TYPE_CHECKING:
    from lvlm_studio.core.contracts import PanelSpec
    from lvlm_studio.core.plugins import PluginRegistry

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "describe the image."
DEFAULT_SIZE = QSize(1280, 800)
DEFAULT_PANELS = ("overlay", "timeline")  # open on a first start; the others wait in View > Panels
LEFT_WIDTH = 700  # the overlay's share of the default width
BOTTOM_HEIGHT = 400  # the panels under the question
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)"
HINT_STYLE = "color: palette(placeholder-text);"
AUTOSAVE_MS = 60_000
CANCEL_NOTICE_MS = 1_000  # a job still running this long after Cancel is waiting for its plugin
#: What a risky load option may do, asked before the model is loaded with it (never remembered).
RISKS = {
    "allow_pickle": ("Load the pickle weights anyway?",
                     "Pickle files can run any program on this computer, with your permissions, while they load. "
                     "Say Yes only if you trust where this model came from."),
    "trust_remote_code": ("Run the model folder's own Python code?",
                          "That code runs on this computer with your permissions and can do anything you can. "
                          "Say Yes only if you trust where this model came from."),
}
DEMO_MODEL = "Demo model (built in)"
AREAS = {
    "left": Qt.DockWidgetArea.LeftDockWidgetArea,
    "right": Qt.DockWidgetArea.RightDockWidgetArea,
    "top": Qt.DockWidgetArea.TopDockWidgetArea,
    "bottom": Qt.DockWidgetArea.BottomDockWidgetArea,
}


class MainWindow(QMainWindow):
    """Ask a model about an image and see which parts of the image each answer token came from.

    ``registry`` is the plugin registry (built on the worker thread when None); ``model`` a model
    folder (None: the demo model); ``image`` an image to open at once; ``prompt`` the question to
    start with; ``settings`` where layout and recent files are kept (the user's settings when None);
    ``autosave_ms`` how often the analysis is autosaved besides after every job (0: never autosave).
    """

    def __init__(
        self,
        registry: PluginRegistry | None = None,
        model: str | None = None,
        image: str | None = None,
        prompt: str | None = None,
        settings: StudioSettings | None = None,
        autosave_ms: int = AUTOSAVE_MS,
    ) -> None:
        super().__init__()
        self.setWindowTitle("LVLM Studio")
        self.resize(DEFAULT_SIZE)
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(True)
        self.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.setCorner(Qt.Corner.TopLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.settings = settings or StudioSettings()
        self.state = StudioState()
        self.analysis = Analysis(self.state, self)
        self.runner = self.analysis.runner
        self.panel_specs: dict[str, PanelSpec] = {}
        self.contexts: dict[str, PanelContext] = {}
        self.session_path: Path | None = None
        self.autosaver = Autosave(self.settings.autosave_folder)
        self._autosave_after_jobs = autosave_ms > 0
        self._closed = False  # a job that ends after the window closed must not autosave again
        self._showing_error = False
        self._saved_revision = 0  # the state's revision in the autosave file
        self._pending_layout: tuple[Any, Any, list[str]] | None = None

        self._build_center(prompt or DEFAULT_PROMPT)
        self._build_menus()
        self._build_status_bar()
        self.state.subscribe(self._on_state)
        self.analysis.message.connect(self.statusBar().showMessage)
        self.analysis.error.connect(self.show_error)
        self.analysis.registry_ready.connect(self._on_registry)
        self.analysis.activity.connect(self._update_caption)
        self.runner.job_started.connect(self._on_job_started)
        self.runner.busy_changed.connect(self._on_busy_changed)

        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self.autosave)
        if autosave_ms > 0:
            self.autosave_timer.start(autosave_ms)

        if registry is not None:
            self.analysis.set_registry(registry)
        else:
            self.analysis.load_registry()
        if image:
            self.open_image(image)
        self.load_model(model)
        self._update_actions()
        self._update_caption()

    # -- building ------------------------------------------------------------------------------
    def _build_center(self, prompt: str) -> None:
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The model to ask; recent model folders are remembered")
        self._fill_model_combo()
        self.model_combo.activated.connect(self._on_model_chosen)
        self.open_model_button = QPushButton("Open folder\u2026")
        self.open_model_button.clicked.connect(self.choose_model)
        self.device_combo = _combo(DEVICES, self.settings.device(), "Where the model runs (next load)")
        self.dtype_combo = _combo(DTYPES, self.settings.dtype(), "Number format of the weights (next load)")
        self.device_combo.currentTextChanged.connect(self.settings.set_device)
        self.dtype_combo.currentTextChanged.connect(self.settings.set_dtype)
        self.model_label = _wrapping_label("")
        self.model_label.setStyleSheet(HINT_STYLE)
        model_box = _group(
            "Model",
            _row(self.model_combo, self.open_model_button, stretch=0),
            _row(QLabel("Device"), self.device_combo, QLabel("Weights"), self.dtype_combo, self.model_label, stretch=4),
        )

        self.image_label = _wrapping_label("No image yet.")
        self.open_image_button = QPushButton("Open image\u2026")
        self.open_image_button.clicked.connect(self.choose_image)
        self.demo_scene_button = QPushButton("Demo scene")
        self.demo_scene_button.setToolTip("Draw a random demo scene; it comes with object masks for the metrics")
        self.demo_scene_button.clicked.connect(lambda: self.open_demo_scene())
        image_box = _group("Image", _row(self.image_label, self.open_image_button, self.demo_scene_button, stretch=0))

        self.prompt_edit = QPlainTextEdit(prompt)
        self.prompt_edit.setPlaceholderText("Ask something about the image")
        self.prompt_edit.setTabChangesFocus(True)
        line = self.prompt_edit.fontMetrics().lineSpacing()
        self.prompt_edit.setFixedHeight(2 * line + 14)
        self.ask_button = QPushButton("Ask\nCtrl+Enter")
        self.ask_button.setToolTip("Ask the model (Ctrl+Enter)")
        self.ask_button.setMinimumHeight(2 * line + 14)
        self.ask_button.setDefault(True)
        self.ask_button.clicked.connect(self.ask)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, self.ask)
        question_box = _group("Question", _row(self.prompt_edit, self.ask_button, stretch=0))

        self.token_bar = TokenBar(self.state)
        chip_row = self.token_bar.fontMetrics().height() + 18
        self.token_bar.setMinimumHeight(2 * chip_row + 8)
        self.token_bar.setMaximumHeight(4 * chip_row + 8)  # longer answers scroll
        self.token_bar.itemClicked.connect(lambda: self._follow_selection(retry=True))
        self.chip_combo = QComboBox()
        self.chip_combo.addItem("probability", "probability")
        self.chip_combo.addItem("visual relevance", "relevance")
        self.chip_combo.setToolTip("Colour the chips by the model's confidence, or by how much the image made "
                                   "each token likely (LLR against a blurred image)")
        self.chip_combo.currentIndexChanged.connect(self._on_chip_mode)
        self.answer_label = _wrapping_label("", lines=2)
        self.answer_label.setStyleSheet(HINT_STYLE)
        self.map_caption = _wrapping_label("", lines=2)
        answer_box = _group("Answer", self.token_bar,
                            _row(self.answer_label, QLabel("Colour by"), self.chip_combo, stretch=0),
                            self.map_caption)

        center = QWidget()
        center.setMinimumWidth(360)
        layout = QVBoxLayout(center)
        layout.setContentsMargins(6, 6, 6, 6)
        for box in (model_box, image_box, question_box, answer_box):
            layout.addWidget(box)
        layout.addStretch(1)
        self.setCentralWidget(center)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_image_action = _action(self, "Open &image\u2026", QKeySequence.StandardKey.Open, self.choose_image)
        self.open_model_action = _action(self, "Open &model folder\u2026", "Ctrl+Shift+O", self.choose_model)
        file_menu.addAction(self.open_image_action)
        file_menu.addAction(_action(self, "New &demo scene", "Ctrl+D", lambda: self.open_demo_scene()))
        file_menu.addAction(self.open_model_action)
        file_menu.addSeparator()
        file_menu.addAction(_action(self, "Open &session\u2026", "Ctrl+Shift+S", self.choose_session))
        self.recent_menu = file_menu.addMenu("&Recent sessions")
        self.recent_menu.aboutToShow.connect(self._fill_recent_sessions)
        self.save_action = _action(self, "&Save session", QKeySequence.StandardKey.Save, self.save_session)
        file_menu.addAction(self.save_action)
        file_menu.addAction(_action(self, "Save session &as\u2026", None, lambda: self.save_session(ask=True)))
        self.report_action = _action(self, "Export &report (PDF)\u2026", "Ctrl+P", self.choose_report)
        file_menu.addAction(self.report_action)
        file_menu.addSeparator()
        file_menu.addAction(_action(self, "&Quit", QKeySequence.StandardKey.Quit, self.close))

        view_menu = self.menuBar().addMenu("&View")
        self.panels_menu = view_menu.addMenu("&Panels")
        self.panels_menu.aboutToShow.connect(self._sync_panel_actions)
        self.panel_actions: dict[str, QAction] = {}
        view_menu.addAction(_action(self, "Reset &layout", None, self.reset_layout))
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(_action(self, "&About LVLM Studio", None, self.show_about))

    def _build_status_bar(self) -> None:
        self.progress_bar = QProgressBar()
        self.progress_bar.setFixedWidth(180)
        self.progress_bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job (Esc)")
        self.cancel_button.clicked.connect(self.cancel)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.cancel)
        self.statusBar().addPermanentWidget(self.progress_bar)
        self.statusBar().addPermanentWidget(self.cancel_button)
        self._on_busy_changed(False)

    # -- panels --------------------------------------------------------------------------------
    def toggle_panel(self, panel_id: str, visible: bool | None = None) -> QDockWidget | None:
        """Show or hide a panel: the one place docks are made. The first request builds the panel
        (importing its factory) in its default area, tabbed with a panel already there; later
        requests toggle the same dock (``visible`` forces a state). None when it cannot be built."""
        dock = self.dock(panel_id)
        if dock is not None:
            show = dock.isHidden() if visible is None else visible
            dock.setVisible(show)
            if show:
                dock.raise_()
            return dock
        if visible is False:
            return None
        spec = self.panel_specs.get(panel_id)
        if spec is None:
            return None
        context = PanelContext(self.analysis, panel_id)
        try:
            widget = build_panel(spec, context)
        except Exception as exc:  # noqa: BLE001 - a broken panel plugin must not take the window down
            import traceback

            context._broken = True
            self.state.unsubscribe(context._dispatch)
            self.show_error(f"Opening panel \u201c{spec.title}\u201d", exc, traceback.format_exc())
            return None
        self.contexts[panel_id] = context
        dock = QDockWidget(spec.title, self)
        dock.setObjectName(f"panel:{panel_id}")  # stable: saved layouts find it again
        dock.setWidget(widget)
        area = AREAS.get(spec.area, Qt.DockWidgetArea.RightDockWidgetArea)
        neighbour = next((d for d in self.findChildren(QDockWidget)
                          if d is not dock and not d.isHidden() and self.dockWidgetArea(d) == area), None)
        self.addDockWidget(area, dock)
        if neighbour is not None:
            self.tabifyDockWidget(neighbour, dock)
        dock.show()  # a child added to a shown window stays hidden until shown
        dock.raise_()
        return dock

    def dock(self, panel_id: str) -> QDockWidget | None:
        return self.findChild(QDockWidget, f"panel:{panel_id}")

    def open_panels(self) -> list[str]:
        return [d.objectName().split(":", 1)[1] for d in self.findChildren(QDockWidget) if not d.isHidden()]

    def _on_registry(self) -> None:
        registry = self.analysis.registry
        assert registry is not None
        self.panel_specs = registry.panels()
        self.panels_menu.clear()
        self.panel_actions = {}
        for panel_id, spec in self.panel_specs.items():
            action = QAction(spec.title, self)
            action.setCheckable(True)
            action.triggered.connect(lambda checked, p=panel_id: self.toggle_panel(p, checked))
            self.panels_menu.addAction(action)
            self.panel_actions[panel_id] = action
        self._restore_layout()
        if self.state.method not in self.analysis.explainers and self.analysis.explainers:
            self.state.set_method(next(iter(self.analysis.explainers)))
        self._update_caption()

    def _sync_panel_actions(self) -> None:
        for panel_id, action in self.panel_actions.items():
            dock = self.dock(panel_id)
            action.setChecked(dock is not None and not dock.isHidden())

    def _restore_layout(self) -> None:
        """The saved layout of this version, or the default when there is none or it fails."""
        saved = self.settings.layout()
        if saved is not None:
            state, geometry, panels = saved
            for panel_id in panels:
                if panel_id in self.panel_specs:
                    self.toggle_panel(panel_id, True)
            if not geometry.isEmpty():
                self.restoreGeometry(geometry)
            if self.restoreState(state, _layout_version()):
                return
            log.warning("the saved window layout could not be restored; using the default layout")
        self.reset_layout()

    def reset_layout(self) -> None:
        """The default layout: the image overlay on the left, the token timeline under the question."""
        for dock in self.findChildren(QDockWidget):
            dock.hide()
        for panel_id, spec in self.panel_specs.items():
            dock = self.dock(panel_id)
            if dock is not None:
                self.removeDockWidget(dock)
                self.addDockWidget(AREAS.get(spec.area, Qt.DockWidgetArea.RightDockWidgetArea), dock)
                dock.hide()
        shown = [self.toggle_panel(p, True) for p in DEFAULT_PANELS if p in self.panel_specs]
        overlay = self.dock("overlay")
        if overlay is not None:
            self.resizeDocks([overlay], [LEFT_WIDTH], Qt.Orientation.Horizontal)
        timeline = self.dock("timeline")
        if timeline is not None:
            self.resizeDocks([timeline], [BOTTOM_HEIGHT], Qt.Orientation.Vertical)
        del shown

    def save_layout(self) -> None:
        self.settings.save_layout(self.saveState(_layout_version()), self.saveGeometry(), self.open_panels())

    # -- actions -------------------------------------------------------------------------------
    def choose_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "", IMAGE_FILTER)
        if path:
            self.open_image(path)

    def choose_model(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open model folder")
        if path:
            self.load_model(path)

    def open_image(self, path: str | Path) -> Job:
        """Read ``path`` as an image on the worker thread, then show it (the answer is cleared)."""
        path = Path(path)
        return self.analysis.open_image(path)

    def open_demo_scene(self, seed: int | None = None) -> Job:
        """A random demo scene (or scene ``seed``), with its object masks."""
        return self.analysis.open_demo_scene(random.randrange(1_000_000) if seed is None else seed)

    def load_model(self, path: str | Path | None, allow_pickle: bool = False, trust_remote_code: bool = False) -> Job:
        """Load the model in folder ``path`` (None: the demo model) on the worker thread. A folder
        that needs pickle weights or remote code is loaded with them only after the user confirms."""
        name = Path(path).name if path else "the demo model"

        def done(model: Any) -> None:
            if path:
                self.settings.add_recent_model(str(Path(path).resolve()))
            self._fill_model_combo()
            self.model_label.setText(_describe(model))

        def failed(error: BaseException, details: str) -> bool:
            if self.state.model is None:
                self.model_label.setText("No model loaded: open a model folder.")
            self._fill_model_combo()
            if isinstance(error, UnsafeModelError) and error.option in RISKS and path:
                self._offer_risky_load(path, error, allow_pickle, trust_remote_code)
                return True
            return False

        if self.state.model is None:
            self.model_label.setText(f"Loading {name}\u2026")
        return self.analysis.load_model(path, self.device_combo.currentText(), self.dtype_combo.currentText(),
                                        done, failed, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    def _offer_risky_load(self, path: str | Path, error: UnsafeModelError, allow_pickle: bool,
                          trust_remote_code: bool) -> None:
        """The folder needs an option that can run code: say what it risks; load with it on Yes (No is the default)."""
        question, risk = RISKS[error.option]
        box = QMessageBox(QMessageBox.Icon.Question, "LVLM Studio: this model can run code",
                          f"{error.message} {question}", QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                          self)
        box.setInformativeText(risk)
        box.setDefaultButton(QMessageBox.StandardButton.No)
        if box.exec() != QMessageBox.StandardButton.Yes:
            self.statusBar().showMessage(f"Did not load {Path(path).name}.")
            return
        options = {"allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code, error.option: True}
        self.load_model(path, **options)

    def ask(self) -> Job | None:
        """Generate an answer to the prompt about the image (ignored until both are ready)."""
        if not self.ask_button.isEnabled():
            return None
        job = self.analysis.ask(self.prompt_edit.toPlainText())
        self._update_actions()
        return job

    def cancel(self) -> None:
        """Ask the running job to stop; if it has not after a moment, its plugin has not checked for
        Cancel yet (a method that never yields): say so, and that quitting ends it."""
        running = self.runner.jobs[:1]
        self.analysis.cancel()
        if running:
            QTimer.singleShot(CANCEL_NOTICE_MS, self, lambda: self._still_cancelling(running[0]))

    def _still_cancelling(self, job: Job) -> None:
        if job in self.runner.jobs:
            self.statusBar().showMessage(f"Waiting for \u201c{job.title}\u201d to stop: its plugin has not checked "
                                         "for Cancel yet. Quitting ends it.")
            self.cancel_button.setText("Waiting for the plugin\u2026")
            self.cancel_button.setEnabled(False)

    def show_about(self) -> None:
        model = self.state.model
        about = "" if model is None else f"<p>Model: {model.source}<br>{_describe(model)}</p>"
        QMessageBox.about(
            self, "About LVLM Studio",
            "<h3>LVLM Studio</h3><p>Ask a vision-language model about an image, and see which parts "
            "of the image each word of its answer came from.</p>" + about,
        )

    # -- sessions ------------------------------------------------------------------------------
    def current_session(self) -> Any:
        """The analysis as a ``Session`` (what Save writes)."""
        from lvlm_studio.core.session import MetricRecord, Session

        state = self.state
        return Session(
            prompt=self.prompt_edit.toPlainText(),
            image=state.image,
            image_name=state.image_name,
            model_source=state.model_source,
            trace=state.trace,
            explanations=dict(state.explanations),
            metrics=[MetricRecord(m, t, k, r) for (m, t, k), r in state.metrics.items()],
            masks=dict(state.masks),
            view={"selected": state.selected, "method": state.method, "opacity": state.opacity,
                  "colormap": state.colormap, "threshold": state.threshold, "chip_mode": state.chip_mode,
                  "stats": _stats_to_json(state.stats)},
        )

    def save_session(self, path: str | Path | None = None, ask: bool = False) -> Path | None:
        """Save the analysis (to ``path``, the current session file, or a file the user picks)."""
        from lvlm_studio.core.session import FILE_FILTER, save_session

        if path is None and (ask or self.session_path is None):
            chosen, _ = QFileDialog.getSaveFileName(self, "Save session", "analysis.lvlm", FILE_FILTER)
            if not chosen:
                return None
            path = chosen
        target = Path(path) if path is not None else self.session_path
        assert target is not None
        try:
            saved = save_session(self.current_session(), target)
        except Exception as exc:  # noqa: BLE001 - shown, never raised into Qt
            import traceback

            self.show_error("Saving the session", exc, traceback.format_exc())
            return None
        self.session_path = saved
        self.settings.add_recent_session(str(saved.resolve()))
        self.statusBar().showMessage(f"Saved {saved.name}.")
        return saved

    def choose_session(self) -> None:
        from lvlm_studio.core.session import FILE_FILTER

        path, _ = QFileDialog.getOpenFileName(self, "Open session", "", FILE_FILTER)
        if path:
            self.open_session(path)

    def open_session(self, path: str | Path, remember: bool = True) -> Job:
        """Read a session on the worker thread, then show it as it was saved."""
        path = Path(path)

        def work(report: Callable[..., None], cancel: Any) -> Any:
            from lvlm_studio.core.session import load_session

            return load_session(path)

        def done(session: Any) -> None:
            self.apply_session(session)
            if remember:
                self.session_path = path
                self.settings.add_recent_session(str(path.resolve()))
            self.statusBar().showMessage(f"Opened {path.name}.")

        return self.analysis.start(f"Opening {path.name}", work, done)

    def apply_session(self, session: Any) -> None:
        """Show a loaded session: image, masks, prompt, answer, maps, metrics and the view."""
        state, view = self.state, session.view
        if session.image is not None:
            state.set_image(session.image, session.image_name, session.masks)
        self.prompt_edit.setPlainText(session.prompt)
        if session.trace is not None:
            state.set_trace(session.trace)
            stats = _stats_from_json(view.get("stats"), session.trace)
            if stats is not None:
                state.set_stats(session.trace, stats)
            for method, explanation in session.explanations.items():
                state.add_explanation(session.trace, method, explanation)
            for record in session.metrics:
                state.add_metric(session.trace, (record.method, record.token, record.metric), record.result)
        state.set_view(**{k: view[k] for k in ("opacity", "colormap", "threshold", "chip_mode") if k in view})
        if isinstance(view.get("method"), str):
            state.set_method(view["method"])
        if isinstance(view.get("selected"), int):
            state.select(view["selected"])

    def _fill_recent_sessions(self) -> None:
        self.recent_menu.clear()
        recent = self.settings.recent_sessions()
        for path in recent:
            self.recent_menu.addAction(_action(self, Path(path).name, None, lambda p=path: self.open_session(p)))
        if not recent:
            self.recent_menu.addAction("No recent sessions").setEnabled(False)

    def choose_report(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export report", "report.pdf", "PDF (*.pdf)")
        if path:
            self.export_report(path)

    def export_report(self, path: str | Path) -> Job:
        """Write the PDF report on the worker thread (matplotlib, no Qt)."""
        session = self.current_session()
        session.record = {}

        def work(report: Callable[..., None], cancel: Any) -> Any:
            from lvlm_studio.core.report import write_report
            from lvlm_studio.core.session import run_record

            session.record = run_record(session.trace)
            return write_report(session, path)

        return self.analysis.start("Writing the report", work,
                                   lambda written: self.statusBar().showMessage(f"Wrote {Path(written).name}."))

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
        orphans = claim_orphans(self.settings.autosave_folder)
        if not orphans:
            return False
        orphan, *later = orphans
        for other in later:
            other.release()
        box = QMessageBox(QMessageBox.Icon.Question, "LVLM Studio: restore the last analysis?",
                          "LVLM Studio did not close normally last time.",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self)
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

    # -- errors and jobs -----------------------------------------------------------------------
    def show_error(self, title: str, error: BaseException, details: str = "") -> None:
        """One dialog per failure; a failure that arrives while a dialog is open goes to the
        status bar instead of stacking a second dialog."""
        log.warning("%s failed: %s", title, error)
        if self._showing_error:
            self.statusBar().showMessage(f"{title} failed too: {error}")
            return
        self.statusBar().showMessage(f"{title} failed.")
        self._showing_error = True
        try:
            error_box(self, title, error, details).exec()
        finally:
            self._showing_error = False
        self._update_caption()

    @Slot(object)
    def _on_job_started(self, job: Job) -> None:
        job.progress.connect(self._on_job_progress)
        if self._autosave_after_jobs:  # an answer, a map, a score: autosaved the moment it is there
            job.ended.connect(self.autosave)
        if self.runner.jobs[0] is job:  # nothing ahead of it: say so now, not when it reports
            self.statusBar().showMessage(f"{job.title}\u2026")

    @Slot(int, int, str)
    def _on_job_progress(self, done: int, total: int, message: str) -> None:
        job = self.sender()
        if not isinstance(job, Job):
            return
        self.statusBar().showMessage(f"{job.title}: {message}\u2026" if message else f"{job.title}\u2026")
        self.progress_bar.setRange(0, total)  # total 0: a busy bar
        self.progress_bar.setValue(done)

    @Slot(bool)
    def _on_busy_changed(self, busy: bool) -> None:
        self.cancel_button.setText("Cancel")
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self._update_actions()

    # -- following the state -------------------------------------------------------------------
    def _follow_selection(self, retry: bool = False) -> None:
        """A token is selected: make sure the chosen method's maps exist (one job per answer)."""
        if self.state.trace is not None and self.state.selected is not None:
            self.analysis.explain(self.state.method, retry=retry)
        self._update_caption()

    def _on_chip_mode(self, index: int) -> None:
        mode = self.chip_combo.itemData(index)
        self.state.set_view(chip_mode=mode)
        if mode == "relevance":
            self.analysis.token_stats()

    def _on_state(self, name: str) -> None:
        if name == "model" and self.state.model is not None:
            self.model_label.setText(_describe(self.state.model))
        elif name == "image":
            if self.state.image is not None:
                width, height = self.state.image.size
                masks = f" \u00b7 {len(self.state.masks)} object masks" if self.state.masks else ""
                self.image_label.setText(f"{self.state.image_name} \u00b7 {width} \u00d7 {height} px{masks}")
        elif name == "trace":
            self._update_answer_label()
            if self.state.trace is not None and self.state.chip_mode == "relevance":
                self.analysis.token_stats()
        elif name in ("selected", "method"):
            self._follow_selection()
        elif name == "view":
            index = self.chip_combo.findData(self.state.chip_mode)
            if index != self.chip_combo.currentIndex():
                self.chip_combo.setCurrentIndex(index)
        if name in ("model", "image", "trace"):
            self._update_actions()
        if name in ("trace", "selected", "method", "explanations"):
            self._update_caption()

    def _update_actions(self) -> None:
        ready = self.state.model is not None and self.state.image is not None
        self.ask_button.setEnabled(ready and not self.runner.busy)
        self.report_action.setEnabled(self.state.trace is not None)

    def _update_answer_label(self) -> None:
        trace = self.state.trace
        if trace is None:
            self.answer_label.setText("The answer appears here, one chip per token.")
            return
        count = len(trace.answer_tokens)
        self.answer_label.setText(
            f"{count} token{'s' * (count != 1)}. Hover a chip for the alternatives; click it, or press "
            "\u2190\u00a0\u2192, to see where it came from."
        )

    def _update_caption(self) -> None:
        state, method, analysis = self.state, self.state.method, self.analysis
        if not hasattr(self, "map_caption"):
            return
        explainer = analysis.explainers.get(method)
        made = state.explanations.get(method)
        title = explainer.title if explainer is not None else made.provenance.get("method", method) if made else method
        key = f"explain:{method}"
        if state.trace is None:
            text = "Ask a question, then click a token of the answer to see its map over the image."
        elif state.selected is None:
            text = "Click a token of the answer to see its map over the image."
        elif method in state.explanations:
            token = state.selected_token or ""
            text = (f"<b>{title}</b> for \u201c{token.strip()}\u201d, token {state.selected + 1} of "
                    f"{len(state.trace.answer_tokens)} (Image overlay panel).")
        elif analysis.is_running(key):
            text = f"Computing {title} for every token\u2026"
        elif analysis.has_failed(key):
            text = f"{title} failed on this answer. Click a token, or choose the method again, to retry."
        else:
            text = f"No {title} map yet: click a token to compute it."
        self.map_caption.setText(text)

    def _fill_model_combo(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem(DEMO_MODEL, None)
        for folder in self.settings.recent_models():
            self.model_combo.addItem(Path(folder).name, folder)
            self.model_combo.setItemData(self.model_combo.count() - 1, folder, Qt.ItemDataRole.ToolTipRole)
        current = self.state.model_source
        index = self.model_combo.findData(current) if current else 0
        self.model_combo.setCurrentIndex(max(index, 0))
        self.model_combo.blockSignals(False)

    def _on_model_chosen(self, index: int) -> None:
        folder = self.model_combo.itemData(index)
        if folder != self.state.model_source or self.state.model is None:
            self.load_model(folder)

    # -- Qt events -----------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        # Arrow keys that no focused widget used step through the answer tokens.
        steps = {Qt.Key.Key_Left: -1, Qt.Key.Key_Right: 1}
        if event.key() in steps and self.state.trace is not None:
            self.state.step(steps[event.key()])
        else:
            super().keyPressEvent(event)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _dropped_path(event) is not None:
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        """A dropped session opens, a dropped folder loads as the model, any other file as the image."""
        path = _dropped_path(event)
        if path is None:
            return
        event.acceptProposedAction()
        if path.is_dir():
            self.load_model(path)
        elif path.suffix == ".lvlm":
            self.open_session(path)
        else:
            self.open_image(path)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._closed = True
        # Stop the worker before the widgets go: a late result must find a living window.
        if not self.runner.shutdown():
            log.warning("a job did not stop in time; closing anyway")
        self.autosave_timer.stop()
        if self.panel_specs:
            self.save_layout()
        self.autosaver.discard()  # a clean exit: nothing to restore
        super().closeEvent(event)


# -- small helpers ------------------------------------------------------------------------------
def _layout_version() -> int:
    from lvlm_studio.gui.settings import LAYOUT_VERSION

    return LAYOUT_VERSION


def _stats_to_json(stats: Any) -> dict[str, list] | None:
    if stats is None:
        return None
    return {"llr": stats.llr.tolist(), "relevant": stats.relevant.tolist(), "entropy": stats.entropy.tolist()}


def _stats_from_json(data: Any, trace: Any) -> Any:
    if not isinstance(data, dict):
        return None
    import numpy as np

    from lvlm_studio.core.token_stats import TokenStats

    try:
        return TokenStats(np.asarray(trace.logprobs, dtype=np.float64), np.asarray(data["llr"], dtype=np.float64),
                          np.asarray(data["relevant"], dtype=bool), np.asarray(data["entropy"], dtype=np.float64))
    except (KeyError, TypeError, ValueError):
        return None


def _describe(model: Any) -> str:
    info = model.describe()
    source = "demo model" if Path(model.source).name == "demo-model" else Path(model.source).name
    parts = (source, info["family"], info["device"], f"{info['parameters'] / 1e6:.2f} M parameters")
    return " \u00b7 ".join(parts)


def _dropped_path(event: QDragEnterEvent | QDropEvent) -> Path | None:
    urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
    local = [Path(url.toLocalFile()) for url in urls if url.isLocalFile()]
    return local[0] if local else None


def _wrapping_label(text: str, lines: int = 1) -> QLabel:
    """A label that wraps and keeps room for ``lines`` lines."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setMinimumHeight(lines * label.fontMetrics().lineSpacing() + 4)
    return label


def _group(title: str, *items: QWidget) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    layout.setContentsMargins(8, 6, 8, 6)
    for item in items:
        layout.addWidget(item)
    return box


def _row(*widgets: QWidget, stretch: int) -> QWidget:
    """Widgets side by side; the one at index ``stretch`` takes the spare width."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for i, widget in enumerate(widgets):
        layout.addWidget(widget, stretch=1 if i == stretch else 0)
    return row


def _combo(items: tuple[str, ...], current: str, tip: str) -> QComboBox:
    combo = QComboBox()
    combo.addItems(list(items))
    combo.setCurrentText(current)
    combo.setToolTip(tip)
    return combo


def _action(parent: QWidget, text: str, shortcut: Any, slot: Callable[[], Any]) -> QAction:
    """A menu action that calls ``slot()`` with no arguments: ``triggered`` sends ``checked``, which a
    slot with optional parameters would take as its first one (Save session took it as the path)."""
    action = QAction(text, parent)
    if shortcut is not None:
        action.setShortcut(shortcut)
    action.triggered.connect(lambda: slot())
    return action


