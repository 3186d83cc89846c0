"""iGOS++: its regularisers on hand-made masks, its job behaviour, and its maps on every family."""

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lvlm_explainers.igos import IGOSPlusPlus, bilateral_tv, mask_shape, region_guide, regularisation
from lvlm_studio.core.errors import Cancelled, InputError
from lvlm_studio.core.plugin.jobs import collect, run_job
from lvlm_studio.core.tracing.relevance import VisualRelevance
from lvlm_studio.testing import check_explanation

FAST = {"iterations": 2, "steps": 2, "batch_size": 4}


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """One tiny family is enough for behaviour that does not depend on the layout."""
    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.testing.tiny_models import build_tiny_model

    model = load_model(build_tiny_model("llava", tmp_path_factory.mktemp("llava")), LoadOptions(device="cpu"))
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((40, 64, 3)) * 255).astype(np.uint8))
    trace = generate_trace(model, image, "describe the image.", max_new_tokens=3)
    if len(trace.answer_ids) == 0:
        pytest.skip("the random model ended its answer at once")
    return model, trace


def test_mask_shape_is_the_grid_or_the_cap():
    assert mask_shape((24, 24), 32) == (24, 24)
    assert mask_shape((48, 20), 32) == (32, 20)


def test_bilateral_tv_weights_differences_by_image_edges():
    mask = torch.tensor([[0.0, 1.0]])
    flat = torch.zeros(3, 1, 2)
    assert float(bilateral_tv(mask, flat, 0.01)) == pytest.approx(1.0)  # (1 - 0)^2, weight 1
    edge = torch.zeros(3, 1, 2)
    edge[0, 0, 1] = 0.1  # a red step of 0.1: weight exp(-0.01 / 0.01) = e^-1
    assert float(bilateral_tv(mask, edge, 0.01)) == pytest.approx(math.exp(-1))
    assert float(bilateral_tv(torch.ones(1, 1), torch.zeros(3, 1, 1), 0.01)) == 0.0


def test_regularisation_terms_by_hand():
    params = {"lambda1": 1.0, "lambda2": 0.1, "lambda3": 10.0, "gamma": 1.0, "tv_sigma": 0.01}
    guide = torch.zeros(3, 1, 2)
    assert float(regularisation([torch.ones(1, 2)], [guide], params, 0)) == 0.0
    mask = torch.tensor([[0.0, 1.0]])
    # L1: mean |1 - M| = 0.5; TV: 10 x 1; L2 at i = 1: 0.1 e^-1 x 1
    expected = 0.5 + 10.0 + 0.1 * math.exp(-1)
    assert float(regularisation([mask], [guide], params, 1)) == pytest.approx(expected)


def test_region_guide_crops_the_box_and_scales_to_the_mask():
    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.paste((255, 0, 0), (2, 0, 4, 2))
    guide = region_guide(image, (2, 0, 4, 2), (1, 2))
    assert guide.shape == (3, 1, 2) and torch.allclose(guide[0], torch.ones(1, 2))


def test_every_family(tiny_model, tiny_trace):
    explainer = IGOSPlusPlus()
    params = explainer.resolve_params({**FAST, "mask_size": 3})
    explanation, progress = collect(explainer.explain(tiny_trace, tiny_model, [0], params))
    check_explanation(explanation, tiny_trace, [0])
    passes = explanation.provenance["forward_backward_passes"]
    # ceil(4 N / batch) passes per iteration; the tiny trace's flat image equals its blurred baseline,
    # so the gradient is zero and the optimisation stops after its first iteration.
    assert passes == len(explanation.provenance["loss_history"][0]) * math.ceil(4 * 2 / 4)
    assert len(progress) >= passes + 1, "a report before every forward pass"
    for grid_map in explanation.maps[0]:
        assert (grid_map >= 0).all() and (grid_map <= 1).all()


def test_a_textured_image_runs_every_iteration_in_batched_passes(llava):
    model, trace = llava
    explainer = IGOSPlusPlus()
    explanation, progress = collect(explainer.explain(trace, model, [0], explainer.resolve_params(FAST)))
    assert len(explanation.provenance["loss_history"][0]) == 2
    assert explanation.provenance["forward_backward_passes"] == 2 * math.ceil(4 * 2 / 4) == 4
    assert [p.done for p in progress[1:]] == [0, 1, 2, 3]


