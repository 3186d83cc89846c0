"""The feature-dashboard panel in the app: it finds no cache, builds one in the background, shows a
feature's top examples, histogram and logit lists, searches tokens, and finds its cache again."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS

BUILD_TIMEOUT_MS = 240_000


@pytest.fixture
def window(make_window):
    from lvlm_studio.core.plugin.registry import create_registry

    return make_window(create_registry(load_third_party=False))


def test_dashboard_panel_builds_in_the_background_and_shows_a_feature(qtbot, window, dialogs, tmp_path, monkeypatch):
    import pyqtgraph as pg

    import lvlm_sae.dashboard_panel as module
    from lvlm_studio.demo.scenes import make_scene

    monkeypatch.setattr(module, "default_cache_root", lambda: tmp_path / "cache")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for seed in range(6):
        make_scene(2_000_000_400 + seed).image.save(scenes / f"scene{seed}.png")

    dock = window.toggle_panel("sae_dashboard", True)
    assert dock is not None and dock.objectName() == "panel:sae_dashboard"
    panel = dock.widget()
    qtbot.waitUntil(panel.build.isEnabled, timeout=JOB_TIMEOUT_MS)  # nothing cached yet
    assert "No dashboard is cached" in panel.status.text()

    panel.images_folder = str(scenes)
    panel.look_for_cache()
    qtbot.waitUntil(panel.build.isEnabled, timeout=JOB_TIMEOUT_MS)
    panel.build_dashboard()
    assert panel.building and panel.dashboard is None  # the pass runs on the worker thread
    qtbot.waitUntil(lambda: panel.dashboard is not None, timeout=BUILD_TIMEOUT_MS)
    board = panel.dashboard
    assert len(board.image_ids) == 6 and (panel.cache_path() / "dashboard.safetensors").is_file()

    strongest = int(board.top_values[:, 0].argmax())
    assert panel.spin.value() == strongest and panel.spin.maximum() == board.d_sae - 1
    assert panel.examples.count() == len(board.examples(strongest)) > 0
    assert panel.examples.item(0).text().startswith(f"{board.top_values[strongest, 0]:.2f}")
    bars = [item for item in panel.histogram.getPlotItem().items if isinstance(item, pg.BarGraphItem)]
    assert len(bars) == 1
    pos, neg = board.logits(strongest)
    assert panel.promoted.rowCount() == len(pos) > 0 and panel.promoted.item(0, 0).text() == repr(pos[0][0])
    assert panel.suppressed.item(0, 0).text() == repr(neg[0][0])

    other = next(f for f in range(board.d_sae) if f != strongest and board.nonzero[f] > 0)
    panel.spin.setValue(other)
    assert panel.feature == other and panel.examples.count() == len(board.examples(other))
    assert f"feature {other}" in panel.summary.text()

    token = board.logits(other)[0][0][0]
    panel.search.setText(token)
    panel.search.returnPressed.emit()
    assert other in panel.hits and panel.spin.value() == panel.hits[0]

    panel.resize(560, 900)
    shot = tmp_path / "dashboard.png"
    assert panel.grab().save(str(shot)) and shot.stat().st_size > 0

    panel.open_folder(tmp_path / "nothing")
    assert "holds no feature dashboard" in panel.status.text()
    panel.open_folder(panel.cache_path())  # a folder written by the command line opens the same way
    assert panel.opened and panel.dashboard.image_ids == board.image_ids
    panel.opened = False

    panel.dashboard = None  # the cache is found again without a pass
    panel.look_for_cache()
    qtbot.waitUntil(lambda: panel.dashboard is not None, timeout=JOB_TIMEOUT_MS)
    assert not panel.building and dialogs == []
