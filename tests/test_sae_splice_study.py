"""SAE splice (study 6) on planted truth: a coder that reconstructs exactly costs nothing (KL 0, equal
NLL); a random one moves the model's next-token distribution (KL > 0)."""

import numpy as np
import pytest
from sae_helpers import exact_coder

from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.demo.scenes import make_example, make_scene
from lvlm_studio.sae.evaluate import random_topk_like, splice_losses, splice_summary

HOOK = "blocks.1.hook_resid_post"


def _examples(n=3):
    out = []
    for seed in range(n):
        scene = make_scene(2_000_000_200 + seed)
        example = make_example(scene, "colour", np.random.default_rng(seed))
        out.append((scene.image, example.prompt, example.answer))
    return out


def test_exact_coder_costs_nothing_and_a_random_one_does(demo_model):
    exact = exact_coder(HOOK)
    losses = run_job(splice_losses(demo_model, exact, _examples(), 3))
    assert len(losses) == 3
    for item in losses:
        assert item.kl == pytest.approx(0.0, abs=1e-6)
        assert item.nll_spliced == pytest.approx(item.nll_original, abs=1e-5)
        assert np.isnan(item.nll_zero)
    summary = splice_summary(losses)
    assert summary["nll_change"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert summary["kl"]["n"] == 3

    random = random_topk_like(exact, k=16)
    noisy = run_job(splice_losses(demo_model, random, _examples(), 3))
    assert all(item.kl > 1e-3 for item in noisy)
    summary = splice_summary(noisy)
    assert summary["kl"]["ci_low"] > 0 and summary["kl"]["ci_low"] <= summary["kl"]["mean"] <= summary["kl"]["ci_high"]
