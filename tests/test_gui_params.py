"""A method's parameters in the app: the form built from its ``Param`` declarations, the parameters
its maps are computed with, their cache per parameter set, and sessions that keep them."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import json
import os
import zipfile

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")
pytest.importorskip("magicgui")

from gui_helpers import JOB_TIMEOUT_MS, ask
from magicgui import widgets as mg

from lvlm_studio.core.plugin.contracts import Explainer, Metric, MetricResult, Param
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.hookspecs import hookimpl
from lvlm_studio.gui.params_form import MethodParamsBox, ParamsForm
from lvlm_studio.gui.state import params_key

PARAMS = (
    Param("steps", 4, "how many steps", minimum=1, maximum=50),
    Param("scale", 0.5, "how strong", minimum=0.0, maximum=2.0),
    Param("mode", "flat", "how the map is drawn", choices=("flat", "ramp")),
    Param("invert", False, "turn the map upside down"),
    Param("layers", (), "layers to use (empty: all)"),
)


class KnobsExplainer(Explainer):
    """Maps whose values come from the parameters, so each parameter set gives other maps."""

    id = "knobs"
    title = "Knobs"
    params = PARAMS
    calls: list[dict] = []

    def explain(self, trace, model, targets, params):
        type(self).calls.append(dict(params))
        maps = {}
        for t in targets:
            grids = []
            for region in trace.regions:
                values = np.full(region.grid, params["scale"] * params["steps"], dtype=np.float32)
                if params["mode"] == "ramp":
                    values = values + np.arange(values.size, dtype=np.float32).reshape(region.grid)
                grids.append(-values if params["invert"] else values)
            maps[t] = grids
        return Explanation(self.id, maps, dict(params), {"method": self.title})


class SpreadMetric(Metric):
    """Two values, one declared lower-is-better, one with no direction."""

    id = "spread"
    title = "Spread"
    directions = {"spread": "lower"}

    def score(self, trace, explanation, model, masks, params):
        (token,) = explanation.targets
        cells = np.concatenate([m.ravel() for m in explanation.maps[token]])
        return MetricResult(values={"spread": float(cells.std()), "cells": float(cells.size)})


class KnobsPlugin:
    @hookimpl
    def lvlm_studio_explainers(self):
        return [KnobsExplainer()]

    @hookimpl
    def lvlm_studio_metrics(self):
        return [SpreadMetric()]


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False, extra=[(KnobsPlugin(), "knobs")])


@pytest.fixture
def window(make_window, registry):
    KnobsExplainer.calls.clear()
    made = make_window(registry)
    made.state.set_method("knobs")
    return made


def unfolded(window) -> MethodParamsBox:
    window.params_box.set_expanded(True)
    return window.params_box


def explained(qtbot, window, token: int = 1):
    window.state.select(token)
    qtbot.waitUntil(lambda: window.state.explanation is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    return window.state.explanation


def test_a_form_has_one_widget_per_param_of_each_type(qtbot):
    form = ParamsForm(PARAMS)
    qtbot.addWidget(form)
    steps, scale, mode, invert, layers = (form.widget(p.name) for p in PARAMS)
    assert isinstance(steps, mg.SpinBox) and (steps.min, steps.max, steps.value) == (1, 50, 4)
    assert isinstance(scale, mg.FloatSpinBox) and (scale.min, scale.max, scale.value) == (0.0, 2.0, 0.5)
    assert isinstance(mode, mg.ComboBox) and list(mode.choices) == ["flat", "ramp"]
    assert isinstance(invert, mg.CheckBox) and invert.value is False
    assert isinstance(layers, mg.LineEdit) and layers.value == ""
    assert "how many steps" in steps.tooltip and "1 \u2264 steps \u2264 50" in steps.tooltip
    assert "one of: flat, ramp" in mode.tooltip
    steps.native.setValue(99)  # typed or stepped past the bound, the spin box stops at it
    assert steps.value == 50
    assert form.values() == {"steps": 50, "scale": 0.5, "mode": "flat", "invert": False, "layers": ""}
    form.set_values({"layers": (0, 2), "invert": True})
    assert form.values()["layers"] == "0,2" and form.values()["invert"] is True and form.values()["steps"] == 4


def test_the_form_follows_the_chosen_method_and_its_screenshot(qtbot, window, tmp_path):
    box = window.params_box
    assert box.title.text() == "Knobs" and box.note.text() == "Defaults in use."
    assert not box.expanded and box.form is None and box.apply_button.isHidden()  # folded, nothing built
    box.title.click()
    assert box.expanded and not box.scroll.isHidden() and not box.apply_button.isHidden()
    assert box.form is not None and box.form.params == PARAMS
    alone = MethodParamsBox(window.analysis)  # the same box outside the window, at its full height
    qtbot.addWidget(alone)
    alone.set_expanded(True)
    alone.resize(480, alone.sizeHint().height())
    alone.show()
    alone.grab().save(str(tmp_path / "params-form.png"))
    window.state.set_method("raw_attention")
    assert [p.name for p in box.form.params] == [p.name for p in window.analysis.explainers["raw_attention"].params]
    window.state.set_method("knobs")
    assert box.form.params == PARAMS


def test_changing_a_value_changes_the_parameters_the_maps_are_made_with(qtbot, window):
    ask(qtbot, window)
    first = explained(qtbot, window)
    assert KnobsExplainer.calls[-1] == {"steps": 4, "scale": 0.5, "mode": "flat", "invert": False, "layers": ()}
    box = unfolded(window)
    box.form.widget("steps").value = 7
    box.form.widget("mode").value = "ramp"
    box.form.widget("layers").value = "0, 1"
    assert box.apply()
    assert window.state.params["knobs"] == {"steps": 7, "mode": "ramp", "layers": (0, 1)}
    context = window.contexts["overlay"]  # what panels see
    assert context.params("knobs") == {"steps": 7, "mode": "ramp", "layers": (0, 1)}
    qtbot.waitUntil(lambda: window.state.explanation is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    second = window.state.explanation
    assert second is not first
    assert KnobsExplainer.calls[-1] == {"steps": 7, "scale": 0.5, "mode": "ramp", "invert": False, "layers": (0, 1)}
    assert second.params["steps"] == 7
    assert "steps=7" in box.note.text()


def test_maps_are_cached_per_parameter_set(qtbot, window):
    ask(qtbot, window)
    defaults = explained(qtbot, window)
    window.analysis.set_params("knobs", {"invert": True})
    qtbot.waitUntil(lambda: window.state.explanation is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    inverted = window.state.explanation
    assert len(KnobsExplainer.calls) == 2
    token = window.state.selected
    assert np.all(inverted.maps[token][0] == -defaults.maps[token][0])
    window.analysis.set_params("knobs", {})  # back to the defaults: from the cache, nothing computed
    assert window.state.explanation is defaults
    window.analysis.set_params("knobs", {"invert": "true"})  # the same set, spelled as text
    assert window.state.explanation is inverted
    assert window.runner.busy is False and len(KnobsExplainer.calls) == 2
    window.analysis.set_params("knobs", {"invert": False, "steps": 4})  # defaults spelled out are the defaults
    assert window.state.params.get("knobs") is None and window.state.explanation is defaults
    assert params_key({"layers": (0, 1)}) == params_key({"layers": [0, 1]}) != params_key({})
    ask(qtbot, window)  # a new answer: the cache belonged to the old one
    assert window.state.explanation is None


def test_an_invalid_value_gives_one_clear_message_and_changes_nothing(qtbot, window, dialogs):
    ask(qtbot, window)
    first = explained(qtbot, window)
    box = unfolded(window)
    box.form.widget("layers").value = "two"
    assert not box.apply()
    assert "parameter 'layers' got 'two'" in box.note.text() and "Example: layers=" in box.note.text()
    assert "knobs" not in window.state.params and window.state.explanation is first
    assert dialogs == []  # a line in the form, not a dialog
    box.form.widget("layers").value = ""
    assert box.apply() and box.note.text() == "Defaults in use."


def test_parameters_are_saved_and_restored_with_the_session(qtbot, window, make_window, registry, tmp_path):
    ask(qtbot, window)
    explained(qtbot, window)
    window.analysis.set_params("knobs", {"scale": 1.5, "layers": "3"})
    made = explained(qtbot, window)
    assert made.params["scale"] == 1.5
    path = window.save_session(tmp_path / "knobs.lvlm")
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("session.json"))
    assert manifest["view"]["params"] == {"knobs": {"scale": 1.5, "layers": [3]}}
    assert manifest["record"]["methods"]["knobs"]["params"] == {"steps": 4, "scale": 1.5, "mode": "flat",
                                                                "invert": False, "layers": [3]}
    other = make_window(registry)
    other.open_session(path)
    qtbot.waitUntil(lambda: other.state.trace is not None and not other.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert other.state.method == "knobs"
    assert params_key(other.state.params["knobs"]) == params_key({"scale": 1.5, "layers": (3,)})
    assert other.state.explanation is not None and other.state.explanation.params["scale"] == 1.5
    assert unfolded(other).form.values()["scale"] == 1.5 and other.params_box.form.values()["layers"] == "3"
    calls = len(KnobsExplainer.calls)
    other.state.select(0)
    assert not other.runner.busy and len(KnobsExplainer.calls) == calls  # restored maps are used, not recomputed


def test_a_session_with_parameters_the_method_refuses_is_reported_once(qtbot, window, dialogs):
    ask(qtbot, window)
    window.state.set_params("knobs", {"steps": 1000})  # as a session from another version would bring them
    window.state.select(1)
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    window.state.select(2)
    assert len(dialogs) == 1 and "parameter 'steps' got 1000" in dialogs[0][0] + dialogs[0][1]
    assert window.state.explanation is None and window.isVisible()


def test_a_box_without_a_registry_says_so(qtbot, gui_settings):
    from lvlm_studio.gui.analysis import Analysis
    from lvlm_studio.gui.state import StudioState

    box = MethodParamsBox(Analysis(StudioState()))
    qtbot.addWidget(box)
    assert box.form is None and not box.apply_button.isEnabled() and not box.apply()


def test_the_metrics_panel_shows_which_way_is_better(qtbot, window, tmp_path):
    ask(qtbot, window)
    explained(qtbot, window)
    panel = window.toggle_panel("metrics").widget()
    panel.metric_combo.setCurrentIndex(panel.metric_combo.findData("spread"))
    panel.run()
    qtbot.waitUntil(lambda: panel.result() is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    rows = {panel.table.item(r, 0).text(): panel.table.item(r, 2).text() for r in range(panel.table.rowCount())}
    assert rows == {"spread": "\u2193 lower", "cells": ""}
    path = window.save_session(tmp_path / "scored.lvlm")
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("session.json"))
    assert manifest["metrics"][0]["directions"] == {"spread": "lower"}
    assert window.contexts["metrics"].params("knobs") == {}
