"""No lost work in the app: Save through the menu and Ctrl+S, autosave after every answer, one autosave
per running window, and a restart after kill -9 that brings the last answer back."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS, LOAD_TIMEOUT_MS, ask
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog

from lvlm_studio.core.formats.session import load_session
from lvlm_studio.gui.app import SAMPLE_IMAGE
from lvlm_studio.gui.main_window import MainWindow
from lvlm_studio.gui.settings import StudioSettings


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False)


def test_save_session_from_the_menu_and_with_ctrl_s(qtbot, make_window, registry, tmp_path, monkeypatch, dialogs):
    window = make_window(registry)
    ask(qtbot, window)
    target = tmp_path / "mine.lvlm"
    asked = []

    def choose(*args, **kwargs):
        asked.append(args)
        return str(target), ""

    monkeypatch.setattr(QFileDialog, "getSaveFileName", choose)
    window.save_action.trigger()  # File > Save session, as the menu does it (with checked=False)
    assert len(asked) == 1 and window.session_path == target
    assert load_session(target).trace.answer_tokens == window.state.trace.answer_tokens

    target.unlink()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow)
    qtbot.keyClick(window.token_bar, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert target.exists() and len(asked) == 1  # the session has a file now: Ctrl+S does not ask again
    assert dialogs == []


def autosaves(settings) -> list:
    return sorted(settings.folder.rglob("*.lvlm"))


def test_every_finished_answer_is_autosaved_at_once(qtbot, dialogs, registry, gui_settings):
    window = MainWindow(registry=registry, image=str(SAMPLE_IMAGE), settings=gui_settings)  # autosave as the app has it
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.state.model is not None and not window.runner.busy, timeout=LOAD_TIMEOUT_MS)
    ask(qtbot, window)  # well within the timer's minute
    (saved,) = autosaves(gui_settings)
    assert load_session(saved).trace.answer_tokens == window.state.trace.answer_tokens


def test_a_second_window_neither_offers_nor_deletes_the_first_windows_autosave(qtbot, make_window, registry,
                                                                               gui_settings, dialogs):
    first = make_window(registry)
    ask(qtbot, first)
    saved = first.autosave()
    assert saved is not None and saved.exists()

    second = make_window(registry, image=None)
    assert not second.offer_restore()
    assert dialogs == [] and saved.exists()
    second.open_demo_scene(seed=3)
    qtbot.waitUntil(lambda: second.state.image is not None and not second.runner.busy)
    second.autosave()
    assert len(autosaves(gui_settings)) == 2  # one file per window
    second.close()
    assert autosaves(gui_settings) == [saved]  # a clean close removes its own file only


def test_a_job_that_ends_after_a_clean_close_leaves_no_autosave_behind(qtbot, dialogs, registry, gui_settings):
    window = MainWindow(registry=registry, image=str(SAMPLE_IMAGE), settings=gui_settings)
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.state.model is not None and not window.runner.busy, timeout=LOAD_TIMEOUT_MS)
    ask(qtbot, window)
    window.state.select(0)  # its map is being computed while the window closes
    assert window.runner.busy
    window.close()
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert autosaves(gui_settings) == [] and not any(gui_settings.autosave_folder.glob("*.lock"))


def ask_once_then_wait(settings_file: str) -> None:
    """The child of the kill -9 test: the app as ``lvlm-studio`` opens it, asked once; the answer's
    tokens are printed when its job has ended (by then it is autosaved), then the app idles."""
    from PySide6.QtCore import QTimer

    from lvlm_studio.gui.app import launch

    app, window = launch(settings=StudioSettings(settings_file))

    def ask_when_ready() -> None:
        job = window.ask() if not window.runner.busy else None
        if job is None:
            QTimer.singleShot(100, ask_when_ready)
            return
        job.ended.connect(lambda: print(json.dumps(window.state.trace.answer_tokens), flush=True))

    QTimer.singleShot(100, ask_when_ready)
    app.exec()


def test_after_kill_9_the_restarted_app_restores_the_last_answer(qtbot, make_window, registry, tmp_path, dialogs):
    settings_file = tmp_path / "settings" / "lvlm-studio.ini"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen",
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "plugins"), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, __file__, str(settings_file)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(240, child.kill)  # a child that hangs ends the wait below with an empty line
    watchdog.start()
    try:
        answer = json.loads(child.stdout.readline() or "null")  # the answer is in and autosaved
    finally:
        watchdog.cancel()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert answer, "the app ended before it answered"
    assert child.returncode == -signal.SIGKILL

    restarted = make_window(registry, settings=StudioSettings(settings_file), image=None)
    dialogs.answer = dialogs.answer.Yes
    assert restarted.offer_restore()
    qtbot.waitUntil(lambda: restarted.state.trace is not None and not restarted.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert restarted.state.trace.answer_tokens == answer
    assert restarted.state.image is not None and restarted.prompt_edit.toPlainText()


if __name__ == "__main__":
    ask_once_then_wait(sys.argv[1])
