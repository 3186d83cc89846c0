"""Occlusion and RISE: placements and masks by hand, batching, cancelling, and every family."""

import math
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from lvlm_explainers.perturbation import (
    RISE,
    Occlusion,
    aggregate_drops,
    occlusion_boxes,
    rise_draws,
    rise_masks,
    span_centres,
    window_starts,
)
from lvlm_studio.core.errors import Cancelled, InputError
from lvlm_studio.core.perturbation.perturb import pixels_to_grids
from lvlm_studio.core.plugin.jobs import Progress, collect, run_job
from lvlm_studio.testing import check_explanation

FAST_RISE = {"masks": 6, "cells": 2, "batch_size": 4}


def test_window_starts_reach_the_far_edge():
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(10, 4, 4) == [0, 3, 6]  # the stride shrinks so that the last patch ends at 10
    assert window_starts(8, 4, 4) == [0, 4]
    assert window_starts(3, 5, 1) == [0]  # a window wider than the image: one placement


def test_occlusion_boxes_cover_the_image():
    boxes = occlusion_boxes((96, 48), window=0.25, stride=0.25)  # 24 px patches every 24 px
    assert boxes[0] == (0, 0, 24, 24) and boxes[-1] == (72, 24, 96, 48)
    assert len(boxes) == 4 * 2


def test_full_span_centres_run_from_edge_to_edge():
    assert span_centres(96, 10) == [round(v) for v in np.linspace(0, 96, 11)]
    boxes = occlusion_boxes((96, 96), window=0.35, stride=0.1, placement="span")
    assert len(boxes) == 11 * 11  # against 8 x 8 fitted placements: about 1.9x the passes
    assert len(occlusion_boxes((96, 96), window=0.35, stride=0.1)) == 8 * 8
    left, top, right, bottom = boxes[0]
    assert (right - left, bottom - top) == (34, 34) and (left + right) / 2 == 0  # centred on the corner


def test_a_constant_drop_gives_a_flat_map_under_full_span():
    size = (96, 72)
    boxes = occlusion_boxes(size, window=0.35, stride=0.1, placement="span")
    flat = aggregate_drops(boxes, np.full(len(boxes), 1.0), size, "pixel")
    assert flat.shape == (72, 96)
    np.testing.assert_allclose(flat, 1.0)
    cell = [SimpleNamespace(grid=(8, 8), box=(0, 0, 96, 96), image_index=0)]
    span = occlusion_boxes((96, 96), window=0.35, stride=0.1, placement="span")
    nearly = pixels_to_grids(aggregate_drops(span, np.full(len(span), 1.0), (96, 96), "mean"), cell)[0]
    assert 0.85 < nearly.min() and nearly.max() < 1.1  # divided by the mean coverage: nearly flat
    # Fitted placements divided by the mean coverage: the same constant drop is weighted to the centre.
    fitted = occlusion_boxes((96, 96), window=0.35, stride=0.1)
    grid = pixels_to_grids(aggregate_drops(fitted, np.full(len(fitted), 1.0), (96, 96), "mean"), cell)[0]
    assert grid[0, 0] < 0.1 and grid[3:5, 3:5].min() > 1.5


def test_rise_masks_are_seeded_in_range_and_keep_about_p():
    a = rise_masks(*rise_draws(200, 4, 0.5, (30, 20), np.random.default_rng(1)), (30, 20))
    b = rise_masks(*rise_draws(200, 4, 0.5, (30, 20), np.random.default_rng(1)), (30, 20))
    assert a.shape == (200, 20, 30) and np.array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert abs(a.mean() - 0.5) < 0.05
    all_kept = rise_masks(*rise_draws(3, 4, 1.0, (30, 20), np.random.default_rng(0)), (30, 20))
    assert np.allclose(all_kept, 1.0)


