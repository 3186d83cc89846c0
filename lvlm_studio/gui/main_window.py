"""The main window: the image and its map on the left; model, image, question, answer and method on
the right; the running job's progress and a Cancel button in the status bar.

The window turns user actions into jobs (load, open, ask, explain) for the worker thread and puts
their results into the ``StudioState``; the views redraw from the state. Core modules that import
torch are imported inside the jobs, so the window appears at once while the model loads.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QSize, Qt, Slot
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeyEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.core.jobs import Progress
from lvlm_studio.gui.dialogs import error_box
from lvlm_studio.gui.image_view import ImageView
from lvlm_studio.gui.state import DEFAULT_METHOD, StudioState, finite_range
from lvlm_studio.gui.token_bar import TokenBar
from lvlm_studio.gui.worker import Job, JobRunner

if TYPE_CHECKING:
    from lvlm_studio.core.contracts import Explainer
    from lvlm_studio.core.plugins import PluginRegistry

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "describe the image."
DEFAULT_SIZE = QSize(1280, 800)
PANEL_WIDTH = 400
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)"
HINT_STYLE = "color: palette(placeholder-text);"


class MainWindow(QMainWindow):
    """Ask a model about an image and see which parts of the image each answer token came from.

    ``registry`` is the plugin registry to take explanation methods from (built on the worker
    thread when None); ``model`` a model folder (None: the embedded demo model); ``image`` an image
    to open at once; ``prompt`` the question to start with.
    """

    def __init__(
        self,
        registry: PluginRegistry | None = None,
        model: str | None = None,
        image: str | None = None,
        prompt: str | None = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle("LVLM Studio")
        self.resize(DEFAULT_SIZE)
        self.setAcceptDrops(True)
        self.state = StudioState()
        self.registry = registry
        self.explainers: dict[str, Explainer] = {}
        self.runner = JobRunner(self)
        self._explaining: dict[str, Job] = {}  # method id -> its job for the current trace
        self._explain_failed: set[str] = set()  # methods that failed on the current trace
        self._showing_error = False

        self._build_panels(prompt or DEFAULT_PROMPT)
        self._build_menus()
        self._build_status_bar()
        self.state.subscribe(self._on_state)
        self.runner.job_started.connect(self._on_job_started)
        self.runner.busy_changed.connect(self._on_busy_changed)

        if registry is not None:
            self._set_registry(registry)
        if image:
            self.open_image(image)
        self.load_model(model)
        self._update_actions()
        self._update_answer_label()
        self._update_map_caption()

    # -- building ----------------------------------------------------------------------------
    def _build_panels(self, prompt: str) -> None:
        self.image_view = ImageView(self.state)

        self.model_label = _wrapping_label("")
        self.open_model_button = QPushButton("Open model folder\u2026")
        self.open_model_button.clicked.connect(self.choose_model)
        model_box = _group("Model", self.model_label, self.open_model_button)

        self.image_label = _wrapping_label("No image yet.")
        self.open_image_button = QPushButton("Open image\u2026")
        self.open_image_button.clicked.connect(self.choose_image)
        image_box = _group("Image", self.image_label, self.open_image_button)

        self.prompt_edit = QPlainTextEdit(prompt)
        self.prompt_edit.setPlaceholderText("Ask something about the image")
        self.prompt_edit.setTabChangesFocus(True)
        line = self.prompt_edit.fontMetrics().lineSpacing()
        self.prompt_edit.setFixedHeight(3 * line + 14)
        self.ask_button = QPushButton("Ask   (Ctrl+Enter)")
        self.ask_button.setDefault(True)
        self.ask_button.clicked.connect(self.ask)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, self.ask)
        question_box = _group("Question", self.prompt_edit, self.ask_button)

        self.token_bar = TokenBar(self.state)
        self.token_bar.itemClicked.connect(self._ensure_explanation)  # a click also retries a cancelled map
        self.answer_label = _wrapping_label("", lines=3)
        self.answer_label.setStyleSheet(HINT_STYLE)
        answer_box = _group("Answer", self.token_bar, self.answer_label)

        self.method_combo = QComboBox()
        self.method_combo.setToolTip("The explanation method that makes the map")
        self.method_combo.currentIndexChanged.connect(self._on_method_chosen)
        self.method_combo.activated.connect(self._retry_method)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(round(self.state.opacity * 100))
        self.opacity_slider.setToolTip("How strongly the map covers the image")
        self.opacity_value = QLabel()
        self.opacity_value.setMinimumWidth(self.opacity_value.fontMetrics().horizontalAdvance("100 %") + 4)
        self.opacity_slider.valueChanged.connect(self._on_opacity)
        self._on_opacity(self.opacity_slider.value())
        self.map_caption = _wrapping_label("", lines=2)
        explanation_box = _group(
            "Explanation",
            _row(QLabel("Method"), self.method_combo, stretch=1),
            _row(QLabel("Opacity"), self.opacity_slider, self.opacity_value, stretch=1),
            self.map_caption,
        )

        panel = QWidget()
        panel.setMinimumWidth(320)
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(6, 6, 8, 6)
        for box in (model_box, image_box, question_box):
            layout.addWidget(box)
        layout.addWidget(answer_box, stretch=1)
        layout.addWidget(explanation_box)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.image_view)
        splitter.addWidget(panel)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 0)
        splitter.setSizes([DEFAULT_SIZE.width() - PANEL_WIDTH, PANEL_WIDTH])
        self.setCentralWidget(splitter)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self.open_image_action = _action(self, "Open &image\u2026", QKeySequence.StandardKey.Open, self.choose_image)
        self.open_model_action = _action(self, "Open &model folder\u2026", "Ctrl+Shift+O", self.choose_model)
        file_menu.addAction(self.open_image_action)
        file_menu.addAction(self.open_model_action)
        file_menu.addSeparator()
        file_menu.addAction(_action(self, "&Quit", QKeySequence.StandardKey.Quit, self.close))
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

    # -- actions -----------------------------------------------------------------------------
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

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.images import open_image

            return open_image(path)

        def done(image: Any) -> None:
            self.state.set_image(image, path.name)
            self.statusBar().showMessage(f"Opened {path.name}.")

        job = self._start(f"Opening {path.name}", work, done)
        self.image_view.set_hint(f"Opening {path.name}\u2026")
        job.ended.connect(self.image_view.set_hint)
        return job

    def load_model(self, path: str | Path | None) -> Job:
        """Load the model in folder ``path`` (None: the demo model) on the worker thread."""
        name = Path(path).name if path else "the demo model"
        registry = self.registry

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.models.loading import LoadOptions, load_model
            from lvlm_studio.core.plugins import create_registry

            used = registry or create_registry()
            return used, load_model(path, LoadOptions(), used)

        def done(result: Any) -> None:
            used, loaded = result
            if self.registry is None:
                self._set_registry(used)
            self.state.set_model(loaded)
            self.statusBar().showMessage(f"Loaded {name}. Ask a question about the image.")

        def failed(error: BaseException, details: str) -> None:
            if self.state.model is None:
                self.model_label.setText("No model loaded: open a model folder.")

        if self.state.model is None:
            self.model_label.setText(f"Loading {name}\u2026")
        return self._start(f"Loading {name}", work, done, failed)

    def ask(self) -> Job | None:
        """Generate an answer to the prompt about the image (ignored until both are ready)."""
        model, image, prompt = self.state.model, self.state.image, self.prompt_edit.toPlainText()
        if not self.ask_button.isEnabled() or model is None or image is None:
            return None

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.trace import generate_trace

            return generate_trace(model, image, prompt, cancel=cancel)

        def done(trace: Any) -> None:
            self.state.set_trace(trace)
            self.statusBar().showMessage(
                f"Answered in {sum(trace.timings.values()):.1f} s. Click a token to see where it came from.")

        job = self._start("Answering", work, done)
        self._update_actions()
        return job

    def cancel(self) -> None:
        if self.runner.busy:
            self.statusBar().showMessage("Cancelling\u2026")
            self.runner.cancel_all()

    def show_about(self) -> None:
        model = self.state.model
        about = "" if model is None else f"<p>Model: {model.source}<br>{_describe(model)}</p>"
        QMessageBox.about(
            self, "About LVLM Studio",
            "<h3>LVLM Studio</h3><p>Ask a vision-language model about an image, and see which parts "
            "of the image each word of its answer came from.</p>" + about,
        )

    # -- explanations ------------------------------------------------------------------------
    def _ensure_explanation(self) -> None:
        """Run the chosen method for every answer token once per trace, when a token is selected;
        stepping through tokens afterwards only redraws."""
        state, method = self.state, self.state.method
        trace, model = state.trace, state.model
        if trace is None or state.selected is None or method not in self.explainers:
            return
        if method in state.explanations or method in self._explaining or method in self._explain_failed:
            return
        explainer = self.explainers[method]
        targets = list(range(len(trace.answer_tokens)))

        def work(report: Callable[[Progress], None], cancel: threading.Event) -> Any:
            from lvlm_studio.core.jobs import run_job

            params = explainer.resolve_params({})
            return run_job(explainer.explain(trace, model, targets, params), report, cancel)

        def done(explanation: Any) -> None:
            state.add_explanation(trace, method, explanation)
            self.statusBar().showMessage(f"{explainer.title}: maps for all {len(targets)} tokens ready.")

        def failed(error: BaseException, details: str) -> None:
            if trace is state.trace:
                self._explain_failed.add(method)

        def ended() -> None:
            if self._explaining.get(method) is job:
                del self._explaining[method]
            self._update_map_caption()

        job = self._start(f"Explaining with {explainer.title}", work, done, failed)
        job.ended.connect(ended)
        self._explaining[method] = job
        self._update_map_caption()

    def _forget_explanation_jobs(self) -> None:
        """A new answer: maps still being computed for the old one are no use."""
        for job in self._explaining.values():
            job.cancel()
        self._explaining.clear()
        self._explain_failed.clear()

    # -- jobs --------------------------------------------------------------------------------
    def _start(
        self,
        title: str,
        work: Callable[[Callable[[Progress], None], threading.Event], Any],
        done: Callable[[Any], None],
        failed: Callable[[BaseException, str], None] | None = None,
    ) -> Job:
        job = self.runner.start(title, work)
        job.finished.connect(done)

        def report_failure(error: BaseException, details: str) -> None:
            if failed is not None:
                failed(error, details)
            self.show_error(title, error, details)

        job.failed.connect(report_failure)
        job.cancelled.connect(lambda: self.statusBar().showMessage(f"Cancelled: {title.lower()}."))
        return job

    def show_error(self, title: str, error: BaseException, details: str = "") -> None:
        """One dialog per failure; a failure that arrives while a dialog is open goes to the
        status bar instead of stacking a second dialog."""
        log.warning("%s failed: %s", title, error, exc_info=(type(error), error, error.__traceback__))
        if self._showing_error:
            self.statusBar().showMessage(f"{title} failed too: {error}")
            return
        self.statusBar().showMessage(f"{title} failed.")
        self._showing_error = True
        try:
            error_box(self, title, error, details).exec()
        finally:
            self._showing_error = False

    @Slot(object)
    def _on_job_started(self, job: Job) -> None:
        job.progress.connect(self._on_job_progress)
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
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self._update_actions()

    # -- following the state -----------------------------------------------------------------
    def _set_registry(self, registry: PluginRegistry) -> None:
        self.registry = registry
        self.explainers = registry.explainers()
        self.method_combo.blockSignals(True)
        self.method_combo.clear()
        for method_id, explainer in self.explainers.items():
            self.method_combo.addItem(explainer.title or method_id, method_id)
            self.method_combo.setItemData(self.method_combo.count() - 1, method_id, Qt.ItemDataRole.ToolTipRole)
        self.method_combo.blockSignals(False)
        preferred = self.state.method if self.state.method in self.explainers else DEFAULT_METHOD
        index = self.method_combo.findData(preferred)
        self.method_combo.setCurrentIndex(max(index, 0))
        self._on_method_chosen(self.method_combo.currentIndex())

    def _on_method_chosen(self, index: int) -> None:
        method = self.method_combo.itemData(index)
        if method:
            self.state.set_method(method)

    def _retry_method(self, index: int) -> None:
        """The user picked a method in the list, perhaps the one that failed: try it again."""
        self._explain_failed.discard(self.method_combo.itemData(index))
        self._ensure_explanation()
        self._update_map_caption()

    def _on_opacity(self, value: int) -> None:
        self.opacity_value.setText(f"{value} %")
        self.state.set_opacity(value / 100)

    def _on_state(self, name: str) -> None:
        if name == "model" and self.state.model is not None:
            self.model_label.setText(_describe(self.state.model))
        elif name == "image" and self.state.image is not None:
            width, height = self.state.image.size
            self.image_label.setText(f"{self.state.image_name} \u00b7 {width} \u00d7 {height} px")
        elif name == "trace":
            self._forget_explanation_jobs()
            self._update_answer_label()
        elif name in ("selected", "method"):
            self._ensure_explanation()
        if name in ("model", "image"):
            self._update_actions()
        self._update_map_caption()

    def _update_actions(self) -> None:
        ready = self.state.model is not None and self.state.image is not None
        self.ask_button.setEnabled(ready and not self.runner.busy)
        self.method_combo.setEnabled(bool(self.explainers))

    def _update_answer_label(self) -> None:
        trace = self.state.trace
        if trace is None:
            self.answer_label.setText("The answer appears here, one chip per token.")
            return
        count = len(trace.answer_tokens)
        self.answer_label.setText(
            f"{count} token{'s' * (count != 1)}, coloured by how sure the model was: red unsure, green sure. "
            "Hover for alternatives; click, or press \u2190\u00a0\u2192, for the map."
        )

    def _update_map_caption(self) -> None:
        state, method = self.state, self.state.method
        title = self.explainers[method].title if method in self.explainers else method
        if state.trace is None:
            text = "Ask a question, then click a token of the answer to see its map over the image."
        elif state.selected is None:
            text = "Click a token of the answer to see its map over the image."
        elif method in state.explanations:
            pixels = state.selected_pixels()
            token = state.selected_token or ""
            count = len(state.trace.answer_tokens)
            text = f"<b>{title}</b> for \u201c{token}\u201d, token {state.selected + 1} of {count}"
            span = finite_range(pixels) if pixels is not None else None
            if span is not None:
                text += f"<br>values from {span[0]:.3g} to {span[1]:.3g} (colour bar)"
        elif method in self._explaining:
            text = f"Computing {title} for every token\u2026"
        elif method in self._explain_failed:
            text = f"{title} failed on this answer. Choose the method again to retry."
        else:
            text = f"No {title} map yet: click a token to compute it."
        self.map_caption.setText(text)

    # -- Qt events ---------------------------------------------------------------------------
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
        """A dropped file opens as the image; a dropped folder loads as the model."""
        path = _dropped_path(event)
        if path is None:
            return
        event.acceptProposedAction()
        if path.is_dir():
            self.load_model(path)
        else:
            self.open_image(path)

    def closeEvent(self, event: QCloseEvent) -> None:
        # Stop the worker before the widgets go: a late result must find a living window.
        if not self.runner.shutdown():
            log.warning("a job did not stop in time; closing anyway")
        super().closeEvent(event)


# -- small helpers ------------------------------------------------------------------------------
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
    """A label that wraps; it keeps room for ``lines`` lines, because the splitter that holds the
    panel does not pass wrapped heights on and a longer text would otherwise be cut off."""
    label = QLabel(text)
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setMinimumHeight(lines * label.fontMetrics().lineSpacing() + 4)
    return label


def _group(title: str, *items: QWidget) -> QGroupBox:
    box = QGroupBox(title)
    layout = QVBoxLayout(box)
    for item in items:
        layout.addWidget(item)
    return box


def _row(*widgets: QWidget, stretch: int) -> QWidget:
    """Widgets side by side; the second one takes the spare width."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for i, widget in enumerate(widgets):
        layout.addWidget(widget, stretch=stretch if i == 1 else 0)
    return row


def _action(parent: QWidget, text: str, shortcut: Any, slot: Callable[[], Any]) -> QAction:
    action = QAction(text, parent)
    if shortcut is not None:
        action.setShortcut(shortcut)
    action.triggered.connect(slot)
    return action
