"""Start the desktop app: ``lvlm-studio`` with no subcommand ends up in ``run``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from lvlm_studio.gui.excepthook import ExceptionHandler
from lvlm_studio.gui.main_window import MainWindow
from lvlm_studio.gui.settings import StudioSettings

log = logging.getLogger(__name__)

#: Opened with the demo model when no image is given, so a first run has something to ask about.
SAMPLE_IMAGE = Path(__file__).resolve().parents[2] / "resources" / "samples" / "shapes.png"


def configure_pyqtgraph() -> None:
    """Images are (rows, columns) arrays everywhere in LVLM Studio, as numpy and PIL have them."""
    pg.setConfigOptions(imageAxisOrder="row-major")


def create_application() -> QApplication:
    """The QApplication (the existing one if any), with pyqtgraph configured before any view."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("LVLM Studio")
    configure_pyqtgraph()
    return app  # type: ignore[return-value]


def create_window(model: str | None = None, image: str | None = None, prompt: str | None = None,
                  settings: StudioSettings | None = None) -> MainWindow:
    """The main window as ``run`` opens it (the sample image goes with the demo model)."""
    if image is None and model is None and SAMPLE_IMAGE.exists():
        image = str(SAMPLE_IMAGE)
    return MainWindow(model=model, image=image, prompt=prompt, settings=settings)


def launch(model: str | None = None, image: str | None = None, prompt: str | None = None,
           settings: StudioSettings | None = None) -> tuple[QApplication, MainWindow]:
    """Everything ``run`` does before the event loop: the window is shown at once, while plugins
    and the model load on the worker thread. From here on, an uncaught error is a dialog."""
    app = create_application()
    window = create_window(model, image, prompt, settings)
    handler = ExceptionHandler(window.show_error, window)
    handler.install()
    app.aboutToQuit.connect(window.runner.shutdown)  # however the app ends, the worker stops first
    app.aboutToQuit.connect(handler.uninstall)
    window.show()
    QTimer.singleShot(0, window.offer_restore)  # after a crash: the autosaved analysis, if the user wants it
    return app, window


def run(model: str | None = None, image: str | None = None, prompt: str | None = None) -> int:
    """Open the main window (the demo model when ``model`` is None) and run until it closes."""
    app, window = launch(model, image, prompt)
    code = app.exec()
    if window.runner.busy:
        # A job that never checks for Cancel (a plugin stuck in one long call) is still running on
        # the worker thread, and Python would wait for it forever: end the process here instead.
        log.warning("a job did not stop after Cancel; ending the process without it")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
