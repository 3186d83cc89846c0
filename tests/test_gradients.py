"""Gradient x input and Grad-CAM against torch.autograd on a plain forward from inputs_embeds."""

import copy

import numpy as np
import pytest
from model_helpers import hand_built_gradients

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.loading import LoadedModel
from lvlm_studio.core.plugin.jobs import collect
from lvlm_studio.testing import check_explanation, run_explainer

TOKENS = [1, 2, 5]


@pytest.fixture(scope="module")
def grad_x_input(lvlm_registry):
    return lvlm_registry.explainer("grad_x_input")


@pytest.fixture(scope="module")
def gradcam(lvlm_registry):
    return lvlm_registry.explainer("gradcam")


@pytest.fixture(scope="module", params=["logprob", "logit"])
def reference(request, demo_model, demo_trace):
    return request.param, *hand_built_gradients(demo_model, demo_trace, TOKENS, request.param)


def test_grad_x_input_matches_autograd(grad_x_input, demo_model, demo_trace, reference):
    score, features, grads = reference
    explanation = run_explainer(grad_x_input, demo_trace, demo_model, TOKENS, score=score)
    check_explanation(explanation, demo_trace, TOKENS)
    for token in TOKENS:
        expected = (grads[token] * features).sum(axis=1).reshape(8, 8)
        scale = np.abs(expected).max()  # a confident model's log-prob gradients are tiny (saturated softmax)
        assert scale > 1e-12
        np.testing.assert_allclose(explanation.maps[token][0], expected, rtol=1e-4, atol=1e-4 * scale)


def test_gradcam_matches_autograd(gradcam, demo_model, demo_trace, reference):
    score, features, grads = reference
    explanation = run_explainer(gradcam, demo_trace, demo_model, TOKENS, score=score)
    check_explanation(explanation, demo_trace, TOKENS)
    for token in TOKENS:
        weights = grads[token].mean(axis=0)
        expected = np.maximum(features @ weights, 0).reshape(8, 8)
        np.testing.assert_allclose(explanation.maps[token][0], expected, rtol=1e-4, atol=1e-7)


def test_sign_options(grad_x_input, demo_model, demo_trace):
    signed = run_explainer(grad_x_input, demo_trace, demo_model, [2]).maps[2][0]
    assert (signed < 0).any() and (signed > 0).any()  # the default keeps the sign
    np.testing.assert_allclose(run_explainer(grad_x_input, demo_trace, demo_model, [2], sign="abs").maps[2][0],
                               np.abs(signed), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(run_explainer(grad_x_input, demo_trace, demo_model, [2], sign="relu").maps[2][0],
                               np.maximum(signed, 0), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("method", ["grad_x_input", "gradcam"])
def test_one_backward_per_token_no_parameter_gradients(lvlm_registry, method, demo_model, demo_trace):
    explainer = lvlm_registry.explainer(method)
    _, progress = collect(explainer.explain(demo_trace, demo_model, [0, 3], explainer.resolve_params()))
    assert [p.done for p in progress] == [0, 1, 2]
    assert all(p.grad is None for p in demo_model.model.parameters())


def frozen_copy(loaded):
    """A copy of the model with every parameter's requires_grad off (as quantised or frozen models are)."""
    model = copy.deepcopy(loaded.model).requires_grad_(False)
    return LoadedModel(model, loaded.processor, type(loaded.adapter)(model, loaded.processor), loaded.source)


def test_frozen_weights_give_the_same_maps(grad_x_input, demo_model, demo_trace):
    frozen = frozen_copy(demo_model)
    expected = run_explainer(grad_x_input, demo_trace, demo_model, [2]).maps[2][0]
    np.testing.assert_allclose(run_explainer(grad_x_input, demo_trace, frozen, [2]).maps[2][0], expected,
                               rtol=1e-5, atol=1e-9)


def test_bad_parameters_are_clear(grad_x_input, gradcam, demo_model, demo_trace):
    with pytest.raises(InputError, match="Choose one of: signed, abs, relu"):
        grad_x_input.resolve_params({"sign": "negative"})
    with pytest.raises(InputError, match="Choose one of: logprob, logit"):
        gradcam.resolve_params({"score": "prob"})
    with pytest.raises(InputError, match="has no parameter 'sign'"):
        gradcam.resolve_params({"sign": "abs"})
    with pytest.raises(InputError, match="answer token 42 does not exist"):
        run_explainer(gradcam, demo_trace, demo_model, [42])
    with pytest.raises(InputError, match="needs the model"):
        run_explainer(grad_x_input, demo_trace, None)


@pytest.mark.parametrize("method", ["grad_x_input", "gradcam"])
def test_every_family(lvlm_registry, tiny_model, method):
    from PIL import Image

    from lvlm_studio.core.tracing.trace import generate_trace

    trace = generate_trace(tiny_model, Image.new("RGB", (40, 64), (20, 20, 220)), "describe the image.",
                           max_new_tokens=3)
    if len(trace.answer_ids) == 0:
        pytest.skip("the random model ended at once")
    before = tiny_model.model.config._attn_implementation
    check_explanation(run_explainer(lvlm_registry.explainer(method), trace, tiny_model), trace)
    assert tiny_model.model.config._attn_implementation == before
