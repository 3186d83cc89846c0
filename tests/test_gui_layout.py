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

from gui_helpers import JOB_TIMEOUT_MS, ask


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
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=JOB_TIMEOUT_MS)
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
