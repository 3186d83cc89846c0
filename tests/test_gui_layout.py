"""The window's layout: the Compare panel's equal, square-ish map cells, the window at 1024 x 700 (no
squeezed dock, no overlapping widgets or axis labels), the feature inspector's layout and geometry
and its state across a model switch, and the Help menu's shortcuts and documentation entries."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS

SLOW_MS = 5 * JOB_TIMEOUT_MS  # a loaded test machine answers slowly; a failure still ends


def ask(qtbot, window) -> None:
    assert window.ask() is not None
    qtbot.waitUntil(lambda: window.state.trace is not None and not window.runner.busy, timeout=SLOW_MS)


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False)


@pytest.fixture
def window(make_window, registry):
    return make_window(registry)


def settle(qtbot, ms: int = 200) -> None:
    qtbot.wait(ms)


# -- Compare -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("count", "width", "height", "shape"), [
    (4, 400, 400, (2, 2)), (4, 1200, 300, (1, 4)), (4, 300, 1200, (4, 1)), (3, 600, 500, (2, 2)), (3, 600, 400, (1, 3)),
    (2, 600, 300, (1, 2)), (2, 300, 600, (2, 1)), (1, 50, 900, (1, 1)),
])
def test_grid_shape_keeps_cells_square_ish(count, width, height, shape):
    from lvlm_panels.compare import grid_shape

    assert grid_shape(count, width, height) == shape


@pytest.mark.parametrize("size", [(700, 600), (1000, 420), (420, 800)])
def test_compare_gives_four_methods_equal_square_ish_views(qtbot, window, size):
    ask(qtbot, window)
    window.state.select(1)
    dock = window.toggle_panel("compare", True)
    panel = dock.widget()
    dock.setFloating(True)
    dock.resize(*size)
    panel.set_ticked(["raw_attention", "rollout", "relevancy", "tam"])
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=SLOW_MS)
    settle(qtbot)
    sizes = [(v.width(), v.height()) for v, column in zip(panel.views, panel.columns) if not column.isHidden()]
    assert len(sizes) == 4
    widths, heights = {w for w, _ in sizes}, {h for _, h in sizes}
    assert max(widths) - min(widths) <= 2 and max(heights) - min(heights) <= 2, sizes
    width, height = sizes[0]
    assert 0.5 <= width / height <= 2.0, sizes


# -- Help ----------------------------------------------------------------------------------------
def test_keyboard_shortcuts_lists_every_shortcut_of_the_window(qtbot, window):
    from PySide6.QtGui import QAction, QKeySequence

    menu_titles = [a.text().replace("&", "") for a in window.menuBar().actions()]
    help_menu = window.menuBar().actions()[menu_titles.index("Help")].menu()
    texts = [a.text().replace("&", "") for a in help_menu.actions()]
    assert "Keyboard shortcuts\u2026" in texts and "Documentation" in texts

    extra = QAction("Frobnicate", window)  # added after the menus: still listed, nothing goes stale
    extra.setShortcut(QKeySequence("Ctrl+Alt+F"))
    window.addAction(extra)
    dialog = window.show_shortcuts()
    rows = [tuple(dialog.table.item(r, c).text() for c in range(3)) for r in range(dialog.table.rowCount())]
    listed = {keys for keys, _, _ in rows}
    native = QKeySequence.SequenceFormat.NativeText
    for entry in window.findChildren(QAction):
        for sequence in entry.shortcuts():
            assert any(sequence.toString(native) in keys for keys in listed), entry.text()
    does = {what for _, what, _ in rows}
    assert {"Frobnicate", "Ask the model", "Cancel the running job", "Save session", "Keyboard shortcuts",
            "Next answer token", "Previous answer token"} <= does
    assert ("Ctrl+S" if "Ctrl+S" in listed else QKeySequence("Ctrl+S").toString(native)) in listed
    assert any(where == "File" and what == "Open image" for _, what, where in rows)


def test_documentation_opens_the_local_page_or_says_where_it_looked(qtbot, window, dialogs, monkeypatch,
                                                                   tmp_path):
    from PySide6.QtGui import QDesktopServices

    from lvlm_studio.gui import help as help_module

    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    page = window.open_documentation()
    assert page is not None and page.is_file() and opened == [str(page)]  # the source checkout's docs
    assert page == help_module.find_documentation()

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<html></html>")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# docs")
    assert help_module.find_documentation(tmp_path) == tmp_path / "site" / "index.html"  # the built site first

    empty = tmp_path / "nothing"
    empty.mkdir()
    assert help_module.open_documentation(window, empty) is None
    assert len(opened) == 1 and len(dialogs) == 1
    text, hint, _ = dialogs[0]
    assert "not installed" in text and str(empty / "docs" / "index.md") in hint and "mkdocs build" in hint

    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: False)  # no program opens it
    assert help_module.open_documentation(window, tmp_path) is None
    assert "No program" in dialogs[1][0]


# -- the window at 1024 x 700 ------------------------------------------------------------------------
def overlapping(widgets) -> list[tuple[str, str]]:
    """Pairs of visible sibling widgets whose rectangles overlap."""
    shown = [w for w in widgets if w.isVisible()]
    return [(type(a).__name__, type(b).__name__) for i, a in enumerate(shown) for b in shown[i + 1:]
            if a.geometry().intersects(b.geometry())]


def test_the_window_works_at_1024_by_700_with_panels_open(qtbot, window):
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QDockWidget, QGroupBox, QWidget

    from lvlm_studio.gui.docks import PANEL_MIN

    ask(qtbot, window)
    window.state.select(1)
    for panel_id in ("compare", "sae_features", "heads"):
        assert window.toggle_panel(panel_id, True) is not None
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=SLOW_MS)
    window.resize(1024, 700)
    settle(qtbot, 400)
    assert (window.width(), window.height()) == (1024, 700)  # no panel's minimum pushed the window larger

    for dock in window.findChildren(QDockWidget):
        if not dock.isVisible():
            continue
        panel, area = dock.widget(), QDockWidget.widget(dock)  # the panel, and the scroll area around it
        usable = PANEL_MIN.boundedTo(panel.minimumSizeHint())
        assert area.width() >= usable.width() and area.height() >= usable.height(), dock.objectName()
        # The panel keeps at least its layout's minimum (it scrolls when the dock is smaller): nothing in it overlaps.
        assert panel.width() >= panel.minimumSizeHint().width(), dock.objectName()
        assert panel.height() >= panel.minimumSizeHint().height(), dock.objectName()

    center = window.center_area.widget()
    assert center.height() >= center.heightForWidth(center.width()) - 1  # scrolls rather than squeezes
    for box in center.findChildren(QGroupBox):
        assert overlapping(box.findChildren(QWidget, options=Qt.FindChildOption.FindDirectChildrenOnly)) == [], \
            box.title()
    bar, hint_row = window.token_bar, window.answer_label.parentWidget()
    assert not bar.geometry().intersects(hint_row.geometry())  # the chips are not under the hint text


def label_specs(axis) -> list:
    """The (rect, flags, text) of the labels ``axis`` would draw now."""
    from PySide6.QtGui import QImage, QPainter

    image = QImage(8, 8, QImage.Format.Format_ARGB32)
    painter = QPainter(image)
    try:
        return axis.generateDrawSpecs(painter)[2]
    finally:
        painter.end()


def test_token_axis_labels_do_not_overlap(qtbot, window):
    ask(qtbot, window)
    dock = window.toggle_panel("timeline", True)
    dock.setFloating(True)
    dock.resize(300, 320)
    settle(qtbot, 300)
    plot = dock.widget().plots["entropy"]
    axis = plot.getAxis("bottom")
    texts = label_specs(axis)
    rects = sorted((spec[0] for spec in texts), key=lambda r: r.left())
    assert 0 < len(rects) < len(window.state.trace.answer_tokens)  # some labels dropped at this width
    assert all(a.right() <= b.left() for a, b in zip(rects, rects[1:]))
    dock.resize(1400, 320)
    settle(qtbot, 300)
    texts = label_specs(axis)
    assert len(texts) == len(window.state.trace.answer_tokens)  # room for every token's label


# -- the feature inspector -----------------------------------------------------------------------------
def test_feature_map_follows_the_region_the_model_saw():
    import numpy as np
    from PIL import Image

    from lvlm_sae.panel import grid_pixels, patch_at, region_box
    from lvlm_studio.core.plugin.adapter import ImageRegion

    class Trace:  # a wide image the model padded to a square (LLaVA's "expand to square")
        image = Image.new("RGB", (96, 64))
        regions = [ImageRegion("image 0", 0, np.arange(64), (8, 8), (0.0, -16.0, 96.0, 80.0))]

    assert region_box(Trace) == (0.0, -16.0, 96.0, 80.0)
    grid = np.zeros((8, 8))
    grid[0] = 5.0  # the padding above the image: never shown
    grid[2] = 1.0  # the image's first rows
    pixels = grid_pixels(grid, Trace)
    assert pixels.shape == (64, 96)
    # Grid row 2's centre is 2.5 rows of 12 px below the square's top (-16): image row 14, not row 20
    # (where a map stretched over the image would put it); the padding row's 5.0 only bleeds in.
    assert pixels[13].min() > 0.9 and pixels[20].max() < 0.5 and np.nanmax(pixels) < 1.0
    assert patch_at(50.0, 0.0, region_box(Trace), (8, 8)) == (1, 4)  # image row 0 is the grid's second row
    assert patch_at(50.0, 63.9, region_box(Trace), (8, 8)) == (6, 4)
    assert patch_at(50.0, -20.0, region_box(Trace), (8, 8)) is None

    class Cropped:  # a centre crop: the sides of the image were not seen
        image = Image.new("RGB", (96, 64))
        regions = [ImageRegion("image 0", 0, np.arange(64), (8, 8), (16.0, 0.0, 80.0, 64.0))]

    pixels = grid_pixels(np.ones((8, 8)), Cropped)
    assert np.isnan(pixels[:, :16]).all() and np.isnan(pixels[:, 80:]).all() and not np.isnan(pixels[:, 16:80]).any()


def test_feature_inspector_draws_on_the_demo_models_square_for_a_wide_image(qtbot, make_window, registry, tmp_path):
    import numpy as np
    from PIL import Image

    from lvlm_sae.panel import grid_pixels, region_box
    from lvlm_studio.api import feature_map, grid_to_pixels

    wide = tmp_path / "wide.png"
    Image.open(os.path.join(os.path.dirname(__file__), "..", "resources", "samples", "shapes.png")).convert(
        "RGB").resize((144, 72)).save(wide)
    window = make_window(registry, image=str(wide))
    ask(qtbot, window)
    panel = window.toggle_panel("sae_features", True).widget()
    qtbot.waitUntil(lambda: panel.features is not None and not window.runner.busy, timeout=SLOW_MS)
    trace = window.state.trace
    left, top, right, bottom = region_box(trace)
    assert (right - left, bottom - top) != trace.image.size  # the model saw more (or less) than the image
    feature = panel.top_rows()[0][0]
    panel.select_feature(feature)
    grid = feature_map(panel.features, feature)
    np.testing.assert_allclose(panel.view.overlay, grid_pixels(grid, trace), equal_nan=True)
    assert not np.allclose(np.nan_to_num(panel.view.overlay), grid_to_pixels(grid, trace.image.size))


def test_feature_inspector_survives_a_model_switch(qtbot, window, dialogs, tmp_path):
    from lvlm_studio.testing.tiny_models import build_tiny_model

    ask(qtbot, window)
    panel = window.toggle_panel("sae_features", True).widget()
    qtbot.waitUntil(lambda: panel.features is not None and not window.runner.busy, timeout=SLOW_MS)
    old = (window.state.trace, window.state.model, panel.coder, panel.features)

    window.load_model(build_tiny_model("llava", tmp_path / "tiny"))
    qtbot.waitUntil(lambda: window.state.model is not old[1] and not window.runner.busy, timeout=SLOW_MS)
    assert panel.features is None and panel.coder is None and panel.table.rowCount() == 0
    panel._features_ready(old)  # a late result for the old model and answer is ignored
    assert panel.features is None
    panel.select_feature(3)  # interacting with nothing computed does nothing
    panel.select_patch(1, 1)
    panel.reanswer()

    ask(qtbot, window)  # the demo SAE does not fit this model: said in the panel, no dialog
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=SLOW_MS)
    assert panel.features is None and "No features" in panel.status.text()
    window.state.select(0)
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=SLOW_MS)
    panel.reanswer()
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=SLOW_MS)
    assert dialogs == []

    window.load_model(None)  # back to the demo model: everything works again
    qtbot.waitUntil(lambda: window.state.model is not None and not window.runner.busy, timeout=SLOW_MS)
    ask(qtbot, window)
    qtbot.waitUntil(lambda: panel.features is not None and not window.runner.busy, timeout=SLOW_MS)
    window.state.select(1)
    qtbot.waitUntil(lambda: panel.attribution_token == 1 and not window.runner.busy, timeout=SLOW_MS)
    panel.select_feature(panel.top_rows()[0][0])
    panel.factor.setValue(1.0)
    panel.reanswer()
    qtbot.waitUntil(lambda: panel.edited != "", timeout=SLOW_MS)
    assert dialogs == []
