"""Attention rollout and relevancy against plain restatements of METHODS.md on full attention tensors."""

import copy
import threading

import numpy as np
import pytest
import torch

from lvlm_studio.core.errors import Cancelled, InputError
from lvlm_studio.core.models.capture import attention_implementation
from lvlm_studio.core.models.loading import LoadedModel
from lvlm_studio.core.plugin.contracts import require_applicable
from lvlm_studio.core.plugin.jobs import collect, run_job
from lvlm_studio.testing import check_explanation, run_explainer


@pytest.fixture(scope="module")
def rollout(lvlm_registry):
    return lvlm_registry.explainer("rollout")


@pytest.fixture(scope="module")
def relevancy(lvlm_registry):
    return lvlm_registry.explainer("relevancy")


def full_forward(model, trace):
    """One eager forward over the whole prompt + answer with every attention tensor returned
    (with their autograd graph), the language model's and the vision tower's."""
    inputs = trace.teacher_forced_inputs(model)
    with attention_implementation(model.model, "eager"):
        out = model.model.model(**inputs, output_attentions=True, use_cache=False)
    logits = model.model.lm_head(out.last_hidden_state)[0]
    return logits, list(out.attentions), list(out.image_outputs.attentions)


# -- rollout ---------------------------------------------------------------------------------


def reference_rollout(attentions, start=0):
    """Rollout as stated: A_hat = rownorm(0.5 mean_h A + 0.5 I); R = A_hat_L ... A_hat_start."""
    size = attentions[0].shape[-1]
    result = np.eye(size)
    for weights in attentions[start:]:
        mixed = 0.5 * weights[0].mean(axis=0) + 0.5 * np.eye(size)
        mixed /= mixed.sum(axis=1, keepdims=True)
        result = mixed @ result
    return result


@pytest.fixture(scope="module")
def full_attention(demo_model, demo_trace):
    with torch.no_grad():
        _, attentions, _ = full_forward(demo_model, demo_trace)
    return [a.double().numpy() for a in attentions]


def test_rollout_matches_the_product_of_full_attention(rollout, demo_model, demo_trace, full_attention):
    explanation = run_explainer(rollout, demo_trace, demo_model, position_prior="keep")
    check_explanation(explanation, demo_trace)
    expected = reference_rollout(full_attention)
    image = demo_trace.image_positions
    for token in explanation.targets:
        query = demo_trace.answer_position(token) - 1
        np.testing.assert_allclose(explanation.maps[token][0], expected[query, image].reshape(8, 8), atol=1e-5)


def test_rollout_start_layer(rollout, demo_model, demo_trace, full_attention):
    explanation = run_explainer(rollout, demo_trace, demo_model, [2], start_layer=-2, position_prior="keep")
    expected = reference_rollout(full_attention, start=len(full_attention) - 2)
    query = demo_trace.answer_position(2) - 1
    np.testing.assert_allclose(explanation.maps[2][0], expected[query, demo_trace.image_positions].reshape(8, 8),
                               atol=1e-5)
    # A later start drops layers, so the map really changes.
    full = run_explainer(rollout, demo_trace, demo_model, [2], position_prior="keep")
    assert not np.allclose(explanation.maps[2][0], full.maps[2][0])


def test_rollout_divides_out_the_uniform_attention_prior(rollout, demo_model, demo_trace, full_attention):
    explanation = run_explainer(rollout, demo_trace, demo_model)
    length = full_attention[0].shape[-1]
    causal = np.tril(np.ones((length, length)))
    uniform = [np.broadcast_to(causal / causal.sum(1, keepdims=True), full_attention[0].shape)] * len(full_attention)
    expected = reference_rollout(full_attention) / reference_rollout(uniform)
    image = demo_trace.image_positions
    for token in explanation.targets:
        query = demo_trace.answer_position(token) - 1
        np.testing.assert_allclose(explanation.maps[token][0], expected[query, image].reshape(8, 8), rtol=1e-4)


# -- relevancy -------------------------------------------------------------------------------


def reference_relevancy(logit, attentions):
    """Chefer et al. as stated, on full matrices: R = I; R <- R + mean_h(relu(dA * A)) R, l = 1..L."""
    grads = torch.autograd.grad(logit, attentions, retain_graph=True)
    size = attentions[0].shape[-1]
    result = torch.eye(size, dtype=torch.float64).expand(attentions[0].shape[0], size, size)
    for weights, grad in zip(attentions, grads):
        a_bar = (grad * weights.detach()).clamp(min=0).mean(dim=1).double()
        result = result + a_bar @ result
    return result  # [batch, T, T]


REFERENCE_TOKENS = [0, 2, 5]


