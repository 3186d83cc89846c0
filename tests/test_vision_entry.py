"""When vision enters (study 5) on planted truth: the lens at the last layer is the model's own output,
knocking out no layer changes nothing, and cutting answer -> image attention in every layer costs the
demo model its colour answers (the colour is only in the image)."""

import numpy as np
import pytest
import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.capture import attention_implementation
from lvlm_studio.core.tracing.trace import generate_trace
from lvlm_studio.core.tracing.vision_entry import (
    attention_knockout,
    knocked_out,
    layer_windows,
    logit_lens,
)
from lvlm_studio.demo.scenes import colour_example, make_scene


@pytest.fixture(scope="module")
def colour_traces(demo_model):
    traces = []
    for seed in range(3):
        scene = make_scene(2_000_000_100 + seed)
        _, example = colour_example(scene, np.random.default_rng(seed))
        traces.append(generate_trace(demo_model, scene.image, example.prompt, max_new_tokens=8))
    return traces


def _own_log_probs(loaded, trace):
    queries = [trace.answer_position(t) - 1 for t in range(len(trace.answer_ids))]
    inputs = trace.teacher_forced_inputs(loaded, upto=max(queries) + 1)
    with torch.no_grad():
        logits = loaded.model(**inputs, use_cache=False).logits[0, queries].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs, log_probs.gather(1, torch.as_tensor(trace.answer_ids)[:, None])[:, 0].numpy()


def test_lens_at_the_last_layer_is_the_model_output(demo_model, colour_traces):
    trace = colour_traces[0]
    lens = logit_lens(demo_model, trace)
    layers = len(demo_model.adapter.decoder_layers())
    assert lens.answer_rank.shape == (layers, len(trace.answer_ids))
    log_probs, chosen = _own_log_probs(demo_model, trace)
    np.testing.assert_allclose(lens.answer_prob[-1], np.exp(chosen), rtol=1e-5, atol=1e-7)
    expected_rank = (log_probs > torch.as_tensor(chosen)[:, None]).sum(dim=1).numpy()
    np.testing.assert_array_equal(lens.answer_rank[-1], expected_rank)
    # greedy answers are the top token at the last layer, so every token enters at some layer
    assert (lens.answer_rank[-1] == 0).all() and (lens.entry_layer() >= 0).all()
    assert lens.image_best_rank.shape == (layers, len(trace.answer_ids))


def test_knocking_out_no_layer_changes_nothing(demo_model, colour_traces):
    trace = colour_traces[0]
    inputs = trace.teacher_forced_inputs(demo_model)
    with torch.no_grad(), attention_implementation(demo_model.model, "eager"):
        before = demo_model.model(**inputs, use_cache=False).logits
        with knocked_out(demo_model, [], [len(trace.input_ids) - 1], trace.image_positions):
            after = demo_model.model(**inputs, use_cache=False).logits
    assert torch.equal(before, after)


def test_knocking_out_every_layer_costs_the_colour(demo_model, colour_traces):
    colour_drops = []
    for trace in colour_traces:
        knockout = attention_knockout(demo_model, trace, window=1)
        assert knockout.drop.shape == (len(demo_model.adapter.decoder_layers()), len(trace.answer_ids))
        colour = [t for t, token in enumerate(trace.answer_tokens)
                  if token.strip() in ("red", "green", "blue", "yellow")]
        assert colour, trace.answer_tokens
        colour_drops.append(knockout.drop_all[colour[-1]])
        assert knockout.drop_all.sum() > 2.0
        # the knockout can only remove evidence for the colour the model read from the image
        np.testing.assert_allclose(knockout.log_prob, _own_log_probs(demo_model, trace)[1], atol=1e-5)
    assert min(colour_drops) > 0.5, colour_drops


def test_windows():
    assert layer_windows(4, 2) == [(0, 1), (1, 2), (2, 3)]
    assert layer_windows(2, 5) == [(0, 1)]
    with pytest.raises(InputError):
        layer_windows(4, 0)


def test_the_image_lens_does_not_depend_on_the_chunk_size(demo_model, colour_traces, monkeypatch):
    import lvlm_studio.core.tracing.vision_entry as vision_entry

    whole = logit_lens(demo_model, colour_traces[1])
    monkeypatch.setattr(vision_entry, "IMAGE_CHUNK", 5)
    chunked = logit_lens(demo_model, colour_traces[1])
    np.testing.assert_array_equal(whole.image_best_rank, chunked.image_best_rank)
    np.testing.assert_allclose(whole.image_max_prob, chunked.image_max_prob, rtol=1e-6)
