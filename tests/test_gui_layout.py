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
