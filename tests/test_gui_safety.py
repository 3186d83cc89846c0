"""No lost work in the app: Save through the menu and Ctrl+S, autosave after every answer, one autosave
per running window, and a restart after kill -9 that brings the last answer back."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import ask
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog

from lvlm_studio.core.session import load_session


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugins import create_registry

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
