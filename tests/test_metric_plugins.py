"""The first-party metric plugins, through the public API only, on the demo model and its masks."""

import numpy as np
import pytest

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.plugin.contracts import Metric, MetricResult
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.jobs import collect, run_job
from lvlm_studio.demo.pointing import scene_masks
from lvlm_studio.testing import run_explainer

METRICS = {"deletion_insertion", "iou", "pointing_game", "model_randomisation", "input_independence", "agreement"}


@pytest.fixture(scope="module")
def tam_explanation(lvlm_registry, demo_trace, demo_model):
    return run_explainer(lvlm_registry.explainer("tam"), demo_trace, demo_model)


@pytest.fixture(scope="module")
def masks(demo_scene, demo_trace):
    return scene_masks(demo_scene, demo_trace.answer_tokens)


def score(registry, metric_id, trace, explanation, model, masks, **params):
    metric = registry.metrics()[metric_id]
    return run_job(metric.score(trace, explanation, model, masks, metric.resolve_params(params)))


def test_every_metric_is_registered(lvlm_registry):
    metrics = lvlm_registry.metrics()
    assert METRICS <= set(metrics)
    for metric in metrics.values():
        assert isinstance(metric, Metric) and metric.title


def test_deletion_insertion(lvlm_registry, demo_trace, demo_model, tam_explanation):
    result = score(lvlm_registry, "deletion_insertion", demo_trace, tam_explanation, demo_model, None, steps=8)
    assert isinstance(result, MetricResult)
    assert set(result.values) == {"deletion_auc", "insertion_auc"}
    x, deletion = result.curves["deletion"]
    assert len(x) == 9 and x[0] == 0 and x[-1] == 1
    _, insertion = result.curves["insertion"]
    # the end points are shared: the image, and the fully blurred image
    assert deletion[0] == pytest.approx(insertion[-1]) and deletion[-1] == pytest.approx(insertion[0])
    assert result.details["tokens"] == [demo_trace.visual_relevance.relevant_indices]
    per_token = score(lvlm_registry, "deletion_insertion", demo_trace, tam_explanation, demo_model, None, steps=4,
                      score_on="token", normalise=True, space="pixels")
    assert len(per_token.details["deletion_auc"]) == len(demo_trace.answer_ids)
    assert per_token.curves["deletion"][1][0] == pytest.approx(1.0)  # normalised: the image scores 1
    # an explanation of no visually relevant token ("a") is scored on the tokens it explains
    article = Explanation("tam", {0: tam_explanation.maps[0]})
    fallback = score(lvlm_registry, "deletion_insertion", demo_trace, article, demo_model, None, steps=4)
    assert "fallback" in fallback.details and fallback.details["tokens"] == [[0]]


