"""How likely the model finds a token, computed so that a confident model still has an answer.

``log_softmax`` in float32 returns exactly 0 for a token whose probability is above 1 - 6e-8: the
log-sum-exp of the logits rounds to the target's own logit. A caption's "a" typically has
p = 1 - 1e-11, so every perturbation of the image scored the same 0 (occlusion and RISE drew blank
maps) and the gradient of log p lost its largest term (1 - p rounds to 0), leaving grad x input and
Grad-CAM maps of such tokens uncorrelated with the true gradient.

Both scores here start from the log-odds, the target's logit against the log-sum-exp of every
other token's logit: log p - log(1 - p) = z_t - logsumexp(z_{j != t}). No term cancels, so it is
exact in float32 whatever p is, and so is log p = logsigmoid(log-odds) (which keeps 1 - p down to
float32's smallest numbers instead of 6e-8). Their gradients differ only by the factor 1 / (1 - p):
d log-odds = d log p / (1 - p), so a gradient map of either is the same map up to scale.

Which one a method reports is its own choice (see each method): log p where a probability is the
definition (RISE, deletion/insertion, iGOS++, gradients of "the log-probability"), log-odds where
the question is how much the evidence for a token changed (occlusion, causal validation): a drop
from 1 - 1e-11 to 1 - 1e-9 is nothing in p but 4.6 nats of evidence.

A contrastive explanation ("why this token rather than that one") scores the logit difference
between the target and one alternative (``logit_difference``), the same number as the difference
of their log-probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lvlm_studio.core.errors import InputError


def log_odds(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p - log(1 - p) of ``targets`` under ``logits`` (vocabulary last; ``targets`` has the
    logits' shape without it), in float32 at least."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    index = targets.long().unsqueeze(-1)
    others = logits.scatter(-1, index, float("-inf"))
    return logits.gather(-1, index).squeeze(-1) - torch.logsumexp(others, dim=-1)


def log_probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p of ``targets`` under ``logits``, differentiable, and not rounded to 0 when p is near 1."""
    return F.logsigmoid(log_odds(logits, targets))


def logit_difference(logits: torch.Tensor, targets: torch.Tensor, alternative: int) -> torch.Tensor:
    """z_target - z_alternative under ``logits`` (vocabulary last; ``targets`` has the logits' shape
    without it), in float32 at least: the score of a contrastive explanation, "why the target
    rather than ``alternative``".

    It equals log p(target) - log p(alternative) exactly (the log-sum-exp cancels), so it does not
    depend on whether a method otherwise reads log p, log-odds or the logit, and it is linear in the
    logits: its gradient is the target's minus the alternative's. Where the target is the
    alternative itself the score is 0 whatever the input, and so is every map of it.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    vocabulary = logits.shape[-1]
    if not 0 <= int(alternative) < vocabulary:
        raise InputError(f"the contrast token id {int(alternative)} is not in the model's vocabulary "
                         f"(ids 0 to {vocabulary - 1}).",
                         "Pick the alternative from the token's top-k alternatives.")
    chosen = logits.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    return chosen - logits[..., int(alternative)]
