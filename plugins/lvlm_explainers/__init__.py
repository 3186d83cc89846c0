"""First-party explanation methods, written against the public plugin API only (as a third party would)."""

from __future__ import annotations

from lvlm_explainers.captum_attr import (
    LIME,
    GradientSHAP,
    IntegratedGradients,
    KernelSHAP,
    SmoothGrad,
    VarGrad,
)
from lvlm_explainers.causal import CausalSubset
from lvlm_explainers.gradients import GradCAM, GradientTimesInput
from lvlm_explainers.igos import IGOSPlusPlus
from lvlm_explainers.perturbation import RISE, Occlusion
from lvlm_explainers.raw import RawAttention
from lvlm_explainers.relevancy import Relevancy
from lvlm_explainers.rollout import AttentionRollout
from lvlm_explainers.tam import TokenActivationMap
from lvlm_studio.api import hookimpl


@hookimpl
def lvlm_studio_explainers() -> list:
    return [RawAttention(), AttentionRollout(), Relevancy(), GradientTimesInput(), GradCAM(), TokenActivationMap(),
            IGOSPlusPlus(), CausalSubset(), Occlusion(), RISE(), IntegratedGradients(), GradientSHAP(), SmoothGrad(),
            VarGrad(), KernelSHAP(), LIME()]
