"""Panels are plugin contributions: every first-party panel opens, follows the selection, and works;
a third-party panel appears; a panel that raises is reported once and the window goes on."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS, ask, wait_idle
from PIL import Image
from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import QDockWidget, QLabel

from lvlm_studio.core.plugin.contracts import Metric, MetricResult, PanelSpec
from lvlm_studio.core.plugin.explanation import to_pixels
from lvlm_studio.core.plugin.hookspecs import hookimpl

FIRST_PARTY_PANELS = ("overlay", "timeline", "heads", "compare", "metrics")


# -- a third party's plugin: a panel, a metric, and a panel that breaks --------------------------
class ThirdPartyPanel(QLabel):
    """Shows the selected token; built only from the context it is given."""

    built = 0

    def __init__(self, context):
        super().__init__("third party: nothing selected")
        ThirdPartyPanel.built += 1
        self.context = context
        context.subscribe(self._on_change)

    def _on_change(self, name):
        if name == "selected":
            self.setText(f"third party: {self.context.selected_token}")


class RaisingPanel(QLabel):
    """Builds fine, then raises on the first selection."""

    def __init__(self, context):
        super().__init__("raises later")
        context.subscribe(self._on_change)

    def _on_change(self, name):
        if name == "selected":
            raise ValueError("panel bug on selection")


def failing_factory(context):
    raise RuntimeError("cannot build this panel")


class PeakMetric(Metric):
    """A hand-checkable metric: the map's largest cell, and its cells sorted (as a curve)."""

    id = "peak"
    title = "Peak value"

    def score(self, trace, explanation, model, masks, params):
        (token,) = explanation.targets
        cells = np.concatenate([m.ravel() for m in explanation.maps[token]])
        ordered = np.sort(cells)[::-1]
        return MetricResult(values={"peak": float(ordered[0]), "masks": float(len(masks or {}))},
                            curves={"sorted": (np.arange(ordered.size) / ordered.size, ordered)})


class ThirdPartyPlugin:
    @hookimpl
    def lvlm_studio_panels(self):
        return [PanelSpec("third", "Third party", "test_gui_panels:ThirdPartyPanel", "right"),
                PanelSpec("raising", "Raising", "test_gui_panels:RaisingPanel", "right"),
                PanelSpec("unbuildable", "Unbuildable", "test_gui_panels:failing_factory", "right"),
                PanelSpec("missing", "Missing", "no_such_module_here:Panel", "right")]

    @hookimpl
    def lvlm_studio_metrics(self):
        return [PeakMetric()]


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False, extra=[(ThirdPartyPlugin(), "third_party")])


@pytest.fixture
def window(make_window, registry):
    return make_window(registry)


def answered(qtbot, window, token=1):
    ask(qtbot, window)
    window.state.select(token)
    qtbot.waitUntil(lambda: window.state.explanation is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)


def click_scene(qtbot, graphics, scene_point: QPointF) -> None:
    qtbot.mouseClick(graphics.viewport(), Qt.MouseButton.LeftButton, pos=graphics.mapFromScene(scene_point))


# -- the dock function ---------------------------------------------------------------------------
def test_every_panel_opens_and_closes_and_a_second_request_toggles(qtbot, window, dialogs):
    ThirdPartyPanel.built = 0
    for panel_id in (*FIRST_PARTY_PANELS, "third"):
        dock = window.toggle_panel(panel_id, True)
        assert dock is not None and dock.objectName() == f"panel:{panel_id}" and dock.isVisible()
        assert window.toggle_panel(panel_id) is dock and dock.isHidden()  # the second request hides it
        assert window.toggle_panel(panel_id) is dock and not dock.isHidden()  # and the third shows it again
        names = [d.objectName() for d in window.findChildren(QDockWidget)]
        assert names.count(f"panel:{panel_id}") == 1
    assert ThirdPartyPanel.built == 1
    window.panels_menu.aboutToShow.emit()
    assert all(action.isChecked() for pid, action in window.panel_actions.items() if pid in FIRST_PARTY_PANELS)
    assert dialogs == []


