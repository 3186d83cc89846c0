"""Core work off the GUI thread: one job at a time, reported back on the GUI thread.

The worker thread never touches a widget. It only emits private signals, which Qt queues to the
GUI thread; there each ``Job`` re-emits them as its public signals. Anything connected to a
``Job`` therefore runs on the GUI thread and may update widgets freely.

Jobs run one after another on a single thread because they share one model: two generations or a
generation and a model load must never overlap.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, QThreadPool, Signal, Slot

from lvlm_studio.core.errors import Cancelled
from lvlm_studio.core.plugin.jobs import Progress

#: The work a job does on the worker thread: it gets a progress callback and the cancel event
#: (hand both to ``run_job`` or ``generate_trace``) and returns the result.
Work = Callable[[Callable[[Progress], None], threading.Event], Any]


class Job(QObject):
    """One piece of work. Exactly one of ``finished``, ``failed`` or ``cancelled`` is emitted,
    then ``ended``; all on the GUI thread."""

    progress = Signal(int, int, str)  # done, total (0: unknown), message
    finished = Signal(object)  # the result
    failed = Signal(object, str)  # the exception, its formatted traceback
    cancelled = Signal()
    ended = Signal()

    _reported = Signal(object)  # Progress, from the worker thread
    _outcome = Signal(str, object, str)  # "finished" | "failed" | "cancelled", value, traceback

    def __init__(self, title: str, work: Work, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.cancel_event = threading.Event()
        self._work = work
        self._reported.connect(self._on_reported, Qt.ConnectionType.QueuedConnection)
        self._outcome.connect(self._on_outcome, Qt.ConnectionType.QueuedConnection)

    def cancel(self) -> None:
        self.cancel_event.set()

    def run(self) -> None:
        """The worker thread's part: do the work and emit its outcome (never touch widgets here)."""
        if self.cancel_event.is_set():  # cancelled while it waited in the queue
            self._outcome.emit("cancelled", None, "")
            return
        self._reported.emit(Progress(0, 0, ""))
        try:
            result = self._work(self._reported.emit, self.cancel_event)
        except Cancelled:
            self._outcome.emit("cancelled", None, "")
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - shown to the user; a plugin's sys.exit() must not end the app
            self._outcome.emit("failed", exc, traceback.format_exc())
        else:
            self._outcome.emit("finished", result, "")

    @Slot(object)
    def _on_reported(self, progress: Progress) -> None:
        self.progress.emit(progress.done, progress.total, progress.message)

    @Slot(str, object, str)
    def _on_outcome(self, kind: str, value: Any, details: str) -> None:
        # A result that arrives after the user pressed Cancel is dropped: Cancel means "no change".
        if kind == "finished" and self.cancel_event.is_set():
            kind = "cancelled"
        if kind == "finished":
            self.finished.emit(value)
        elif kind == "failed":
            self.failed.emit(value, details)
        else:
            self.cancelled.emit()
        self.ended.emit()


class JobRunner(QObject):
    """Queues jobs onto one worker thread and says when it is busy."""

    job_started = Signal(object)  # a Job, as it is queued
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._jobs: list[Job] = []  # queued or running, oldest first; keeps them alive
        self._shut_down = False

    def start(self, title: str, work: Work) -> Job:
        """Queue ``work``; connect to the returned job's signals to hear how it went."""
        job = Job(title, work, self)
        job.ended.connect(self._on_ended)
        self._jobs.append(job)
        self.job_started.emit(job)
        if len(self._jobs) == 1:
            self.busy_changed.emit(True)
        self._pool.start(job.run)
        return job

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    @property
    def jobs(self) -> list[Job]:
        """Queued and running jobs, oldest (the running one) first."""
        return list(self._jobs)

    def cancel_all(self) -> None:
        for job in self._jobs:
            job.cancel()

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel everything and wait for the worker thread; False if it did not stop in time (a job
        that never checks for Cancel). Only the first call waits: closing and quitting both call it."""
        self.cancel_all()
        if self._shut_down:
            return self._pool.activeThreadCount() == 0
        self._shut_down = True
        return self._pool.waitForDone(timeout_ms)

    @Slot()
    def _on_ended(self) -> None:
        job = self.sender()
        if job in self._jobs:
            self._jobs.remove(job)
        job.deleteLater()
        if not self._jobs:
            self.busy_changed.emit(False)
