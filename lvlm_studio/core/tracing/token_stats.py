"""Per answer token: log-probability, visual relevance (LLR) and the entropy of the model's choice.

The token timeline plots these three side by side: a token the model was sure of (low entropy,
high log-probability) that the image made likely (high LLR) is a grounded one; a confident token
with LLR near zero came from the language prior. Entropy needs the whole next-token distribution,
which the Trace does not keep (only the top alternatives), so it takes one teacher-forced pass;
the LLR reuses ``visual_relevance`` and its cache on the trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.plugin.jobs import Job, Progress

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.tracing.trace import Trace


@dataclass
class TokenStats:
    logprob: np.ndarray  # [n] log p of each chosen token
    llr: np.ndarray  # [n] log p(image) - log p(blurred image), nats
    relevant: np.ndarray  # [n] bool: visually relevant
    entropy: np.ndarray  # [n] entropy of the next-token distribution, nats


def entropy_from_logits(logits: np.ndarray) -> np.ndarray:
    """Entropy in nats of softmax(logits) along the last axis, computed stably."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    logp = shifted - log_z
    return -(np.exp(logp) * logp).sum(axis=-1)


def answer_entropy(trace: Trace, loaded: LoadedModel) -> np.ndarray:
    """Entropy of the next-token distribution at each answer step (one teacher-forced pass)."""
    import torch

    from lvlm_studio.core.models.inputs import forward_inputs

    n = len(trace.answer_ids)
    if n == 0:
        return np.zeros(0)
    ids = torch.as_tensor(trace.sequence_ids, device=loaded.device)[None].long()
    extras = {k: torch.as_tensor(v, device=loaded.device) for k, v in trace.model_inputs.items()}
    with torch.no_grad():
        out = loaded.model(**forward_inputs(ids, extras, loaded.model.dtype, loaded.adapter.generated_token_inputs),
                           use_cache=False, logits_to_keep=n + 1)
    return entropy_from_logits(out.logits[0, :-1].float().cpu().numpy())


def token_stats(trace: Trace, loaded: LoadedModel | None) -> Job[TokenStats]:
    """All three series; three forward passes (image, blurred image, entropy), each a progress step."""
    from lvlm_studio.core.tracing.relevance import visual_relevance

    if loaded is None:
        raise InputError("the token timeline needs the model for entropy and visual relevance.",
                         "Load the model that produced this answer.")
    yield Progress(0, 2, "visual relevance")
    relevance = visual_relevance(trace, loaded)
    yield Progress(1, 2, "entropy")
    entropy = answer_entropy(trace, loaded)
    yield Progress(2, 2, "entropy")
    return TokenStats(np.asarray(trace.logprobs, dtype=np.float64), relevance.llr.astype(np.float64),
                      relevance.relevant.copy(), entropy)


def percent(p: float) -> str:
    """A probability as a percentage with the digits that tell values apart: 97.3%, 99.998%, 0.42%,
    0.0031%, and below 0.001% in powers of ten (1.2e-07%), never a bare "0.0%"."""
    value = 100.0 * float(p)
    if not np.isfinite(value):
        return "-"
    if value <= 0:
        return "0%"
    if value >= 99.95 and value < 100:  # near-certain: show how far from 100% it is
        digits = int(np.ceil(-np.log10(100 - value)))
        return f"{value:.{digits}f}%" if digits <= 4 else ">99.9999%"
    if value >= 1:
        return f"{value:.1f}%"
    if value >= 1e-3:
        return f"{value:.2g}%"
    return f"{value:.1e}%"
