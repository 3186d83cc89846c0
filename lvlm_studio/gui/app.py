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


def run(model: str | None = None, image: str | None = None, prompt: str | None = None,
        screenshot: str | None = None) -> int:
    """Open the main window (the demo model when ``model`` is None) and run until it closes.

    With ``screenshot`` (``lvlm-studio --screenshot FILE``), the app checks itself instead: it
    uses throwaway settings, asks the prompt once the model has loaded, saves a picture of the
    window to that PNG file and quits (an installed bundle's smoke test, installer/smoke.sh).
    """
    if screenshot is not None:
        return _screenshot_run(model, image, prompt, Path(screenshot))
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


#: How long ``--screenshot`` waits for the model and the answer before it gives up.
SCREENSHOT_TIMEOUT_S = 300.0


def _screenshot_run(model: str | None, image: str | None, prompt: str | None, out: Path) -> int:
    """Open the window, print the moment it is on screen, ask, save the window to ``out``, quit.

    The printed Unix time ("window on screen at ...") lets a caller that noted when it launched the
    app measure the time to the window. Exit 0 when the picture was saved, 1 when the model or
    the answer did not come within ``SCREENSHOT_TIMEOUT_S``.
    """
    import tempfile
    import time

    from lvlm_studio.core.errors import LVLMError
    from lvlm_studio.core.io.files import atomic_path
    from lvlm_studio.gui.settings import StudioSettings

    with tempfile.TemporaryDirectory() as folder:  # the user's layout and recent files stay untouched
        app, window = launch(model, image, prompt, settings=StudioSettings(Path(folder) / "settings.ini"))
        start = time.monotonic()
        steps = {"shown": False, "asked": False, "done": False, "code": 1}

        def poll() -> None:
            if not steps["shown"] and window.isVisible():
                app.processEvents()  # the first paint
                steps["shown"] = True
                print(f"window on screen at {time.time():.3f}", flush=True)
            elif not steps["asked"] and window.ask_button.isEnabled():
                steps["asked"] = window.ask() is not None
            elif steps["asked"] and window.state.trace is not None and not window.runner.busy:
                steps["done"] = True
            if steps["done"]:
                timer.stop()
                QTimer.singleShot(300, save)  # let the layout and the repaints settle
            elif time.monotonic() - start > SCREENSHOT_TIMEOUT_S:
                timer.stop()
                print(f"error: no answer within {SCREENSHOT_TIMEOUT_S:.0f} s; no screenshot written", file=sys.stderr)
                app.quit()

        def save() -> None:
            try:
                with atomic_path(out) as temporary:
                    if not window.grab().save(str(temporary)):
                        raise OSError(f"Qt could not write {temporary.name}")
                steps["code"] = 0
                print(f"screenshot: {out} (answered {time.monotonic() - start:.1f} s after the window opened)")
            except (OSError, LVLMError) as exc:
                print(f"error: {exc}", file=sys.stderr)
            window.close()
            app.quit()

        timer = QTimer()
        timer.timeout.connect(poll)
        timer.start(50)
        app.exec()  # the worker stops on aboutToQuit (launch)
    return int(steps["code"])
