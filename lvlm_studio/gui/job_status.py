"""The status bar: what the running job is doing, its progress bar, Cancel, and failures.

Every job of the window's ``Analysis`` passes through here: its title and progress go to the
status bar, Cancel (or Esc) stops it, and a failure is shown as one dialog at a time.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, Qt, QTimer, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QProgressBar, QPushButton

from lvlm_studio.gui.dialogs import error_box
from lvlm_studio.gui.worker import Job

if TYPE_CHECKING:
    from lvlm_studio.gui.main_window import MainWindow

log = logging.getLogger(__name__)

CANCEL_NOTICE_MS = 1_000  # a job still running this long after Cancel is waiting for its plugin


class JobStatus(QObject):
    """The progress bar and Cancel button in ``window``'s status bar, shown while a job runs."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.runner = window.runner
        self._showing_error = False
        self.progress_bar = QProgressBar()
        self.progress_bar.setFixedWidth(180)
        self.progress_bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job (Esc)")
        self.cancel_button.clicked.connect(self.cancel)
        QShortcut(QKeySequence(Qt.Key.Key_Escape), window, self.cancel).setWhatsThis("Cancel the running job")
        window.statusBar().addPermanentWidget(self.progress_bar)
        window.statusBar().addPermanentWidget(self.cancel_button)
        self._on_busy_changed(False)
        window.analysis.message.connect(window.statusBar().showMessage)
        window.analysis.error.connect(self.show_error)
        self.runner.job_started.connect(self._on_job_started)
        self.runner.busy_changed.connect(self._on_busy_changed)

    def show_error(self, title: str, error: BaseException, details: str = "") -> None:
        """One dialog per failure; a failure that arrives while a dialog is open goes to the
        status bar instead of stacking a second dialog."""
        log.warning("%s failed: %s", title, error)
        status = self.window.statusBar()
        if self._showing_error:
            status.showMessage(f"{title} failed too: {error}")
            return
        status.showMessage(f"{title} failed.")
        self._showing_error = True
        try:
            error_box(self.window, title, error, details).exec()
        finally:
            self._showing_error = False
        self.window.update_caption()

    def cancel(self) -> None:
        """Ask the running job to stop; if it has not after a moment, its plugin has not checked for
        Cancel yet (a method that never yields): say so, and that quitting ends it."""
        running = self.runner.jobs[:1]
        self.window.analysis.cancel()
        if running:
            QTimer.singleShot(CANCEL_NOTICE_MS, self, lambda: self._still_cancelling(running[0]))

    def _still_cancelling(self, job: Job) -> None:
        if job in self.runner.jobs:
            self.window.statusBar().showMessage(f"Waiting for \u201c{job.title}\u201d to stop: its plugin has not "
                                                "checked for Cancel yet. Quitting ends it.")
            self.cancel_button.setText("Waiting for the plugin\u2026")
            self.cancel_button.setEnabled(False)

    @Slot(object)
    def _on_job_started(self, job: Job) -> None:
        job.progress.connect(self._on_job_progress)
        if self.runner.jobs[0] is job:  # nothing ahead of it: say so now, not when it reports
            self.window.statusBar().showMessage(f"{job.title}\u2026")

    @Slot(int, int, str)
    def _on_job_progress(self, done: int, total: int, message: str) -> None:
        job = self.sender()
        if not isinstance(job, Job):
            return
        self.window.statusBar().showMessage(f"{job.title}: {message}\u2026" if message else f"{job.title}\u2026")
        self.progress_bar.setRange(0, total)  # total 0: a busy bar
        self.progress_bar.setValue(done)

    @Slot(bool)
    def _on_busy_changed(self, busy: bool) -> None:
        self.cancel_button.setText("Cancel")
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(busy)
        self.cancel_button.setVisible(busy)
