"""Token Activation Map: each stage against a plain restatement of METHODS.md."""

import numpy as np
import pytest
import torch

from lvlm_explainers.tam import rank_gaussian_filter, rank_gaussian_filter_loop
from lvlm_studio.testing import check_explanation, run_explainer


@pytest.mark.parametrize("seed", range(5))
def test_rank_filter_matches_the_per_pixel_reference(seed):
    rng = np.random.default_rng(seed)
    grid = np.maximum(rng.normal(0.3, 0.5, size=(24, 24)), 0)
    np.testing.assert_allclose(rank_gaussian_filter(grid), rank_gaussian_filter_loop(grid), atol=1e-5)


def test_rank_filter_edge_cases():
    np.testing.assert_allclose(rank_gaussian_filter(np.full((5, 5), 2.0)), 2.0)  # no NaN for sigma = 0
    np.testing.assert_array_equal(rank_gaussian_filter(np.zeros((4, 4))), 0.0)
    spike = np.zeros((5, 5))
    spike[2, 2] = 1.0
    assert rank_gaussian_filter(spike)[2, 2] < 0.5  # an isolated spike is treated as noise


@pytest.fixture(scope="module")
def tam(lvlm_registry):
    return lvlm_registry.explainer("tam")


def test_raw_stage_is_the_logit_lens_at_image_positions(tam, demo_model, demo_trace):
    explanation = run_explainer(tam, demo_trace, demo_model, context_subtraction=False, rank_filter=False)
    check_explanation(explanation, demo_trace)
    weight = demo_model.adapter.lm_head().weight.detach().double().numpy()
    hidden = demo_trace.hidden.astype(np.float64)
    image = demo_trace.image_positions
    for token in explanation.targets:
        p = demo_trace.answer_position(token)
        k = demo_trace.sequence_ids[p]
        raw = np.maximum(hidden[image] @ weight[k], 0)
        text = np.array([t for t in range(p) if t not in set(image)])
        joint = np.concatenate([raw, np.maximum(hidden[text] @ weight[k], 0)])
        expected = (raw - joint.min()) / (joint.max() - joint.min())
        np.testing.assert_allclose(explanation.maps[token][0].ravel(), expected, atol=1e-9)


def test_first_answer_token_is_read_at_its_own_position(tam, demo_model, demo_trace):
    """The reference's off-by-one returned the first prompt token's map for answer token 0."""
    explanation = run_explainer(tam, demo_trace, demo_model, [0], context_subtraction=False, rank_filter=False)
    weight = demo_model.adapter.lm_head().weight.detach().double().numpy()
    first_answer_id = demo_trace.answer_ids[0]
    raw = np.maximum(demo_trace.hidden[demo_trace.image_positions] @ weight[first_answer_id], 0)
    assert np.corrcoef(explanation.maps[0][0].ravel(), raw)[0, 1] > 0.999


def test_context_subtraction_removes_earlier_tokens_maps(tam, demo_model, demo_trace):
    plain = run_explainer(tam, demo_trace, demo_model, context_subtraction=False, rank_filter=False)
    subtracted = run_explainer(tam, demo_trace, demo_model, rank_filter=False)
    later = [t for t in plain.targets if t > 0]
    changed = [not np.allclose(plain.maps[t][0], subtracted.maps[t][0]) for t in later]
    assert any(changed)
    for t in later:
        assert (subtracted.maps[t][0] >= 0).all()


def test_works_without_eager_attention(tam, demo_model, demo_trace):
    assert demo_model.model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        check_explanation(run_explainer(tam, demo_trace, demo_model), demo_trace)


def test_every_family(tam, tiny_model, tiny_trace):
    check_explanation(run_explainer(tam, tiny_trace, tiny_model), tiny_trace)
