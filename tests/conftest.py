"""Fixtures for the desktop-app tests (tests/test_gui*.py): a real window, offscreen, on the demo model.

Qt is imported inside the fixtures, so test modules that never ask for them run without Qt.
Settings go to an INI file under the test's tmp_path: nothing leaks into the user's settings.
Error dialogs are recorded instead of shown, so a test never blocks on one.
"""

from __future__ import annotations

import os
import signal

import pytest
from gui_helpers import LOAD_TIMEOUT_MS

# A shell starts background commands (``pytest ... &``) with SIGINT ignored, and every subprocess
# inherits that: the Ctrl+C tests would then interrupt nothing. Give SIGINT back its Python default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def gui_settings(tmp_path):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from lvlm_studio.gui.settings import StudioSettings

    return StudioSettings(tmp_path / "settings" / "lvlm-studio.ini")


@pytest.fixture
def dialogs(monkeypatch):
    """Every message box the window opens, as (text, hint, details), instead of showing it.
    ``dialogs.answer`` is what a question box returns (No unless a test says otherwise)."""
    from PySide6.QtWidgets import QMessageBox

    class Recorder(list):
        answer = QMessageBox.StandardButton.No

    shown = Recorder()

    def record(box: QMessageBox) -> int:
        shown.append((box.text(), box.informativeText(), box.detailedText()))
        return shown.answer if box.icon() == QMessageBox.Icon.Question else QMessageBox.StandardButton.Ok

    monkeypatch.setattr(QMessageBox, "exec", record)
    return shown


@pytest.fixture
def make_window(qtbot, dialogs, gui_settings):
    """Build main windows with a given registry (and settings), waiting until the demo model is in."""
    from lvlm_studio.gui.app import SAMPLE_IMAGE, configure_pyqtgraph
    from lvlm_studio.gui.main_window import MainWindow

    configure_pyqtgraph()

    def make(registry, settings=None, image=str(SAMPLE_IMAGE), wait=True, **options):
        window = MainWindow(registry=registry, image=image, settings=settings or gui_settings, autosave_ms=0,
                            **options)
        qtbot.addWidget(window)
        window.show()
        if wait:
            qtbot.waitUntil(lambda: window.state.model is not None and not window.runner.busy,
                            timeout=LOAD_TIMEOUT_MS)
        return window

    return make
