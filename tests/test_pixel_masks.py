"""Masks laid onto processed pixels: the differentiable blend iGOS++ optimises, for every family."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from lvlm_studio.core.perturbation.perturb import blend, processed_images, score_images
from lvlm_studio.core.perturbation.pixel_masks import answer_logprobs_with_grad, pixel_layout, ramp_images
from lvlm_studio.core.plugin.jobs import collect
from lvlm_studio.core.tracing.relevance import blurred_baseline


def test_ramp_images_encode_pixel_centres():
    black, white, xs, ys = (np.asarray(im) for im in ramp_images((4, 2)))
    assert (black == 0).all() and (white == 255).all()
    # (i + 0.5) / 4 * 255 for i = 0..3 -> 31.9, 95.6, 159.4, 223.1
    assert xs[0, :, 0].tolist() == [32, 96, 159, 223] and (xs[1] == xs[0]).all()
    # (j + 0.5) / 2 * 255 -> 63.75, 191.25
    assert ys[:, 0, 1].tolist() == [64, 191] and (xs[..., 0] == xs[..., 2]).all()


@pytest.fixture(scope="module")
def textured(tiny_model, tiny_trace):
    """The tiny trace with a random texture in place of its flat image (same size, same layout),
    so that a blend has something to show."""
    rng = np.random.default_rng(0)
    width, height = tiny_trace.image.size
    image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    trace = dataclasses.replace(tiny_trace, image=image, visual_relevance=None)
    baseline = blurred_baseline(image)
    return trace, baseline, pixel_layout(tiny_model, trace, baseline)


def _left_half_masks(trace, resolution=64):
    """Per region, a fine mask that is 1 where the original image's x is in its left half."""
    width = trace.image.size[0]
    masks = []
    for region in trace.regions:
        left, _, right, _ = region.box
        xs = left + (np.arange(resolution) + 0.5) / resolution * (right - left)
        masks.append(torch.tensor(np.tile((xs < width / 2).astype(np.float32), (resolution, 1)))[None])
    return masks


def test_a_left_half_mask_keeps_exactly_the_left_half(tiny_model, textured):
    trace, baseline, layout = textured
    width, height = trace.image.size
    values = layout.blend(layout.keep(_left_half_masks(trace)))[0]
    keep = np.zeros((height, width))
    keep[:, : width // 2] = 1
    expected = processed_images(tiny_model, trace, [blend(trace.image, baseline, keep)])["pixel_values"]
    expected = expected.float().reshape(-1)
    x = layout.position[:, 0]
    away = (x - width / 2).abs() > 4  # the mask's edge is resampled differently by the two routes
    assert away.sum() > 0.5 * (~torch.isnan(x)).sum()
    # Equal up to the rounding of the pixel-space blend to 8 bits (one level is 2/255 here).
    np.testing.assert_allclose(values[away].numpy(), expected[away].numpy(), atol=0.02)
    left, right = away & (x < width / 2), away & (x > width / 2)
    assert torch.allclose(values[left], layout.image[left]) and torch.allclose(values[right], layout.baseline[right])


def test_full_and_empty_masks_give_the_image_and_the_baseline(tiny_model, textured):
    trace, _, layout = textured
    ones = [torch.ones(1, *r.grid) for r in trace.regions]
    zeros = [torch.zeros(1, *r.grid) for r in trace.regions]
    assert torch.allclose(layout.blend(layout.keep(ones))[0], layout.image, atol=1e-6)
    owned = layout.owners.any(dim=0)
    assert torch.allclose(layout.blend(layout.keep(zeros))[0][owned], layout.baseline[owned], atol=1e-6)
    # Insertion rows swap the roles: an empty mask shows the image.
    inserted = layout.blend(layout.keep(zeros), torch.tensor([True]))[0]
    assert torch.allclose(inserted[owned], layout.image[owned], atol=1e-6)


def test_scores_match_the_processor_route_and_carry_gradients(tiny_model, textured):
    trace, baseline, layout = textured
    if len(trace.answer_ids) == 0:
        pytest.skip("the random model ended its answer at once")
    masks = [torch.full((2, *r.grid), 1.0, requires_grad=True) for r in trace.regions]
    insertion = torch.tensor([False, True])
    with torch.enable_grad():
        values = layout.blend(layout.keep(masks), insertion)
        logprobs = answer_logprobs_with_grad(tiny_model, trace, layout.model_inputs(values), 2)
        grads = torch.autograd.grad(logprobs.sum(), masks, allow_unused=True)
    reference, _ = collect(score_images(tiny_model, trace, [trace.image, baseline]))
    np.testing.assert_allclose(logprobs.detach().numpy(), reference, atol=1e-4)
    assert any(g is not None and torch.isfinite(g).all() for g in grads)


def test_regions_own_their_views(tiny_model, textured):
    trace, _, layout = textured
    assert layout.owners.shape == (len(trace.regions), layout.image.numel())
    assert layout.owners.any(dim=1).all(), "every region reads some pixels"
    padding = torch.isnan(layout.position[:, 0])
    # Padding is the same in the image and the baseline, so no mask can change it.
    assert torch.equal(layout.image[padding], layout.baseline[padding])
