"""The Captum methods (lvlm_explainers.captum_attr) and the baselines of the perturbation methods:
each map equals a direct Captum call on the same forward function, Integrated Gradients is complete
in float64, the baselines are the pictures they promise, and the methods pass the plugin
conformance check on the demo model and the tiny families."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from captum.attr import GradientShap, IntegratedGradients, KernelShap, Lime, NoiseTunnel, Saliency
from PIL import Image

from lvlm_explainers.captum_attr import (
    LIME,
    GradientSHAP,
    KernelSHAP,
    SmoothGrad,
    VarGrad,
    cells_from_elements,
    feature_labels,
    feature_mask,
    lime_surrogate,
    log_prob_function,
    prepared,
    seeded,
)
from lvlm_explainers.captum_attr import IntegratedGradients as IGExplainer
from lvlm_explainers.perturbation import RISE, Occlusion
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.perturbation.perturb import BASELINES, baseline_image
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.core.tracing.relevance import blurred_baseline
from lvlm_studio.testing.conformance import PASS, check_plugins

CAPTUM_METHODS = (IGExplainer, GradientSHAP, SmoothGrad, VarGrad, KernelSHAP, LIME)


# -- baselines ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))


def test_each_baseline_is_the_picture_it_names(picture):
    pixels = np.asarray(picture, dtype=np.float64)
    black = np.asarray(baseline_image(picture, "black"))
    assert black.shape == (20, 30, 3) and not black.any()
    mean = np.asarray(baseline_image(picture, "mean"))
    assert (mean == np.rint(pixels.reshape(-1, 3).mean(axis=0))).all()
    assert np.array_equal(np.asarray(baseline_image(picture, "blur")), np.asarray(blurred_baseline(picture)))
    noise = np.asarray(baseline_image(picture, "noise", seed=1))
    assert noise.shape == (20, 30, 3)
    assert np.array_equal(noise, np.asarray(baseline_image(picture, "noise", seed=1))), "seeded"
    assert not np.array_equal(noise, np.asarray(baseline_image(picture, "noise", seed=2)))
    assert noise.min() < 20 and noise.max() > 235 and abs(noise.mean() - 127.5) < 10, "uniform over 0..255"
    assert set(BASELINES) == {"blur", "black", "mean", "noise"}


def test_an_unknown_baseline_says_which_exist(picture):
    with pytest.raises(InputError, match="unknown baseline") as info:
        baseline_image(picture, "grey")
    assert "blur, black, mean, noise" in info.value.hint


@pytest.mark.parametrize("explainer, params", [(Occlusion(), {"window": 0.5, "stride": 0.5}),
                                               (RISE(), {"masks": 4, "cells": 2})], ids=["occlusion", "rise"])
def test_occlusion_and_rise_hide_with_the_chosen_baseline(demo_model, demo_trace, monkeypatch, explainer, params):
    import lvlm_explainers.perturbation as module

    seen = []
    real = module.baseline_image
    monkeypatch.setattr(module, "baseline_image", lambda image, kind, *a: seen.append(kind) or real(image, kind))
    explanation = run_job(explainer.explain(demo_trace, demo_model, [1],
                                            explainer.resolve_params({**params, "baseline": "black"})))
    assert seen == ["black"] and explanation.provenance["baseline"] == "black"
    assert explainer.resolve_params({})["baseline"] == "blur"


# -- the maps are Captum's -----------------------------------------------------------------------

def _direct(method, model, trace, targets, params):
    """What Captum itself gives for the first target, called by hand on the same function."""
    layout, image, base = prepared(model, trace, params["baseline"], params["seed"])
    forward = log_prob_function(model, trace, layout, targets)
    with seeded(params["seed"]):
        if method is IGExplainer:
            out = IntegratedGradients(forward).attribute(image, baselines=base, target=0, n_steps=params["steps"],
                                                                 internal_batch_size=params["batch_size"])
        elif method is GradientSHAP:
            out = GradientShap(forward).attribute(image, baselines=base, target=0, n_samples=params["samples"])
        elif method in (SmoothGrad, VarGrad):
            out = NoiseTunnel(Saliency(forward)).attribute(
                image, nt_type=method.nt_type, nt_samples=params["samples"],
                stdevs=params["noise"] * float(image.max() - image.min()), target=0, abs=False,
                nt_samples_batch_size=params["batch_size"])
        else:
            mask, _ = feature_mask(layout, trace.regions, params["features"], feature_labels(trace, params))
            captum = (KernelShap(forward) if method is KernelSHAP
                      else Lime(forward, interpretable_model=lime_surrogate(params["surrogate"], params["alpha"])))
            out = captum.attribute(image, baselines=base, target=0, feature_mask=mask,
                                          n_samples=params["samples"], perturbations_per_eval=params["batch_size"])
    how = "mean" if method in (KernelSHAP, LIME) else "sum"
    return cells_from_elements(out.detach().double().numpy(), layout, trace.regions, how)


SMALL = {IGExplainer: {"steps": 8}, GradientSHAP: {"samples": 6}, SmoothGrad: {"samples": 3, "inner": "gradient"},
         VarGrad: {"samples": 3, "inner": "gradient"}, KernelSHAP: {"samples": 40},
         LIME: {"samples": 40, "features": "superpixels", "segments": 12, "surrogate": "ridge", "alpha": 1.0}}


@pytest.mark.parametrize("method", CAPTUM_METHODS, ids=lambda m: m.id)
def test_each_map_is_a_direct_captum_call(demo_model, demo_trace, method):
    explainer = method()
    target = next(i for i, t in enumerate(demo_trace.answer_tokens) if t in {"red", "green", "blue", "yellow"})
    params = explainer.resolve_params({**SMALL[method], "baseline": "black", "seed": 5})
    explanation = run_job(explainer.explain(demo_trace, demo_model, [target, 0], params))
    (grid,) = explanation.maps[target]
    (expected,) = _direct(method, demo_model, demo_trace, [target, 0], params)
    assert grid.dtype == np.float64 and grid.shape == demo_trace.regions[0].grid
    assert np.abs(grid).max() > 0, "a map, not zeros"
    np.testing.assert_allclose(grid, expected, rtol=1e-9, atol=1e-12)
    if grid.std() > 0:
        assert np.corrcoef(grid.ravel(), expected.ravel())[0, 1] == pytest.approx(1.0)
    assert explanation.provenance["library"].startswith("captum ")


@pytest.fixture(scope="module")
def tiny_llava_float64(tmp_path_factory):
    """The tiny LLaVA run in float64, with a short answer about a picture with some structure."""
    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.testing.tiny_models import build_tiny_model

    loaded = load_model(build_tiny_model("llava", tmp_path_factory.mktemp("tiny-llava")), LoadOptions(device="cpu"))
    loaded.model.double()
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 64, 3), dtype=np.uint8))
    trace = generate_trace(loaded, image, "describe the image.", max_new_tokens=2)
    if len(trace.answer_ids) == 0:
        pytest.skip("the random model ended its answer at once")
    return loaded, trace


def test_integrated_gradients_is_complete_in_float64(tiny_llava_float64):
    """The cells add up to log p(image) - log p(baseline): exactly what Captum's attributions add up
    to (the reduction loses nothing), and within the path rule's error of the true gap."""
    model, trace = tiny_llava_float64
    explainer = IGExplainer()
    params = explainer.resolve_params({"steps": 64, "baseline": "black"})
    explanation = run_job(explainer.explain(trace, model, [0], params))
    total = sum(float(grid.sum()) for grid in explanation.maps[0])
    layout, image, base = prepared(model, trace, "black")
    forward = log_prob_function(model, trace, layout, [0])
    attributions, delta = IntegratedGradients(forward).attribute(image, baselines=base, target=0, n_steps=64,
                                                                  return_convergence_delta=True)
    assert attributions.dtype == torch.float64
    assert total == pytest.approx(float(attributions.sum()), rel=1e-9, abs=1e-12)
    with torch.no_grad():
        gap = float(forward(image)[0, 0] - forward(base)[0, 0])
    assert gap != 0.0
    assert total == pytest.approx(gap, rel=1e-3, abs=1e-6)
    assert abs(float(delta)) < 1e-3 * max(abs(gap), 1e-3)


