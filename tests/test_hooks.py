"""Named hook points: caching only what is asked, and patching while the model answers, on every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.capture import attention_implementation
from lvlm_studio.core.models.hooks import caching, hook_points, hooks, run_with_cache, run_with_hooks
from lvlm_studio.core.tracing.trace import generate_trace


def _inputs(loaded, trace):
    return trace.teacher_forced_inputs(loaded)


def test_every_family_names_its_vision_blocks_projector_and_decoder(tiny_model):
    names = list(hook_points(tiny_model))
    blocks = len(tiny_model.adapter.vision_blocks())
    for index in range(blocks):
        for suffix in ("hook_resid_pre", "attn.hook_pattern", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized",
                       "hook_mlp_out", "hook_resid_post"):
            assert f"blocks.{index}.{suffix}" in names
    assert {"hook_embed", "hook_projector_in", "hook_projector_out", "lm.blocks.0.hook_resid_post"} <= set(names)
    assert names.index("blocks.0.hook_resid_pre") < names.index(f"blocks.{blocks - 1}.hook_resid_post")


def test_cache_holds_only_what_was_asked_and_the_stream_adds_up(tiny_model, tiny_trace):
    asked = ["blocks.0.hook_resid_pre", "blocks.0.hook_attn_out", "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out",
             "blocks.0.hook_resid_post", "blocks.1.hook_resid_pre", "blocks.0.ln2.hook_normalized"]
    output, cache = run_with_cache(tiny_model, _inputs(tiny_model, tiny_trace), asked)
    assert sorted(cache) == sorted(asked)
    assert output is None  # stopped once the vision activations were in: the language model never ran
    pre, attn, mid = cache["blocks.0.hook_resid_pre"], cache["blocks.0.hook_attn_out"], cache["blocks.0.hook_resid_mid"]
    block = tiny_model.adapter.vision_blocks()[0]
    scale_attn, scale_mlp = (getattr(block, name, 1.0) for name in ("lambda_1", "lambda_2"))  # InternViT layer scale
    # pre-norm blocks: the stream adds each sublayer's (scaled) output
    torch.testing.assert_close(mid, pre + scale_attn * attn)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], mid + scale_mlp * cache["blocks.0.hook_mlp_out"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    # the MLP's input is what its output is computed from (a transcoder's input and output)
    with torch.no_grad():
        mlp = next(getattr(block, n) for n in ("mlp", "feed_forward", "ffn") if hasattr(block, n))
        torch.testing.assert_close(mlp(cache["blocks.0.ln2.hook_normalized"]), cache["blocks.0.hook_mlp_out"])


def test_the_language_blocks_stream_between_the_sublayers_is_what_the_mlps_norm_reads(tiny_model, tiny_trace):
    """``lm.blocks.L.hook_resid_mid`` is the residual stream in front of the MLP's norm on every family, also
    where the attention's output has a norm of its own (Gemma-3's sandwich norms)."""
    asked = ["lm.blocks.0.hook_resid_pre", "lm.blocks.0.hook_resid_mid", "lm.blocks.0.ln2.hook_normalized"]
    _, cache = run_with_cache(tiny_model, _inputs(tiny_model, tiny_trace), asked, stop_early=False, logits_to_keep=0)
    norm = hook_points(tiny_model)["lm.blocks.0.hook_resid_mid"].module
    with torch.no_grad():
        torch.testing.assert_close(norm(cache["lm.blocks.0.hook_resid_mid"]), cache["lm.blocks.0.ln2.hook_normalized"])
    assert not torch.equal(cache["lm.blocks.0.hook_resid_mid"], cache["lm.blocks.0.hook_resid_pre"])


def test_patch_grids_index_every_patch_once(tiny_model, tiny_trace):
    _, cache = run_with_cache(tiny_model, _inputs(tiny_model, tiny_trace), "blocks.0.hook_resid_post")
    tokens = cache["blocks.0.hook_resid_post"].reshape(-1, cache["blocks.0.hook_resid_post"].shape[-1]).shape[0]
    grids = tiny_model.adapter.vision_patch_grids(_inputs(tiny_model, tiny_trace))
    assert len(grids) == 1
    flat = grids[0].reshape(-1)
    assert len(np.unique(flat)) == flat.size and flat.max() < tokens


def test_pattern_rows_are_distributions_and_watching_changes_nothing(tiny_model, tiny_trace):
    inputs = _inputs(tiny_model, tiny_trace)
    plain = tiny_model.model(**inputs, use_cache=False).logits
    watched, cache = run_with_cache(tiny_model, inputs, ["blocks.0.attn.hook_pattern", "lm.blocks.0.hook_resid_post"],
                                    stop_early=False, logits_to_keep=0)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.dim() == 4
    torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(watched.logits, plain, atol=1e-4, rtol=1e-4)
    assert tiny_model.adapter.vision_tower().config._attn_implementation != "lvlm_studio_hooked_eager"


def test_patching_changes_the_answer_and_an_identity_hook_does_not(tiny_model, tiny_trace):
    inputs = _inputs(tiny_model, tiny_trace)
    plain = tiny_model.model(**inputs, use_cache=False).logits
    same = run_with_hooks(tiny_model, inputs, [("blocks.0.hook_resid_post", lambda a, h: a.clone())]).logits
    torch.testing.assert_close(same, plain)
    # (shifted, not zeroed: a random tiny Gemma-3 projects every image to exactly zero)
    shifted = run_with_hooks(tiny_model, inputs, [("hook_projector_out", lambda a, h: a + 1.0)]).logits
    assert not torch.allclose(shifted, plain, atol=1e-3)


def test_patching_the_pattern_changes_what_attention_writes(tiny_model, tiny_trace):
    # Random towers attend almost uniformly, so attend each patch to itself only, on noise patches
    # (the fixture's image is one flat colour, where every patch's value is the same).
    inputs = _inputs(tiny_model, tiny_trace)
    inputs["pixel_values"] = torch.randn(inputs["pixel_values"].shape, generator=torch.Generator().manual_seed(0))
    _, plain = run_with_cache(tiny_model, inputs, "blocks.0.hook_attn_out")
    to_self = [("blocks.0.attn.hook_pattern", lambda w, h: torch.eye(w.shape[-1]).expand_as(w).contiguous())]
    with hooks(tiny_model, to_self):
        _, patched = run_with_cache(tiny_model, inputs, "blocks.0.hook_attn_out")
    before, after = plain["blocks.0.hook_attn_out"], patched["blocks.0.hook_attn_out"]
    assert (after - before).abs().max() > 0.1 * before.abs().max()


def test_our_pattern_equals_the_models_own_eager_weights(demo_model, demo_trace):
    inputs = _inputs(demo_model, demo_trace)
    tower = demo_model.adapter.vision_tower()
    with attention_implementation(demo_model.model, "eager"), torch.no_grad():
        own = tower(inputs["pixel_values"], output_attentions=True).attentions
    _, cache = run_with_cache(demo_model, inputs, "re:blocks\\.\\d+\\.attn\\.hook_pattern")
    assert len(cache) == len(own) == 3
    for index, weights in enumerate(own):
        torch.testing.assert_close(cache[f"blocks.{index}.attn.hook_pattern"], weights, atol=1e-5, rtol=1e-5)


def test_patching_another_scenes_last_vision_layer_makes_the_model_describe_that_scene(demo_model):
    from lvlm_studio.demo.scenes import make_scene

    a, b = make_scene(2_000_000_001), make_scene(2_000_000_002)
    trace_a = generate_trace(demo_model, a.image, "describe the image.")
    trace_b = generate_trace(demo_model, b.image, "describe the image.")
    assert trace_a.answer_text != trace_b.answer_text
    _, cache = run_with_cache(demo_model, _inputs(demo_model, trace_a), "blocks.2.hook_resid_post")
    donor = cache["blocks.2.hook_resid_post"]
    with hooks(demo_model, [("blocks.2.hook_resid_post", lambda act, hook: donor)]):
        patched = generate_trace(demo_model, b.image, "describe the image.")
    assert patched.answer_text == trace_a.answer_text


def test_caching_during_generation_keeps_every_step(demo_model, demo_scene):
    with caching(demo_model, ["blocks.1.hook_resid_post", "lm.blocks.3.hook_resid_post"]) as cache:
        trace = generate_trace(demo_model, demo_scene.image, "describe the image.")
    assert cache["blocks.1.hook_resid_post"].shape == (1, 65, 128)
    steps = cache.calls["lm.blocks.3.hook_resid_post"]
    assert len(steps) >= len(trace.answer_ids)  # prefill, one per new token, and the trace's hidden-state pass


def test_unknown_hook_names_are_refused_with_the_names_that_exist(demo_model, demo_trace):
    with pytest.raises(InputError, match="blocks.9.hook_resid_post") as info:
        run_with_cache(demo_model, _inputs(demo_model, demo_trace), ["blocks.9.hook_resid_post"])
    assert "blocks.0 .. blocks.2" in info.value.hint
    with pytest.raises(InputError):
        with hooks(demo_model, [("blocks.0.hook_nope", lambda a, h: a)]):
            pass