def test_a_rise_mask_by_hand():
    # One 2 x 2 grid [[1, 0], [0, 0]] over a 4 x 4 image: cells of 2 px, upsampled to 6 x 6, no offset.
    grids = np.array([[[True, False], [False, False]]])
    mask = rise_masks(grids, np.array([0]), np.array([0]), (4, 4))[0]
    # Output pixel i samples the grid at (i + 0.5) / 3 - 0.5 (clamped at 0): 1, 1, 2/3, 1/3 along a row.
    np.testing.assert_allclose(mask[0], [1, 1, 2 / 3, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(mask, np.outer(mask[0], mask[0]), atol=1e-6)


def test_pixels_to_grids_averages_each_cell():
    pixels = np.arange(16, dtype=float).reshape(4, 4)
    whole = SimpleNamespace(grid=(2, 2), box=(0, 0, 4, 4), image_index=0)
    (grid,) = pixels_to_grids(pixels, [whole])
    assert grid.tolist() == [[2.5, 4.5], [10.5, 12.5]]  # e.g. mean of 0, 1, 4, 5
    # A box reaching past the image: the outer cells hold no pixel centre and take the nearest pixel.
    wide = SimpleNamespace(grid=(1, 3), box=(-4, 0, 8, 4), image_index=0)
    (grid,) = pixels_to_grids(pixels, [wide])
    assert grid[0, 1] == pytest.approx(pixels.mean())
    assert (grid[0, 0], grid[0, 2]) == (8.0, 11.0)  # pixels (row 2, col 0) and (row 2, col 3)


@pytest.mark.parametrize("explainer, params", [(Occlusion(), {"window": 0.5, "stride": 0.5, "batch_size": 4}),
                                               (RISE(), FAST_RISE)], ids=["occlusion", "rise"])
def test_every_family(tiny_model, tiny_trace, explainer, params):
    explanation, progress = collect(explainer.explain(tiny_trace, tiny_model, [0], explainer.resolve_params(params)))
    check_explanation(explanation, tiny_trace, [0])
    assert len(progress) > explanation.provenance["forward_passes"], "a report before every forward pass"


def test_occlusion_finds_the_object_on_the_demo(demo_model, demo_trace, demo_scene):
    colour = next(i for i, t in enumerate(demo_trace.answer_tokens) if t in {"red", "green", "blue", "yellow"})
    explainer = Occlusion()
    explanation = run_job(explainer.explain(demo_trace, demo_model, [colour], explainer.resolve_params({})))
    grid = explanation.maps[colour][0]
    row, col = np.unravel_index(np.argmax(grid), grid.shape)
    y, x = int((row + 0.5) * 96 / grid.shape[0]), int((col + 0.5) * 96 / grid.shape[1])
    named = [o for o in demo_scene.objects if demo_trace.answer_tokens[colour] in o.words]
    assert any(o.mask[y, x] for o in named), "blurring the named object hurts its colour word most"


def test_batched_and_unbatched_give_the_same_maps(demo_model, demo_trace):
    explainer = RISE()
    small = {"masks": 8, "cells": 4}
    one = run_job(explainer.explain(demo_trace, demo_model, [1], explainer.resolve_params({**small, "batch_size": 1})))
    many = run_job(explainer.explain(demo_trace, demo_model, [1], explainer.resolve_params({**small, "batch_size": 8})))
    np.testing.assert_allclose(one.maps[1][0], many.maps[1][0], atol=1e-4)
    assert (one.provenance["forward_passes"], many.provenance["forward_passes"]) == (8, 1)


@pytest.mark.parametrize("explainer, params", [(Occlusion(), {"batch_size": 2}), (RISE(), FAST_RISE)],
                         ids=["occlusion", "rise"])
def test_cancels_within_one_pass(demo_model, demo_trace, explainer, params):
    cancel = threading.Event()
    seen = []

    def on_progress(progress):
        seen.append(progress)
        if len(seen) == 2:
            cancel.set()

    with pytest.raises(Cancelled):
        run_job(explainer.explain(demo_trace, demo_model, [0], explainer.resolve_params(params)), on_progress, cancel)
    assert len(seen) == 2


def test_bad_input(demo_trace):
    with pytest.raises(InputError, match="needs the model"):
        run_job(Occlusion().explain(demo_trace, None, [0], Occlusion().resolve_params({})))
    with pytest.raises(InputError, match="does not exist"):
        run_job(RISE().explain(demo_trace, object(), [99], RISE().resolve_params({})))
    with pytest.raises(InputError, match="keep"):
        RISE().resolve_params({"keep": 0})
    assert math.isfinite(Occlusion().resolve_params({"window": "0.5"})["window"])


def test_rise_map_is_flat_when_the_masks_do_not_change_the_score(demo_model, demo_trace, monkeypatch):
    """With every masked image scoring the same, the map must not show where the seeded masks fell
    (that picture survives model randomisation): E[p | shown] - E[p] is zero everywhere."""
    import lvlm_explainers.perturbation as perturbation

    def equal_scores(loaded, trace, images, batch_size=16, what="", upto=None, contrast=None):
        yield Progress(len(images), len(images), what)
        return np.full((len(images), len(trace.answer_ids)), -0.7, dtype=np.float32)

    monkeypatch.setattr(perturbation, "score_images", equal_scores)
    explanation = run_job(RISE().explain(demo_trace, demo_model, [0], RISE().resolve_params({"masks": 40, "cells": 4})))
    np.testing.assert_allclose(explanation.maps[0][0], 0.0, atol=1e-9)
