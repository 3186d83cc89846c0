"""Run plugins' explainers and metrics on the demo model and every family's tiny model, and check
what they return (``lvlm-studio plugins --check``).

Each explainer runs with its default parameters on the first and last answer token of a short
answer; what it returns goes through the same contract check as in the CLI, the app and the
benchmark (``lvlm_studio.core.plugin.checks``). Each metric scores an explanation of the first
explainer that passed on that model; on the demo model it also gets the scene's object masks.
A result is "pass", "fail" (with the error) or "n/a" (with the reason: the method's own
``applies_to``, a metric's missing masks, or a refusal with an ``InputError``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PASS, FAIL, NOT_APPLICABLE = "pass", "fail", "n/a"
DEMO = "demo"
TINY_IMAGE_SIZE = (64, 40)  # wide, so that tiling families cut it into more than one region


@dataclass
class CheckResult:
    plugin: str
    kind: str  # "explainer" or "metric"
    item: str  # the method's or metric's id
    model: str  # "demo" or a family of the tiny models
    outcome: str  # PASS, FAIL or NOT_APPLICABLE
    reason: str = ""


@dataclass
class _Subject:
    name: str
    loaded: Any
    trace: Any
    masks: dict[Any, Any] | None


def plugin_items(registry: Any, plugin: str | None = None) -> list[tuple[str, str, Any]]:
    """(plugin name, kind, object) for every explainer and metric, in registration order; only those
    of ``plugin`` when given. An id taken by an earlier plugin is left out (it is not what runs)."""
    from lvlm_studio.core.plugin.contracts import Explainer, Metric

    items = []
    for kind, hook, cls in (("explainer", "lvlm_studio_explainers", Explainer),
                            ("metric", "lvlm_studio_metrics", Metric)):
        seen: set[str] = set()
        for plugin_name, item in registry.collect(hook):
            if not isinstance(item, cls) or not isinstance(item.id, str) or not item.id or item.id in seen:
                continue  # the registry reports these; nothing here could run
            seen.add(item.id)
            if plugin is None or plugin_name == plugin:
                items.append((plugin_name, kind, item))
    return items


def subjects(families: Iterable[str], demo: bool = True, folder: Path | None = None) -> Iterator[_Subject]:
    """The demo model (a held-out scene, its masks) and each family's tiny model (a plain wide image),
    each with a short answer, one at a time (a model is freed before the next one loads)."""
    from PIL import Image

    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.testing import HELDOUT_SCENE_SEED
    from lvlm_studio.testing.tiny_models import build_tiny_model

    options = LoadOptions(device="cpu")
    if demo:
        from lvlm_studio.demo.pointing import scene_masks
        from lvlm_studio.demo.scenes import make_scene

        scene = make_scene(HELDOUT_SCENE_SEED)
        loaded = load_model(None, options)
        trace = generate_trace(loaded, scene.image, "describe the image.", max_new_tokens=8)
        yield _Subject(DEMO, loaded, trace, scene_masks(scene, trace.answer_tokens))
    with tempfile.TemporaryDirectory(prefix="lvlm-check-", dir=folder) as scratch:
        for family in families:
            loaded = load_model(build_tiny_model(family, Path(scratch) / family), options)
            image = Image.new("RGB", TINY_IMAGE_SIZE, (20, 20, 220))
            yield _Subject(family, loaded, generate_trace(loaded, image, "describe the image.", max_new_tokens=3), None)


def check_plugins(registry: Any, plugin: str | None = None, families: Iterable[str] | None = None,
                  demo: bool = True, on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Check every explainer and metric (of ``plugin``, or of all plugins) on the demo model and the
    tiny model of each of ``families`` (all built-in families by default)."""
    from lvlm_studio.testing.tiny_models import TINY_FAMILIES

    items = plugin_items(registry, plugin)
    results: list[CheckResult] = []

    def record(result: CheckResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    if not items:
        return results
    for subject in subjects(TINY_FAMILIES if families is None else families, demo):
        reference = None  # the first explanation that passed: what the metrics score
        for plugin_name, kind, item in items:
            if kind != "explainer":
                continue
            outcome, reason, explanation = _check_explainer(item, subject)
            record(CheckResult(plugin_name, kind, item.id, subject.name, outcome, reason))
            reference = reference or explanation
        if reference is None and any(kind == "metric" for _, kind, _ in items):
            reference = _reference_explanation(registry, subject)
        for plugin_name, kind, item in items:
            if kind == "metric":
                outcome, reason = _check_metric(item, subject, reference)
                record(CheckResult(plugin_name, kind, item.id, subject.name, outcome, reason))
    return results


def _targets(trace: Any) -> list[int]:
    count = len(trace.answer_ids)
    return sorted({0, count - 1}) if count else []


def _check_explainer(explainer: Any, subject: _Subject) -> tuple[str, str, Any]:
    from lvlm_studio.core.errors import LVLMError, PluginError
    from lvlm_studio.core.plugin.checks import blamed_on, check_explanation
    from lvlm_studio.core.plugin.jobs import run_job

    targets = _targets(subject.trace)
    if not targets:
        return NOT_APPLICABLE, "the model's answer is empty", None
    try:
        with blamed_on(explainer):
            params = explainer.resolve_params({})
            reason = explainer.applies_to(subject.loaded, params)
            if reason is not None:
                return NOT_APPLICABLE, str(reason), None
            explanation = run_job(explainer.explain(subject.trace, subject.loaded, targets, params))
        return PASS, "", check_explanation(explanation, subject.trace, targets, explainer)
    except PluginError as exc:
        return FAIL, str(exc), None
    except LVLMError as exc:  # it said it applies, then refused
        return FAIL, f"applies_to said it applies, then it refused: {exc}", None


def _reference_explanation(registry: Any, subject: _Subject) -> Any:
    """An explanation to score when the plugin under check has no explainer that passed here: the
    first built-in method that does."""
    for _, kind, item in plugin_items(registry):
        if kind == "explainer":
            outcome, _, explanation = _check_explainer(item, subject)
            if outcome == PASS:
                return explanation
    return None


def _check_metric(metric: Any, subject: _Subject, explanation: Any) -> tuple[str, str]:
    from lvlm_studio.core.errors import LVLMError, PluginError
    from lvlm_studio.core.plugin.checks import blamed_on, check_metric_result
    from lvlm_studio.core.plugin.jobs import run_job

    if explanation is None:
        return NOT_APPLICABLE, "no explanation method passed on this model, so there is nothing to score"
    if "masks" in metric.needs and subject.masks is None:
        return NOT_APPLICABLE, "needs ground-truth masks (only the demo scene has them)"
    try:
        with blamed_on(metric, "metric"):
            params = metric.resolve_params({})
            result = run_job(metric.score(subject.trace, explanation, subject.loaded, subject.masks, params))
        check_metric_result(result, metric)
    except PluginError as exc:
        return FAIL, str(exc)
    except LVLMError as exc:  # a metric has no applies_to: refusing is how it says "not here"
        return NOT_APPLICABLE, f"refused: {exc}"
    return PASS, ""