def test_faithfulness_tells_a_good_map_from_a_bad_one(lvlm_registry, demo_trace, demo_model, demo_scene):
    """On the demo model, a map that is the named objects' masks beats its inverse by a wide margin."""
    grid = demo_trace.regions[0].grid
    objects = np.logical_or.reduce([o.mask for o in demo_scene.objects]).astype(float)
    cells = objects.reshape(grid[0], objects.shape[0] // grid[0], grid[1], -1).mean(axis=(1, 3))
    targets = list(range(len(demo_trace.answer_ids)))
    good = Explanation("masks", {t: [cells] for t in targets})
    bad = Explanation("inverse", {t: [1 - cells] for t in targets})
    a = score(lvlm_registry, "deletion_insertion", demo_trace, good, demo_model, None, steps=16)
    b = score(lvlm_registry, "deletion_insertion", demo_trace, bad, demo_model, None, steps=16)
    assert a.values["deletion_auc"] < b.values["deletion_auc"] - 0.3
    assert a.values["insertion_auc"] > b.values["insertion_auc"] + 0.3


def test_plausibility_and_pointing(lvlm_registry, demo_trace, demo_model, masks, tam_explanation):
    iou = score(lvlm_registry, "iou", demo_trace, tam_explanation, demo_model, masks)
    assert set(iou.values) == {"obj_iou", "func_iou", "f1_iou"}
    assert all(0 <= v <= 1 for v in iou.values.values())
    assert set(iou.details["object_words"]) >= {"red", "circle"} or iou.details["object_words"]
    assert "a" in iou.details["function_words"]  # "a" is a function word of every demo caption
    pointing = score(lvlm_registry, "pointing_game", demo_trace, tam_explanation, demo_model, masks)
    object_tokens = [i for i, t in enumerate(demo_trace.answer_tokens) if t in masks]
    assert pointing.details["trials"] == len(object_tokens) > 0
    assert pointing.values["pointing"] == pointing.details["hit_count"] / pointing.details["trials"]
    with pytest.raises(InputError, match="masks"):
        score(lvlm_registry, "iou", demo_trace, tam_explanation, demo_model, None)


def test_masks_on_the_answer_objects_score_perfectly(lvlm_registry, demo_trace, demo_model, masks):
    """A map that *is* each word's object (on the 8x8 grid) gets the top pointing score and a high
    Obj-IoU (about 0.6, not 1: 12-pixel cells resampled bilinearly cannot trace a 24-pixel shape's
    outline); the function words' maps are dark, so Func-IoU is high too."""
    grid = demo_trace.regions[0].grid

    def cells(mask):
        return mask.reshape(grid[0], mask.shape[0] // grid[0], grid[1], -1).mean(axis=(1, 3))

    named = {t: masks[t] for t in range(len(demo_trace.answer_ids)) if t in masks}
    maps = {t: [cells(named[t]) if t in named else np.zeros(grid)] for t in range(len(demo_trace.answer_ids))}
    result = score(lvlm_registry, "iou", demo_trace, Explanation("oracle", maps), demo_model, masks)
    assert result.values["obj_iou"] > 0.5 and result.values["func_iou"] > 0.9
    pointing = score(lvlm_registry, "pointing_game", demo_trace, Explanation("oracle", maps), demo_model, masks)
    assert pointing.values["pointing"] == 1.0


def test_sanity_metrics(lvlm_registry, demo_trace, demo_model, tam_explanation):
    randomisation = lvlm_registry.metrics()["model_randomisation"]
    result, progress = collect(randomisation.score(demo_trace, tam_explanation, demo_model, None,
                                                   randomisation.resolve_params({"granularity": "block"})))
    assert set(result.values) == {"rho_language", "rho_all"} and result.values["rho_all"] < 0.5
    assert result.details["stages"] == ["language_model", "vision"] and len(progress) >= 3
    independence = score(lvlm_registry, "input_independence", demo_trace, tam_explanation, demo_model, None)
    assert independence.values["rho_input"] < 0.5
    foreign = Explanation("not installed", tam_explanation.maps)
    with pytest.raises(InputError, match="not an installed method"):
        score(lvlm_registry, "input_independence", demo_trace, foreign, demo_model, None)


def test_agreement_metric(lvlm_registry, demo_trace, demo_model, tam_explanation):
    with pytest.raises(InputError, match="agreement needs two methods"):  # a method always agrees with itself
        score(lvlm_registry, "agreement", demo_trace, tam_explanation, demo_model, None, other="tam")
    rng = np.random.default_rng(0)
    noise = Explanation("noise", {t: [rng.random(m.shape) for m in ms] for t, ms in tam_explanation.maps.items()})
    other = score(lvlm_registry, "agreement", demo_trace, noise, demo_model, None, other="tam")
    assert abs(other.values["rank_correlation"]) < 0.3 and other.values["inconsistent"] > 0.5
    assert other.details["per_token"]["0"]["k"] == round(0.1 * 64)
    with pytest.raises(InputError, match="no explanation method"):
        score(lvlm_registry, "agreement", demo_trace, noise, demo_model, None, other="nonexistent")
