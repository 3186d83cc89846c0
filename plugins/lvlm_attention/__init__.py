"""First-party attention-based explainers, written against the public plugin API only."""

from __future__ import annotations

from lvlm_attention.raw import RawAttention
from lvlm_studio.core.hookspecs import hookimpl


@hookimpl
def lvlm_studio_explainers() -> list:
    return [RawAttention()]
