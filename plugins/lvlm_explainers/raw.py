"""Raw attention: how much the query that predicts a token attends to each image token.

Optional attention-sink filter: a few image tokens (often at the borders) draw attention from
almost every query whatever is asked, and swamp the map. With ``sink_filter`` on, the keys whose
mean received attention (over all queries of the trace, and the chosen layers and heads) is a
robust outlier are dropped and the map is renormalised to sum to 1 over the remaining keys.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from lvlm_studio.api import (
    Explainer,
    Explanation,
    InputError,
    Param,
    Progress,
    capture_attention,
    capture_attention_and_key_means,
    split_by_region,
)


class RawAttention(Explainer):
    """A_l[h, p-1, image] on the grid, aggregated over the chosen layers and heads.

    Where the image enters by cross-attention (Mllama), the layers are the cross-attention layers
    and the keys their vision tokens; ``layers`` then counts cross-attention layers.

    The answer token at position p is predicted from position p-1, so that row is read. Heads that
    share keys and values (grouped-query attention) are reduced within their group first, then
    across groups; with "mean" this equals the plain mean over heads.
    """

    id = "raw_attention"
    title = "Raw attention"
    needs = frozenset({"model", "eager_attention"})
    params = (
        Param("layers", (), "decoder layers to use, e.g. 0,1 (empty: all); negative counts from the end"),
        Param("heads", (), "attention heads to use (empty: all)"),
        Param("reduce", "mean", "how heads and layers are combined", choices=("mean", "max")),
        Param("sink_filter", False, "drop attention-sink image tokens (outliers over all queries), renormalise"),
        Param("sink_threshold", 10.0, "with sink_filter: a key is a sink above median + this many robust "
              "standard deviations (1.4826 x MAD) of the keys' mean received attention", minimum=0.0),
    )

    def explain(self, trace, model, targets, params: dict[str, Any]):
        if model is None:
            raise InputError("raw attention needs the model, not only a saved trace.", "Load the model first.")
        yield Progress(0, 1, "attention pass")
        queries = [trace.answer_position(t) - 1 for t in targets]
        if params["sink_filter"]:
            # Over the whole trace, so that which keys are sinks does not depend on the targets.
            inputs = trace.teacher_forced_inputs(model)
            weights, received = capture_attention_and_key_means(model, inputs, queries, trace.image_positions)
        else:
            inputs = trace.teacher_forced_inputs(model, upto=max(queries) + 1)
            weights = capture_attention(model, inputs, queries, trace.image_positions)  # [L, H, Q, K]
        layers = _select(params["layers"], weights.shape[0], "layer")
        heads = _select(params["heads"], weights.shape[1], "head")
        weights = weights[layers][:, heads]
        reduce = np.mean if params["reduce"] == "mean" else np.max
        groups = _kv_groups(model, heads)
        per_group = np.stack([reduce(weights[:, g], axis=1) for g in groups], axis=1)  # [L, G, Q, K]
        combined = reduce(reduce(per_group, axis=1), axis=0)  # [Q, K]
        if params["sink_filter"]:
            sinks = attention_sinks(received[layers][:, heads].mean(axis=(0, 1)), params["sink_threshold"])
            combined = renormalise_without(combined, sinks)
        grids = split_by_region(combined, trace.regions)
        yield Progress(1, 1, "attention pass")
        maps = {t: [g[i] for g in grids] for i, t in enumerate(targets)}
        provenance = {
            "method": self.id,
            "attention": "eager for this pass (the model's default is restored afterwards)",
            "layers": ("the decoder's cross-attention layers (the image enters there)"
                       if model.adapter.image_entry == "cross_attention" else "the decoder's self-attention layers"),
            "model": model.describe(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if params["sink_filter"]:
            provenance["sink_keys"] = [int(i) for i in np.flatnonzero(sinks)]  # into trace.image_positions
        return Explanation(self.id, maps, params, provenance)


def attention_sinks(received: np.ndarray, threshold: float) -> np.ndarray:
    """Which keys are sinks: mean received attention above median + threshold x 1.4826 x MAD.

    Median and MAD (median absolute deviation, scaled to a standard deviation for normal data)
    are not dragged up by the sinks themselves, as a mean and a standard deviation would be. At
    least half of the keys lie at or below the median, so a map never loses every key.
    """
    median = np.median(received)
    spread = 1.4826 * np.median(np.abs(received - median))
    return received > median + threshold * spread


def renormalise_without(combined: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """Zero the dropped keys of each row [Q, K] and rescale the rest to sum to 1 (all-zero rows stay)."""
    kept = np.where(dropped, 0.0, combined)
    totals = kept.sum(axis=-1, keepdims=True)
    return np.divide(kept, totals, out=np.zeros_like(kept), where=totals > 0)


def _select(chosen: tuple[int, ...], available: int, what: str) -> list[int]:
    if not chosen:
        return list(range(available))
    bad = [i for i in chosen if not -available <= i < available]
    if bad:
        raise InputError(f"{what} {bad[0]} does not exist.", f"This model has {what}s 0 to {available - 1}.")
    return sorted({i % available for i in chosen})


def _kv_groups(model, heads: list[int]) -> list[list[int]]:
    """Indices (into ``heads``) grouped by the key/value head they share."""
    config = model.model.config.get_text_config()
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    per_group = max(1, n_heads // n_kv)
    groups: dict[int, list[int]] = {}
    for index, head in enumerate(heads):
        groups.setdefault(head // per_group, []).append(index)
    return list(groups.values())
