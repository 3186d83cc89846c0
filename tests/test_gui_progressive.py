"""Progressive maps in the app: a method that works token by token shows the selected token's map
first and computes the others in the background, one job each; each map is computed once per answer
and parameter set; a plugin that only knows "every token at once" works as before."""
# ruff: noqa: E402 - the Qt platform is chosen before anything Qt is imported

from __future__ import annotations

import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pyqtgraph")

from gui_helpers import JOB_TIMEOUT_MS, ask, wait_idle

from lvlm_studio.core.plugin.contracts import Explainer, Param
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.hookspecs import hookimpl


def token_maps(trace, token: int, scale: float = 1.0) -> list[np.ndarray]:
    """A map per region whose values name the token (so a wrong token's map is seen)."""
    return [np.full(region.grid, scale * (token + 1), dtype=np.float32) for region in trace.regions]


class PerToken(Explainer):
    """Works token by token; records each call's targets; can be held until the test lets it go."""

    id = "per_token"
    title = "Per token"
    params = (Param("scale", 1.0, "multiplies every value"),)
    calls: list[list[int]] = []
    gate = threading.Event()  # set: calls return at once; cleared: each call waits for it

    def per_target(self, params):
        return True

    def explain(self, trace, model, targets, params):
        type(self).calls.append(list(targets))
        assert type(self).gate.wait(30), "the test never let the explainer go"
        maps = {t: token_maps(trace, t, params["scale"]) for t in targets}
        return Explanation(self.id, maps, dict(params), {"method": self.title, "tokens": {str(t): t for t in targets}})


class EveryToken(Explainer):
    """Written for the API before ``per_target``: ignores ``targets`` and maps every token."""

    id = "every_token"
    title = "Every token"
    calls: list[list[int]] = []

    def explain(self, trace, model, targets, params):
        type(self).calls.append(list(targets))
        maps = {t: token_maps(trace, t) for t in range(len(trace.answer_tokens))}
        return Explanation(self.id, maps, {}, {"method": self.title})


class Plugin:
    @hookimpl
    def lvlm_studio_explainers(self):
        return [PerToken(), EveryToken()]


@pytest.fixture(scope="module")
def registry():
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry(load_third_party=False, extra=[(Plugin(), "progressive-test")])


@pytest.fixture
def window(qtbot, make_window, registry):
    PerToken.calls.clear()
    EveryToken.calls.clear()
    PerToken.gate.set()
    made = make_window(registry)
    ask(qtbot, made)
    assert len(made.state.trace.answer_tokens) >= 4, "the demo answer is long enough to order tokens"
    yield made
    PerToken.gate.set()  # never leave the worker thread waiting


def shown_value(window) -> float | None:
    """The value the overlay panel draws (every map here is flat), or None when it shows no map."""
    overlay = window.dock("overlay").widget().view.overlay
    if overlay is None or not np.isfinite(overlay).any():
        return None
    return float(np.nanmax(overlay))


def test_the_selected_token_comes_first_and_the_rest_in_the_background(qtbot, window, dialogs):
    state, count = window.state, len(window.state.trace.answer_tokens)
    started = []
    window.runner.job_started.connect(lambda job: started.append(job.title))
    PerToken.gate.clear()  # hold the first job so the test sees the window while the rest waits
    state.set_method("per_token")
    state.select(2)
    qtbot.waitUntil(lambda: PerToken.calls == [[2]], timeout=JOB_TIMEOUT_MS)
    assert state.explanation is None and "Computing Per token" in window.map_caption.text()
    PerToken.gate.set()
    qtbot.waitUntil(lambda: state.explanation is not None, timeout=JOB_TIMEOUT_MS)
    assert 2 in state.explanation.maps  # the selected token's map is there before the others are done
    qtbot.waitUntil(lambda: shown_value(window) == pytest.approx(3.0), timeout=JOB_TIMEOUT_MS)

    wait_idle(qtbot, window)
    assert PerToken.calls[0] == [2]
    assert sorted(t for call in PerToken.calls for t in call) == list(range(count))  # each token once
    assert all(len(call) == 1 for call in PerToken.calls)
    assert sorted(state.explanation.maps) == list(range(count))
    assert started == [f"Explaining token {t + 1} with Per token" for call in PerToken.calls for t in call]
    # Per-token parts of the provenance are gathered from every call.
    assert state.explanation.provenance["tokens"] == {str(t): t for t in range(count)}
    assert "ready" not in window.map_caption.text() and "Per token" in window.map_caption.text()
    assert dialogs == []


