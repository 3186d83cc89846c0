"""The attention-sink filter of raw attention, and the key means it is built on."""

import numpy as np
import pytest
import torch

import lvlm_explainers.raw as raw_module
from lvlm_explainers.raw import attention_sinks, renormalise_without
from lvlm_studio.core.models.capture import attention_implementation, capture_attention, capture_attention_and_key_means
from lvlm_studio.testing import check_explanation, run_explainer


@pytest.fixture(scope="module")
def raw(lvlm_registry):
    return lvlm_registry.explainer("raw_attention")


def test_outlier_rule():
    rng = np.random.default_rng(0)
    received = rng.uniform(0.01, 0.02, size=64)
    assert not attention_sinks(received, 10.0).any()
    received[[0, 9]] = [0.5, 0.3]
    np.testing.assert_array_equal(np.flatnonzero(attention_sinks(received, 10.0)), [0, 9])
    assert attention_sinks(received, 0.0).sum() <= 32  # never more than half, whatever the threshold
    assert not attention_sinks(np.full(16, 0.2), 0.0).any()


def test_renormalise_without():
    combined = np.array([[0.1, 0.6, 0.1, 0.2], [0.0, 0.0, 0.0, 0.0]])
    out = renormalise_without(combined, np.array([False, True, False, False]))
    np.testing.assert_allclose(out, [[0.25, 0.0, 0.25, 0.5], [0.0, 0.0, 0.0, 0.0]])


def test_a_key_with_huge_attention_is_dropped(raw, demo_model, demo_trace, monkeypatch):
    """Capture replaced by a constructed case: key 5 takes most of every query's attention."""
    n_image = len(demo_trace.image_positions)
    layers, heads = 4, 4
    rng = np.random.default_rng(1)

    def fake_capture(model, inputs, queries, keys):
        weights = rng.uniform(0.001, 0.01, size=(layers, heads, len(queries), n_image)).astype(np.float32)
        weights[..., 5] = 0.6
        received = rng.uniform(0.001, 0.01, size=(layers, heads, n_image)).astype(np.float32)
        received[..., 5] = 0.5
        fake_capture.weights = weights
        return weights, received

    monkeypatch.setattr(raw_module, "capture_attention_and_key_means", fake_capture)
    explanation = run_explainer(raw, demo_trace, demo_model, [0, 2], sink_filter=True)
    check_explanation(explanation, demo_trace, [0, 2])
    assert explanation.provenance["sink_keys"] == [5]
    for row, token in enumerate([0, 2]):
        flat = explanation.maps[token][0].ravel()
        assert flat[5] == 0.0
        assert flat.sum() == pytest.approx(1.0, abs=1e-6)
        # The other keys keep their proportions.
        expected = fake_capture.weights[:, :, row].mean(axis=(0, 1))
        expected[5] = 0.0
        np.testing.assert_allclose(flat, expected / expected.sum(), rtol=1e-5)


def test_off_by_default_leaves_maps_unchanged(raw, demo_model, demo_trace):
    assert raw.resolve_params({})["sink_filter"] is False
    default = run_explainer(raw, demo_trace, demo_model, [1, 3])
    assert "sink_keys" not in default.provenance
    inputs = demo_trace.teacher_forced_inputs(demo_model)
    queries = [demo_trace.answer_position(t) - 1 for t in (1, 3)]
    direct = capture_attention(demo_model, inputs, queries, demo_trace.image_positions).mean(axis=(0, 1))
    for row, token in enumerate([1, 3]):
        np.testing.assert_allclose(default.maps[token][0].ravel(), direct[row], atol=1e-6)


def test_on_the_demo_model(raw, demo_model, demo_trace):
    """With no key dropped, the filter only renormalises; with a low threshold, it drops keys."""
    default = run_explainer(raw, demo_trace, demo_model, [1])
    lenient = run_explainer(raw, demo_trace, demo_model, [1], sink_filter=True, sink_threshold=1e6)
    assert lenient.provenance["sink_keys"] == []
    np.testing.assert_allclose(lenient.maps[1][0], default.maps[1][0] / default.maps[1][0].sum(), rtol=1e-5)
    strict = run_explainer(raw, demo_trace, demo_model, [1], sink_filter=True, sink_threshold=1.0)
    dropped = strict.provenance["sink_keys"]
    assert 0 < len(dropped) <= 32
    flat = strict.maps[1][0].ravel()
    assert (flat[dropped] == 0).all() and flat.sum() == pytest.approx(1.0, abs=1e-5)


def test_key_means_match_the_full_attention_tensor(demo_model, demo_trace):
    inputs = demo_trace.teacher_forced_inputs(demo_model)
    image = demo_trace.image_positions
    queries = [demo_trace.answer_start - 1]
    rows, means = capture_attention_and_key_means(demo_model, inputs, queries, image)
    with torch.no_grad(), attention_implementation(demo_model.model, "eager"):
        out = demo_model.model(**inputs, output_attentions=True, use_cache=False)
    full = torch.stack(out.attentions)[:, 0].numpy()  # [L, H, T, T]
    length = full.shape[-1]
    expected = np.stack([full[..., k:, k].mean(axis=-1) for k in image], axis=-1)  # queries that see k
    np.testing.assert_allclose(means, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(rows, full[:, :, queries][..., image], atol=1e-6)
    assert means.shape == (full.shape[0], full.shape[1], len(image)) and length > image.max()
