"""The review workspace: a worklist of cases, each assessed, each signed off from the keyboard.

A window of its own beside the main window (File › Open worklist…, or the Review menu), sharing its
model, plugins and worker thread, so an assessment never runs at the same time as another job on
the model. On the left the queue: every question of every case with the suggested decision and
its status (pending, accepted, overridden, deferred). Selecting a case shows it (``CaseView``)
and, the first time, assesses it on the worker thread; the result is kept per case, and the next
pending case is assessed ahead while the reviewer reads.

Signing off: A accepts, O overrides (asks the corrected answer), D defers to a human expert;
override and defer need a comment. The reviewer's name is asked once and kept in the settings.
Each sign-off is appended to the audit trail (``core/formats/audit.py``, at the path the settings
give) before the queue shows it, and the next pending case is selected. Reopening a worklist shows
what the audit trail already holds for its cases (same case id, same image bytes).

The assessor is a constructor argument: by default the core's grounding assessment
(``lvlm_studio.review.assessment.assess``, imported when a case is first assessed); tests pass a
stand-in with the same signature.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QColor, QFont, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QFileDialog,
    QHeaderView,
    QInputDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from lvlm_studio.core.errors import InputError, LVLMError
from lvlm_studio.core.formats.worklist import ReviewItem, Worklist, read_worklist
from lvlm_studio.gui.dialogs import error_box
from lvlm_studio.gui.menus import action
from lvlm_studio.gui.review.case_view import STATUS_STYLES, CaseView
from lvlm_studio.gui.review.dialogs import ReviewerDialog, SignOffDialog
from lvlm_studio.gui.worker import Job

if TYPE_CHECKING:
    from lvlm_studio.core.formats.audit import AuditLog
    from lvlm_studio.gui.main_window import MainWindow

log = logging.getLogger(__name__)

#: The key that signs, and what the audit trail records for it.
DECISIONS = {"accept": "accepted", "override": "overridden", "defer": "deferred"}
COLUMNS = ("Case", "Question", "Suggested", "Status", "Signed by")
SUGGESTED_COLOURS = {"defer": "#b06000", "accept": "#188038", "failed": "#b3261e"}
MANIFEST_FILTER = "Worklists (*.csv *.json);;All files (*)"
DEFAULT_SIZE = (1280, 800)

#: assess(loaded, image, question, settings=None, registry=None) -> a job (generator) or its result.
Assessor = Callable[..., Any]


def core_assessor(loaded: Any, image: Any, question: str, settings: Any = None, registry: Any = None) -> Any:
    """The core's grounding assessment, imported on first use (on the worker thread)."""
    try:
        from lvlm_studio.review.assessment import assess
    except ImportError as exc:
        raise InputError(f"the grounding assessment is not available in this installation ({exc}).",
                         "Install a version of LVLM Studio that has lvlm_studio.review.") from None
    return assess(loaded, image, question, settings=settings, registry=registry)


@dataclass
class CaseResult:
    """What the worker computed for one question: the image's pixels, the hashes the audit trail needs, the verdict."""

    pixels: np.ndarray
    image_hash: str
    model_hash: str
    assessment: Any


@dataclass
class CaseState:
    """Where one question of the worklist stands."""

    status: str = "pending"  # pending | accepted | overridden | deferred
    reviewer: str = ""
    time: str = ""
    comment: str = ""
    result: CaseResult | None = None
    error: str = ""


