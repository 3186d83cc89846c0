"""Does the causal token subset matter more than a random one? Checked on held-out demo scenes.

For each held-out scene the demo model captions it ("describe the image."); the token to explain
is the answer's most visually relevant one (largest log-likelihood ratio against the blurred image
among the relevant tokens; the largest LLR overall when none is relevant). The ``causal`` explainer
learns its subset and validates it: the drop in that token's probability when the subset's patches
are blurred, against the mean drop for random subsets of the same size. The summary counts the
scenes where the subset beats, ties with (within ``TIE_TOLERANCE``, compared in log-odds) or
loses to random, and those where the graph linked no image token to the target (an empty subset).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvlm_studio.core.plugin.jobs import Job, Progress, run_job
from lvlm_studio.core.tracing.relevance import visual_relevance
from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
from lvlm_studio.demo.scenes import make_scene

PROMPT = "describe the image."


@dataclass
class CausalCheck:
    scenes: int
    outcomes: dict[str, int]  # beats / ties / loses / empty -> scenes
    subset_drops: list[float] = field(default_factory=list)
    random_drops: list[float] = field(default_factory=list)
    subset_log_drops: list[float] = field(default_factory=list)  # drops in log-odds
    random_log_drops: list[float] = field(default_factory=list)
    subset_sizes: list[int] = field(default_factory=list)

    @property
    def beats_fraction(self) -> float:
        return self.outcomes.get("beats", 0) / self.scenes if self.scenes else float("nan")


def explained_token(trace: Any, loaded: Any) -> int:
    """The answer token with the largest LLR among the visually relevant ones (or overall)."""
    relevance = visual_relevance(trace, loaded)
    llr = relevance.llr.astype(np.float64)
    return int(np.argmax(np.where(relevance.relevant, llr, -np.inf)) if relevance.relevant.any() else np.argmax(llr))


def causal_check(loaded: Any, n: int = 100, registry: Any = None, params: dict[str, Any] | None = None,
                 first_seed: int = HELDOUT_SEED_BASE) -> Job[CausalCheck]:
    """Run the causal explainer on ``n`` held-out scenes; a job yielding once per scene."""
    if registry is None:
        from lvlm_studio.core.plugin.registry import create_registry

        registry = create_registry()
    from lvlm_studio.core.tracing.trace import generate_trace

    explainer = registry.explainer("causal")
    resolved = explainer.resolve_params(params or {})
    result = CausalCheck(0, {"beats": 0, "ties": 0, "loses": 0, "empty": 0})
    for i in range(n):
        yield Progress(i, n, f"scene {i + 1} of {n}")
        trace = generate_trace(loaded, make_scene(first_seed + i).image, PROMPT)
        if len(trace.answer_ids) == 0:
            continue
        token = explained_token(trace, loaded)
        explanation = run_job(explainer.explain(trace, loaded, [token], resolved))
        found = explanation.provenance["tokens"][str(token)]
        result.scenes += 1
        result.outcomes[found["outcome"]] += 1
        result.subset_drops.append(found["subset_drop"])
        result.random_drops.append(found["random_drop"])
        result.subset_log_drops.append(found.get("subset_log_odds_drop", 0.0))
        result.random_log_drops.append(found.get("random_log_odds_drop", 0.0))
        result.subset_sizes.append(len(found["subset"]))
    yield Progress(n, n, "done")
    return result


def format_check(check: CausalCheck) -> str:
    """A short plain-text report of a ``CausalCheck``."""
    def share(key: str) -> str:
        return f"{check.outcomes.get(key, 0)}/{check.scenes} ({check.outcomes.get(key, 0) / max(check.scenes, 1):.1%})"

    sizes = np.asarray(check.subset_sizes or [0])
    return "\n".join([
        f"Causal subset vs random subset of the same size, {check.scenes} held-out demo scenes, prompt {PROMPT!r}",
        f"beats random: {share('beats')}",
        f"ties:         {share('ties')}",
        f"loses:        {share('loses')}",
        f"empty subset: {share('empty')}",
        f"mean probability drop: subset {np.mean(check.subset_drops or [0]):.4f}, "
        f"random {np.mean(check.random_drops or [0]):.4f}",
        f"median drop in log-odds: subset {np.median(check.subset_log_drops or [0]):.2e}, "
        f"random {np.median(check.random_log_drops or [0]):.2e}",
        f"median size of the change in log-odds (either direction): subset "
        f"{np.median(np.abs(check.subset_log_drops or [0])):.2e}, "
        f"random {np.median(np.abs(check.random_log_drops or [0])):.2e}",
        f"subset size: mean {sizes.mean():.2f}, max {int(sizes.max())}",
    ]) + "\n"
