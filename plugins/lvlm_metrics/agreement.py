"""Agreement with another method as a metric plugin, and the "defer to a human" flag."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from lvlm_studio.api import (
    MIN_RANK_CORRELATION,
    MIN_TOP_K_OVERLAP,
    InputError,
    Metric,
    MetricResult,
    Param,
    agreement,
    explain_job,
    flatten,
    require_applicable,
)


class MethodAgreement(Metric):
    """Explain the same tokens with another method and compare the maps token by token: Spearman
    rank correlation, top-k overlap, and the share of tokens whose grounding is inconsistent.

    It declares no better direction: agreeing with another method says two methods are alike, not
    that either is right. Comparing a method with itself says nothing, and is refused.
    """

    id = "agreement"
    title = "Agreement with another method"
    needs = frozenset({"model"})
    params = (
        Param("other", "tam", "id of the method to compare with"),
        Param("k_fraction", 0.1, "top-k overlap over this fraction of the cells", minimum=0.0, maximum=1.0),
        Param("min_rank_correlation", MIN_RANK_CORRELATION, "below this rho the grounding is inconsistent",
              minimum=-1.0, maximum=1.0),
        Param("min_top_k_overlap", MIN_TOP_K_OVERLAP, "below this overlap the grounding is inconsistent",
              minimum=0.0, maximum=1.0),
    )

    def score(self, trace, explanation, model, masks, params: dict[str, Any]):
        from lvlm_studio.api import create_registry

        if params["other"] == explanation.method:
            raise InputError(f"agreement needs two methods: these maps are by {explanation.method}, the method it "
                             "would compare them with.",
                             "Score another method's maps with it, or set its parameter `other` to another method.")
        other = create_registry().explainer(params["other"])
        if other.needs and model is None:
            raise InputError(f"{other.id} needs the model.", "Load the model that produced the trace.")
        other_params = other.resolve_params({})
        require_applicable(other, model, other_params)  # e.g. TAM on Mllama: say so, do not fail inside it
        targets = explanation.targets
        theirs = yield from explain_job(other, trace, model, targets, other_params)
        per_token = {}
        for t in targets:
            a, b = flatten(explanation.maps[t]), flatten(theirs.maps[t])
            k = max(1, round(params["k_fraction"] * a.size))
            per_token[str(t)] = agreement(a, b, k, params["min_rank_correlation"], params["min_top_k_overlap"])
        rhos = [a.rank_correlation for a in per_token.values()]
        return MetricResult(
            values={"rank_correlation": float(np.nanmean(rhos)) if np.isfinite(rhos).any() else float("nan"),
                    "top_k_overlap": float(np.mean([a.top_k_overlap for a in per_token.values()])),
                    "inconsistent": float(np.mean([a.inconsistent for a in per_token.values()]))},
            details={"other": other.id, "per_token": {t: asdict(a) for t, a in per_token.items()}},
        )
