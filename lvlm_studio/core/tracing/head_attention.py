"""Per layer and head: how much of the attention that predicts each answer token lands on the image.

The attention-grid panel shows, for the selected token, a layers x heads heatmap of this mass, and
clicking a cell shows that one head's map. Both come from one eager teacher-forced pass that keeps
only the rows of the queries that predict answer tokens (``capture_attention``), so the result is
layers x heads x answer tokens x image tokens, never T x T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.capture import capture_attention, split_by_region
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.jobs import Job, Progress

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.tracing.trace import Trace


@dataclass
class HeadAttention:
    """``weights[l, h, t, k]``: attention of the query predicting answer token t (in layer l, head
    h) to image token k (``trace.image_positions`` order)."""

    weights: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads)."""
        return int(self.weights.shape[0]), int(self.weights.shape[1])

    def image_mass(self, token: int) -> np.ndarray:
        """[layers, heads]: the share of token ``token``'s attention that falls on image tokens
        (each row of attention sums to 1 over all keys, so this lies in [0, 1])."""
        self._check_token(token)
        return self.weights[:, :, token].sum(axis=-1)

    def head_explanation(self, trace: Trace, layer: int, head: int) -> Explanation:
        """One head's attention as an ordinary explanation (every answer token), so every view that
        draws maps can draw it."""
        layers, heads = self.shape
        if not (0 <= layer < layers and 0 <= head < heads):
            raise InputError(f"layer {layer}, head {head} does not exist.",
                             f"This model has layers 0 to {layers - 1} and heads 0 to {heads - 1}.")
        grids = split_by_region(self.weights[layer, head], trace.regions)  # each [tokens, rows, cols]
        maps = {t: [g[t] for g in grids] for t in range(self.weights.shape[2])}
        return Explanation(head_method_id(layer, head), maps, {"layer": layer, "head": head},
                           {"method": f"attention of layer {layer}, head {head}", "layer": layer, "head": head})

    def _check_token(self, token: int) -> None:
        if not 0 <= token < self.weights.shape[2]:
            raise InputError(f"answer token {token} does not exist.",
                             f"This answer has tokens 0 to {self.weights.shape[2] - 1}.")


def head_method_id(layer: int, head: int) -> str:
    """The name one head's map goes by among a trace's explanations."""
    return f"head:L{layer}.H{head}"


def head_attention(trace: Trace, loaded: LoadedModel | None) -> Job[HeadAttention]:
    """One eager pass over prompt + answer; yields progress before and after it (cancellable)."""
    if loaded is None:
        raise InputError("the attention grid needs the model, not only a saved trace.", "Load the model first.")
    if not len(trace.answer_ids):
        raise InputError("the answer is empty.", "Ask again; there is no token to look at.")
    yield Progress(0, 1, "attention pass")
    queries = [trace.answer_position(t) - 1 for t in range(len(trace.answer_ids))]
    inputs = trace.teacher_forced_inputs(loaded, upto=max(queries) + 1)
    weights = capture_attention(loaded, inputs, queries, trace.image_positions)
    yield Progress(1, 1, "attention pass")
    return HeadAttention(weights)
