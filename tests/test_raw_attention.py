"""Raw attention, the end-to-end proof of the explainer contract."""

import numpy as np
import pytest
import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.capture import attention_implementation
from lvlm_studio.testing import check_explanation, run_explainer


@pytest.fixture(scope="module")
def raw(lvlm_registry):
    return lvlm_registry.explainer("raw_attention")


def reference_attention(model, trace):
    """Every layer's full attention from one eager forward with output_attentions=True."""
    inputs = trace.teacher_forced_inputs(model)
    with torch.no_grad(), attention_implementation(model.model, "eager"):
        out = model.model(**inputs, output_attentions=True, use_cache=False)
    return torch.stack(out.attentions)[:, 0].numpy()  # [L, H, T, T]


def test_maps_match_the_full_attention_tensor(raw, demo_model, demo_trace):
    explanation = run_explainer(raw, demo_trace, demo_model)
    check_explanation(explanation, demo_trace)
    full = reference_attention(demo_model, demo_trace)
    image = demo_trace.image_positions
    for token in explanation.targets:
        query = demo_trace.answer_position(token) - 1
        expected = full[:, :, query, image].mean(axis=(0, 1)).reshape(8, 8)
        np.testing.assert_allclose(explanation.maps[token][0], expected, atol=1e-6)


def test_layer_head_selection_and_max(raw, demo_model, demo_trace):
    full = reference_attention(demo_model, demo_trace)
    query = demo_trace.answer_position(1) - 1
    explanation = run_explainer(raw, demo_trace, demo_model, [1], layers="-1", heads="0,1", reduce="max")
    # Heads 0 and 1 share one key/value head in the demo model (4 heads, 2 KV heads): max within.
    expected = full[-1, [0, 1]][:, query, demo_trace.image_positions].max(axis=0).reshape(8, 8)
    np.testing.assert_allclose(explanation.maps[1][0], expected, atol=1e-6)


def test_default_attention_is_restored(raw, demo_model, demo_trace):
    run_explainer(raw, demo_trace, demo_model, [0])
    assert demo_model.model.config._attn_implementation == "sdpa"


def test_bad_parameters_are_clear(raw, demo_model, demo_trace):
    with pytest.raises(InputError, match="layer 7 does not exist"):
        run_explainer(raw, demo_trace, demo_model, [0], layers="7")
    with pytest.raises(InputError, match="Choose one of: mean, max"):
        raw.resolve_params({"reduce": "median"})
    with pytest.raises(InputError, match="has no parameter 'layer'"):
        raw.resolve_params({"layer": "1"})


def test_needs_a_model(raw, demo_trace):
    with pytest.raises(InputError, match="needs the model"):
        run_explainer(raw, demo_trace, None)


def test_every_family(raw, tiny_model, tiny_trace):
    check_explanation(run_explainer(raw, tiny_trace, tiny_model), tiny_trace)
