"""What the first-party studies share: answering a question, explaining tokens, interval columns."""

from __future__ import annotations

from typing import Any

import numpy as np

from lvlm_studio.api import Param, bootstrap_interval, explain_job, generate_trace, require_applicable

#: The parameters most studies share: how many of a sample's questions to ask, and the longest answer.
QUESTIONS = Param("questions", 1, "questions asked per sample (0: all of them)", minimum=0)
MAX_NEW_TOKENS = Param("max_new_tokens", 16, "longest answer", minimum=1)


def asked(sample: Any, params: dict[str, Any]) -> list[Any]:
    """The sample's questions that ``params["questions"]`` picks (the first N; 0: all of them)."""
    return list(sample.questions) if params["questions"] == 0 else list(sample.questions[: params["questions"]])


def answer(model: Any, sample: Any, question: Any, max_new_tokens: int) -> Any:
    """The model's greedy answer (a Trace) to one question about the sample's image."""
    return generate_trace(model, sample.image, question.text, max_new_tokens=max_new_tokens)


def explain(context: Any, method: str, trace: Any, model: Any, targets: list[int]):
    """A job: the explanation of ``targets`` by ``method`` with its default parameters."""
    explainer = context.registry.explainer(method)
    params = explainer.resolve_params({})
    require_applicable(explainer, model, params)
    return (yield from explain_job(explainer, trace, model, targets, params))


def mean_with_interval(values: list[float], seed: int = 0) -> dict[str, float]:
    """{"mean", "ci_low", "ci_high"}: the mean of the finite values and its 95% bootstrap interval."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    low, high = bootstrap_interval(finite, seed=seed)
    return {"mean": float(np.mean(finite)) if finite else float("nan"), "ci_low": low, "ci_high": high}


def by(rows: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    """Rows grouped by the values of ``keys``, groups in first-seen order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return groups


def error_bars(ax: Any, labels: list[str], means: list[float], lows: list[float], highs: list[float],
               ylabel: str, title: str, colour: str = "#4c72b0") -> None:
    """Bars with 95% interval whiskers on ``ax``."""
    x = np.arange(len(labels))
    means_a = np.asarray(means, dtype=float)
    below = np.clip(means_a - np.asarray(lows, dtype=float), 0, None)
    above = np.clip(np.asarray(highs, dtype=float) - means_a, 0, None)
    ax.bar(x, np.nan_to_num(means_a), color=colour, yerr=[np.nan_to_num(below), np.nan_to_num(above)], capsize=4)
    ax.set_xticks(x, labels, rotation=30 if max((len(s) for s in labels), default=0) > 8 else 0, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
