"""Token Activation Map (TAM): logit-lens maps with context interference removed and denoised.

Reads only the Trace's cached last-layer hidden states, so it works whatever attention
implementation the model runs (SDPA, flash) and costs one matrix product for a whole answer.

1. Raw map of the token at position p with id k: max(0, W[k] . h[j]) over image positions j.
2. Estimated causal inference: earlier text tokens (prompt and previous answer tokens, other than
   token p itself) also light up image regions for their own ids. Their maps, weighted by how
   strongly each scores for class k, form an interference map I, which is subtracted after a
   least-squares fit of its scale alpha (clamped at 0 by default, so context is never added).
3. Image and text scores are min-max normalised jointly (the token itself is not among the text).
4. A rank Gaussian filter denoises the grid (see ``rank_gaussian_filter``).

The public reference implementation returns the first *prompt* token's map for the first answer
token; here answer token i is always read at its own position (the class is its id, and the
logit lens is applied to h[j] at image positions, so no off-by-one can arise).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from lvlm_studio.core.capture import split_by_region
from lvlm_studio.core.contracts import Explainer, Param
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.explanation import Explanation

RANK_OFFSETS = np.arange(-4, 5)  # rank offsets around the median of a 3x3 window


def rank_gaussian_filter(grid: np.ndarray) -> np.ndarray:
    """Denoise a 2-D map by a Gaussian over the ranks of each cell's 3x3 window (reflect padding).

    For each window, sorted ascending: mu = mean, sigma = std / mu (coefficient of variation).
    Weights over rank offsets a = -4..4 are exp(-a^2 / (2 sigma^2)), normalised. A calm window
    (small sigma) returns about its median, a busy one about its mean. Windows with mu <= 0 give 0;
    a constant positive window (sigma = 0) gives the constant (where the reference divides by zero).
    """
    grid = np.asarray(grid, dtype=np.float64)
    padded = np.pad(grid, 1, mode="reflect") if min(grid.shape) > 1 else np.pad(grid, 1, mode="edge")
    windows = np.sort(sliding_window_view(padded, (3, 3)).reshape(*grid.shape, 9), axis=-1)
    mu = windows.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = windows.std(axis=-1) / mu
    flat = sigma <= 0
    safe_sigma = np.where(flat | ~np.isfinite(sigma), 1.0, sigma)
    weights = np.exp(-(RANK_OFFSETS**2) / (2 * safe_sigma[..., None] ** 2))
    weights /= weights.sum(axis=-1, keepdims=True)
    out = (windows * weights).sum(axis=-1)
    out = np.where(flat, windows[..., 4], out)  # sigma = 0: the constant (= median)
    return np.where(mu > 0, out, 0.0)


class TokenActivationMap(Explainer):
    id = "tam"
    title = "Token Activation Map"
    needs = frozenset({"model"})  # only its LM head: no forward pass, any attention implementation
    params = (
        Param("context_subtraction", True,
              "remove the interference of earlier text tokens (estimated causal inference)"),
        Param("clamp_alpha", True, "never add context back (clamp the least-squares scale at 0)"),
        Param("rank_filter", True, "denoise with the rank Gaussian filter"),
    )

    def explain(self, trace, model, targets, params: dict[str, Any]) -> Explanation:
        head = _lm_head_weight(trace, model)
        hidden = trace.hidden.astype(np.float64)
        ids = trace.sequence_ids
        image = trace.image_positions
        is_image = np.zeros(len(ids), dtype=bool)
        is_image[image] = True
        positions = [trace.answer_position(t) for t in targets]
        # Logit lens at every position for every class we need: targets and all text tokens.
        classes = np.unique(ids[~is_image])
        logits = np.maximum(hidden @ head[classes].T, 0.0)  # [positions, classes]
        column = {int(c): i for i, c in enumerate(classes)}

        maps: dict[int, list[np.ndarray]] = {}
        for target, p in zip(targets, positions):
            k = column[int(ids[p])]
            raw = logits[image, k]
            text = np.flatnonzero(~is_image[:p])  # earlier text positions
            if params["context_subtraction"]:
                raw = _subtract_context(raw, logits, image, text, ids, p, k, column, params["clamp_alpha"])
            joint = np.concatenate([raw, logits[text, k]])
            low, high = joint.min(), joint.max()
            scaled = (raw - low) / (high - low) if high > low else np.zeros_like(raw)
            grids = split_by_region(scaled, trace.regions)
            maps[target] = [rank_gaussian_filter(g) if params["rank_filter"] else g for g in grids]
        provenance = {
            "method": self.id,
            "inputs": "cached last-layer hidden states; no extra forward pass",
            "model": trace.model_info,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return Explanation(self.id, maps, params, provenance)


def _subtract_context(raw, logits, image, text, ids, p, k, column, clamp: bool) -> np.ndarray:
    """TAM's estimated causal inference for the token at position p (class column k)."""
    context = text[ids[text] != ids[p]]
    scores = logits[context, k]
    if len(context) == 0 or scores.sum() <= 0:
        return raw
    weights = scores / scores.sum()
    own_maps = logits[np.ix_(image, [column[int(ids[t])] for t in context])]  # [image, context]
    interference = own_maps @ weights
    norm = float(interference @ interference)
    if norm <= 0:
        return raw
    alpha = float(raw @ interference) / norm
    if clamp:
        alpha = max(0.0, alpha)
    return np.maximum(raw - alpha * interference, 0.0)


def _lm_head_weight(trace, model) -> np.ndarray:
    if model is None:
        raise InputError("TAM needs the model's output layer (LM head) to read the hidden states.",
                         "Load the model that produced this trace.")
    weight = model.adapter.lm_head().weight.detach()
    return weight.float().cpu().numpy().astype(np.float64)
