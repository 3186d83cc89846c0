"""The desktop app, driven like a user would: ask, click tokens, cancel, and survive failures.

Runs offscreen on the demo model (fixtures in conftest.py). Dialogs are replaced by a recorder.
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

from gui_helpers import JOB_TIMEOUT_MS, ask, wait_idle
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent

from lvlm_studio.core.plugin.contracts import Explainer
from lvlm_studio.core.plugin.hookspecs import hookimpl
from lvlm_studio.gui.app import SAMPLE_IMAGE
from lvlm_studio.gui.main_window import MainWindow
from lvlm_studio.gui.token_bar import COLOR_ROLE


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
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False, extra=[(BoomPlugin(), "boom")])


@pytest.fixture
def window(make_window, registry):
    return make_window(registry)


def click_token(qtbot, window: MainWindow, index: int) -> None:
    bar = window.token_bar
    qtbot.mouseClick(bar.viewport(), Qt.MouseButton.LeftButton, pos=bar.visualItemRect(bar.item(index)).center())


def overlay_panel(window: MainWindow):
    return window.dock("overlay").widget()


def overlay_ready(window: MainWindow) -> bool:
    overlay = overlay_panel(window).view.overlay
    width, height = window.state.trace.image.size
    return overlay is not None and overlay.shape == (height, width) and not window.runner.busy


def test_the_window_opens_on_the_demo_model_with_the_default_panels(window):
    assert window.model_combo.currentText().startswith("Demo model")
    assert "llava" in window.model_label.text()
    assert window.state.image_name == SAMPLE_IMAGE.name
    assert sorted(window.open_panels()) == ["overlay", "timeline"]
    assert set(window.panel_specs) >= {"overlay", "timeline", "heads", "compare", "metrics"}


def test_ask_click_a_token_and_step_with_the_arrow_keys(qtbot, window, dialogs):
    started = []
    window.runner.job_started.connect(lambda job: started.append(job.title))
    window.activateWindow()
    qtbot.keyClick(window.prompt_edit, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: window.state.trace is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    trace = window.state.trace
    assert started[0] == "Answering"

    assert window.token_bar.count() == len(trace.answer_tokens) > 1
    assert "%" in window.token_bar.item(0).toolTip()  # the alternatives and their probabilities
    assert window.state.selected is None and overlay_panel(window).view.overlay is None

    click_token(qtbot, window, 0)
    assert window.state.selected == 0
    qtbot.waitUntil(lambda: overlay_ready(window), timeout=JOB_TIMEOUT_MS)
    first = overlay_panel(window).view.overlay.copy()
    assert np.isfinite(first).any()

    qtbot.keyClick(window.token_bar, Qt.Key.Key_Right)
    assert window.state.selected == 1 and window.token_bar.currentRow() == 1
    assert not np.allclose(overlay_panel(window).view.overlay, first, equal_nan=True)
    qtbot.keyClick(window.token_bar, Qt.Key.Key_Left)
    assert window.state.selected == 0
    np.testing.assert_array_equal(overlay_panel(window).view.overlay, first)

    # One explanation job for the whole answer: stepping between tokens only redraws.
    assert started.count("Explaining with Raw attention") == 1
    assert "Raw attention" in window.map_caption.text()
    assert dialogs == []


def test_chips_can_be_coloured_by_visual_relevance(qtbot, window):
    ask(qtbot, window)
    assert window.token_bar.item(1).data(COLOR_ROLE) is None  # by probability
    window.chip_combo.setCurrentIndex(window.chip_combo.findData("relevance"))
    qtbot.waitUntil(lambda: window.state.stats is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    stats = window.state.stats
    colours = [window.token_bar.item(i).data(COLOR_ROLE) for i in range(window.token_bar.count())]
    assert all(c is not None for c in colours)
    # A visually relevant word is more saturated than a function word the image did not make likely.
    relevant = int(np.flatnonzero(stats.relevant)[0])
    plain = int(np.argmin(stats.llr))
    assert colours[relevant].saturationF() > colours[plain].saturationF()
    assert "Visual relevance" in window.token_bar.item(relevant).toolTip()


def test_cancel_leaves_the_window_usable(qtbot, window, dialogs):
    window.ask()
    qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    assert window.state.trace is None
    assert "Cancelled" in window.statusBar().currentMessage()
    assert not window.cancel_button.isVisible() and window.ask_button.isEnabled()

    ask(qtbot, window)
    assert window.token_bar.count() == len(window.state.trace.answer_tokens)
    assert dialogs == []


def test_cancelling_an_explanation_keeps_the_answer(qtbot, window, dialogs):
    ask(qtbot, window)
    window.state.set_method("tam")
    window.state.select(1)
    assert window.analysis.is_running("explain:tam")
    window.cancel()
    wait_idle(qtbot, window)
    assert window.state.trace is not None and "tam" not in window.state.explanations
    click_token(qtbot, window, 1)  # clicking again computes it after all
    qtbot.waitUntil(lambda: "tam" in window.state.explanations, timeout=JOB_TIMEOUT_MS)
    assert dialogs == []


def test_a_file_that_is_no_image_shows_one_error(qtbot, window, dialogs, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("this is text, not pixels")
    window.open_image(not_an_image)
    wait_idle(qtbot, window)

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
    combo = overlay_panel(window).method_combo
    combo.setCurrentIndex(combo.findData("boom"))
    combo.activated.emit(combo.currentIndex())
    assert window.state.method == "boom"
    click_token(qtbot, window, 0)
    qtbot.waitUntil(lambda: not window.runner.busy and bool(dialogs), timeout=JOB_TIMEOUT_MS)

    assert len(dialogs) == 1
    text, hint, details = dialogs[0]
    assert "RuntimeError: boom from a broken plugin" in text
    assert "bug" in hint and "Traceback" in details
    assert overlay_panel(window).view.overlay is None
    assert "failed" in overlay_panel(window).caption.text()

    qtbot.keyClick(window.token_bar, Qt.Key.Key_Right)  # no retry, no second dialog
    assert not window.runner.busy and len(dialogs) == 1
    combo.activated.emit(combo.currentIndex())  # picking the method again in the list retries it
    qtbot.waitUntil(lambda: not window.runner.busy and len(dialogs) == 2, timeout=JOB_TIMEOUT_MS)

    combo.setCurrentIndex(combo.findData("raw_attention"))
    combo.activated.emit(combo.currentIndex())
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


def test_a_demo_scene_comes_with_its_masks(qtbot, window):
    from lvlm_studio.demo.scenes import make_scene

    window.open_demo_scene(seed=11)
    qtbot.waitUntil(lambda: window.state.image_name == "demo scene 11", timeout=JOB_TIMEOUT_MS)
    scene = make_scene(11)
    for obj in scene.objects:
        assert obj.colour in window.state.masks and obj.shape in window.state.masks
        assert window.state.masks[obj.colour][obj.mask].all()
    assert "object masks" in window.image_label.text()


def test_recent_models_device_and_dtype_are_remembered(make_window, registry, gui_settings, tmp_path):
    gui_settings.add_recent_model(str(tmp_path / "my-llava"))
    window = make_window(registry)
    items = [window.model_combo.itemText(i) for i in range(window.model_combo.count())]
    assert items[0].startswith("Demo model") and "my-llava" in items
    window.device_combo.setCurrentText("cpu")
    window.dtype_combo.setCurrentText("float32")
    assert (gui_settings.device(), gui_settings.dtype()) == ("cpu", "float32")


def test_a_model_folder_that_fails_to_load_shows_one_error_and_keeps_the_demo_model(qtbot, window, dialogs,
                                                                                     tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    window.load_model(empty)
    wait_idle(qtbot, window)
    assert len(dialogs) == 1 and "not-a-model" in dialogs[0][0] + dialogs[0][2]
    assert window.state.model is not None and window.ask_button.isEnabled()
    assert "not-a-model" not in window.settings.recent_models()