def test_panel_factories_are_imported_only_when_shown(make_window, registry):
    import sys

    for module in ("lvlm_panels.heads", "lvlm_panels.compare", "lvlm_panels.metrics"):
        sys.modules.pop(module, None)
    window = make_window(registry)
    assert "lvlm_panels.heads" not in sys.modules
    window.toggle_panel("heads")
    assert "lvlm_panels.heads" in sys.modules


def test_a_third_party_panel_follows_the_selection(qtbot, window):
    dock = window.toggle_panel("third")
    ask(qtbot, window)
    window.state.select(1)
    assert dock.widget().text() == f"third party: {window.state.trace.answer_tokens[1]}"
    assert "Third party" in [a.text() for a in window.panels_menu.actions()]


def test_panels_that_fail_are_reported_once_and_the_window_goes_on(qtbot, window, dialogs):
    assert window.toggle_panel("unbuildable") is None
    assert window.toggle_panel("missing") is None
    assert len(dialogs) == 2
    assert "cannot build this panel" in dialogs[0][0] and "no_such_module_here" in dialogs[1][0]
    assert window.dock("unbuildable") is None

    raising = window.toggle_panel("raising")
    third = window.toggle_panel("third")
    ask(qtbot, window)
    window.state.select(0)
    assert len(dialogs) == 3 and "panel bug on selection" in dialogs[2][0]
    window.state.select(2)  # disconnected: no second dialog, and the others still follow
    assert len(dialogs) == 3
    assert window.contexts["raising"].broken and raising.widget().text() == "raises later"
    assert third.widget().text().endswith(window.state.trace.answer_tokens[2])
    wait_idle(qtbot, window)


# -- first-party panels --------------------------------------------------------------------------
def test_overlay_controls_threshold_tiles_and_export(qtbot, window, tmp_path):
    answered(qtbot, window)
    panel = window.dock("overlay").widget()
    pixels, levels = window.state.pixels("raw_attention", 1)
    np.testing.assert_array_equal(panel.view.overlay, pixels)

    panel.colormap_combo.setCurrentText("viridis")
    panel.opacity_slider.setValue(30)
    panel.threshold_slider.setValue(50)
    assert (window.state.colormap, window.state.opacity, window.state.threshold) == ("viridis", 0.3, 0.5)
    cut = levels[0] + 0.5 * (levels[1] - levels[0])
    shown = panel.view.overlay
    assert np.isnan(shown[pixels < cut]).all() and np.array_equal(shown[pixels >= cut], pixels[pixels >= cut])
    assert panel.view.overlay_item.opacity() == pytest.approx(0.3)

    for kind in ("png", "svg", "pdf"):
        path = panel.export_figure(tmp_path / f"map.{kind}", dpi=100)
        assert path is not None and path.stat().st_size > 1000
    assert Image.open(tmp_path / "map.png").size[0] == 400  # 4 inches at 100 dpi, with its colour bar
    assert (tmp_path / "map.pdf").read_bytes().startswith(b"%PDF")
    assert panel.export_figure(tmp_path / "map.jpg") is None and not (tmp_path / "map.jpg").exists()

    # One scale for every token: the levels span all the maps, and the session keeps the choice.
    panel.shared_box.setChecked(True)
    assert window.state.shared_scale and window.dock("overlay").widget().context.view["shared_scale"]
    explanation = window.state.explanations["raw_attention"]
    top = max(float(m.max()) for maps in explanation.maps.values() for m in maps)
    assert window.state.pixels("raw_attention", 1)[1][1] == pytest.approx(top)
    panel.shared_box.setChecked(False)
    assert window.state.pixels("raw_attention", 1)[1] == levels

    panel.tiles_box.setChecked(True)
    regions = window.state.trace.regions
    visible = [v for v in panel.tile_views if not v.isHidden()]
    assert len(visible) == len(regions) and panel.stack.currentWidget() is panel.tiles_widget
    assert visible[0].overlay.shape[:2] == visible[0].image_item.image.shape[:2]


