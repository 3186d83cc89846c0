"""Uncaught errors become one dialog, never a dead app or a traceback in the terminal.

An exception that escapes a slot, a virtual method or a thread reaches ``sys.excepthook`` or
``threading.excepthook``. ``ExceptionHandler`` (napari's notification manager, in small) replaces
both while the app runs and hands each error to the GUI thread through a queued signal, where the
window shows it with the traceback folded into the dialog's details. The same error again in a row
(a widget that raises on every repaint would reopen its dialog forever) is logged, not shown again.
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from collections.abc import Callable
from types import TracebackType

from PySide6.QtCore import QObject, Qt, Signal, Slot

log = logging.getLogger(__name__)

#: How the window shows a failure: title, exception, details (``MainWindow.show_error``).
Show = Callable[[str, BaseException, str], None]


class ExceptionHandler(QObject):
    """Catches what nothing else caught, from any thread, and shows it on the GUI thread."""

    caught = Signal(str, object, str)  # title, exception, formatted traceback

    def __init__(self, show: Show, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._show = show
        self._previous: tuple | None = None
        self._last: tuple[type, str] | None = None  # the error shown last
        # Queued even on the GUI thread: the dialog opens after the failing slot has unwound.
        self.caught.connect(self._on_caught, Qt.ConnectionType.QueuedConnection)

    def install(self) -> None:
        if self._previous is None:
            self._previous = (sys.excepthook, threading.excepthook)
            sys.excepthook = self.handle
            threading.excepthook = self._handle_thread

    def uninstall(self) -> None:
        if self._previous is not None:
            sys.excepthook, threading.excepthook = self._previous
            self._previous = None

    def handle(self, kind: type[BaseException], error: BaseException, trace: TracebackType | None,
               where: str = "An action") -> None:
        """``sys.excepthook``: Ctrl-C keeps its usual meaning; everything else is shown."""
        if issubclass(kind, KeyboardInterrupt) and self._previous is not None:
            self._previous[0](kind, error, trace)
            return
        self.caught.emit(where, error, "".join(traceback.format_exception(kind, error, trace)))

    def _handle_thread(self, args: threading.ExceptHookArgs) -> None:
        if args.exc_value is None or issubclass(args.exc_type, SystemExit):  # a thread's normal way out
            return
        name = args.thread.name if args.thread is not None else "a background thread"
        self.handle(args.exc_type, args.exc_value, args.exc_traceback, where=f"Background work ({name})")

    @Slot(str, object, str)
    def _on_caught(self, where: str, error: BaseException, details: str) -> None:
        if (type(error), str(error)) == self._last:
            log.warning("%s failed again: %s: %s", where, type(error).__name__, error)
            return
        self._last = (type(error), str(error))
        self._show(where, error, details)
