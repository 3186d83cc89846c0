"""The contrast choice in the app: a drop-down of the selected token's top-k alternatives for methods
that can explain a token against one, absent for those that cannot."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("magicgui")

from gui_helpers import JOB_TIMEOUT_MS, ask
from magicgui import widgets as mg

from lvlm_studio.core.plugin.contracts import CONTRAST, Explainer, Param, contrast_token
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.hookspecs import hookimpl
from lvlm_studio.gui.params_form import contrast_choices


class AgainstExplainer(Explainer):
    """Maps that remember the alternative they were made against."""

    id = "against"
    title = "Against"
    params = (Param("scale", 1.0, "how strong", minimum=0.0), CONTRAST)
    calls: list[dict] = []

    def explain(self, trace, model, targets, params):
        type(self).calls.append(dict(params))
        value = float(contrast_token(params) or 0) + params["scale"]
        return Explanation(self.id, {t: [np.full(r.grid, value) for r in trace.regions] for t in targets},
                           dict(params), {"method": self.title})


class AgainstPlugin:
    @hookimpl
    def lvlm_studio_explainers(self):
        return [AgainstExplainer()]


@pytest.fixture
def window(make_window):
    from lvlm_studio.core.plugin.registry import create_registry

    AgainstExplainer.calls.clear()
    made = make_window(create_registry(load_third_party=False, extra=[(AgainstPlugin(), "against")]))
    made.state.set_method("against")
    return made


def test_the_alternatives_offered_are_the_tokens_top_k(qtbot, window):
    ask(qtbot, window)
    trace = window.state.trace
    window.state.select(1)
    box = window.params_box
    box.set_expanded(True)
    widget = box.form.widget(CONTRAST.name)
    assert isinstance(widget, mg.ComboBox)
    offered = [value for _, value in contrast_choices(trace, 1)]
    assert offered[0] == -1 and int(trace.answer_ids[1]) not in offered
    assert set(offered[1:]) == {int(i) for i in trace.top_ids[1]} - {int(trace.answer_ids[1])}
    assert list(widget.choices) == offered
    alternative = offered[1]
    widget.value = alternative
    assert box.apply()
    assert window.state.params["against"] == {"contrast": alternative}
    qtbot.waitUntil(lambda: window.state.explanation is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert AgainstExplainer.calls[-1]["contrast"] == alternative
    label = next(text for text, value in contrast_choices(trace, 1) if value == alternative)
    assert repr(label.split("  (p =")[0]) in box.note.text()
    # Another token: its own alternatives, and the one in use stays chosen.
    window.state.select(0)
    assert box.form.widget(CONTRAST.name).value == alternative
    assert alternative in [value for _, value in contrast_choices(trace, 0, alternative)]


def test_methods_that_cannot_contrast_do_not_offer_it(qtbot, window):
    window.state.set_method("raw_attention")
    box = window.params_box
    box.set_expanded(True)
    assert CONTRAST.name not in [p.name for p in box.form.params]
