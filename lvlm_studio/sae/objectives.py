"""What training adds to the coders' own losses (``coders.py`` holds each architecture's loss:
ReLU + L1, TopK, JumpReLU, gated with its auxiliary gate reconstruction, BatchTopK and
Matryoshka-BatchTopK with their running threshold).

* **Auxiliary-k loss** for TopK-like coders (Gao et al. 2024): the ``k_aux`` dead features with
  the largest pre-activations reconstruct the main coder's residual through the decoder. Dead
  features thus get a gradient towards what the live ones miss, and come back to life.
* **Schedules**: linear learning-rate warm-up and linear decay to zero at the end (the SAELens
  "constant" schedule with warm-up and decay), and linear warm-up of the sparsity coefficient.
* **Geometric median** of the data (Weiszfeld's algorithm) to start ``b_dec`` at: a centre that
  outliers pull less than they pull the mean.
"""

from __future__ import annotations

from typing import Protocol

import torch


# -- schedules ---------------------------------------------------------------------------------------
def lr_at(step: int, lr: float, total_steps: int, warmup_steps: int = 0, decay_steps: int = 0) -> float:
    """The learning rate of step ``step`` (counted from 0).

    Warm-up: lr·(step + 1)/warmup for the first ``warmup_steps`` steps (lr/warmup, 2·lr/warmup, ...,
    lr). Decay: lr·(total − step)/decay over the last ``decay_steps`` steps (lr, ..., lr/decay),
    never below 0 should training run past ``total_steps``. In between: lr.
    """
    factor = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        factor = (step + 1) / warmup_steps
    if decay_steps > 0 and step >= total_steps - decay_steps:
        factor = min(factor, max(total_steps - step, 0) / decay_steps)
    return lr * factor


def coefficient_at(step: int, coefficient: float, warmup_steps: int = 0) -> float:
    """The sparsity coefficient of step ``step``: coefficient·step/warmup during the first
    ``warmup_steps`` steps (0 at the first step), then ``coefficient``."""
    if warmup_steps > 0 and step < warmup_steps:
        return coefficient * step / warmup_steps
    return coefficient


# -- initialisation ----------------------------------------------------------------------------------
@torch.no_grad()
def geometric_median(points: torch.Tensor, iterations: int = 100, tolerance: float = 1e-6) -> torch.Tensor:
    """The point minimising the sum of Euclidean distances to ``points`` [n, ..., d] (Weiszfeld:
    repeatedly the mean weighted by 1/distance), per leading slice for [n, sources, d]."""
    flat = points.reshape(len(points), -1, points.shape[-1]).double()  # [n, groups, d]
    median = flat.mean(dim=0)
    for _ in range(iterations):
        distances = (flat - median).norm(dim=-1).clamp(min=1e-12)  # [n, groups]
        weights = 1.0 / distances
        updated = (weights[..., None] * flat).sum(dim=0) / weights.sum(dim=0)[..., None]
        moved = float((updated - median).norm(dim=-1).max())
        median = updated
        if moved < tolerance * max(float(median.norm(dim=-1).max()), 1.0):
            break
    return median.reshape(points.shape[1:]).to(points.dtype)


class _Coder(Protocol):
    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor: ...


# -- auxiliary-k -------------------------------------------------------------------------------------
def aux_k_loss(coder: _Coder, pre: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor, k_aux: int,
               x: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error of the dead features' reconstruction of ``residual`` (target − x̂, detached).

    Per token the ``k_aux`` dead features with the largest pre-activations are kept as they are
    (no ReLU: a dead feature's pre-activation is usually negative, and a ReLU would leave it
    without gradient), decoded without the bias, and compared with the residual. Scaled by
    min(dead / k_aux, 1), so a handful of dead features do not dominate the loss.
    """
    n_dead = int(dead.sum())
    if n_dead == 0 or k_aux < 1:
        return torch.zeros((), device=pre.device)
    kept = min(k_aux, n_dead)
    candidates = pre.masked_fill(~dead.to(pre.device), float("-inf"))
    top = candidates.topk(kept, dim=-1)
    f_aux = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    estimate = coder.decode(f_aux, x) - coder.decode(torch.zeros_like(f_aux), x)  # no bias, no skip path
    scale = min(n_dead / k_aux, 1.0)
    return scale * (estimate - residual.detach()).pow(2).flatten(1).sum(dim=1).mean()
