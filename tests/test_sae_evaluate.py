"""Evaluation metrics of sparse coders: restated in NumPy on toy tensors, the saturation rule of CE
recovered on planted losses, and the shipped demo SAE against a random TopK SAE on the demo model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sae_helpers import exact_coder

from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.sae.coders import CoderConfig, build_coder
from lvlm_studio.sae.evaluate import (
    DENSE_THRESHOLD,
    DENSITY_BINS,
    Evaluation,
    ce_saturated,
    density_histogram,
    evaluate_coder,
    explained_variance,
    format_evaluations,
    random_topk_like,
    reconstruction_stats,
)

HOOK = "blocks.1.hook_resid_post"


def random_topk(seed: int = 0) -> torch.nn.Module:
    """A random TopK SAE (k=16, 512 features): unit random decoder rows, the encoder tied, no biases."""
    return random_topk_like(build_coder(CoderConfig(d_in=128, d_sae=512, hook_name=HOOK)), seed=seed)


def test_cosine_l2_ratio_and_explained_variance_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16)) * rng.uniform(0.1, 5, size=(50, 1)) + 2.0
    x_hat = 0.8 * x + rng.normal(scale=0.5, size=x.shape)
    cosine, ratio = reconstruction_stats(torch.tensor(x), torch.tensor(x_hat))
    norm_x, norm_hat = np.linalg.norm(x, axis=1), np.linalg.norm(x_hat, axis=1)
    np.testing.assert_allclose(cosine.numpy(), (x * x_hat).sum(1) / (norm_x * norm_hat), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ratio.numpy(), norm_hat / norm_x, rtol=1e-5, atol=1e-5)
    expected = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert explained_variance(torch.tensor(x), torch.tensor(x_hat)) == pytest.approx(expected, abs=1e-5)
    assert explained_variance(torch.tensor(x), torch.tensor(x)) == pytest.approx(1.0, abs=1e-12)


def test_density_histogram_counts_every_feature():
    rng = np.random.default_rng(1)
    density = np.concatenate([np.zeros(7), 10 ** rng.uniform(-9, 0, size=93), [1.0, 1e-12]])
    counts, dead = density_histogram(density)
    assert len(counts) == len(DENSITY_BINS) - 1
    assert dead == 7 and sum(counts) + dead == len(density)
    expected, _ = np.histogram(np.clip(np.log10(density[density > 0]), DENSITY_BINS[0], DENSITY_BINS[-1]),
                               bins=DENSITY_BINS)
    assert counts == expected.tolist()


def _planted(nll_original: float, nll_coder: float, nll_zero: float) -> Evaluation:
    return Evaluation(HOOK, "patch", 1, 64, 10.0, None, 0.5, 4, 0, 4, nll_original, nll_coder, nll_zero,
                      density=[0.5, 0.01, 0.001, 0.0])


@pytest.mark.parametrize("original, zero, saturated", [
    (0.0, 4.2, True),     # the clean loss at its floor (the demo captions): any coder keeping the argmax scores ~1
    (0.009, 4.2, True),
    (2.0, 2.005, True),   # zero-ablation adds less than 0.01 nats
    (2.0, 2.15, True),    # ... or less than 10% of the clean loss
    (2.0, 2.25, False),
    (0.5, 3.0, False),
])
def test_ce_recovered_saturation_rule(original, zero, saturated):
    assert ce_saturated(original, zero) is saturated
    evaluation = _planted(original, (original + zero) / 2, zero)
    assert evaluation.ce_saturated is saturated and evaluation.to_dict()["ce_saturated"] is saturated
    line = next(line for line in format_evaluations([("x", evaluation)]).splitlines() if "CE recovered" in line)
    assert ("(saturated)" in line) is saturated


@pytest.fixture(scope="module")
def shipped_and_random(demo_model):
    from lvlm_studio.demo.evaluate import heldout_examples
    from lvlm_studio.sae.formats import load_coder
    from lvlm_studio.sae.shipped import demo_sae_path

    examples = [(s.image, e.prompt, e.answer) for s, e in heldout_examples(10, "caption")]
    return [run_job(evaluate_coder(demo_model, coder, examples, len(examples)))
            for coder in (load_coder(demo_sae_path()), random_topk())]


def test_the_shipped_sae_beats_a_random_topk_sae(shipped_and_random):
    shipped, random = shipped_and_random
    print("\n" + format_evaluations([("shipped", shipped), ("random TopK", random)]))
    assert shipped.kl < 0.01 < 0.05 < random.kl
    assert shipped.cosine > 0.99 and random.cosine < 0.8
    assert shipped.explained_variance > 0.9 and random.explained_variance < 0
    assert shipped.explained_variance_cls is not None and random.explained_variance_cls is not None
    assert shipped.explained_variance_cls > random.explained_variance_cls
    # The answers are certain (clean NLL ~0), so CE recovered cannot tell them apart and says so.
    assert shipped.ce_saturated and random.ce_saturated
    for evaluation in (shipped, random):
        counts, dead = evaluation.density_histogram()
        assert sum(counts) + dead == evaluation.d_sae and dead == evaluation.dead
        assert evaluation.dense == sum(d > DENSE_THRESHOLD for d in evaluation.density)
        assert 0 < evaluation.l2_ratio < 1.5


def test_an_exact_coder_has_no_kl_and_full_cosine(demo_model):
    from lvlm_studio.demo.evaluate import heldout_examples

    coder = exact_coder(HOOK)
    examples = [(s.image, e.prompt, e.answer) for s, e in heldout_examples(2, "caption")]
    evaluation = run_job(evaluate_coder(demo_model, coder, examples, 2))
    assert evaluation.kl == pytest.approx(0.0, abs=1e-5)
    assert evaluation.cosine == pytest.approx(1.0, abs=1e-5) and evaluation.l2_ratio == pytest.approx(1.0, abs=1e-5)
    assert evaluation.explained_variance_cls == pytest.approx(1.0, abs=1e-5)


def test_eval_command_writes_the_density_plot(tmp_path, capsys):
    from lvlm_studio.cli import main
    from lvlm_studio.sae.formats import save_saelens

    save_saelens(random_topk(), tmp_path / "random", "float32")
    args = ["sae", "eval", "--device", "cpu", "--sae", str(tmp_path / "random"), "--n", "2"]
    assert main([*args, "--plot", str(tmp_path / "density.png"), "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "KL(original ‖ spliced)" in printed and "feature density" in printed and "(saturated)" in printed
    for path in (tmp_path / "density.png", tmp_path / "eval" / "density.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())["random"]
    assert report["ce_saturated"] is True and report["dense_threshold"] == DENSE_THRESHOLD
    assert sum(report["density_histogram"]["counts"]) + report["density_histogram"]["dead"] == 512


def test_eval_baseline_adds_a_random_twin(capsys):
    from lvlm_studio.cli import main

    assert main(["sae", "eval", "--device", "cpu", "--baseline", "--n", "2"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "random TopK (vision-blocks.1.hook_resid_post)" in header


def test_explained_variance_is_split_by_token_type_for_all_tokens(demo_model):
    """A coder reading patches and class tokens together ("all") gets one explained variance per type,
    each equal to a coder restricted to that type."""
    from lvlm_studio.demo.evaluate import heldout_examples

    examples = [(s.image, e.prompt, e.answer) for s, e in heldout_examples(2, "caption")]
    coder = random_topk()
    both = {}
    for tokens in ("all", "patch", "cls"):
        coder.cfg.tokens = tokens
        both[tokens] = run_job(evaluate_coder(demo_model, coder, examples, 2))
    assert both["all"].rows == both["patch"].rows + both["cls"].rows
    assert both["all"].explained_variance_patch == pytest.approx(both["patch"].explained_variance, abs=1e-5)
    assert both["all"].explained_variance_cls == pytest.approx(both["cls"].explained_variance, abs=1e-5)
    assert both["all"].l0_cls == pytest.approx(both["cls"].l0, abs=1e-5)
    assert both["patch"].explained_variance_patch == both["patch"].explained_variance
