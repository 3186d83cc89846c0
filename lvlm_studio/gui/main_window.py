"""The main window: the question and its answer in the middle, every other view a dockable panel.

The middle (central widget) is where an analysis starts: the model, the image, the question and
the answer as token chips. Everything else (the image overlay, the token timeline, the attention
grid, method comparison, metrics, and any third-party panel) is contributed by plugins through the
``lvlm_studio_panels`` hook and added by one function, ``toggle_panel``. Work runs as jobs of the
window's ``Analysis`` on a worker thread; the views redraw from the Qt-free ``StudioState``.

The window's other parts have a module each: the Model box (``model_box``), the menu bar
(``menus``), sessions, autosave and the report (``sessions``), and the status bar with the progress
bar, Cancel and error dialogs (``job_status``). The window builds them, keeps the docks, the
question and the answer, and passes on the calls that tests, the app and plugins make on it.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent, QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.core.errors import LVLMError
from lvlm_studio.gui.analysis import Analysis
from lvlm_studio.gui.docks import PanelDock, scrolling
from lvlm_studio.gui.help import STEP_KEYS
from lvlm_studio.gui.job_status import JobStatus
from lvlm_studio.gui.menus import Menus
from lvlm_studio.gui.model_box import ModelBox, describe_model
from lvlm_studio.gui.panels import PanelContext, build_panel
from lvlm_studio.gui.params_form import MethodParamsBox
from lvlm_studio.gui.sessions import Sessions
from lvlm_studio.gui.settings import StudioSettings
from lvlm_studio.gui.state import StudioState
from lvlm_studio.gui.token_bar import TokenBar
from lvlm_studio.gui.widgets import HINT_STYLE, group, row, wrapping_label
from lvlm_studio.gui.window_level import WindowLevelBox
from lvlm_studio.gui.worker import Job

if TYPE_CHECKING:
    from lvlm_studio.core.plugin.contracts import PanelSpec
    from lvlm_studio.core.plugin.registry import PluginRegistry
    from lvlm_studio.gui.help import ShortcutsDialog
    from lvlm_studio.gui.review.window import ReviewWindow

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "describe the image."
DEFAULT_SIZE = QSize(1280, 800)
DEFAULT_PANELS = ("overlay", "timeline")  # open on a first start; the others wait in View > Panels
LEFT_WIDTH = 700  # the overlay's share of the default width
CENTER_WIDTH = 360  # the question and answer column: narrower, its rows would not fit
BOTTOM_HEIGHT = 400  # the panels under the question
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff *.dcm *.dicom);;All files (*)"
AUTOSAVE_MS = 60_000
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
        self.review_window: ReviewWindow | None = None  # the review workspace, once opened

        self._build_center(prompt or DEFAULT_PROMPT)
        self.sessions = Sessions(self, autosave_ms)
        self.menus = Menus(self)
        self.job_status = JobStatus(self)
        self.plugin_problems: QPushButton | None = None  # shown when a plugin could not be used
        self.plugins_dialog: QWidget | None = None  # Help › Plugins, once opened
        self.shortcuts_dialog: ShortcutsDialog | None = None  # Help › Keyboard shortcuts, once opened
        self.study_views: list[QWidget] = []  # File › Open study…, one window per folder opened
        # The parts' widgets that tests, screenshots and the app reach through the window.
        box = self.model_box
        self.model_combo, self.device_combo, self.dtype_combo = box.model_combo, box.device_combo, box.dtype_combo
        self.model_label = box.model_label
        self.panels_menu, self.panel_actions = self.menus.panels_menu, self.menus.panel_actions
        self.save_action, self.recent_menu = self.menus.save_action, self.menus.recent_menu
        self.progress_bar, self.cancel_button = self.job_status.progress_bar, self.job_status.cancel_button
        self.autosaver = self.sessions.autosaver

        self.state.subscribe(self._on_state)
        self.analysis.registry_ready.connect(self._on_registry)
        self.analysis.activity.connect(self.update_caption)
        self.runner.busy_changed.connect(self._update_actions)

        if registry is not None:
            self.analysis.set_registry(registry)
        else:
            self.analysis.load_registry()
        if image:
            self.open_image(image)
        self.load_model(model)
        self._update_actions()
        self.update_caption()

    # -- building ------------------------------------------------------------------------------
    def _build_center(self, prompt: str) -> None:
        self.model_box = ModelBox(self.settings, self.state, self.analysis)
        self.model_box.message.connect(self.statusBar().showMessage)

        self.image_label = wrapping_label("No image yet.")
        self.open_image_button = QPushButton("Open image\u2026")
        self.open_image_button.clicked.connect(self.choose_image)
        self.demo_scene_button = QPushButton("Demo scene")
        self.demo_scene_button.setToolTip("Draw a random demo scene; it comes with object masks for the metrics")
        self.demo_scene_button.clicked.connect(lambda: self.open_demo_scene())
        self.window_level = WindowLevelBox(self.state, self._open_frame)
        image_box = group("Image", row(self.image_label, self.open_image_button, self.demo_scene_button, stretch=0),
                          self.window_level)

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
            QShortcut(QKeySequence(keys), self, self.ask).setWhatsThis("Ask the model")
        question_box = group("Question", row(self.prompt_edit, self.ask_button, stretch=0))

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
        self.answer_label = wrapping_label("", lines=2)
        self.answer_label.setStyleSheet(HINT_STYLE)
        self.map_caption = wrapping_label("", lines=2)
        self.params_box = MethodParamsBox(self.analysis)
        answer_box = group("Answer", self.token_bar,
                           row(self.answer_label, QLabel("Colour by"), self.chip_combo, stretch=0),
                           self.map_caption, self.params_box)

        center = QWidget()
        center.setMinimumWidth(CENTER_WIDTH)
        layout = QVBoxLayout(center)
        layout.setContentsMargins(6, 6, 6, 6)
        for box in (self.model_box, image_box, question_box, answer_box):
            layout.addWidget(box)
        layout.addStretch(1)
        # Panels under it give way first; when wrapped text still makes it taller than the room left
        # (1024 x 700), it scrolls instead of squeezing the answer's chips under its hint. Never sideways.
        self.center_area = scrolling(center, QSize(CENTER_WIDTH, center.minimumSizeHint().height()))
        self.center_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.center_area.setMinimumWidth(CENTER_WIDTH + self.center_area.verticalScrollBar().sizeHint().width())
        self.setCentralWidget(self.center_area)

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
        dock = PanelDock(spec.title, self)
        dock.setObjectName(f"panel:{panel_id}")  # stable: saved layouts find it again
        dock.set_panel(widget)  # in a scroll area: a small window squeezes no panel below its minimum
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
        self.menus.set_panels(self.panel_specs)
        self._show_plugin_problems(registry)
        self._restore_layout()
        if self.state.method not in self.analysis.explainers and self.analysis.explainers:
            self.state.set_method(next(iter(self.analysis.explainers)))
        self.update_caption()

    def _show_plugin_problems(self, registry: PluginRegistry) -> None:
        """A lasting button in the status bar when a plugin could not be used or two give the same id;
        it opens Help › Plugins."""
        unusable = [s.name for s in registry.status if s.state in ("failed", "incompatible")]
        if not unusable and not registry.conflicts:
            return
        text = (f"Plugins not used: {', '.join(unusable)}" if unusable else "Two plugins give the same id")
        if self.plugin_problems is None:
            self.plugin_problems = QPushButton(self)
            self.plugin_problems.setFlat(True)
            self.plugin_problems.setToolTip("Open Help \u203a Plugins")
            self.plugin_problems.clicked.connect(lambda: self.show_plugins())
            self.statusBar().addPermanentWidget(self.plugin_problems)
        self.plugin_problems.setText(f"\u26a0 {text}")

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

    def open_image(self, path: str | Path) -> Job:
        """Read ``path`` as an image on the worker thread, then show it (the answer is cleared)."""
        path = Path(path)
        return self.analysis.open_image(path)

    def _open_frame(self, frame: int) -> None:
        """Another frame (from 0) of the multi-frame file that is open."""
        if self.analysis.image_path is not None:
            self.analysis.open_image(self.analysis.image_path, frame)

    def open_demo_scene(self, seed: int | None = None) -> Job:
        """A random demo scene (or scene ``seed``), with its object masks."""
        return self.analysis.open_demo_scene(random.randrange(1_000_000) if seed is None else seed)

    def load_model(self, path: str | Path | None, allow_pickle: bool = False, trust_remote_code: bool = False) -> Job:
        """Load the model in folder ``path`` (None: the demo model); see ``ModelBox.load_model``."""
        return self.model_box.load_model(path, allow_pickle, trust_remote_code)

    def ask(self) -> Job | None:
        """Generate an answer to the prompt about the image (ignored until both are ready)."""
        if not self.ask_button.isEnabled():
            return None
        job = self.analysis.ask(self.prompt_edit.toPlainText())
        self._update_actions()
        return job

    def cancel(self) -> None:
        """Stop the running job (Cancel, Esc); see ``JobStatus.cancel``."""
        self.job_status.cancel()

    def show_error(self, title: str, error: BaseException, details: str = "") -> None:
        """One dialog per failure; see ``JobStatus.show_error``."""
        self.job_status.show_error(title, error, details)

    def open_review(self) -> ReviewWindow:
        """The review workspace (a window of its own on this window's model), built on first use and shown."""
        if self.review_window is None:
            from lvlm_studio.gui.review.window import ReviewWindow

            self.review_window = ReviewWindow(self)
        self.review_window.show()
        self.review_window.raise_()
        self.review_window.activateWindow()
        return self.review_window

    def choose_study(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open study (the --out folder of lvlm-studio study)")
        if folder:
            self.open_study(folder)

    def open_study(self, folder: str | Path) -> QWidget | None:
        """A study's output folder in a window of its own (``StudyView``); a folder that holds no
        report is refused with a dialog saying what to open."""
        from lvlm_studio.gui.study_view import StudyView

        try:
            view = StudyView(folder, self)
        except LVLMError as exc:
            self.show_error("Open study", exc)
            return None
        self.study_views.append(view)
        view.show()
        view.raise_()
        return view

    def show_plugins(self) -> QWidget:
        """Help › Plugins: the plugins, what each contributes, failures and warnings (non-modal)."""
        registry = self.analysis.registry
        if registry is None:
            self.statusBar().showMessage("The plugins are still loading; try again in a moment.", 5000)
            return self
        from lvlm_studio.gui.plugins_dialog import PluginsDialog

        if self.plugins_dialog is None:
            self.plugins_dialog = PluginsDialog(registry, self.analysis.panel_failures, self)
        else:
            self.plugins_dialog.refresh(registry, self.analysis.panel_failures)
        self.plugins_dialog.show()
        self.plugins_dialog.raise_()
        return self.plugins_dialog

    def show_shortcuts(self) -> QWidget:
        """Help › Keyboard shortcuts: every shortcut of the window, listed from its actions (non-modal)."""
        from lvlm_studio.gui.help import ShortcutsDialog

        if self.shortcuts_dialog is None:
            self.shortcuts_dialog = ShortcutsDialog(self)
        else:
            self.shortcuts_dialog.refresh()
        self.shortcuts_dialog.show()
        self.shortcuts_dialog.raise_()
        return self.shortcuts_dialog

    def open_documentation(self) -> Path | None:
        """Help › Documentation: the local documentation in the system's viewer (a dialog when there is none)."""
        from lvlm_studio.gui.help import open_documentation

        return open_documentation(self)

    def show_about(self) -> None:
        model = self.state.model
        about = "" if model is None else f"<p>Model: {model.source}<br>{describe_model(model)}</p>"
        QMessageBox.about(
            self, "About LVLM Studio",
            "<h3>LVLM Studio</h3><p>Ask a vision-language model about an image, and see which parts "
            "of the image each word of its answer came from.</p>" + about,
        )

    # -- sessions (see ``Sessions``) -------------------------------------------------------------
    @property
    def session_path(self) -> Path | None:
        """The session file Save writes to (None until the analysis is saved or opened)."""
        return self.sessions.path

    def save_session(self, path: str | Path | None = None, ask: bool = False) -> Path | None:
        return self.sessions.save_session(path, ask)

    def open_session(self, path: str | Path, remember: bool = True) -> Job:
        return self.sessions.open_session(path, remember)

    def export_report(self, path: str | Path) -> Job:
        return self.sessions.export_report(path)

    def autosave(self) -> Path | None:
        return self.sessions.autosave()

    def offer_restore(self) -> bool:
        return self.sessions.offer_restore()

    # -- following the state -------------------------------------------------------------------
    def _follow_selection(self, retry: bool = False) -> None:
        """A token is selected: make sure the chosen method's maps exist (the selected token's first)."""
        if self.state.trace is not None and self.state.selected is not None:
            self.analysis.explain(self.state.method, retry=retry)
        self.update_caption()

    def _on_chip_mode(self, index: int) -> None:
        mode = self.chip_combo.itemData(index)
        self.state.set_view(chip_mode=mode)
        if mode == "relevance":
            self.analysis.token_stats()

    def _on_state(self, name: str) -> None:
        if name == "image" and self.state.image is not None:
            width, height = self.state.image.size
            masks = f" \u00b7 {len(self.state.masks)} object masks" if self.state.masks else ""
            self.image_label.setText(f"{self.state.image_name} \u00b7 {width} \u00d7 {height} px{masks}")
        elif name == "trace":
            self._update_answer_label()
            if self.state.trace is not None and self.state.chip_mode == "relevance":
                self.analysis.token_stats()
        elif name in ("selected", "method", "params"):
            self._follow_selection()
        elif name == "view":
            index = self.chip_combo.findData(self.state.chip_mode)
            if index != self.chip_combo.currentIndex():
                self.chip_combo.setCurrentIndex(index)
        if name in ("model", "image", "trace"):
            self._update_actions()
        if name in ("trace", "selected", "method", "explanations"):
            self.update_caption()

    def _update_actions(self) -> None:
        ready = self.state.model is not None and self.state.image is not None
        self.ask_button.setEnabled(ready and not self.runner.busy)
        self.menus.report_action.setEnabled(self.state.trace is not None)

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

    def update_caption(self) -> None:
        """Say under the answer what the overlay shows, or what to do to see a map (also after an error)."""
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
        elif made is not None and state.selected in made.maps:
            token = state.selected_token or ""
            count = len(state.trace.answer_tokens)
            ready = sum(t in made.maps for t in range(count))
            rest = f"; the other tokens in the background ({ready} of {count} ready)" if ready < count else ""
            text = (f"<b>{title}</b> for \u201c{token.strip()}\u201d, token {state.selected + 1} of "
                    f"{count} (Image overlay panel){rest}.")
        elif analysis.is_running(key):
            text = f"Computing {title}\u2026"
        elif analysis.has_failed(key):
            text = f"{title} failed on this answer. Click a token, or choose the method again, to retry."
        else:
            text = f"No {title} map yet: click a token to compute it."
        self.map_caption.setText(text)

    # -- Qt events -----------------------------------------------------------------------------
    def keyPressEvent(self, event: QKeyEvent) -> None:
        # Arrow keys that no focused widget used step through the answer tokens.
        if event.key() in STEP_KEYS and self.state.trace is not None:
            self.state.step(STEP_KEYS[event.key()])
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
        if self.review_window is not None:
            self.review_window.close()
        self.sessions.close()  # first: a job that ends while the worker stops must not autosave again
        # Stop the worker before the widgets go: a late result must find a living window.
        if not self.runner.shutdown():
            log.warning("a job did not stop in time; closing anyway")
        if self.panel_specs:
            self.save_layout()
        super().closeEvent(event)


# -- small helpers ------------------------------------------------------------------------------
def _layout_version() -> int:
    from lvlm_studio.gui.settings import LAYOUT_VERSION

    return LAYOUT_VERSION


def _dropped_path(event: QDragEnterEvent | QDropEvent) -> Path | None:
    urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
    local = [Path(url.toLocalFile()) for url in urls if url.isLocalFile()]
    return local[0] if local else None