class ReviewWindow(QMainWindow):
    """The review workspace of ``main``'s model. ``assessor`` replaces the core's assessment (tests)."""

    def __init__(self, main: MainWindow, assessor: Assessor | None = None) -> None:
        super().__init__(main)
        self.setWindowTitle("LVLM Studio \u2014 Review")
        self.setObjectName("review-window")
        self.resize(*DEFAULT_SIZE)
        self.main = main
        self.analysis = main.analysis
        self.settings = main.settings
        self.assessor: Assessor = assessor or core_assessor
        self.review_settings: Any = None  # the assessment's settings; None: its calibrated defaults
        self.worklist: Worklist | None = None
        self.items: list[ReviewItem] = []
        self.cases: dict[str, CaseState] = {}
        self._jobs: dict[str, Job] = {}
        self._model_hashes: dict[str, str] = {}
        self._audit: AuditLog | None = None

        self.worklist_label = QLabel("No worklist open.")
        self.worklist_label.setWordWrap(True)
        self.queue = QTableWidget(0, len(COLUMNS))
        self.queue.setHorizontalHeaderLabels(list(COLUMNS))
        self.queue.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.queue.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.queue.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.queue.verticalHeader().hide()
        header = self.queue.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.queue.itemSelectionChanged.connect(self._on_selection)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(6, 6, 0, 6)
        left_layout.addWidget(self.worklist_label)
        left_layout.addWidget(self.queue, 1)
        self.case_view = CaseView()
        splitter = QSplitter()
        splitter.addWidget(left)
        splitter.addWidget(self.case_view)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([400, DEFAULT_SIZE[0] - 400])
        self.setCentralWidget(splitter)

        self.progress_bar = QProgressBar()
        self.progress_bar.setFixedWidth(160)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.hide()
        self.statusBar().addPermanentWidget(self.progress_bar)
        self._build_menus()
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.cancel)
        self.analysis.state.subscribe(self._on_state)

    def _build_menus(self) -> None:
        worklist_menu = self.menuBar().addMenu("&Worklist")
        worklist_menu.addAction(action(self, "&Open worklist\u2026", QKeySequence.StandardKey.Open,
                                       self.choose_worklist))
        worklist_menu.addAction(action(self, "Open worklist &folder\u2026", "Ctrl+Shift+O", self.choose_folder))
        worklist_menu.addSeparator()
        worklist_menu.addAction(action(self, "&Close review", QKeySequence.StandardKey.Close, self.close))
        review_menu = self.menuBar().addMenu("&Review")
        self.accept_action = action(self, "&Accept the answer", "A", lambda: self.sign_off("accept"))
        self.override_action = action(self, "&Override with a corrected answer\u2026", "O",
                                      lambda: self.sign_off("override"))
        self.defer_action = action(self, "&Defer to a human expert\u2026", "D", lambda: self.sign_off("defer"))
        for entry in (self.accept_action, self.override_action, self.defer_action):
            review_menu.addAction(entry)
        review_menu.addSeparator()
        review_menu.addAction(action(self, "Assess &again", "R", self.assess_again))
        review_menu.addAction(action(self, "&Next pending case", "N", self.select_next_pending))
        review_menu.addSeparator()
        review_menu.addAction(action(self, "Re&viewer\u2026", None, self.change_reviewer))
        review_menu.addAction(action(self, "Audit &log\u2026", None, self.choose_audit_log))
        review_menu.addAction(action(self, "V&erify the audit log", None, self.verify_audit_log))
        self.sign_actions: list[QAction] = [self.accept_action, self.override_action, self.defer_action]

    # -- opening a worklist ------------------------------------------------------------------------
    def choose_worklist(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open worklist", "", MANIFEST_FILTER)
        if path:
            self.open_worklist(path)

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of images as a worklist")
        if not folder:
            return
        question, ok = QInputDialog.getText(self, "Question", "The question to ask about every image:",
                                            text=self.main.prompt_edit.toPlainText().strip())
        if ok:
            self.open_worklist(folder, question)

    def open_worklist(self, path: str | Path, question: str | None = None) -> bool:
        """Load the worklist in ``path`` (a manifest, or a folder of images asked ``question``); bad rows
        are named in one message and skipped. Statuses already in the audit trail are shown."""
        try:
            worklist = read_worklist(path, question)
        except LVLMError as exc:
            error_box(self, "Opening the worklist", exc).exec()
            return False
        self._cancel_jobs()
        self.worklist, self.items = worklist, list(worklist.items)
        self.cases = {item.id: CaseState() for item in self.items}
        self._restore_from_audit()
        self.queue.blockSignals(True)
        self.queue.clearSelection()
        self.queue.setRowCount(len(self.items))
        for row in range(len(self.items)):
            self._fill_row(row)
        self.queue.blockSignals(False)
        self._update_title()
        self.show()
        self.raise_()
        self.activateWindow()
        skipped = worklist.skipped_error()
        if skipped is not None:
            error_box(self, "Opening the worklist", skipped).exec()
        self.select_next_pending(from_row=-1)
        self.queue.setFocus()
        return True

    def _restore_from_audit(self) -> None:
        """Mark the cases the audit trail already signed (same case id and image bytes; last record wins).
        A log that does not verify is not trusted: the reviewer is told, and nothing is restored."""
        from lvlm_studio.core.formats.audit import file_sha256, read_records, verify

        path = self.settings.audit_log()
        if not path.is_file():
            return
        try:
            result = verify(path)
            if not result.ok:
                error_box(self, "Reading the audit log", InputError(
                    f"audit log {path} does not verify: {result.message}.",
                    "Sign-offs cannot be recorded in it. Keep it as evidence and choose a new log "
                    "(Review \u203a Audit log\u2026).")).exec()
                return
            signed = {r["case"]: r for r in read_records(path) if r.get("decision") != "pending"}
            for item in self.items:
                record = signed.get(item.id)
                if record is not None and record["image"] == file_sha256(item.image):
                    self.cases[item.id] = CaseState(record["decision"], record["reviewer"], record["time"],
                                                    record["comment"])
        except LVLMError as exc:
            log.warning("statuses not restored from %s: %s", path, exc)

    # -- the queue -------------------------------------------------------------------------------
    def _fill_row(self, row: int) -> None:
        item = self.items[row]
        state = self.cases[item.id]
        assessment = state.result.assessment if state.result else None
        suggested = "failed" if state.error else assessment.decision if assessment is not None else "\u2026"
        word, colour = STATUS_STYLES.get(state.status, (state.status, "#5f6368"))
        cells = (item.id, item.question, suggested, word, state.reviewer)
        for column, text in enumerate(cells):
            cell = QTableWidgetItem(text)
            cell.setToolTip(text)
            if column == 2 and suggested in SUGGESTED_COLOURS:
                cell.setForeground(QColor(SUGGESTED_COLOURS[suggested]))
            if column == 3:
                cell.setForeground(QColor(colour))
                if state.status != "pending":
                    font = QFont(cell.font())
                    font.setBold(True)
                    cell.setFont(font)
            self.queue.setItem(row, column, cell)

    def _update_title(self) -> None:
        if self.worklist is None:
            return
        signed = sum(state.status != "pending" for state in self.cases.values())
        self.worklist_label.setText(f"<b>{self.worklist.name}</b> \u00b7 {len(self.items)} question"
                                    f"{'s' * (len(self.items) != 1)} \u00b7 {signed} signed off")

    def selected_row(self) -> int | None:
        rows = self.queue.selectionModel().selectedRows()
        return rows[0].row() if rows else None

    def selected_item(self) -> ReviewItem | None:
        row = self.selected_row()
        return self.items[row] if row is not None and row < len(self.items) else None

    def select(self, row: int) -> None:
        self.queue.selectRow(row)
        self.queue.scrollToItem(self.queue.item(row, 0))

    def select_next_pending(self, from_row: int | None = None) -> bool:
        """Select the first pending case after ``from_row`` (default: the selected one), wrapping round;
        False (and the selection stays) when every case is signed off."""
        start = self.selected_row() if from_row is None else from_row
        start = -1 if start is None else start
        count = len(self.items)
        for step in range(1, count + 1):
            row = (start + step) % count
            if self.cases[self.items[row].id].status == "pending":
                self.select(row)
                return True
        if count and self.selected_row() is None:
            self.select(0)
        if count:
            self.statusBar().showMessage(f"All {count} questions of {self.worklist.name} are signed off.")
        return False

    def _on_selection(self) -> None:
        item = self.selected_item()
        if item is None:
            self.case_view.clear()
            return
        self._show(item)
        if self.cases[item.id].result is not None:
            self._look_ahead(item)
        else:
            self._assess(item)

    def _show(self, item: ReviewItem) -> None:
        state = self.cases[item.id]
        result = state.result
        if result is not None:
            self.case_view.show_assessment(item, result.pixels, result.assessment, self._method_titles())
        elif state.error:
            self.case_view.show_failure(item, None, state.error)
        elif self.analysis.state.model is None:
            self.case_view.show_case(item, None, "Waiting for the model to load\u2026")
        else:
            self.case_view.show_case(item, None, "Assessing the answer\u2026")
        self.case_view.show_signed(state.status, state.reviewer, state.time, state.comment)

    def _method_titles(self) -> dict[str, str]:
        return {method: explainer.title or method for method, explainer in self.analysis.explainers.items()}

    # -- assessing ---------------------------------------------------------------------------------
    def _assess(self, item: ReviewItem, ahead: bool = False) -> Job | None:
        """Assess ``item`` on the worker thread unless its result is there or on its way. Work for other
        cases is cancelled first (unless this is the look-ahead): the selected case comes first."""
        state = self.cases[item.id]
        model = self.analysis.state.model
        if state.result is not None or state.error or item.id in self._jobs or model is None:
            return None
        if not ahead:
            for other, job in list(self._jobs.items()):
                if other != item.id:
                    job.cancel()
        registry, assessor, settings = self.analysis.registry, self.assessor, self.review_settings
        model_hash = self._model_hashes.get(model.source)
        cache_file = self.settings.folder / "review" / "model-hashes.json"

        def work(report: Callable[..., None], cancel: Any) -> CaseResult:
            from lvlm_studio.core.formats.audit import file_sha256, model_folder_hash
            from lvlm_studio.core.io.images import open_image
            from lvlm_studio.core.plugin.jobs import run_job

            image = open_image(item.image)
            image_hash = file_sha256(item.image)
            hashed = model_hash or model_folder_hash(model.source, cache_file)
            assessment = run_job(assessor(model, image, item.question, settings=settings, registry=registry),
                                 report, cancel)
            return CaseResult(np.asarray(image), image_hash, hashed, assessment)

        def done(result: CaseResult) -> None:
            if self.analysis.state.model is not model or self.cases.get(item.id) is not state:
                return  # another model, or another worklist, since
            self._model_hashes[model.source] = result.model_hash
            state.result = result
            self._changed(item)
            if not ahead:
                self._look_ahead(item)

        def failed(error: BaseException, details: str) -> bool:
            log.warning("assessing case %s failed: %s\n%s", item.id, error, details)
            if self.cases.get(item.id) is state:
                state.error = error.message if isinstance(error, LVLMError) else f"{type(error).__name__}: {error}"
                self._changed(item)
            return True

        def cancelled() -> None:
            if self.selected_item() is item and self.cases.get(item.id) is state and state.result is None:
                self.case_view.show_case(item, None, "The assessment was stopped. Press R to run it again.")

        job = self.analysis.start(f"Assessing case {item.id}", work, done, failed)
        self._jobs[item.id] = job
        job.cancelled.connect(cancelled)
        job.progress.connect(self._on_progress)
        job.ended.connect(lambda: self._job_ended(item.id, job))
        self.progress_bar.show()
        return job

    def _look_ahead(self, item: ReviewItem) -> None:
        """Assess the next pending case while the reviewer reads this one."""
        row = self.items.index(item)
        for following in self.items[row + 1:]:
            state = self.cases[following.id]
            if state.status == "pending" and state.result is None and not state.error:
                self._assess(following, ahead=True)
                return

    def _job_ended(self, item_id: str, job: Job) -> None:
        if self._jobs.get(item_id) is job:
            del self._jobs[item_id]
        if not self._jobs:
            self.progress_bar.hide()
            if self.statusBar().currentMessage().startswith("Assessing case"):
                self.statusBar().clearMessage()

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(done)
        job = self.sender()
        item = self.selected_item()
        if item is not None and self._jobs.get(item.id) is job and message:
            self.statusBar().showMessage(f"Assessing case {item.id}: {message}\u2026")

    def _changed(self, item: ReviewItem) -> None:
        """Redraw ``item``'s row, and the case view when it is the selected one."""
        self._fill_row(self.items.index(item))
        self._update_title()
        if self.selected_item() is item:
            self._show(item)

    def assess_again(self) -> None:
        """Forget the selected case's result (or failure) and assess it again."""
        item = self.selected_item()
        if item is None or item.id in self._jobs:
            return
        state = self.cases[item.id]
        state.result, state.error = None, ""
        self._changed(item)
        self._assess(item)

    def cancel(self) -> None:
        """Stop the running assessments (Esc)."""
        for job in self._jobs.values():
            job.cancel()

    def _cancel_jobs(self) -> None:
        """Stop every assessment and forget it: what they were for (a worklist, a model) is gone. Their
        results are dropped when they arrive, and the cases they were for can be assessed anew at once."""
        self.cancel()
        self._jobs.clear()
        self.progress_bar.hide()

    def _on_state(self, name: str) -> None:
        """A new model makes every assessment stale (sign-offs stand: they name the model they saw)."""
        if name != "model" or not self.items:
            return
        self._cancel_jobs()
        for state in self.cases.values():
            state.result, state.error = None, ""
        for row in range(len(self.items)):
            self._fill_row(row)
        item = self.selected_item()
        if item is not None:
            self._show(item)
            self._assess(item)

    # -- signing off -----------------------------------------------------------------------------
    def sign_off(self, decision: str) -> dict[str, Any] | None:
        """Accept, override or defer the selected case: ask what is needed, append the audit record, mark
        the case and move to the next pending one. Returns the record (None when nothing was signed)."""
        item = self.selected_item()
        if item is None:
            return None
        state = self.cases[item.id]
        if state.result is None:
            self.statusBar().showMessage(f"Case {item.id} is not assessed yet: wait for its verdict, then sign off.")
            return None
        reviewer = self.reviewer()
        if not reviewer:
            return None
        assessment = state.result.assessment
        comment = ""
        if decision in ("override", "defer"):
            dialog = SignOffDialog(decision, item.id, assessment.answer, self)
            signed = self._ask(dialog)
            if not signed:
                return None
            comment = dialog.comment
            if decision == "override":
                comment = f"Corrected answer: {dialog.corrected_answer}\n{comment}"
        record = self._record(item, state.result, reviewer, DECISIONS[decision], comment)
        if record is None:
            return None
        state.status, state.reviewer, state.time, state.comment = (record["decision"], record["reviewer"],
                                                                   record["time"], record["comment"])
        self._changed(item)
        self.statusBar().showMessage(f"Case {item.id} {record['decision']} by {reviewer}; "
                                     f"audit record {record['seq']} written.")
        self.select_next_pending()
        return record

    def _record(self, item: ReviewItem, result: CaseResult, reviewer: str, decision: str,
                comment: str) -> dict[str, Any] | None:
        """Append one record to the audit trail; None (after one dialog) when the log refuses it."""
        from lvlm_studio.core.formats.audit import AuditEntry, plugin_versions

        assessment = result.assessment
        scores = {"probability": assessment.probability, "consistency": assessment.consistency,
                  **dict(assessment.signals)}
        registry = self.analysis.registry
        entry = AuditEntry(reviewer=reviewer, case=item.id, image=result.image_hash, model=result.model_hash,
                           answer=str(assessment.answer), decision=decision, scores=_numbers(scores),
                           thresholds=_numbers(assessment.thresholds), comment=comment,
                           plugins=plugin_versions(registry) if registry is not None else None)
        try:
            return self.audit_log().append(entry)
        except (LVLMError, OSError) as exc:
            self._audit = None  # opened again (and verified) next time
            error_box(self, "Recording the sign-off", exc).exec()
            return None

    def audit_log(self) -> AuditLog:
        """The audit trail the settings name, opened (and verified) once."""
        from lvlm_studio.core.formats.audit import AuditLog

        path = self.settings.audit_log()
        if self._audit is None or self._audit.path != path:
            self._audit = AuditLog(path)
        return self._audit

    def reviewer(self) -> str:
        """The reviewer's name from the settings, asked (once) when there is none yet; "" if not given."""
        name = self.settings.reviewer()
        if name:
            return name
        return self.change_reviewer()

    def change_reviewer(self) -> str:
        dialog = ReviewerDialog(self.settings.reviewer(), self)
        if not self._ask(dialog):
            return ""
        self.settings.set_reviewer(dialog.name)
        self.statusBar().showMessage(f"Signing off as {dialog.name}.")
        return dialog.name

    def _ask(self, dialog: QDialog) -> bool:
        """Run a dialog; True when it was accepted. The workspace takes the keyboard back afterwards
        (its keys sign off), and the dialog is let go once its answers are read."""
        try:
            return dialog.exec() == QDialog.DialogCode.Accepted
        finally:
            dialog.deleteLater()
            self.activateWindow()
            self.queue.setFocus()

    def choose_audit_log(self) -> None:
        current = self.settings.audit_log()
        path, _ = QFileDialog.getSaveFileName(self, "Audit log: sign-offs are appended to", str(current),
                                              "Audit trail (*.jsonl);;All files (*)",
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if path:
            self.settings.set_audit_log(path)
            self._audit = None
            self.statusBar().showMessage(f"Sign-offs go to {path}.")

    def verify_audit_log(self) -> None:
        from lvlm_studio.core.formats.audit import verify

        path = self.settings.audit_log()
        try:
            result = verify(path)
        except LVLMError as exc:
            error_box(self, "Verifying the audit log", exc).exec()
            return
        box = QMessageBox(QMessageBox.Icon.Information if result.ok else QMessageBox.Icon.Warning,
                          "Audit log", f"{path}: {result.summary()}", parent=self)
        if result.ok:
            box.setInformativeText(f"Head: {result.head}\nKeep it elsewhere to prove later that nothing was "
                                   "cut off the end (lvlm-studio audit verify LOG --head HEAD).")
        box.exec()

    def closeEvent(self, event: Any) -> None:
        self._cancel_jobs()
        super().closeEvent(event)


def _numbers(values: Mapping[str, Any]) -> dict[str, float | None]:
    """Scores as the audit trail takes them: finite numbers, None for anything else."""
    checked: dict[str, float | None] = {}
    for name, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        checked[str(name)] = number if math.isfinite(number) and not isinstance(value, bool) else None
    return checked

