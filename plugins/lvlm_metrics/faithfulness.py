"""Deletion and insertion AUC as a metric plugin (``lvlm_studio.core.metrics.faithfulness`` does the work)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lvlm_studio.api import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_STEPS,
    InputError,
    Metric,
    MetricResult,
    Param,
    combined_map,
    deletion_insertion,
    visual_relevance,
)


class DeletionInsertion(Metric):
    """Blur what the map calls important (deletion, lower is better) or reveal it from a blurred
    image (insertion, higher is better), in equal steps, and measure the area under the score.

    ``score_on=relevant`` orders the image by the mean of the visually relevant tokens' maps and
    scores their mean probability (one pair of curves per answer); ``score_on=token`` scores each
    explained token's own map on that token, and averages the curves and areas over tokens.
    """

    id = "deletion_insertion"
    title = "Deletion / insertion AUC"
    needs = frozenset({"model"})
    directions = {"deletion_auc": "lower", "insertion_auc": "higher"}
    params = (
        Param("steps", DEFAULT_STEPS, "number of equal steps from 0 to all units", minimum=2, maximum=10_000),
        Param("space", "grid", "order grid cells or image pixels", choices=("grid", "pixels")),
        Param("score_on", "relevant", "the visually relevant tokens, or each map's own token",
              choices=("relevant", "token")),
        Param("normalise", False, "rescale curves to (s - s_blur) / (s_0 - s_blur)"),
        Param("batch_size", DEFAULT_BATCH_SIZE, "images per forward pass", minimum=1, maximum=1024),
    )

    def score(self, trace, explanation, model, masks, params: dict[str, Any]):
        if model is None:
            raise InputError("deletion/insertion needs the model.", "Load the model that produced the trace.")
        details: dict[str, Any] = {"score_on": params["score_on"], "space": params["space"]}
        if params["score_on"] == "token":
            orderings = [(explanation.maps[t], [t]) for t in explanation.targets]
        else:
            relevance = visual_relevance(trace, model)
            tokens = [t for t in relevance.relevant_indices if t in explanation.maps]
            if not tokens:
                tokens = explanation.targets
                details["fallback"] = "no explained token is visually relevant; scored on every explained token"
            orderings = [(combined_map([explanation.maps[t] for t in tokens]), tokens)]
        if not orderings or not orderings[0][1]:
            raise InputError("the explanation has no maps to score.", "Explain at least one answer token.")
        curves = yield from deletion_insertion(model, trace, orderings, params["steps"], params["space"],
                                               params["normalise"], params["batch_size"])
        fraction = curves[0].fraction
        # Normalised curves of a token the blur does not change are NaN (nothing to explain): left out.
        kept = [c for c in curves if np.isfinite(c.deletion).all()] or curves
        deletion = np.mean([c.deletion for c in kept], axis=0)
        insertion = np.mean([c.insertion for c in kept], axis=0)
        details["tokens"] = [c.tokens for c in curves]
        details["deletion_auc"] = [c.deletion_auc for c in curves]
        details["insertion_auc"] = [c.insertion_auc for c in curves]
        return MetricResult(
            values={"deletion_auc": float(np.mean([c.deletion_auc for c in kept])),
                    "insertion_auc": float(np.mean([c.insertion_auc for c in kept]))},
            curves={"deletion": (fraction, deletion), "insertion": (fraction, insertion)},
            details=details,
        )
