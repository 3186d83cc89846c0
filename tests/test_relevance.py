"""Visual relevance (log-likelihood ratio against a blurred image): the rule, the demo model, the cache."""

import dataclasses
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.tracing.relevance import (
    LLR_THRESHOLD,
    blur_sigma,
    blurred_baseline,
    is_content_token,
    relevant_mask,
    visual_relevance,
)
from lvlm_studio.core.tracing.trace import Trace, generate_trace
from lvlm_studio.demo.scenes import COLOURS, SHAPES

OBJECT_WORDS = set(COLOURS) | set(SHAPES)


@contextmanager
def counting_forwards(loaded):
    """Count calls of the model's forward while the block runs."""
    calls = []
    handle = loaded.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def fresh(trace):
    """The same trace with nothing cached: tests must not share a cached result."""
    return dataclasses.replace(trace, visual_relevance=None)


# -- the rule ------------------------------------------------------------------------------------
def test_punctuation_and_stop_words_are_not_content():
    for token in ("a", ",", "and", ".", " the", "Is", "?", "", "  "):
        assert not is_content_token(token), token
    for token in ("red", " circle", "Triangle", "two"):
        assert is_content_token(token), token


def test_threshold_and_stop_words_decide_relevance():
    tokens = ["a", "red", "circle", ",", "and"]
    with_image = np.zeros(5)
    with_blur = np.array([-5.0, -5.0, -0.5, -9.0, -9.0])  # llr 5, 5, 0.5, 9, 9
    np.testing.assert_array_equal(relevant_mask(tokens, with_image, with_blur), [False, True, False, False, False])
    np.testing.assert_array_equal(relevant_mask(tokens, with_image, with_blur, threshold=0.4),
                                  [False, True, True, False, False])


def test_single_token_answer_is_relevant_when_blurring_halves_its_probability():
    p_image = np.log([0.8])
    assert relevant_mask(["no"], p_image, np.log([0.39]))[0]  # even a stop word: it is the whole answer
    assert not relevant_mask(["no"], p_image, np.log([0.41]))[0]


def test_the_baseline_removes_the_content(demo_scene):
    image = demo_scene.image
    blurred = np.asarray(blurred_baseline(image), dtype=float)
    assert blurred_baseline(image).size == image.size
    assert blur_sigma(image.size) == pytest.approx(0.3 * 96)
    # The objects' colours are gone: every pixel is close to the image's mean colour.
    mean = np.asarray(image, dtype=float).reshape(-1, 3).mean(axis=0)
    assert np.abs(blurred - mean).max() < 25
    assert np.abs(np.asarray(image, dtype=float) - mean).max() > 100


# -- the demo model ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relevance(demo_model, demo_trace):
    return visual_relevance(fresh(demo_trace), demo_model)


def test_teacher_forced_logprobs_match_generation(relevance, demo_trace):
    """Both passes read token p at position p - 1: with the image this is what generation saw."""
    np.testing.assert_allclose(relevance.logprob_image, demo_trace.logprobs, atol=1e-4)
    assert relevance.llr.shape == relevance.relevant.shape == (len(demo_trace.answer_ids),)


def test_object_words_are_relevant_and_function_words_never(relevance, demo_trace):
    tokens = [t.strip() for t in demo_trace.answer_tokens]
    objects = [i for i, t in enumerate(tokens) if t in OBJECT_WORDS]
    assert len(objects) >= 4, f"expected a caption naming objects, got {demo_trace.answer_text!r}"
    assert np.median(relevance.llr[objects]) > LLR_THRESHOLD
    assert relevance.relevant[objects].mean() >= 0.5
    for i, token in enumerate(tokens):
        if token in {"a", ",", "and"}:
            assert not relevance.relevant[i], f"{token!r} at {i} marked relevant (llr {relevance.llr[i]:.2f})"


def test_computed_once_then_cached(demo_model, demo_trace):
    trace = fresh(demo_trace)
    with counting_forwards(demo_model) as calls:
        first = visual_relevance(trace, demo_model)
    assert len(calls) == 2  # with the image, with the blurred image
    with counting_forwards(demo_model) as calls:
        again = visual_relevance(trace, demo_model)
        stricter = visual_relevance(trace, demo_model, threshold=100.0)
    assert calls == [] and again is first
    assert not stricter.relevant.any()  # a new threshold re-derives the mask, with no forward pass
    np.testing.assert_array_equal(stricter.llr, first.llr)


def test_saved_and_loaded_with_the_trace(relevance, demo_trace, tmp_path):
    trace = fresh(demo_trace)
    trace.visual_relevance = relevance
    loaded = Trace.load(trace.save(tmp_path / "t.trace.safetensors"))
    np.testing.assert_array_equal(loaded.visual_relevance.logprob_blurred, relevance.logprob_blurred)
    np.testing.assert_array_equal(loaded.visual_relevance.llr, relevance.llr)
    np.testing.assert_array_equal(loaded.visual_relevance.relevant, relevance.relevant)
    assert visual_relevance(loaded) is loaded.visual_relevance  # no model needed any more
    # A trace saved without it loads with none, and then asks for the model.
    plain = Trace.load(fresh(demo_trace).save(tmp_path / "plain.trace.safetensors"))
    assert plain.visual_relevance is None
    with pytest.raises(InputError, match="needs the model"):
        visual_relevance(plain)


def test_every_family(tiny_model):
    trace = generate_trace(tiny_model, Image.new("RGB", (64, 40), (20, 20, 220)), "describe the image.",
                           max_new_tokens=3)
    if len(trace.answer_ids) == 0:
        pytest.skip("the random model ended at once")
    result = visual_relevance(trace, tiny_model)
    assert result.llr.shape == (len(trace.answer_ids),) and np.isfinite(result.llr).all()
    np.testing.assert_allclose(result.logprob_image, trace.logprobs, atol=1e-3)