@pytest.fixture(scope="module")
def reference_maps(demo_model, demo_trace):
    """Language- and vision-side relevancy maps of REFERENCE_TOKENS, from the plain reference."""
    logits, language, vision = full_forward(demo_model, demo_trace)
    image = demo_trace.image_positions
    maps = {}
    for token in REFERENCE_TOKENS:
        query = demo_trace.answer_position(token) - 1
        logit = logits[query, demo_trace.answer_ids[token]]
        maps["language", token] = reference_relevancy(logit, language)[0, query, image].numpy().reshape(8, 8)
        # The projector reads the last layer's output (vision_feature_layer=-1): every layer counts.
        maps["vision", token] = reference_relevancy(logit, vision)[0, 0, 1:].numpy().reshape(8, 8)
    return maps


@pytest.mark.parametrize("side", ["language", "vision"])
def test_relevancy_matches_the_full_matrix_reference(relevancy, demo_model, demo_trace, reference_maps, side):
    explanation = run_explainer(relevancy, demo_trace, demo_model, REFERENCE_TOKENS, side=side)
    check_explanation(explanation, demo_trace, REFERENCE_TOKENS)
    for token in REFERENCE_TOKENS:
        expected = reference_maps[side, token]
        assert np.abs(expected).max() > 0  # the comparison is not between two zero maps
        np.testing.assert_allclose(explanation.maps[token][0], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("feature_layer", "layers"), [(-1, 3), (-2, 2), (1, 1), ([-3, -2], 2)])
def test_vision_side_stops_at_the_layer_the_projector_reads(demo_model, monkeypatch, feature_layer, layers):
    from lvlm_explainers.relevancy import vision_layers_read

    monkeypatch.setattr(demo_model.model.config, "vision_feature_layer", feature_layer)
    assert vision_layers_read(demo_model) == demo_model.adapter.vision_attention_modules()[:layers]


def test_vision_side_needs_an_encoder_layer(relevancy, demo_model, demo_trace, monkeypatch):
    monkeypatch.setattr(demo_model.model.config, "vision_feature_layer", 0)
    with pytest.raises(InputError, match="before any encoder layer"):
        run_explainer(relevancy, demo_trace, demo_model, [0], side="vision")


def test_relevancy_differs_between_tokens(relevancy, demo_model, demo_trace):
    explanation = run_explainer(relevancy, demo_trace, demo_model, [1, 5])
    assert not np.allclose(explanation.maps[1][0], explanation.maps[5][0])


def test_one_progress_report_per_backward(relevancy, demo_model, demo_trace):
    _, progress = collect(relevancy.explain(demo_trace, demo_model, [0, 1, 2], relevancy.resolve_params()))
    assert [p.done for p in progress] == [0, 1, 2, 3]
    assert all(p.total == 4 for p in progress)


def test_cancel_between_backwards_leaves_the_model_clean(relevancy, demo_model, demo_trace):
    cancel = threading.Event()
    seen = []

    def on_progress(progress):
        seen.append(progress)
        if progress.done == 1:
            cancel.set()

    def hook_counts():  # transformers installs hooks of its own; ours must all be gone
        return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in demo_model.model.modules()]

    before = hook_counts()
    job = relevancy.explain(demo_trace, demo_model, [0, 1, 2], relevancy.resolve_params())
    with pytest.raises(Cancelled):
        run_job(job, on_progress, cancel)
    assert len(seen) == 2
    assert demo_model.model.config._attn_implementation == "sdpa"
    assert hook_counts() == before


def frozen_copy(loaded):
    """A copy of the model with every parameter's requires_grad off (as quantised or frozen models are)."""
    model = copy.deepcopy(loaded.model).requires_grad_(False)
    return LoadedModel(model, loaded.processor, type(loaded.adapter)(model, loaded.processor), loaded.source)


def test_parameters_get_no_gradients_and_frozen_weights_work(relevancy, demo_model, demo_trace):
    expected = run_explainer(relevancy, demo_trace, demo_model, [3]).maps[3][0]
    assert all(p.grad is None for p in demo_model.model.parameters())
    frozen = frozen_copy(demo_model)
    for side in ("language", "vision"):
        maps = run_explainer(relevancy, demo_trace, frozen, [3], side=side).maps[3][0]
        assert np.isfinite(maps).all() and np.abs(maps).max() > 0
    np.testing.assert_allclose(run_explainer(relevancy, demo_trace, frozen, [3]).maps[3][0], expected, atol=1e-6)


# -- both ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rollout", "relevancy"])
def test_default_attention_is_restored(lvlm_registry, method, demo_model, demo_trace):
    run_explainer(lvlm_registry.explainer(method), demo_trace, demo_model, [0])
    assert demo_model.model.config._attn_implementation == "sdpa"


