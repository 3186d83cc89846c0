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

import functools
from datetime import datetime, timezone
from typing import Any

import numpy as np

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.capture import split_by_region
from lvlm_studio.core.plugin.contracts import Explainer, Param, image_tokens_reason
from lvlm_studio.core.plugin.explanation import Explanation


@functools.lru_cache(maxsize=64)
def _window_indices(rows: int, cols: int) -> np.ndarray:
    """Flat indices of every cell's 3x3 window with reflect padding, [rows * cols, 9] (cached:
    one gather then replaces padding and a sliding-window copy)."""

    def reflect(index: np.ndarray, size: int) -> np.ndarray:
        if size == 1:
            return np.zeros_like(index)
        index = np.abs(index)  # -1 -> 1
        return np.where(index >= size, 2 * (size - 1) - index, index)  # size -> size - 2

    ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    columns = [reflect(ys + dy, rows) * cols + reflect(xs + dx, cols) for dy, dx in offsets]
    return np.stack([c.ravel() for c in columns], axis=1)


def rank_gaussian_filter(grids: np.ndarray) -> np.ndarray:
    """Denoise 2-D maps (shape [..., rows, cols]) by a Gaussian over the ranks of each cell's 3x3
    window (reflect padding).

    For each window, sorted ascending: mu = mean, sigma = std / mu (coefficient of variation).
    Weights over rank offsets a = -4..4 are exp(-a^2 / (2 sigma^2)), normalised. A calm window
    (small sigma) returns about its median, a busy one about its mean. Windows with mu <= 0 give 0;
    a constant positive window (sigma = 0) gives the constant (where the reference divides by zero).
    The weights are symmetric in a, so one exp per window gives all of them (w_a = e^(a^2)).
    """
    grids = np.asarray(grids, dtype=np.float64)
    *lead, rows, cols = grids.shape
    flat = grids.reshape(-1, rows * cols)
    windows = np.sort(flat[:, _window_indices(rows, cols)], axis=-1)  # [maps, cells, 9]
    mu = windows.mean(axis=-1)
    variance = np.maximum((windows * windows).mean(axis=-1) - mu * mu, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e1 = np.exp(-np.where(variance > 0, mu * mu / (2 * variance), np.inf))  # exp(-1 / (2 sigma^2))
    e4 = e1**4
    e9 = e4 * e4 * e1
    e16 = e4 * e4 * e4 * e4
    w = windows
    weighted = (w[..., 4] + (w[..., 3] + w[..., 5]) * e1 + (w[..., 2] + w[..., 6]) * e4
                + (w[..., 1] + w[..., 7]) * e9 + (w[..., 0] + w[..., 8]) * e16)
    out = weighted / (1 + 2 * (e1 + e4 + e9 + e16))
    return np.where(mu > 0, out, 0.0).reshape(*lead, rows, cols)


def rank_gaussian_filter_loop(grid: np.ndarray) -> np.ndarray:
    """The same filter one cell at a time, written as plainly as METHODS.md states it: the
    reference that ``rank_gaussian_filter`` must match (tests) and outpace (benchmarks)."""
    padded = np.pad(grid, 1, mode="reflect")
    out = np.zeros(grid.shape)
    for y in range(grid.shape[0]):
        for x in range(grid.shape[1]):
            window = np.sort(padded[y : y + 3, x : x + 3].ravel())
            mu = window.mean()
            if mu <= 0:
                continue
            sigma = window.std() / mu
            if sigma == 0:
                out[y, x] = window[4]
                continue
            weights = np.exp(-(np.arange(-4, 5) ** 2) / (2 * sigma**2))
            out[y, x] = (window * weights).sum() / weights.sum()
    return out


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

    def applies_to(self, model, params: dict[str, Any]) -> str | None:
        return image_tokens_reason(model, "TAM (a logit lens at the image positions)")

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
    weight = model.adapter.lm_head_weight()
    return weight.float().cpu().numpy().astype(np.float64)
