"""The desktop app, driven like a user would: ask, click tokens, cancel, and survive failures.

Runs offscreen on the demo model. Dialogs are replaced by a recorder, so a test never blocks.
"""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QMessageBox

from lvlm_studio.core.contracts import Explainer
from lvlm_studio.core.hookspecs import hookimpl
from lvlm_studio.gui.app import SAMPLE_IMAGE, configure_pyqtgraph
from lvlm_studio.gui.main_window import MainWindow

LOAD_TIMEOUT_MS = 180_000  # the demo model loads in seconds, but CI machines can be busy
JOB_TIMEOUT_MS = 60_000


class BoomExplainer(Explainer):
    id = "boom"
    title = "Boom"

    def explain(self, trace, model, targets, params):
        raise RuntimeError("boom from a broken plugin")


class BoomPlugin:
    @hookimpl
    def lvlm_studio_explainers(self):
        return [BoomExplainer()]


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugins import create_registry

    return create_registry(load_third_party=False, extra=[(BoomPlugin(), "boom")])


@pytest.fixture
def dialogs(monkeypatch):
    """Every error dialog the window opens, as (text, hint, details), instead of showing it."""
    shown: list[tuple[str, str, str]] = []

    def record(box: QMessageBox) -> int:
        shown.append((box.text(), box.informativeText(), box.detailedText()))
        return QMessageBox.StandardButton.Ok

    monkeypatch.setattr(QMessageBox, "exec", record)
    return shown


@pytest.fixture
def window(qtbot, registry, dialogs):
    configure_pyqtgraph()
    window = MainWindow(registry=registry, image=str(SAMPLE_IMAGE))
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: window.ask_button.isEnabled(), timeout=LOAD_TIMEOUT_MS)
    return window


def ask(qtbot, window: MainWindow) -> None:
    assert window.ask() is not None
    qtbot.waitUntil(lambda: window.state.trace is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)


def click_token(qtbot, window: MainWindow, index: int) -> None:
    bar = window.token_bar
    qtbot.mouseClick(bar.viewport(), Qt.MouseButton.LeftButton, pos=bar.visualItemRect(bar.item(index)).center())


def overlay_ready(window: MainWindow) -> bool:
    overlay = window.image_view.overlay
    width, height = window.state.trace.image.size
    return overlay is not None and overlay.shape == (height, width) and not window.runner.busy


def test_ask_click_a_token_and_step_with_the_arrow_keys(qtbot, window, dialogs):
    started = []
    window.runner.job_started.connect(lambda job: started.append(job.title))
    window.activateWindow()
    qtbot.keyClick(window.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: window.state.trace is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    trace = window.state.trace
    assert started == ["Answering"]

    assert window.token_bar.count() == len(trace.answer_tokens) > 1
    assert "%" in window.token_bar.item(0).toolTip()  # the alternatives and their probabilities
    assert window.state.selected is None and window.image_view.overlay is None

    click_token(qtbot, window, 0)
    assert window.state.selected == 0
    qtbot.waitUntil(lambda: overlay_ready(window), timeout=JOB_TIMEOUT_MS)
    first = window.image_view.overlay.copy()
    assert np.isfinite(first).any()

    qtbot.keyClick(window.token_bar, Qt.Key.Key_Right)
    assert window.state.selected == 1
    assert window.token_bar.currentRow() == 1
    assert not np.allclose(window.image_view.overlay, first, equal_nan=True)
    qtbot.keyClick(window.token_bar, Qt.Key.Key_Left)
    assert window.state.selected == 0
    np.testing.assert_array_equal(window.image_view.overlay, first)

    # One explanation job for the whole answer: stepping between tokens only redraws.
    assert started == ["Answering", "Explaining with Raw attention"]
    assert not window.runner.busy and dialogs == []


def test_cancel_leaves_the_window_usable(qtbot, window, dialogs):
    window.ask()
    qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert window.state.trace is None
    assert "Cancelled" in window.statusBar().currentMessage()
    assert not window.cancel_button.isVisible() and window.ask_button.isEnabled()

    ask(qtbot, window)
    assert window.token_bar.count() == len(window.state.trace.answer_tokens)
    assert dialogs == []


def test_a_file_that_is_no_image_shows_one_error(qtbot, window, dialogs, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not pixels")
    window.open_image(not_an_image)
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=JOB_TIMEOUT_MS)

    assert len(dialogs) == 1
    text, hint, details = dialogs[0]
    assert "could not be read as an image" in text
    assert "PNG" in hint
    assert "InputError" in details
    assert window.state.image_name == SAMPLE_IMAGE.name  # the previous image stays

    ask(qtbot, window)
    assert len(dialogs) == 1


def test_a_failing_explainer_does_not_take_the_window_down(qtbot, window, dialogs):
    ask(qtbot, window)
    combo = window.method_combo
    combo.setCurrentIndex(combo.findData("boom"))
    click_token(qtbot, window, 0)
    qtbot.waitUntil(lambda: not window.runner.busy and bool(dialogs), timeout=JOB_TIMEOUT_MS)

    assert len(dialogs) == 1
    text, hint, details = dialogs[0]
    assert "RuntimeError: boom from a broken plugin" in text
    assert "bug" in hint and "Traceback" in details
    assert window.image_view.overlay is None
    assert "failed" in window.map_caption.text()

    qtbot.keyClick(window.token_bar, Qt.Key.Key_Right)  # no retry, no second dialog
    assert not window.runner.busy and len(dialogs) == 1
    combo.activated.emit(combo.currentIndex())  # picking the method again in the list retries it
    qtbot.waitUntil(lambda: not window.runner.busy and len(dialogs) == 2, timeout=JOB_TIMEOUT_MS)

    combo.setCurrentIndex(combo.findData("raw_attention"))
    qtbot.waitUntil(lambda: overlay_ready(window), timeout=JOB_TIMEOUT_MS)
    assert len(dialogs) == 2


def test_dropping_an_image_opens_it_and_clears_the_answer(qtbot, window):
    ask(qtbot, window)
    triangle = Path(SAMPLE_IMAGE).with_name("triangle.png")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(triangle))])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    qtbot.waitUntil(lambda: window.state.image_name == "triangle.png", timeout=JOB_TIMEOUT_MS)
    assert window.state.trace is None and window.token_bar.count() == 0