def test_bad_parameters_are_clear(rollout, relevancy, demo_model, demo_trace):
    with pytest.raises(InputError, match="start_layer 4 does not exist"):
        run_explainer(rollout, demo_trace, demo_model, [0], start_layer=4)
    with pytest.raises(InputError, match="Choose one of: language, vision"):
        relevancy.resolve_params({"side": "both"})
    with pytest.raises(InputError, match="answer token 99 does not exist"):
        run_explainer(relevancy, demo_trace, demo_model, [99])
    with pytest.raises(InputError, match="no answer tokens"):
        run_explainer(rollout, demo_trace, demo_model, [])
    for method in (rollout, relevancy):
        with pytest.raises(InputError, match="needs the model"):
            run_explainer(method, demo_trace, None)


# -- every family ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def family_traces():
    return {}


def tiny_trace(tiny_model, family_traces):
    from PIL import Image

    from lvlm_studio.core.tracing.trace import generate_trace

    family = tiny_model.family
    if family not in family_traces:
        family_traces[family] = generate_trace(tiny_model, Image.new("RGB", (64, 40), (220, 20, 20)),
                                               "describe the image.", max_new_tokens=3)
    trace = family_traces[family]
    if len(trace.answer_ids) == 0:
        pytest.skip("the random model ended at once")
    return trace


@pytest.mark.parametrize(("method", "params"), [("rollout", {}), ("relevancy", {}), ("relevancy", {"side": "vision"})])
def test_every_family(lvlm_registry, tiny_model, family_traces, method, params):
    trace = tiny_trace(tiny_model, family_traces)
    explainer = lvlm_registry.explainer(method)
    before = tiny_model.model.config._attn_implementation
    resolved = explainer.resolve_params(params)
    if params.get("side") == "vision" and tiny_model.family == "qwen2_vl":
        with pytest.raises(InputError, match="has none"):  # refused by the method itself, not only declared
            run_job(explainer.explain(trace, tiny_model, [0], resolved))
    if explainer.applies_to(tiny_model, resolved) is not None:  # declared (see test_families' support table)
        with pytest.raises(InputError, match="does not apply"):
            require_applicable(explainer, tiny_model, resolved)
    else:
        check_explanation(run_explainer(explainer, trace, tiny_model, **params), trace)
    assert tiny_model.model.config._attn_implementation == before


def test_vision_tokens_are_traced_to_their_tiles(tiny_model, family_traces):
    """The probe that follows vision tokens into the sequence agrees with the adapter's geometry:
    LLaVA-NeXT's base view is tile 0 in order, its high-res grid the stitched, unpadded tiles."""
    from lvlm_explainers.relevancy import vision_side_reason, vision_token_sources
    from lvlm_studio.core.models.llava_next import anyres_layout

    if (reason := vision_side_reason(tiny_model)) is not None:
        pytest.skip(reason)
    trace = tiny_trace(tiny_model, family_traces)
    config = tiny_model.model.config
    g = config.vision_config.image_size // config.vision_config.patch_size
    tiles, tokens = vision_token_sources(tiny_model, trace.teacher_forced_inputs(tiny_model), trace.image_positions,
                                         g * g + 1)
    base = len(trace.regions[0].positions)
    np.testing.assert_array_equal(tiles[:base].numpy(), 0)
    np.testing.assert_array_equal(tokens[:base].numpy(), np.arange(1, g * g + 1))
    if tiny_model.family == "llava_next":
        height, width = (int(v) for v in trace.model_inputs["image_sizes"][0])
        layout = anyres_layout(config, height, width)
        tile_cols = layout.full_grid[1] // g
        rows, cols = np.mgrid[layout.kept_rows[0]:layout.kept_rows[1], layout.kept_cols[0]:layout.kept_cols[1]]
        expected_tiles = 1 + (rows // g) * tile_cols + cols // g
        expected_tokens = 1 + (rows % g) * g + cols % g
        np.testing.assert_array_equal(tiles[base:].numpy(), expected_tiles.ravel())
        np.testing.assert_array_equal(tokens[base:].numpy(), expected_tokens.ravel())


def test_shortcuts_keep_the_maps_in_every_family(relevancy, tiny_model, family_traces, monkeypatch):
    """The last layer's rows only and the first layer folded from its output's gradient
    (``rows_with_gradients``, ``attention_output_leaf``) give the maps of the plain eager backward."""
    import lvlm_explainers.relevancy as module

    trace = tiny_trace(tiny_model, family_traces)
    params = relevancy.resolve_params({})
    if relevancy.applies_to(tiny_model, params) is not None or not module.rows_with_gradients_applies(tiny_model):
        pytest.skip("no shortcut applies to this family")
    targets = list(range(len(trace.answer_ids)))
    fast = run_job(relevancy.explain(trace, tiny_model, targets, params))
    monkeypatch.setattr(module, "rows_with_gradients_applies", lambda model: False)
    plain = run_job(relevancy.explain(trace, tiny_model, targets, params))
    for target in targets:
        for got, expected in zip(fast.maps[target], plain.maps[target], strict=True):
            scale = max(np.abs(expected).max(), 1e-30)
            np.testing.assert_allclose(got / scale, expected / scale, atol=1e-5)
