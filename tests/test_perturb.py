"""Batched scoring of altered images: the engine under occlusion, RISE, deletion/insertion."""

import numpy as np
import pytest
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.perturbation.perturb import blend, score_images
from lvlm_studio.core.plugin.jobs import collect
from lvlm_studio.core.tracing.relevance import blurred_baseline


def _variants(image: Image.Image) -> list[Image.Image]:
    baseline = blurred_baseline(image)
    rng = np.random.default_rng(0)
    return [image, baseline] + [blend(image, baseline, rng.random(image.size[::-1])) for _ in range(3)]


def test_batches_match_one_image_per_pass_and_the_trace(tiny_model, tiny_trace):
    images = _variants(tiny_trace.image)
    batched, progress = collect(score_images(tiny_model, tiny_trace, images, batch_size=4))
    single, _ = collect(score_images(tiny_model, tiny_trace, images, batch_size=1))
    assert batched.shape == (len(images), len(tiny_trace.answer_ids))
    np.testing.assert_allclose(batched, single, atol=1e-4)
    np.testing.assert_allclose(batched[0], tiny_trace.logprobs, atol=1e-4)
    assert [p.done for p in progress] == [0, 4, 5], "one report per forward pass"


def test_scoring_the_first_tokens_only_stops_the_pass_early(tiny_model, tiny_trace):
    images = _variants(tiny_trace.image)[:3]
    full, _ = collect(score_images(tiny_model, tiny_trace, images))
    for upto in range(1, len(tiny_trace.answer_ids) + 1):
        first, _ = collect(score_images(tiny_model, tiny_trace, images, upto=upto))
        assert first.shape == (len(images), upto)
        np.testing.assert_allclose(first, full[:, :upto], atol=1e-4)


def test_blurring_the_demo_scene_makes_its_colour_word_unlikely(demo_model, demo_trace):
    scores, _ = collect(score_images(demo_model, demo_trace, _variants(demo_trace.image)[:2]))
    colour = next(i for i, t in enumerate(demo_trace.answer_tokens) if t in {"red", "green", "blue", "yellow"})
    assert scores[0, colour] > np.log(0.5)
    assert scores[1, colour] < scores[0, colour] - 1.0


def test_blend_keeps_and_replaces_pixels():
    image = Image.new("RGB", (4, 2), (200, 0, 0))
    baseline = Image.new("RGB", (4, 2), (0, 0, 100))
    keep = np.array([[1, 0, 0.5, 1], [0, 0, 0, 0]], dtype=float)
    out = np.asarray(blend(image, baseline, keep))
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[0, 1]) == (0, 0, 100) and tuple(out[0, 2]) == (100, 0, 50)
    with pytest.raises(InputError, match="cannot alter"):
        blend(image, baseline, np.ones((4, 2)))


def test_log_odds_order_images_as_probabilities_do(tiny_model, tiny_trace):
    images = _variants(tiny_trace.image)
    logp, _ = collect(score_images(tiny_model, tiny_trace, images))
    odds, _ = collect(score_images(tiny_model, tiny_trace, images, log_odds=True))
    p = np.exp(logp.astype(np.float64))
    np.testing.assert_allclose(odds, np.log(p / (1 - p)), rtol=1e-3, atol=1e-3)

