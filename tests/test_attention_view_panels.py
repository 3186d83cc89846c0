"""The attention-view panels open in the window, draw what the core computes, and follow clicks."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS
from PySide6.QtCore import QPoint, QPointF, Qt

from lvlm_studio.core.tracing.attention_views import GALLERY_GAP, GALLERY_MARGIN, head_gallery


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False)


@pytest.fixture
def window(make_window, registry, qtbot):
    window = make_window(registry)
    window.resize(1400, 900)
    assert window.ask() is not None
    # A busy machine can take over a minute for the answer: wait longer than ``ask`` does.
    qtbot.waitUntil(lambda: window.state.trace is not None and not window.runner.busy, timeout=5 * JOB_TIMEOUT_MS)
    window.state.select(1)
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=5 * JOB_TIMEOUT_MS)
    return window


def test_gallery_draws_every_head_of_the_range_and_a_click_shows_one(qtbot, window, dialogs):
    dock = window.toggle_panel("head_gallery", True)
    panel = dock.widget()
    qtbot.waitUntil(lambda: panel.gallery is not None, timeout=JOB_TIMEOUT_MS)
    heads = window.state.heads
    layers, count = heads.shape
    assert panel.gallery.layers == list(range(min(layers, 4)))
    expected = head_gallery(heads, window.state.trace, 1, panel.gallery.layers)
    np.testing.assert_array_equal(panel.gallery.maps[0], expected.maps[0])
    assert not panel.picture.pixmap().isNull() and panel.picture.pixmap().width() > count * 40
    panel.first.setValue(1)
    panel.last.setValue(1)
    assert panel.gallery.layers == [1]
    # A click on the second head's map of the shown layer shows that head's map in every view.
    x = GALLERY_MARGIN + panel.cell + GALLERY_GAP + 5
    assert panel.cell_at(x, GALLERY_MARGIN + 5) == (1, 1)
    qtbot.mouseClick(panel.picture, Qt.MouseButton.LeftButton, pos=QPoint(x, GALLERY_MARGIN + 5))
    assert window.state.method == "head:L1.H1"
    window.state.select(2)
    assert panel.gallery.token == 2
    assert dialogs == []


def test_patch_text_colours_the_tokens_that_attend_to_the_selection(qtbot, window, dialogs):
    dock = window.toggle_panel("patch_text", True)
    panel = dock.widget()
    qtbot.waitUntil(lambda: panel.data is not None, timeout=JOB_TIMEOUT_MS)
    assert panel.scores is None and "Click or drag" in panel.caption.text()
    trace = window.state.trace
    width, height = trace.image.size
    panel.select_box((0, 0, width / 2, height / 2))
    assert len(panel.patches) == 16  # a quarter of the demo model's 8 x 8 grid
    np.testing.assert_allclose(panel.scores, panel.data.scores(panel.patches))
    assert "Answer:" in panel.text.text() and "background:" in panel.text.text()
    assert not panel.selection_item.path().isEmpty()
    panel.layers_edit.setText("9")
    panel.redraw()
    assert "layer 9 does not exist" in panel.caption.text()
    panel.layers_edit.setText("-1")
    panel.redraw()
    np.testing.assert_allclose(panel.scores, panel.data.scores(panel.patches, "-1"))
    panel.select_patches([])
    assert panel.scores is None and panel.selection_item.path().isEmpty()
    # A click on the image selects the patch under it (here the first row's second cell).
    point = panel.image_item.mapToScene(QPointF(width / 8 * 1.5, height / 8 * 0.5))
    qtbot.mouseClick(panel.graphics.viewport(), Qt.MouseButton.LeftButton, pos=panel.graphics.mapFromScene(point))
    assert panel.patches == [1]
    assert dialogs == []


def test_question_answer_matrix_and_a_row_click_selects(qtbot, window, dialogs):
    dock = window.toggle_panel("question_answer", True)
    panel = dock.widget()
    qtbot.waitUntil(lambda: panel.matrix is not None, timeout=JOB_TIMEOUT_MS)
    matrix, rows, columns = panel.data.matrix(words=True)
    np.testing.assert_allclose(panel.matrix, matrix)
    assert panel.rows == rows and len(columns) == matrix.shape[1]
    assert panel.marker.isVisible() and panel.marker.rect().top() == panel._row_of_token(1)
    panel.words_box.setChecked(False)
    assert panel.rows == window.state.trace.answer_tokens
    window.state.select(3)
    assert panel.marker.rect().top() == 3
    assert dialogs == []