def test_integrated_gradients_totals_are_captums_on_the_demo(demo_model, demo_trace):
    """On the demo model log p along the path is nearly a step (it jumps by nats within a tenth of
    the path), so IG's rule needs many points there; whatever its error, the map's total is
    exactly the total of Captum's attributions."""
    target = next(i for i, t in enumerate(demo_trace.answer_tokens) if t in {"red", "green", "blue", "yellow"})
    explainer = IGExplainer()
    params = explainer.resolve_params({"steps": 8, "baseline": "mean"})
    explanation = run_job(explainer.explain(demo_trace, demo_model, [target], params))
    layout, image, base = prepared(demo_model, demo_trace, "mean")
    forward = log_prob_function(demo_model, demo_trace, layout, [target])
    attributions = IntegratedGradients(forward).attribute(image, baselines=base, target=0, n_steps=8,
                                                          internal_batch_size=params["batch_size"])
    assert float(explanation.maps[target][0].sum()) == pytest.approx(float(attributions.sum()), rel=1e-9)


def test_cells_sum_or_average_the_elements_they_read():
    # One region, 2 x 2 cells, four elements at the four cells' centres and one padding element.
    layout = SimpleNamespace(
        owners=torch.tensor([[True, True, True, True, False]]),
        position=torch.tensor([[1.0, 1.0], [3.0, 1.0], [1.0, 3.0], [3.0, 3.0], [float("nan")] * 2]),
        coords=torch.tensor([[[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5], [0.0, 0.0]]]),
        image=torch.zeros(5))
    region = SimpleNamespace(grid=(2, 2), box=(0, 0, 4, 4))
    values = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    (summed,) = cells_from_elements(values, layout, [region], "sum")
    assert summed.tolist() == [[1.0, 2.0], [3.0, 4.0]], "padding counts nowhere"
    mask, count = feature_mask(layout, [region], "cells", None)
    assert count == 4 and mask.tolist() == [[0, 1, 2, 3, 0]]


