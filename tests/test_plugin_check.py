"""`lvlm-studio plugins --check`: every plugin's methods and metrics run on the demo model and the
tiny models, and what they return is checked: pass, fail (with the error) or n/a (with the reason)."""

from __future__ import annotations

import math
import types

import numpy as np

from lvlm_studio.cli import EXIT_INPUT, main
from lvlm_studio.cli.plugins import cmd_check, format_table
from lvlm_studio.core.plugin.contracts import Explainer, Metric, MetricResult
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.hookspecs import hookimpl
from lvlm_studio.core.plugin.registry import create_registry
from lvlm_studio.testing.conformance import FAIL, NOT_APPLICABLE, PASS, CheckResult, check_plugins


class Flat(Explainer):
    id = "flat"

    def explain(self, trace, model, targets, params):
        return Explanation(self.id, {t: [np.ones(r.grid) for r in trace.regions] for t in targets})


class WrongGrid(Explainer):
    id = "wrong_grid"

    def explain(self, trace, model, targets, params):
        return Explanation(self.id, {t: [np.ones((1, 1)) for _ in trace.regions] for t in targets})


class DemoOnly(Explainer):
    id = "demo_only"

    def applies_to(self, model, params):
        return None if model.family == "demo" else "it only knows the demo model"

    def explain(self, trace, model, targets, params):
        return Flat().explain(trace, model, targets, params)


class Mean(Metric):
    id = "mean"

    def score(self, trace, explanation, model, masks, params):
        return MetricResult({"mean": float(np.mean([m.mean() for ms in explanation.maps.values() for m in ms]))})


class Infinite(Metric):
    id = "infinite"

    def score(self, trace, explanation, model, masks, params):
        return MetricResult({"value": math.inf})


class WantsMasks(Metric):
    id = "wants_masks"
    needs = frozenset({"masks"})

    def score(self, trace, explanation, model, masks, params):
        return MetricResult({"words": float(len(masks))})


def fake_plugin() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        lvlm_studio_explainers=hookimpl(lambda: [Flat(), WrongGrid(), DemoOnly()]),
        lvlm_studio_metrics=hookimpl(lambda: [Mean(), Infinite(), WantsMasks()]),
    )


def test_each_result_is_pass_fail_or_not_applicable_with_its_reason():
    registry = create_registry(load_third_party=False, extra=[(fake_plugin(), "fake")])
    results = check_plugins(registry, "fake", families=["llava"])
    outcome = {(r.item, r.model): r for r in results}
    assert {r.plugin for r in results} == {"fake"}
    assert {m for _, m in outcome} == {"demo", "llava"}
    assert outcome["flat", "demo"].outcome == outcome["flat", "llava"].outcome == PASS
    assert outcome["wrong_grid", "llava"].outcome == FAIL
    assert "whose grid is" in outcome["wrong_grid", "llava"].reason
    assert outcome["demo_only", "llava"].outcome == NOT_APPLICABLE
    assert outcome["demo_only", "llava"].reason == "it only knows the demo model"
    assert outcome["mean", "llava"].outcome == PASS
    assert outcome["infinite", "demo"].outcome == FAIL and "not a finite number" in outcome["infinite", "demo"].reason
    assert outcome["wants_masks", "demo"].outcome == PASS  # the demo scene has object masks
    assert outcome["wants_masks", "llava"].outcome == NOT_APPLICABLE


def test_the_table_has_a_column_per_model_and_numbered_reasons():
    table = format_table([CheckResult("p", "explainer", "a", "demo", PASS),
                          CheckResult("p", "explainer", "a", "llava", FAIL, "it broke"),
                          CheckResult("p", "metric", "m", "demo", NOT_APPLICABLE, "no masks"),
                          CheckResult("p", "metric", "m", "llava", NOT_APPLICABLE, "no masks")])
    lines = table.splitlines()
    assert lines[0].split() == ["plugin", "kind", "id", "demo", "llava"]
    assert lines[1].split() == ["p", "explainer", "a", "pass", "FAIL[1]"]
    assert lines[2].split() == ["p", "metric", "m", "n/a[2]", "n/a[2]"]
    assert lines[-2:] == ["[1] it broke", "[2] no masks"]


def test_the_first_party_metrics_pass_on_the_demo_model_and_a_tiny_model(capsys):
    """The command over one family (the command itself runs every family by default)."""
    assert main(["plugins", "--check", "lvlm_metrics", "--families", "qwen2_vl"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out
    table = out[out.index("plugin  "):]
    assert table.splitlines()[0].split()[3:] == ["demo", "qwen2_vl"]
    for metric in ("deletion_insertion", "iou", "pointing_game", "model_randomisation", "agreement"):
        assert metric in table
    assert "needs ground-truth masks" in table  # plausibility on the tiny model, which has none


def test_bad_choices_are_refused(capsys):
    assert main(["plugins", "--check", "no_such_plugin", "--families", "none"]) == EXIT_INPUT
    assert "no plugin 'no_such_plugin'" in capsys.readouterr().err
    assert main(["plugins", "--check", "--families", "llava,nope"]) == EXIT_INPUT
    assert "nope" in capsys.readouterr().err
    assert main(["plugins", "--families", "llava"]) == EXIT_INPUT


def test_agreement_refuses_a_method_that_does_not_apply(demo_trace):
    """Its default other method, TAM, reads image tokens, which Mllama has none of: the metric says so
    (n/a in the check) instead of failing inside TAM."""
    import pytest

    from lvlm_studio.core.errors import InputError
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.testing import run_explainer

    registry = create_registry(load_third_party=False)
    explanation = run_explainer(Flat(), demo_trace, None)
    agreement = registry.metrics()["agreement"]
    cross_attention = types.SimpleNamespace(adapter=types.SimpleNamespace(image_entry="cross_attention",
                                                                          family="Mllama"))
    with pytest.raises(InputError, match="does not apply"):
        run_job(agreement.score(demo_trace, explanation, cross_attention, None, agreement.resolve_params({})))


def test_a_plugin_that_fails_to_answer_its_hooks_fails_the_check(capsys):
    def broken():
        raise RuntimeError("no maps today")

    plugin = types.SimpleNamespace(lvlm_studio_explainers=hookimpl(broken))
    registry = create_registry(load_third_party=False, extra=[(plugin, "broken")])
    assert cmd_check(registry, "broken", []) == 1
    assert "FAIL  plugin broken [given]: RuntimeError: no maps today" in capsys.readouterr().out
