"""Token Activation Map: each stage against a plain restatement of METHODS.md, and the whole
method against a restatement of the reference implementation (xmed-lab/TAM)."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.stats import spearmanr

from lvlm_explainers.tam import rank_gaussian_filter, rank_gaussian_filter_loop
from lvlm_studio.core.plugin.explanation import fixed_levels
from lvlm_studio.core.tracing.prompt_tokens import prompt_text_positions
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


def test_prompt_text_is_the_users_words_only(demo_model, demo_trace):
    positions = prompt_text_positions(demo_trace, demo_model.processor.tokenizer)
    assert [demo_trace.token_strings[p] for p in positions] == ["describe", "the", "image", "."]


def test_raw_stage_is_the_logit_lens_at_image_positions(tam, demo_model, demo_trace):
    explanation = run_explainer(tam, demo_trace, demo_model, context_subtraction=False, rank_filter=False)
    check_explanation(explanation, demo_trace)
    weight = demo_model.adapter.lm_head().weight.detach().double().numpy()
    hidden = demo_trace.hidden.astype(np.float64)
    image = demo_trace.image_positions
    prompt = list(prompt_text_positions(demo_trace, demo_model.processor.tokenizer))  # "describe the image ."
    start = demo_trace.answer_start
    for token in explanation.targets:
        p = demo_trace.answer_position(token)
        k = demo_trace.sequence_ids[p]
        raw = np.maximum(hidden[image] @ weight[k], 0)
        # The prompt's words where they stand, earlier answer tokens where they were predicted.
        scored_at = prompt + list(range(start - 1, p - 1))
        joint = np.concatenate([raw, np.maximum(hidden[scored_at] @ weight[k], 0)])
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


def test_the_position_that_predicted_the_token_is_never_read(tam, demo_model, demo_trace):
    """Its state scores the token itself (it chose it): as a weight it took about half of all the
    weight, and in the normalisation it squeezed the map towards 0."""
    before = run_explainer(tam, demo_trace, demo_model)
    for token in before.targets:
        p = demo_trace.answer_position(token)
        hidden = demo_trace.hidden.copy()
        hidden[p - 1] = np.random.default_rng(p).normal(size=hidden.shape[1]) * 10
        after = run_explainer(tam, dataclasses.replace(demo_trace, hidden=hidden), demo_model, [token])
        np.testing.assert_array_equal(after.maps[token][0], before.maps[token][0])


def test_joint_scale_fixes_the_colour_levels(tam, demo_model, demo_trace):
    default = run_explainer(tam, demo_trace, demo_model, [1, 2])
    joint = run_explainer(tam, demo_trace, demo_model, [1, 2], scale="joint")
    assert fixed_levels(default) is None and fixed_levels(joint) == (0.0, 1.0)
    for token in (1, 2):
        np.testing.assert_array_equal(joint.maps[token][0], default.maps[token][0])
        assert 0 <= joint.maps[token][0].min() and joint.maps[token][0].max() <= 1
    from lvlm_studio.gui.state import StudioState  # Qt-free: what the overlay panel draws with

    state = StudioState()
    state.trace = demo_trace
    state.explanations = {"tam": default, "tam joint": joint}
    assert state.pixels("tam joint", 1)[1] == (0.0, 1.0)
    pixels, levels = state.pixels("tam", 1)
    assert levels == (np.nanmin(pixels), np.nanmax(pixels))


def test_works_without_eager_attention(tam, demo_model, demo_trace):
    assert demo_model.model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        check_explanation(run_explainer(tam, demo_trace, demo_model), demo_trace)


def test_every_family(tam, tiny_model, tiny_trace):
    check_explanation(run_explainer(tam, tiny_trace, tiny_model), tiny_trace)


# -- the reference, restated ---------------------------------------------------------------------
def reference_tam(trace, head: np.ndarray, prompt: list[int]) -> dict[int, list[np.ndarray]]:
    """xmed-lab/TAM's ``TAM`` over a whole answer, restated round by round in plain loops.

    The reference is called once per generation round with the logits of that round (round 0:
    every prompt position; round r >= 1: the one position fed in, which predicts answer token r)
    and a list it fills with each token's raw image scores. Its text tokens are the prompt text
    followed by the answer; their scores are the concatenated rounds' logits for the explained
    class, read at the prompt text positions, then at the last prompt position and at every
    answer position (so answer token j's score sits where it was predicted), the last of which
    (the one that predicted the explained token) is dropped before the joint normalisation.

    One deliberate difference, LVLM Studio's fix of the reference's first answer token: every
    token is taken with its own id. The reference takes, for round 0, the id of the template token
    before the answer, and for the first prompt token the class predicted at its position (the
    map it returns as the first answer token's). Its uint8 quantisation (for drawing) is left out;
    token ids stand in for the token strings it compares; the prompt's positions are given (the
    reference is told them by the caller's special token ids).
    """
    hidden = trace.hidden.astype(np.float64)
    ids = [int(t) for t in trace.sequence_ids]
    start, n = trace.answer_start, len(trace.answer_ids)
    image = list(trace.image_positions)
    rounds = [hidden[:start] @ head.T] + [hidden[start + r - 1 : start + r] @ head.T for r in range(1, n)]
    words = [ids[q] for q in prompt] + ids[start:]
    records = [np.maximum(rounds[0][:, ids[q]], 0)[image] for q in prompt]
    maps = {}
    for r in range(n):
        k = ids[start + r]
        scores = np.maximum(np.concatenate([rounds[i][:, k] for i in range(r + 1)]), 0)
        text_scores = np.concatenate([scores[prompt], scores[start - 1 : start], scores[start:]])
        image_scores = scores[image]
        records.append(image_scores)
        this = len(prompt) + r
        if len(records) > 1:
            others = [i for i in range(this) if words[i] != words[this]]
            w = text_scores[others] / (text_scores[others].sum() + 1e-8)
            interference = np.zeros_like(image_scores)
            for weight, i in zip(w, others):
                interference += weight * records[i]
            alpha = minimize_scalar(_squared_error, args=(image_scores, interference)).x
            image_scores = np.maximum(image_scores - interference * alpha, 0)
        both = np.concatenate([image_scores, text_scores[:-1]])  # not the explained token's own score
        both = (both - both.min()) / (both.max() - both.min())
        image_scores, grids, begin = both[: len(image_scores)], [], 0
        for region in trace.regions:
            rows, cols = region.grid
            grids.append(_rank_filter(image_scores[begin : begin + rows * cols].reshape(rows, cols)))
            begin += rows * cols
        maps[r] = grids
    return maps


def _squared_error(x: float, target: np.ndarray, interference: np.ndarray) -> float:
    return float(np.sum((target - interference * x) ** 2))


def _rank_filter(grid: np.ndarray) -> np.ndarray:
    """The reference's rank Gaussian filter (with the constant window's NaN replaced by its value)."""
    out = np.zeros_like(grid)
    padded = np.pad(grid, 1, mode="reflect")
    offsets = np.arange(9) - 4
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            window = np.sort(padded[i : i + 3, j : j + 3].ravel())
            mean = window.mean()
            if mean > 0:
                sigma = window.std() / mean
                kernel = np.exp(-(offsets**2) / (2 * sigma**2)) if sigma > 0 else (offsets == 0) * 1.0
                out[i, j] = (window * kernel / kernel.sum()).sum()
    return out


def _hold_against_reference(tam, model, trace) -> None:
    head = model.adapter.lm_head().weight.detach().double().numpy()
    prompt = [int(p) for p in prompt_text_positions(trace, model.processor.tokenizer)]
    assert prompt, "the prompt's words were not found"
    ours = run_explainer(tam, trace, model)
    reference = reference_tam(trace, head, prompt)
    for token in ours.targets[1:]:
        a = np.concatenate([g.ravel() for g in ours.maps[token]])
        b = np.concatenate([g.ravel() for g in reference[token]])
        np.testing.assert_allclose(a, b, atol=1e-6)  # the reference fits alpha numerically
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            assert spearmanr(a, b)[0] >= 0.99, token


def test_matches_the_reference_on_the_demo_model(tam, demo_model, demo_trace):
    assert len(demo_trace.answer_ids) > 5
    _hold_against_reference(tam, demo_model, demo_trace)


def test_matches_the_reference_on_every_family(tam, tiny_model, tiny_trace):
    if tam.applies_to(tiny_model, tam.resolve_params({})) is not None:
        pytest.skip("TAM does not apply to this family")
    prompt = prompt_text_positions(tiny_trace, tiny_model.processor.tokenizer)
    assert [tiny_trace.token_strings[p] for p in prompt] == ["describe", "the", "image", "."]
    _hold_against_reference(tam, tiny_model, tiny_trace)