def test_timeline_plots_the_three_series_and_a_click_selects(qtbot, window):
    answered(qtbot, window, token=0)
    panel = window.dock("timeline").widget()
    qtbot.waitUntil(lambda: window.state.stats is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    trace, stats = window.state.trace, window.state.stats
    x, y = panel.curves["logprob"].getData()
    np.testing.assert_allclose(y, trace.logprobs, rtol=1e-6)
    np.testing.assert_allclose(panel.curves["llr"].getData()[1], stats.llr)
    np.testing.assert_allclose(panel.curves["entropy"].getData()[1], stats.entropy)
    assert (stats.entropy >= 0).all()

    target = len(trace.answer_tokens) - 1
    plot = panel.plots["llr"]
    point = QPointF(target, float(stats.llr[target]))
    qtbot.waitUntil(lambda: panel.graphics.viewport().rect().contains(
        panel.graphics.mapFromScene(plot.vb.mapViewToScene(point))), timeout=JOB_TIMEOUT_MS)
    click_scene(qtbot, panel.graphics, plot.vb.mapViewToScene(QPointF(target, float(stats.llr[target]))))
    assert window.state.selected == target
    assert panel.marked == target


def test_attention_grid_click_shows_that_heads_map(qtbot, window):
    answered(qtbot, window)
    dock = window.toggle_panel("heads")
    panel = dock.widget()
    qtbot.waitUntil(lambda: window.state.heads is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    heads = window.state.heads
    np.testing.assert_allclose(panel.image.image, heads.image_mass(1))
    layers, count = heads.shape
    layer, head = layers - 1, count - 1
    cell = QPointF(head + 0.5, layer + 0.5)
    # The view's transform follows its range once the event loop has laid it out.
    qtbot.waitUntil(lambda: panel.graphics.viewport().rect().contains(
        panel.graphics.mapFromScene(panel.image.mapToScene(cell))), timeout=JOB_TIMEOUT_MS)
    click_scene(qtbot, panel.graphics, panel.image.mapToScene(cell))
    assert window.state.method == f"head:L{layer}.H{head}"
    expected = to_pixels(list(heads.head_explanation(window.state.trace, layer, head).maps[1]),
                         window.state.trace.regions, window.state.trace.image.size)
    np.testing.assert_allclose(window.dock("overlay").widget().view.overlay, expected)


def test_compare_shows_maps_side_by_side_with_their_agreement(qtbot, window):
    from lvlm_studio.core.metrics.agreement import agreement, flatten

    answered(qtbot, window)
    panel = window.toggle_panel("compare").widget()
    panel.set_ticked(["raw_attention", "tam"])
    qtbot.waitUntil(lambda: "tam" in window.state.explanations and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    shown = [v for v, column in zip(panel.views, panel.columns) if not column.isHidden()]
    assert len(shown) == 2 and all(v.overlay is not None for v in shown)
    maps = window.state.explanations
    expected = agreement(flatten(maps["raw_attention"].maps[1]), flatten(maps["tam"].maps[1]))
    rows = panel.agreements()
    assert len(rows) == 1 and rows[0][2] == pytest.approx(expected.rank_correlation)
    assert panel.table.item(0, 1).text() == f"{expected.rank_correlation:+.2f}"
    assert panel.table.item(0, 3).text() == ("disagree" if expected.inconsistent else "agree")


def test_metrics_panel_scores_the_shown_map_and_draws_curve_and_mask(qtbot, window):
    window.open_demo_scene(seed=5)
    qtbot.waitUntil(lambda: bool(window.state.masks) and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    answered(qtbot, window)
    panel = window.toggle_panel("metrics").widget()
    panel.metric_combo.setCurrentIndex(panel.metric_combo.findData("peak"))
    panel.run()
    qtbot.waitUntil(lambda: panel.result() is not None, timeout=JOB_TIMEOUT_MS)
    cells = np.concatenate([m.ravel() for m in window.state.explanations["raw_attention"].maps[1]])
    assert panel.table.item(0, 0).text() == "peak"
    assert float(panel.table.item(0, 1).text()) == pytest.approx(cells.max(), rel=1e-3)
    assert float(panel.table.item(1, 1).text()) == len(window.state.masks)  # the masks reached the metric
    curve = panel.plot.getPlotItem().listDataItems()[0]
    np.testing.assert_allclose(curve.getData()[1], np.sort(cells)[::-1])
    word = window.state.trace.answer_tokens[1].strip()
    if word in window.state.masks:
        assert panel.mask_combo.currentData() == word
    assert panel.mask_view.overlay is not None


def test_the_timeline_draws_log_p_from_zero_to_a_floor_not_its_own_range():
    from lvlm_panels.timeline import LOG_P_FLOOR, y_range

    near_certain = np.log(np.array([0.99999, 0.99998, 0.999995]))
    low, high = y_range("logprob", near_certain)
    assert low <= LOG_P_FLOOR and high >= 0  # 0.99998 is not a deep dip: it sits at the top
    assert (near_certain.max() - near_certain.min()) / (high - low) < 1e-5
    low, _ = y_range("logprob", np.log(np.array([0.9, 1e-4])))
    assert low < np.log(1e-4)  # a really unlikely token still shows
    assert y_range("entropy", np.array([1.0, 2.0])) == pytest.approx((0.85, 2.15))


def test_tooltip_percentages_keep_the_digits_that_tell_values_apart():
    from lvlm_studio.gui.token_bar import percent, tooltip

    assert [percent(p) for p in (0.973, 0.99998, 0.0042, 3.1e-5, 1.2e-9, 0.0)] == [
        "97.3%", "99.998%", "0.42%", "0.0031%", "1.2e-07%", "0%"]
    text = tooltip("red", 0.99998, ["red", "blue", "green"], np.array([0.99998, 1.5e-5, 2e-7]))
    assert "0.0%" not in text and "99.998%" in text and "0.0015%" in text and "2.0e-05%" in text


def test_a_signed_map_is_drawn_diverging_about_zero_with_a_labelled_colour_bar(qtbot, window):
    from lvlm_studio.core.plugin.explanation import DIVERGING_COLORMAP, Explanation

    answered(qtbot, window)
    state, panel = window.state, window.dock("overlay").widget()
    rng = np.random.default_rng(0)
    maps = {t: [rng.random(r.grid) - 0.7 for r in state.trace.regions] for t in range(len(state.trace.answer_tokens))}
    assert state.add_explanation(state.trace, "signed_demo", Explanation("signed_demo", maps, {}, {
        "values": "gradient x input"}))
    state.set_method("signed_demo")
    pixels, (low, high) = state.pixels("signed_demo", 1)
    assert low == -high == -np.nanmax(np.abs(pixels))  # 0 sits at the colormap's centre
    assert panel.view._colormap_name == (DIVERGING_COLORMAP, True)
    table = panel.view.overlay_item.lut
    assert table.shape[1] == 4 and table[len(table) // 2, 3] < 5 and table[0, 3] == table[-1, 3] == 255
    assert panel.view.color_bar.axis.labelText == "gradient x input"
    assert "centred at 0" in panel.caption.text()
    state.set_view(threshold=0.5)  # hides weak values of either sign; strong negative ones stay
    shown = panel.view.overlay
    assert np.nanmin(shown) < -0.5 * high and np.all(np.isnan(shown[np.abs(pixels) < 0.5 * high]))
