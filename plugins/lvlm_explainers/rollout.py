"""Attention rollout: attention propagated through the layers, with the residual path counted in.

Raw attention of one layer ignores that a token also reaches the next layer through the residual
stream, and that what it attends to is itself a mixture of earlier tokens. Rollout models both:
per decoder layer l, A_bar = mean over heads, A_hat = 0.5 A_bar + 0.5 I (the residual), rows
renormalised; rollout = A_hat_L ... A_hat_1. The map of the answer token at position p is row p-1
of the rollout at the image columns.

Memory: the product is accumulated inside forward hooks, layer by layer, so only one T x T
matrix is ever kept besides the layer being run (never all layers' attention). The pass uses eager
attention, which alone produces weights; the model's own implementation is restored afterwards.

Position prior: in a causal decoder the product favours early positions (each step mixes a row
with the rows before it), so the plain rollout map is mostly an "earlier is larger" ramp. On the
demo model it failed the model-randomisation sanity check: the trained model's map had a rank
correlation of 0.83 with a re-initialised model's, which is the bare ramp. By default
(``position_prior="divide"``) the map is divided by the rollout of a model that attends uniformly
over its causal prefix, through the same layers with the same residual mixing: the ramp cancels
and what remains is how much more than uniform the model routes to each image token. Set
``position_prior="keep"`` for the textbook rollout.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import torch

from lvlm_explainers.gradients import query_positions
from lvlm_studio.api import (
    Explainer,
    Explanation,
    InputError,
    Param,
    Progress,
    attention_implementation,
    image_tokens_reason,
    split_by_region,
)


def residual_attention(weights: torch.Tensor) -> torch.Tensor:
    """A_hat = rownorm(0.5 * mean_h A + 0.5 * I) for one layer's weights [heads, T, T]."""
    mixed = 0.5 * weights.float().mean(dim=0) + 0.5 * torch.eye(weights.shape[-1], device=weights.device)
    return mixed / mixed.sum(dim=-1, keepdim=True)


def uniform_rollout(length: int, layers: int, device: torch.device) -> torch.Tensor:
    """The rollout of ``layers`` layers that attend uniformly over the causal prefix."""
    causal = torch.tril(torch.ones(length, length, device=device))
    layer = residual_attention((causal / causal.sum(dim=-1, keepdim=True))[None])
    return torch.linalg.matrix_power(layer, layers)


class AttentionRollout(Explainer):
    id = "rollout"
    title = "Attention rollout"
    needs = frozenset({"model", "eager_attention"})
    params = (
        Param("start_layer", 0, "first decoder layer in the product (earlier layers count as identity); "
                                "negative counts from the end"),
        Param("position_prior", "divide", "divide by the rollout of uniform causal attention, or keep it",
              choices=("divide", "keep")),
    )

    def applies_to(self, model, params: dict[str, Any]) -> str | None:
        return image_tokens_reason(model, "attention rollout (over the decoder's self-attention)")

    def explain(self, trace, model, targets, params: dict[str, Any]):
        if model is None:
            raise InputError("attention rollout needs the model, not only a saved trace.", "Load the model first.")
        modules = model.adapter.attention_modules()
        start = params["start_layer"]
        if not -len(modules) <= start < len(modules):
            raise InputError(f"start_layer {start} does not exist.",
                             f"This model has decoder layers 0 to {len(modules) - 1}.")
        start %= len(modules)
        queries = query_positions(trace, targets)
        yield Progress(0, 1, "attention pass")
        inputs = trace.teacher_forced_inputs(model, upto=max(queries) + 1)
        running: dict[str, torch.Tensor] = {}  # the product of the layers run so far (one T x T)

        def multiply(module: torch.nn.Module, args: tuple, output: tuple) -> None:
            weights = output[1]
            if weights is None:
                raise RuntimeError("the attention module returned no weights; is the implementation eager?")
            layer = residual_attention(weights[0])
            running["rollout"] = layer @ running["rollout"].to(layer.device) if "rollout" in running else layer

        handles = [m.register_forward_hook(multiply) for m in modules[start:]]
        try:
            with torch.no_grad(), attention_implementation(model.model, "eager"):
                model.model(**inputs, use_cache=False, logits_to_keep=1)
        finally:
            for handle in handles:
                handle.remove()
        rollout = running["rollout"]
        image = torch.as_tensor(trace.image_positions, dtype=torch.long, device=rollout.device)
        query_index = torch.as_tensor(queries, device=rollout.device)
        rows = rollout[query_index][:, image]  # [Q, image tokens]
        if params["position_prior"] == "divide":
            prior = uniform_rollout(rollout.shape[-1], len(modules) - start, rollout.device)
            rows = rows / prior[query_index][:, image]
        grids = split_by_region(rows.double().cpu().numpy(), trace.regions)
        yield Progress(1, 1, "attention pass")
        maps = {t: [g[i] for g in grids] for i, t in enumerate(targets)}
        provenance = {
            "method": self.id,
            "attention": "eager for this pass (the model's default is restored afterwards)",
            "layers": f"{start} to {len(modules) - 1}",
            "position_prior": params["position_prior"],
            "model": model.describe(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return Explanation(self.id, maps, params, provenance)
