"""Gradient baselines on the image features the language model reads: Grad x Input and Grad-CAM.

The "features" are the input embeddings of the decoder at the image positions: the projector's
output, placed where the image tokens were. They are the last point where the image is still a grid
of separate tokens and the first the language model sees, so both methods explain the answer in
terms of what the decoder was given, not of the vision tower's internals.

Both methods run one teacher-forced forward over prompt + answer and one backward per target token
(the graph is kept between backwards), yielding progress after each so a long answer can be
cancelled. Gradients are taken with ``torch.autograd.grad`` with respect to a detached copy of the
decoder's input embeddings: the model's parameters never receive a ``.grad``, and the methods work
even when the weights are frozen (``requires_grad=False``).

The score differentiated is, by default, the log-probability of the target token at the position
that predicts it (p - 1); the raw logit is offered as well. The log-probability also accounts for
the competing tokens, which is what "why this token rather than another" asks. It is computed as
logsigmoid of the log-odds (``lvlm_studio.core.tracing.scores``), not with float32 log_softmax: for a token
the model is sure of (p = 1 - 1e-11, a caption's "a") log_softmax rounds log p to 0 and its
gradient loses the 1 - p term, which left such maps uncorrelated with the true gradient. The
gradient of log p equals that of the log-odds times 1 - p, so the maps are the log-odds maps up to
scale: small numbers for confident tokens, with the right shape.

With ``contrast`` (a token id) both differentiate the target's logit minus the alternative's
("why this token rather than that one"), whichever ``score`` is chosen: the difference of the two
log-probabilities is the same number. Grad x input of it is grad x input of the target's logit minus
that of the alternative's (the gradient is linear); Grad-CAM's relu makes it no such difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from lvlm_studio.api import (
    CONTRAST,
    Explainer,
    Explanation,
    InputError,
    Param,
    Progress,
    contrast_token,
    image_tokens_reason,
    log_probability,
    logit_difference,
    split_by_region,
)

SCORES = ("logprob", "logit")


@contextmanager
def differentiable_decoder_inputs(loaded) -> Iterator[list[torch.Tensor]]:
    """Make the embeddings entering the decoder a leaf that requires gradients, for one block.

    A forward pre-hook on the language model swaps its ``inputs_embeds`` for a detached copy with
    ``requires_grad``; the list yielded holds that copy once a forward has run. Everything after it
    (the decoder and the LM head) is then differentiable, whatever the parameters' flags.
    """
    leaves: list[torch.Tensor] = []

    def swap(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise RuntimeError("the language model was called without inputs_embeds; cannot differentiate them")
        leaf = embeds.detach().requires_grad_(True)
        leaves.append(leaf)
        return args, {**kwargs, "inputs_embeds": leaf}

    handle = loaded.adapter.language_model().register_forward_pre_hook(swap, with_kwargs=True)
    try:
        yield leaves
    finally:
        handle.remove()


def target_scores(logits: torch.Tensor, token_ids: list[int], kind: str, contrast: int | None = None) -> torch.Tensor:
    """The score of each target: ``logits`` [Q, vocab] are the rows that predict the targets.

    With ``contrast`` (a token id) the score is the target's logit minus the alternative's, whatever
    ``kind`` says: the same as the difference of their log-probabilities.
    """
    ids = torch.as_tensor(token_ids, device=logits.device).long()
    if contrast is not None:
        return logit_difference(logits, ids, contrast)
    if kind == "logprob":
        return log_probability(logits, ids)
    rows = torch.arange(len(token_ids), device=logits.device)
    return logits[rows, ids].to(torch.promote_types(logits.dtype, torch.float32))


def query_positions(trace, targets: list[int]) -> list[int]:
    """The position that predicts each target (p - 1), checking the targets exist."""
    if not targets:
        raise InputError("no answer tokens were chosen to explain.", "Pick at least one answer token.")
    return [trace.answer_position(t) - 1 for t in targets]


class _ImageFeatureGradients(Explainer):
    """One forward, one backward per target; subclasses turn (gradient, features) into a map."""

    needs = frozenset({"model", "gradients"})

    def applies_to(self, model, params: dict[str, Any]) -> str | None:
        return image_tokens_reason(model, f"{self.title} (on the decoder's input embeddings at the image positions)")

    def per_target(self, params: dict[str, Any]) -> bool:
        return True  # one backward pass per token: the selected token's map comes first in the app

    def explain(self, trace, model, targets, params: dict[str, Any]):
        if model is None:
            raise InputError(f"{self.title} needs the model, not only a saved trace.", "Load the model first.")
        queries = query_positions(trace, targets)
        image = torch.as_tensor(trace.image_positions, dtype=torch.long)
        yield Progress(0, len(targets) + 1, "forward pass")
        inputs = trace.teacher_forced_inputs(model, upto=max(queries) + 1)
        with torch.enable_grad(), differentiable_decoder_inputs(model) as leaves:
            logits = model.model(**inputs, use_cache=False, logits_to_keep=torch.tensor(queries)).logits[0]
        embeds = leaves[-1]
        ids = [int(trace.answer_ids[t]) for t in targets]
        alternative = contrast_token(params)
        scores = target_scores(logits, ids, params["score"], alternative)
        features = embeds.detach()[0, image.to(embeds.device)].float()  # [image tokens, hidden]
        maps: dict[int, list[np.ndarray]] = {}
        for i, target in enumerate(targets):
            yield Progress(i + 1, len(targets) + 1, f"backward pass for token {target}")
            (grad,) = torch.autograd.grad(scores[i], embeds, retain_graph=i + 1 < len(targets))
            grad = grad[0, image.to(grad.device)].float()
            values = self.combine(grad, features, trace.regions, params)
            maps[target] = split_by_region(values.cpu().numpy().astype(np.float64), trace.regions)
        provenance = {
            "method": self.id,
            "score": f"{params['score']} of the target token at the position that predicts it" if alternative is None
                     else f"logit of the target token minus that of token {alternative}, at the position that "
                          "predicts it",
            "features": "decoder input embeddings at the image positions (the projector's output)",
            "model": model.describe(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return Explanation(self.id, maps, params, provenance)

    def combine(self, grad: torch.Tensor, features: torch.Tensor, regions, params: dict[str, Any]) -> torch.Tensor:
        """One value per image position (in region order) from [positions, hidden] tensors."""
        raise NotImplementedError


class GradientTimesInput(_ImageFeatureGradients):
    """Gradient x input: sum over the hidden dimension of d(score)/d(feature) * feature.

    Signed by default: a negative cell pushed the score down. ``sign`` = "abs" or "relu" keeps
    the magnitude or only the supporting evidence.
    """

    id = "grad_x_input"
    title = "Gradient x input"
    params = (
        Param("score", "logprob", "what is differentiated: the target's log-probability or its logit",
              choices=SCORES),
        CONTRAST,
        Param("sign", "signed", "keep the sign, or take the absolute value or the positive part",
              choices=("signed", "abs", "relu")),
    )

    def combine(self, grad, features, regions, params):
        values = (grad * features).sum(dim=-1)
        if params["sign"] == "abs":
            return values.abs()
        if params["sign"] == "relu":
            return values.clamp(min=0)
        return values


class GradCAM(_ImageFeatureGradients):
    """Grad-CAM on the image features: relu(sum_c w_c * feature_c), w_c = mean gradient of channel c.

    Grad-CAM averages the gradient over one feature map; each image region (a LLaVA-NeXT base view
    and its high-resolution grid, say) is its own feature map, so the weights are averaged per
    region. With one region this is the plain average over all image positions.
    """

    id = "gradcam"
    title = "Grad-CAM"
    params = (
        Param("score", "logprob", "what is differentiated: the target's log-probability or its logit",
              choices=SCORES),
        CONTRAST,
    )

    def combine(self, grad, features, regions, params):
        out, start = [], 0
        for region in regions:
            cells = slice(start, start + len(region.positions))
            weights = grad[cells].mean(dim=0)  # [hidden]
            out.append((features[cells] @ weights).clamp(min=0))
            start += len(region.positions)
        return torch.cat(out) if out else grad.new_zeros(0)
