"""First-party explanation methods, written against the public plugin API only (as a third party would)."""

from __future__ import annotations

from lvlm_explainers.raw import RawAttention
from lvlm_explainers.tam import TokenActivationMap
from lvlm_studio.core.hookspecs import hookimpl


@hookimpl
def lvlm_studio_explainers() -> list:
    return [RawAttention(), TokenActivationMap()]