def test_falls_back_to_the_targets_when_nothing_is_visually_relevant(llava):
    tiny_model, tiny_trace = llava
    n = len(tiny_trace.answer_ids)
    zeros = np.zeros(n, dtype=np.float32)
    from lvlm_studio.core.tracing.relevance import blur_sigma

    tiny_trace.visual_relevance = VisualRelevance(zeros, zeros, np.zeros(n, bool), blur_sigma(tiny_trace.image.size))
    try:
        explainer = IGOSPlusPlus()
        explanation = run_job(explainer.explain(tiny_trace, tiny_model, [0], explainer.resolve_params(FAST)))
    finally:
        tiny_trace.visual_relevance = None
    assert explanation.provenance["fallback"] and explanation.provenance["score_tokens"] == [[0]]


def test_the_demo_map_points_at_an_object_and_the_deletion_score_falls(demo_model, demo_trace, demo_scene):
    explainer = IGOSPlusPlus()
    explanation = run_job(explainer.explain(demo_trace, demo_model, [1], explainer.resolve_params({})))
    provenance = explanation.provenance
    relevant = provenance["score_tokens"][0]
    assert provenance["fallback"] is None and relevant, "the colour and shape words are visually relevant"
    assert {demo_trace.answer_tokens[i] for i in relevant} & {"red", "blue", "yellow", "circle", "square", "triangle"}
    history = provenance["loss_history"][0]
    assert history[-1]["combined_deletion"] < history[0]["combined_deletion"], "the optimisation deletes evidence"
    grid = explanation.maps[1][0]
    row, col = np.unravel_index(np.argmax(grid), grid.shape)
    rows, cols = grid.shape
    y, x = int((row + 0.5) * 96 / rows), int((col + 0.5) * 96 / cols)
    assert any(obj.mask[y, x] for obj in demo_scene.objects), "the most salient cell lies on an object"


def test_cancels_within_one_pass(llava):
    tiny_model, tiny_trace = llava
    cancel = threading.Event()
    seen = []

    def on_progress(progress):
        seen.append(progress)
        if len(seen) == 2:
            cancel.set()

    explainer = IGOSPlusPlus()
    with pytest.raises(Cancelled):
        run_job(explainer.explain(tiny_trace, tiny_model, [0], explainer.resolve_params(FAST)), on_progress, cancel)
    assert len(seen) == 2


def test_bad_input():
    explainer = IGOSPlusPlus()
    with pytest.raises(InputError, match="iterations"):
        explainer.resolve_params({"iterations": 0})
    with pytest.raises(InputError, match="needs the model"):
        run_job(explainer.explain(None, None, [0], explainer.resolve_params({})))


SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "shapes.png"


def test_cli_shows_progress_and_writes_the_run(capsys, tmp_path):
    from lvlm_studio.cli import main

    out = tmp_path / "igos"
    code = main(["explain", "--method", "igos++", "--image", str(SAMPLE), "--prompt", "describe the image.",
                 "--param", "iterations=1", "--param", "steps=2", "--tokens", "1", "--out", str(out),
                 "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "iGOS++" in err and "iteration 1" in err, "the progress bar names the method and the step"
    record = json.loads((out / "run.json").read_text())
    assert record["provenance"]["forward_backward_passes"] == 1


def test_ctrl_c_in_the_middle_leaves_no_output(capsys, tmp_path, monkeypatch):
    from lvlm_explainers import igos
    from lvlm_studio.cli import EXIT_CANCELLED, main

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(igos, "answer_logprobs_with_grad", interrupted)
    out = tmp_path / "igos"
    code = main(["explain", "--method", "igos++", "--image", str(SAMPLE), "--prompt", "describe the image.",
                 "--param", "iterations=1", "--tokens", "1", "--out", str(out), "--device", "cpu"])
    assert code == EXIT_CANCELLED and calls == [1] and "cancelled" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".lvlm-*"))
