"""Maps of tokens the model is sure of (p > 1 - 1e-7), held against the model run in float64.

In float32, log_softmax rounds such a token's log p to exactly 0: occlusion and RISE then drew
blank maps, and the gradient of log p lost its 1 - p term, so grad x input and Grad-CAM maps of
these tokens were uncorrelated with the true gradient. The reference here is a float64 copy of the
demo model, scored in float64 throughout.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from model_helpers import hand_built_gradients
from scipy.stats import spearmanr

from lvlm_studio.core.perturbation.perturb import score_images
from lvlm_studio.core.plugin.jobs import collect
from lvlm_studio.testing import run_explainer

SMALL = {"occlusion": {"window": 0.4, "stride": 0.2}, "rise": {"masks": 48, "cells": 4, "batch_size": 16}}


@pytest.fixture(scope="module")
def float64_model(demo_model):
    """The demo model, every weight in float64."""
    model = copy.deepcopy(demo_model.model).double()
    return dataclasses.replace(demo_model, model=model, adapter=type(demo_model.adapter)(model, demo_model.processor))


def float64_logits(float64_model, trace) -> torch.Tensor:
    """Logits [answer tokens, vocabulary] of the float64 model at the positions predicting the answer."""
    with torch.no_grad():
        logits = float64_model.model(**trace.teacher_forced_inputs(float64_model), use_cache=False).logits[0]
    return logits[trace.answer_start - 1: trace.answer_start - 1 + len(trace.answer_ids)]


@pytest.fixture(scope="module")
def confident(demo_trace, float64_model) -> list[int]:
    """Answer tokens whose probability is above 1 - 1e-7 (by the float64 model)."""
    logprobs = torch.log_softmax(float64_logits(float64_model, demo_trace), dim=-1)
    chosen = logprobs[torch.arange(len(demo_trace.answer_ids)), torch.as_tensor(demo_trace.answer_ids)]
    tokens = [t for t, value in enumerate(chosen.tolist()) if -value < 1e-7]
    assert tokens, f"the demo caption has no token above 1 - 1e-7: {demo_trace.answer_tokens}"
    return tokens


def _rank_agreement(ours: np.ndarray, reference: np.ndarray) -> float:
    assert np.abs(reference).max() > 0
    return spearmanr(np.ravel(ours), np.ravel(reference)).statistic


def test_scores_resolve_confident_tokens(demo_model, demo_trace, float64_model, confident):
    reference = torch.log_softmax(float64_logits(float64_model, demo_trace), dim=-1)
    reference = reference[torch.arange(len(demo_trace.answer_ids)), torch.as_tensor(demo_trace.answer_ids)].numpy()
    ours, _ = collect(score_images(demo_model, demo_trace, [demo_trace.image]))
    assert (ours[0, confident] < 0).all(), "log p of a confident token must not round to 0"
    np.testing.assert_allclose(ours[0], reference, rtol=1e-3)
    odds, _ = collect(score_images(float64_model, demo_trace, [demo_trace.image], log_odds=True))
    # float64 log_softmax keeps 1 - p = 1e-11 to about 1e-5 relative (the log-odds to ~1e-5 nats)
    np.testing.assert_allclose(odds[0], reference - np.log(-np.expm1(reference)), rtol=1e-5)


@pytest.mark.parametrize("method", ["grad_x_input", "gradcam"])
def test_gradient_maps_of_confident_tokens_match_float64(lvlm_registry, demo_model, demo_trace, float64_model,
                                                         confident, method):
    features, grads = hand_built_gradients(float64_model, demo_trace, confident)
    ours = run_explainer(lvlm_registry.explainer(method), demo_trace, demo_model, confident)
    for token in confident:
        if method == "grad_x_input":
            reference = (grads[token] * features).sum(axis=1)
        else:
            reference = np.maximum(features @ grads[token].mean(axis=0), 0)
        assert _rank_agreement(ours.maps[token][0], reference) > 0.99, token


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_perturbation_maps_of_confident_tokens_are_drawn(lvlm_registry, demo_model, demo_trace, float64_model,
                                                         confident, method):
    explainer = lvlm_registry.explainer(method)
    token = confident[0]
    ours = run_explainer(explainer, demo_trace, demo_model, [token], **SMALL[method]).maps[token][0]
    reference = run_explainer(explainer, demo_trace, float64_model, [token], **SMALL[method]).maps[token][0]
    assert np.abs(ours).max() > 0, "a blank map"
    assert _rank_agreement(ours, reference) > 0.99
