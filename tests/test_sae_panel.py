"""The feature-inspector panel in the app: features of the answered image, a patch's top features with
their attribution to the selected token, a feature's map, and re-answering with a feature edited."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS, ask


@pytest.fixture
def window(make_window):
    from lvlm_studio.core.plugin.registry import create_registry

    return make_window(create_registry(load_third_party=False))


def test_feature_inspector_follows_the_answer_and_edits_it(qtbot, window, dialogs):
    ask(qtbot, window)
    dock = window.toggle_panel("sae_features", True)
    assert dock is not None and dock.objectName() == "panel:sae_features"
    panel = dock.widget()
    qtbot.waitUntil(lambda: panel.features is not None, timeout=JOB_TIMEOUT_MS)
    assert panel.features.shape[:2] == (8, 8)

    from lvlm_studio.sae.inspect import image_features, top_features

    trace, model = window.state.trace, window.state.model
    expected = image_features(model, panel.coder, trace.image, trace.prompt)
    np.testing.assert_allclose(panel.features, expected, atol=1e-5)

    panel.select_patch(2, 3)
    rows = panel.top_rows()
    assert [(f, round(v, 4)) for f, v, _ in rows] == [(f, round(v, 4)) for f, v in top_features(expected, 2, 3, 12)]
    assert panel.table.rowCount() == len(rows) and panel.table.item(0, 0).text() == str(rows[0][0])

    window.state.select(1)
    qtbot.waitUntil(lambda: panel.attribution_token == 1, timeout=JOB_TIMEOUT_MS)
    assert panel.top_rows()[0][2] is not None and panel.table.item(0, 2).text() != ""

    feature = rows[0][0]
    panel.select_feature(feature)
    assert panel.view.overlay is not None and panel.view.overlay.shape == (trace.image.height, trace.image.width)
    panel.factor.setValue(1.0)  # scaling by one changes nothing
    panel.reanswer()
    qtbot.waitUntil(lambda: panel.edited != "", timeout=JOB_TIMEOUT_MS)
    assert panel.edited == trace.answer_text and "unchanged" in panel.answer.text()
    assert dialogs == []
