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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
