"""Sessions, autosave and restore after a crash, the PDF report, and the layout and settings that persist."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS, ask, wait_idle
from PySide6.QtCore import QByteArray

from lvlm_studio.core.plugin.contracts import Metric, MetricResult
from lvlm_studio.core.plugin.hookspecs import hookimpl
from lvlm_studio.gui.settings import LAYOUT_VERSION, StudioSettings


class MeanMetric(Metric):
    id = "mean"
    title = "Mean value"

    def score(self, trace, explanation, model, masks, params):
        (token,) = explanation.targets
        cells = np.concatenate([m.ravel() for m in explanation.maps[token]])
        return MetricResult(values={"mean": float(cells.mean())}, curves={"c": (np.arange(3.0), np.arange(3.0) * 2)})


class MeanPlugin:
    @hookimpl
    def lvlm_studio_metrics(self):
        return [MeanMetric()]


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False, extra=[(MeanPlugin(), "mean")])


def analysed(qtbot, window):
    """An answer, token 2 selected with its raw-attention map, and one metric of it."""
    ask(qtbot, window)
    window.state.select(2)
    qtbot.waitUntil(lambda: window.state.explanation is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    window.analysis.score("mean", "raw_attention", 2)
    qtbot.waitUntil(lambda: bool(window.state.metrics) and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    window.state.set_view(opacity=0.25, colormap="magma")


def test_save_and_reopen_a_session(qtbot, make_window, registry, gui_settings, tmp_path):
    first = make_window(registry)
    analysed(qtbot, first)
    first.prompt_edit.setPlainText("describe the image.")
    path = first.save_session(tmp_path / "analysis.lvlm")
    assert path.exists() and first.session_path == path
    trace = first.state.trace

    second = make_window(registry, settings=StudioSettings(tmp_path / "other.ini"), image=None)
    second.open_session(path)
    qtbot.waitUntil(lambda: second.state.trace is not None and not second.runner.busy, timeout=JOB_TIMEOUT_MS)
    state = second.state
    assert state.trace.answer_tokens == trace.answer_tokens
    assert second.token_bar.count() == len(trace.answer_tokens)
    assert state.selected == 2 and state.method == "raw_attention"
    assert (state.opacity, state.colormap) == (0.25, "magma")
    np.testing.assert_array_equal(state.explanations["raw_attention"].maps[2][0],
                                  first.state.explanations["raw_attention"].maps[2][0])
    key = ("raw_attention", 2, "mean")
    assert state.metrics[key].values == first.state.metrics[key].values
    overlay = second.dock("overlay").widget().view.overlay
    np.testing.assert_array_equal(overlay, first.dock("overlay").widget().view.overlay)
    assert second.prompt_edit.toPlainText() == "describe the image."

    assert str(path.resolve()) in gui_settings.recent_sessions()
    first.recent_menu.aboutToShow.emit()
    assert [a.text() for a in first.recent_menu.actions()] == ["analysis.lvlm"]


def test_export_the_pdf_report(qtbot, make_window, registry, tmp_path):
    window = make_window(registry)
    analysed(qtbot, window)
    window.export_report(tmp_path / "report.pdf")
    wait_idle(qtbot, window)
    assert (tmp_path / "report.pdf").read_bytes().startswith(b"%PDF")


def test_autosave_and_the_offer_to_restore_after_a_crash(qtbot, make_window, registry, gui_settings, dialogs):
    window = make_window(registry)
    analysed(qtbot, window)
    saved = window.autosave()
    assert saved == window.autosaver.path and saved.parent == gui_settings.autosave_folder and saved.exists()
    assert window.autosave() is None  # nothing changed since: no second write
    tokens = window.state.trace.answer_tokens
    # A crash leaves the autosave behind (a clean close removes it) and frees its lock: the next start offers it.
    window.runner.shutdown()
    window.autosaver._lock.unlock()

    restarted = make_window(registry, settings=StudioSettings(gui_settings.qsettings.fileName()), image=None)
    dialogs.answer = dialogs.answer.Yes
    assert restarted.offer_restore()
    qtbot.waitUntil(lambda: restarted.state.trace is not None and not restarted.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert restarted.state.trace.answer_tokens == tokens and restarted.state.selected == 2
    assert "did not close normally" in dialogs[-1][0]
    assert restarted.session_path is None  # the restored analysis is not the autosave file

    qtbot.waitUntil(lambda: not saved.exists(), timeout=JOB_TIMEOUT_MS)  # restored: now in the new window's autosave
    assert restarted.autosaver.path.exists()
    restarted.close()
    assert not any(gui_settings.autosave_folder.glob("*.lvlm"))
    declined = make_window(registry, settings=StudioSettings(gui_settings.qsettings.fileName()))
    assert not declined.offer_restore()  # nothing to restore after a clean close


def test_the_layout_persists_and_a_bad_one_falls_back_to_the_default(qtbot, make_window, registry, tmp_path):
    settings_file = tmp_path / "layout.ini"
    first = make_window(registry, settings=StudioSettings(settings_file))
    first.toggle_panel("compare", True)
    first.toggle_panel("timeline", False)
    first.close()

    second = make_window(registry, settings=StudioSettings(settings_file))
    assert sorted(second.open_panels()) == ["compare", "overlay"]
    second.close()

    broken = StudioSettings(settings_file)
    broken.qsettings.setValue("layout/state", QByteArray(b"not a layout"))
    broken.sync()
    third = make_window(registry, settings=StudioSettings(settings_file))
    assert sorted(third.open_panels()) == ["overlay", "timeline"]  # the default layout
    third.close()

    old = StudioSettings(settings_file)
    old.qsettings.setValue("layout/version", LAYOUT_VERSION - 1)
    old.sync()
    assert StudioSettings(settings_file).layout() is None
    fourth = make_window(registry, settings=StudioSettings(settings_file))
    assert sorted(fourth.open_panels()) == ["overlay", "timeline"]