def test_a_computed_token_shows_at_once_and_is_not_computed_again(qtbot, window):
    state, count = window.state, len(window.state.trace.answer_tokens)
    state.set_method("per_token")
    state.select(0)
    qtbot.waitUntil(lambda: state.explanation is not None and not state.missing_tokens("per_token"),
                    timeout=JOB_TIMEOUT_MS)
    wait_idle(qtbot, window)
    calls = len(PerToken.calls)
    for token in (count - 1, 1, 0):
        state.select(token)
        assert shown_value(window) == pytest.approx(token + 1.0)  # drawn in the same event: no job
        assert not window.runner.busy
    assert len(PerToken.calls) == calls == count


def test_selecting_a_token_not_computed_yet_moves_it_to_the_front(qtbot, window):
    state, count = window.state, len(window.state.trace.answer_tokens)
    PerToken.gate.clear()
    state.set_method("per_token")
    state.select(0)
    qtbot.waitUntil(lambda: PerToken.calls == [[0]], timeout=JOB_TIMEOUT_MS)
    last = count - 1
    state.select(last)  # while token 0 is still computing
    PerToken.gate.set()
    qtbot.waitUntil(lambda: state.explanation is not None and last in state.explanation.maps, timeout=JOB_TIMEOUT_MS)
    assert PerToken.calls[:2] == [[0], [last]]
    wait_idle(qtbot, window)
    assert [call[0] for call in PerToken.calls] == [0, last, *range(1, last)]


def test_new_parameters_compute_anew_and_the_old_maps_come_back_from_the_cache(qtbot, window):
    state, count = window.state, len(window.state.trace.answer_tokens)
    state.set_method("per_token")
    state.select(1)
    qtbot.waitUntil(lambda: not state.missing_tokens("per_token") and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    window.analysis.set_params("per_token", {"scale": 10.0})
    qtbot.waitUntil(lambda: shown_value(window) == pytest.approx(20.0), timeout=JOB_TIMEOUT_MS)
    wait_idle(qtbot, window)
    assert PerToken.calls[count] == [1] and len(PerToken.calls) == 2 * count
    window.analysis.set_params("per_token", {})  # back to the defaults: every map from the cache
    assert shown_value(window) == pytest.approx(2.0) and not window.runner.busy
    assert len(PerToken.calls) == 2 * count


def test_a_plugin_that_maps_every_token_at_once_still_works(qtbot, window, dialogs):
    state, count = window.state, len(window.state.trace.answer_tokens)
    state.set_method("every_token")
    state.select(3)
    qtbot.waitUntil(lambda: state.explanation is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert EveryToken.calls == [list(range(count))]  # asked once, for every token
    assert sorted(state.explanation.maps) == list(range(count))
    assert shown_value(window) == pytest.approx(4.0)
    state.select(0)
    assert shown_value(window) == pytest.approx(1.0) and len(EveryToken.calls) == 1
    assert dialogs == []


def test_a_per_target_method_that_returns_every_token_is_asked_once(qtbot, window, monkeypatch):
    """``per_target`` only orders the work: extra maps a call returns are kept, not asked for again."""
    state, count = window.state, len(window.state.trace.answer_tokens)
    monkeypatch.setattr(EveryToken, "per_target", lambda self, params: True, raising=False)
    state.set_method("every_token")
    state.select(2)
    qtbot.waitUntil(lambda: state.explanation is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
    assert EveryToken.calls == [[2]] and sorted(state.explanation.maps) == list(range(count))
