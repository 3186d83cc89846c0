"""Token Activation Map (TAM): logit-lens maps with context interference removed and denoised.

Reads only the Trace's cached last-layer hidden states, so it works whatever attention
implementation the model runs (SDPA, flash) and costs one matrix product for a whole answer.
What it computes is what the reference implementation (xmed-lab/TAM, ``TAM`` in tam.py) computes,
except for the first answer token (below); tests hold the two against each other. For the answer
token at position p with id k, with s_k[t] = max(0, W[k] . h[t]) the logit lens at position t:

1. Raw map: M_p = s_k at the image positions.
2. Context: the prompt's own text tokens (not BOS, role words, template separators or image
   tokens; ``prompt_text_positions``) and the earlier answer tokens. A prompt token is weighted by
   s_k read at its own position, an earlier answer token by s_k read at the position that
   predicted it (its position - 1). Position p - 1, which predicted token p, is never read.
3. Estimated causal inference: the context tokens other than those equal to token p contribute
   their own raw maps (class = their own id), weighted as above, to an interference map I; TAM
   subtracts its least-squares multiple, max(0, M_p - alpha I) with alpha = <M_p, I> / <I, I>.
   Maps and weights are >= 0, so alpha is never negative: context is never added back.
4. The image scores are min-max normalised jointly with the context's scores s_k (step 2).
5. A rank Gaussian filter denoises each grid (see ``rank_gaussian_filter``).

Values lie in [0, 1] of that joint scale. ``scale="joint"`` asks viewers to draw every token's map
on it (fixed colour levels [0, 1], ``provenance["levels"]``), as the reference draws them, so a
token whose image scores are weak against its text scores looks dim; the default draws each map on
its own range, like every other method's.

The first answer token: the reference explains it with the class predicted at the first prompt
text position (its ``round 0`` returns that map; the context entry it keeps for the first answer
token uses the id of the template token before the answer, and the one for the first prompt token
the class predicted there). Here every token, answer or prompt, is taken with its own id.
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from typing import Any

import numpy as np

from lvlm_studio.api import (
    Explainer,
    Explanation,
    InputError,
    Param,
    image_tokens_reason,
    prompt_text_positions,
    split_by_region,
)


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
              "remove the interference of the prompt text and earlier answer tokens (estimated causal inference)"),
        Param("rank_filter", True, "denoise with the rank Gaussian filter"),
        Param("scale", "token", "draw each token's map on its own range (token), or every map on the joint "
              "image-and-text scale [0, 1] as the reference draws them (joint)", choices=("token", "joint")),
    )

    def applies_to(self, model, params: dict[str, Any]) -> str | None:
        return image_tokens_reason(model, "TAM (a logit lens at the image positions)")

    def explain(self, trace, model, targets, params: dict[str, Any]) -> Explanation:
        head = _lm_head_weight(trace, model)
        hidden = trace.hidden.astype(np.float64)
        ids = trace.sequence_ids
        image = trace.image_positions
        start = trace.answer_start
        prompt = prompt_text_positions(trace, model.processor.tokenizer)
        positions = [trace.answer_position(t) for t in targets]
        # Logit lens at every position for every class needed: the explained tokens' ids and those
        # of their context (the prompt text and the answer before the last explained token).
        needed = np.concatenate([ids[positions], ids[prompt], ids[start : max(positions, default=start)]])
        classes = np.unique(needed)
        logits = np.maximum(hidden @ head[classes].T, 0.0)  # [positions, classes]
        column = {int(c): i for i, c in enumerate(classes)}

        maps: dict[int, list[np.ndarray]] = {}
        for target, p in zip(targets, positions):
            k = column[int(ids[p])]
            raw = logits[image, k]
            # Context: the prompt's text tokens, each scored for class k where it stands, and the
            # earlier answer tokens, each scored where it was predicted (one position before it).
            # Position p - 1, which predicted token p itself, is never read.
            earlier = np.arange(start, p)
            context = np.concatenate([prompt, earlier])
            scored_at = np.concatenate([prompt, earlier - 1])
            if p - 1 in scored_at:  # a template that ends with the prompt: its last token at p - 1
                context, scored_at = context[scored_at != p - 1], scored_at[scored_at != p - 1]
            scores = logits[scored_at, k]
            if params["context_subtraction"]:
                raw = _subtract_context(raw, logits[np.ix_(image, [column[int(ids[t])] for t in context])],
                                        scores, ids[context] != ids[p])
            joint = np.concatenate([raw, scores])
            low, high = joint.min(), joint.max()
            scaled = (raw - low) / (high - low) if high > low else np.zeros_like(raw)
            grids = split_by_region(scaled, trace.regions)
            maps[target] = [rank_gaussian_filter(g) if params["rank_filter"] else g for g in grids]
        provenance = {
            "method": self.id,
            "inputs": "cached last-layer hidden states; no extra forward pass",
            "prompt_tokens": [trace.token_strings[int(t)] for t in prompt if int(t) < len(trace.token_strings)],
            "model": trace.model_info,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if params["scale"] == "joint":
            provenance["levels"] = [0.0, 1.0]
        return Explanation(self.id, maps, params, provenance)


def _subtract_context(raw: np.ndarray, context_maps: np.ndarray, scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """TAM's estimated causal inference: ``raw`` minus the least-squares multiple of the context
    tokens' own maps (``context_maps``, [image, context]) weighted by their ``scores`` for the
    explained class; context tokens equal to the explained one (``keep`` False) are left out.

    Maps and scores are >= 0, so the fitted scale <raw, I> / <I, I> is never negative (context is
    never added back); the weights' normalisation cancels in that fit.
    """
    interference = context_maps[:, keep] @ scores[keep]
    norm = float(interference @ interference)
    if norm <= 0:
        return raw
    alpha = float(raw @ interference) / norm
    return np.maximum(raw - alpha * interference, 0.0)


def _lm_head_weight(trace, model) -> np.ndarray:
    if model is None:
        raise InputError("TAM needs the model's output layer (LM head) to read the hidden states.",
                         "Load the model that produced this trace.")
    weight = model.adapter.lm_head_weight()
    return weight.float().cpu().numpy().astype(np.float64)
