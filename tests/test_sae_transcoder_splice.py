"""Transcoders spliced in where they belong: they read an MLP's input at ``hook_name`` and replace its
output at ``hook_name_out``, and every reconstruction metric compares their prediction with that output.

Planted truth: one of the demo model's vision MLPs is made exactly computable by a transcoder for the
length of a test (its activation becomes a ReLU, or the identity for a linear stand-in), and a
transcoder reading the MLP's input (``ln2.hook_normalized``, as SAELens's and ViT-Prisma's do) is built
from the MLP's own weights, so its prediction is the block's true output. Spliced in, it must leave
the model unchanged (explained variance 1, KL 0); a random transcoder at the same hook points must not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.hooks import hooks, run_with_cache
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.sae.coders import CoderConfig, build_coder
from lvlm_studio.sae.evaluate import evaluate_coder, random_topk_like
from lvlm_studio.sae.inspect import edited_answer, feature_attribution
from lvlm_studio.sae.splice import scale_features, splice_hooks, splice_points

LAYER = 1
HOOK_IN = f"blocks.{LAYER}.ln2.hook_normalized"  # the MLP's input
HOOK_OUT = f"blocks.{LAYER}.hook_mlp_out"


@contextmanager
def _simplified(demo_model, activation: nn.Module) -> Iterator[nn.Module]:
    """Block LAYER's MLP with ``activation`` in place of its own, for the length of the block; yields
    the MLP and puts the model back afterwards (it is shared by the whole session)."""
    mlp = demo_model.adapter.vision_blocks()[LAYER].mlp
    function = mlp.activation_fn
    mlp.activation_fn = activation
    try:
        yield mlp
    finally:
        mlp.activation_fn = function


@pytest.fixture
def relu_mlp(demo_model):
    with _simplified(demo_model, nn.ReLU()) as mlp:
        yield mlp


def _exact_transcoder(mlp: nn.Module, tokens: str = "all") -> nn.Module:
    """fc2(relu(fc1(x))) as a standard (ReLU) transcoder: f = relu(x W1ᵀ + b1), ŷ = f W2ᵀ + b2."""
    d_in, d_sae, d_out = mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features
    coder = build_coder(CoderConfig(d_in=d_in, d_sae=d_sae, d_out=d_out, kind="transcoder", hook_name=HOOK_IN,
                                    hook_name_out=HOOK_OUT, tokens=tokens))
    with torch.no_grad():
        coder.W_enc.copy_(mlp.fc1.weight.T)
        coder.b_enc.copy_(mlp.fc1.bias)
        coder.W_dec.copy_(mlp.fc2.weight.T)
        coder.b_dec.copy_(mlp.fc2.bias)
    return coder


def _examples(n: int = 2):
    from lvlm_studio.demo.evaluate import heldout_examples

    return [(s.image, e.prompt, e.answer) for s, e in heldout_examples(n, "caption")]


def test_an_exact_transcoder_of_an_mlp_scores_perfectly_and_a_random_one_does_not(demo_model, relu_mlp):
    coder = _exact_transcoder(relu_mlp)
    assert splice_points(demo_model, coder) == (HOOK_IN, HOOK_OUT)
    exact = run_job(evaluate_coder(demo_model, coder, _examples(), 2))
    assert exact.hook_name_out == HOOK_OUT
    assert exact.explained_variance == pytest.approx(1.0, abs=1e-5)
    assert exact.explained_variance_cls == pytest.approx(1.0, abs=1e-5)
    assert exact.explained_variance_patch == pytest.approx(1.0, abs=1e-5)
    assert exact.cosine == pytest.approx(1.0, abs=1e-5) and exact.l2_ratio == pytest.approx(1.0, abs=1e-5)
    assert exact.mse == pytest.approx(0.0, abs=1e-8)
    assert exact.kl == pytest.approx(0.0, abs=1e-6)
    assert exact.nll_coder == pytest.approx(exact.nll_original, abs=1e-5)
    random = run_job(evaluate_coder(demo_model, random_topk_like(coder), _examples(), 2))
    assert random.hook_name_out == HOOK_OUT
    assert random.explained_variance < 0.5 and random.cosine < 0.9 and random.mse > 1e-3
    assert random.kl > 1e-3


def test_a_skip_transcoder_equal_to_a_linear_mlp_scores_perfectly(demo_model):
    """With the identity as activation the MLP is linear, y = x (W2 W1)ᵀ + W2 b1 + b2: a skip-transcoder
    whose features never fire and whose skip path is that map predicts it exactly."""
    with _simplified(demo_model, nn.Identity()) as mlp:
        d_in, d_out = mlp.fc1.in_features, mlp.fc2.out_features
        coder = build_coder(CoderConfig(d_in=d_in, d_sae=8, d_out=d_out, kind="transcoder", skip=True,
                                        hook_name=HOOK_IN, hook_name_out=HOOK_OUT, tokens="all"))
        with torch.no_grad():
            coder.b_enc.fill_(-1.0)  # W_enc = 0: no feature ever fires
            coder.W_skip.copy_((mlp.fc2.weight @ mlp.fc1.weight).T)
            coder.b_dec.copy_(mlp.fc2.weight @ mlp.fc1.bias + mlp.fc2.bias)
        evaluation = run_job(evaluate_coder(demo_model, coder, _examples(1), 1))
    assert evaluation.l0 == 0
    assert evaluation.explained_variance == pytest.approx(1.0, abs=1e-5)
    assert evaluation.kl == pytest.approx(0.0, abs=1e-6)


def test_ablating_a_transcoders_features_changes_the_output_it_predicts(demo_model, demo_trace, relu_mlp):
    """Every feature × 0 leaves ŷ(0) = b_dec in place of the MLP's output (its input untouched), and the
    block's output becomes the stream between attention and MLP + b_dec; scaling by 1 changes nothing."""
    mlp = relu_mlp
    coder = _exact_transcoder(mlp)
    from lvlm_studio.sae.activations import image_inputs

    inputs = image_inputs(demo_model, [demo_trace.image], demo_trace.prompt)
    names = [HOOK_IN, HOOK_OUT, f"blocks.{LAYER}.hook_resid_post", f"blocks.{LAYER}.hook_resid_mid"]
    _, plain = run_with_cache(demo_model, inputs, names)
    ablate = scale_features({i: 0.0 for i in range(coder.cfg.d_sae)})
    with hooks(demo_model, splice_hooks(demo_model, coder, inputs, "edit", ablate)):
        _, edited = run_with_cache(demo_model, inputs, names)
    torch.testing.assert_close(edited[HOOK_IN], plain[HOOK_IN])
    expected = mlp.fc2.bias.detach().expand_as(plain[HOOK_OUT])
    torch.testing.assert_close(edited[HOOK_OUT], expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(edited[names[2]], plain[names[3]] + expected, atol=1e-4, rtol=1e-4)
    with hooks(demo_model, splice_hooks(demo_model, coder, inputs, "edit", scale_features({0: 1.0}))):
        _, same = run_with_cache(demo_model, inputs, names)
    torch.testing.assert_close(same[names[2]], plain[names[2]], atol=1e-5, rtol=1e-5)


def test_inspection_edits_and_attribution_act_through_the_prediction(demo_model, demo_trace, relu_mlp):
    coder = _exact_transcoder(relu_mlp)
    from lvlm_studio.core.tracing.trace import generate_trace

    clean = generate_trace(demo_model, demo_trace.image, demo_trace.prompt)
    assert edited_answer(demo_model, coder, clean.image, clean.prompt, {0: 1.0}) == clean.answer_text
    attribution = feature_attribution(demo_model, coder, clean, 0)
    assert attribution.shape == (8, 8, coder.cfg.d_sae) and torch.isfinite(torch.from_numpy(attribution)).all()
    assert abs(attribution).sum() > 0


@pytest.mark.parametrize(("out", "message"), [
    ("", "names no output hook point"),
    (f"blocks.{LAYER}.mlp.hook_post", "not one of this model's hook points"),
    (f"blocks.{LAYER}.attn.hook_pattern", "an attention pattern"),
    ("lm.blocks.0.hook_mlp_out", "same part of the model"),
    (f"blocks.{LAYER - 1}.hook_mlp_out", "comes later in the forward pass"),
])
def test_a_transcoder_whose_output_is_not_a_hook_point_is_refused(demo_model, demo_trace, out, message):
    coder = build_coder(CoderConfig(d_in=128, d_sae=16, kind="transcoder", hook_name=HOOK_IN, hook_name_out=out,
                                    tokens="all"))
    with pytest.raises(InputError, match=message):
        splice_points(demo_model, coder)
    with pytest.raises(InputError, match=message):
        run_job(evaluate_coder(demo_model, coder, _examples(1), 1))
    with pytest.raises(InputError, match=message):
        edited_answer(demo_model, coder, demo_trace.image, demo_trace.prompt, {0: 0.0})


def test_the_cli_evaluates_a_transcoder_against_its_output_and_refuses_an_unknown_one(tmp_path, capsys):
    from lvlm_studio.cli import main
    from lvlm_studio.sae.formats import save_saelens

    good = build_coder(CoderConfig(d_in=128, d_sae=64, kind="transcoder", hook_name=HOOK_IN, hook_name_out=HOOK_OUT,
                                   tokens="all"))
    save_saelens(random_topk_like(good), tmp_path / "good", "float32")
    assert main(["sae", "eval", "--device", "cpu", "--sae", str(tmp_path / "good"), "--n", "1", "--baseline"]) == 0
    assert f"| hook point | {HOOK_IN} → {HOOK_OUT} | {HOOK_IN} → {HOOK_OUT} |" in capsys.readouterr().out
    bad = build_coder(CoderConfig(d_in=128, d_sae=64, kind="transcoder", hook_name=HOOK_IN,
                                  hook_name_out=f"blocks.{LAYER}.mlp.hook_post", tokens="all"))
    save_saelens(bad, tmp_path / "bad", "float32")
    assert main(["sae", "eval", "--device", "cpu", "--sae", str(tmp_path / "bad"), "--n", "1"]) == 2
    assert "not one of this model's hook points" in capsys.readouterr().err
    image = tmp_path / "scene.png"
    from lvlm_studio.demo.scenes import make_scene

    make_scene(3).image.save(image)
    assert main(["sae", "inspect", "--device", "cpu", "--sae", str(tmp_path / "bad"), "--image", str(image),
                 "--scale", "0=0", "--out", str(tmp_path / "inspect")]) == 2
    assert "not one of this model's hook points" in capsys.readouterr().err