def test_object_features_need_masks_and_read_a_label_image(demo_trace, tmp_path):
    explainer = KernelSHAP()
    with pytest.raises(InputError, match="needs the object masks"):
        feature_labels(demo_trace, explainer.resolve_params({"features": "objects"}))
    width, height = demo_trace.image.size
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[: height // 2] = 7
    labels[-5:, -5:] = 200
    Image.fromarray(labels).save(tmp_path / "objects.png")
    got = feature_labels(demo_trace, explainer.resolve_params({"features": "objects",
                                                                 "masks": str(tmp_path / "objects.png")}))
    assert got.max() == 2 and got[0, 0] == 1 and got[-1, -1] == 2 and got[height // 2, 0] == 0
    Image.fromarray(np.zeros((height, width), dtype=np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(InputError, match="mark no object"):
        feature_labels(demo_trace, explainer.resolve_params({"features": "objects",
                                                             "masks": str(tmp_path / "empty.png")}))


def test_lime_over_object_masks_gives_one_value_per_object(demo_model, demo_trace, demo_scene, tmp_path):
    labels = np.zeros(demo_scene.objects[0].mask.shape, dtype=np.uint8)
    for k, obj in enumerate(demo_scene.objects, start=1):
        labels[obj.mask] = k
    Image.fromarray(labels).save(tmp_path / "labels.png")
    explainer = LIME()
    params = explainer.resolve_params({"features": "objects", "masks": str(tmp_path / "labels.png"), "samples": 30})
    explanation = run_job(explainer.explain(demo_trace, demo_model, [1], params))
    assert explanation.provenance["features"] == f"{len(demo_scene.objects) + 1} objects"
    assert np.isfinite(explanation.maps[1][0]).all()


# -- conformance -----------------------------------------------------------------------------------

class _OnlyThese:
    """A registry that offers only the Captum explainers, for the conformance check."""

    def collect(self, hook):
        if hook == "lvlm_studio_explainers":
            return [("lvlm_explainers", method()) for method in CAPTUM_METHODS]
        return []


def test_plugin_conformance_on_the_demo_and_tiny_families():
    results = check_plugins(_OnlyThese(), families=["llava", "qwen2_vl"])
    assert {(r.item, r.model) for r in results} == {(m.id, s) for m in CAPTUM_METHODS
                                                   for s in ("demo", "llava", "qwen2_vl")}
    failed = [(r.item, r.model, r.reason) for r in results if r.outcome != PASS]
    assert not failed
