"""Feature inspection against a coder whose features are the activation's coordinates, so every
answer can be computed another way: f = [relu(x), relu(−x)] and x̂ = x exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_helpers import exact_coder

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.hooks import hooks, run_with_cache
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.sae.inspect import (
    edited_answer,
    feature_attribution,
    feature_map,
    image_features,
    top_features,
    top_patches,
)
from lvlm_studio.sae.render import dashboard, map_overlay
from lvlm_studio.sae.splice import scale_features, splice_hooks

HOOK = "blocks.2.hook_resid_post"


@pytest.fixture(scope="module")
def exact():
    return exact_coder(HOOK)


def _patches(demo_model, demo_trace) -> torch.Tensor:
    """The hook's patch rows on the patch grid, [8, 8, 128], read directly."""
    _, cache = run_with_cache(demo_model, demo_trace.teacher_forced_inputs(demo_model), HOOK)
    return cache[HOOK][0, 1:].reshape(8, 8, 128)


def test_image_features_are_the_coders_code_on_the_patch_grid(demo_model, demo_trace, exact):
    features = image_features(demo_model, exact, demo_trace.image, demo_trace.prompt)
    x = _patches(demo_model, demo_trace)
    assert features.shape == (8, 8, 256)
    np.testing.assert_allclose(features[..., :128], torch.relu(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(features[..., 128:], torch.relu(-x).numpy(), atol=1e-5)
    np.testing.assert_allclose(feature_map(features, 5), torch.relu(x[..., 5]).numpy(), atol=1e-5)


def test_top_features_of_a_patch_by_hand():
    features = np.zeros((2, 3, 5))
    features[1, 2] = [0.0, 3.0, 1.0, 0.0, 2.0]
    assert top_features(features, 1, 2, k=2) == [(1, 3.0), (4, 2.0)]
    assert top_features(features, 1, 2, k=10) == [(1, 3.0), (4, 2.0), (2, 1.0)]  # inactive ones left out
    with pytest.raises(InputError, match="outside the 2x3 grid"):
        top_features(features, 2, 0)
    with pytest.raises(InputError, match="feature 9 does not exist"):
        feature_map(features, 9)


def test_top_patches_across_a_folder_find_the_largest_activations(demo_model, exact, tmp_path):
    from lvlm_studio.demo.scenes import make_scene

    paths = []
    for seed in range(5):
        path = tmp_path / f"scene{seed}.png"
        make_scene(2_000_000_100 + seed).image.save(path)
        paths.append(path)
    hits = run_job(top_patches(demo_model, exact, paths, feature=7, n=4, batch=2))
    everything = []
    for path in paths:
        features = image_features(demo_model, exact, __import__("PIL.Image").Image.open(path))
        everything += [(features[r, c, 7], str(path), r, c) for r in range(8) for c in range(8)]
    expected = sorted(everything, reverse=True)[:4]
    assert [(h.image, h.row, h.col) for h in hits] == [(p, r, c) for _, p, r, c in expected]
    np.testing.assert_allclose([h.activation for h in hits], [v for v, *_ in expected], atol=1e-5)
    sheet = dashboard(hits, (8, 8), "feature 7")
    assert sheet.size == (4 * 96, 96 + 14 + 16)
    assert map_overlay(make_scene(1).image, np.arange(64.0).reshape(8, 8), "f").size == (288, 288)


def test_attribution_sums_to_gradient_times_input_at_the_hook(demo_model, demo_trace, exact):
    """Σ over features of f·∂logp/∂f = Σ over coordinates of x·∂logp/∂x for this coder (x = relu(x) − relu(−x))."""
    token = 1
    attribution = feature_attribution(demo_model, exact, demo_trace, token)
    assert attribution.shape == (8, 8, 256)
    position = demo_trace.answer_position(token)
    inputs = demo_trace.teacher_forced_inputs(demo_model, upto=position + 1)
    kept = {}

    def leaf(activation, hook):
        activation = activation.detach().requires_grad_(True)
        kept["x"] = activation
        return activation

    with hooks(demo_model, [(HOOK, leaf)]), torch.enable_grad():
        logits = demo_model.model(**inputs, use_cache=False, logits_to_keep=2).logits[0, -2]
        torch.log_softmax(logits.float(), -1)[int(demo_trace.answer_ids[token])].backward()
    x = kept["x"]
    direct = (x * x.grad).detach()[0, 1:].sum(-1).reshape(8, 8).numpy()
    np.testing.assert_allclose(attribution.sum(-1), direct, atol=1e-5)


def test_edits_keep_the_answer_when_nothing_changes_and_confine_to_patches(demo_model, demo_trace, exact):
    image, prompt = demo_trace.image, demo_trace.prompt
    assert edited_answer(demo_model, exact, image, prompt, {3: 1.0}) == demo_trace.answer_text
    # Scaling every feature by 0 at one patch zeroes that patch only: x + (0 − x̂) = 0 there.
    from lvlm_studio.sae.activations import image_inputs

    inputs = image_inputs(demo_model, [image], prompt)
    everything = {i: 0.0 for i in range(256)}
    with hooks(demo_model, splice_hooks(demo_model, exact, inputs, "edit", scale_features(everything),
                                        rows=torch.tensor([9]))):
        _, cache = run_with_cache(demo_model, inputs, ["blocks.2.hook_resid_post", "hook_projector_in"])
    _, plain = run_with_cache(demo_model, inputs, [HOOK])
    edited, original = cache[HOOK][0, 1:], plain[HOOK][0, 1:]
    assert edited[9].abs().max() < 1e-5  # patch (1, 1)
    torch.testing.assert_close(edited[torch.arange(64) != 9], original[torch.arange(64) != 9])
    with pytest.raises(InputError, match="feature 999"):
        edited_answer(demo_model, exact, image, prompt, {999: 0.0})
