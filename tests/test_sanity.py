"""Sanity checks (Adebayo et al. 2018) for every explainer that reads the model, on the demo model.

Model randomisation cascades from the top down (``lvlm_studio.core.metrics.sanity``): the language model
first (LM head, final norm, decoder layers), then the vision side (projector, vision encoder). The
maps of the same trace (same prompt, same answer tokens, teacher-forced) are recomputed after each
stage (here in one stage, everything at once, to keep the test quick), and their Spearman rank
correlation with the trained model's maps, averaged over the answer tokens, must end below 0.5.
Explainers registered later are checked too, by their defaults.

Vision-side relevancy passes only because the cascade reaches the vision tower: with the language
model alone re-initialised its attention product is untouched and much of its ranking survives
(checked with the two-stage cascade). The textbook attention rollout (``position_prior=keep``)
fails, for the reason ``KNOWN_FAILURES`` states and the test checks; the default rollout divides
that position prior out and passes.
Run with ``-s`` to see the table.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr

from lvlm_studio.core.metrics.sanity import (
    cascade_stages,
    input_independence,
    mean_rank_correlation,
    model_randomisation,
    randomised,
    retrace,
)
from lvlm_studio.core.plugin.contracts import Explainer
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.testing import run_explainer

THRESHOLD = 0.5
#: Variants checked besides each explainer's defaults.
EXTRA_VARIANTS = {"relevancy": [{"side": "vision"}], "rollout": [{"position_prior": "keep"}]}
#: Methods that fail the check for a reason understood and shown below; the test fails if they
#: start passing (update this) or if any other method fails.
KNOWN_FAILURES = {
    "rollout position_prior=keep": "in a causal decoder the residual-mixed product of attentions piles mass onto early "
               "positions; with the language model randomised (near-uniform attention) the map is a pure "
               "position ramp, and the trained model's map is mostly that ramp too (start_layer >= 2 passes)",
}


def position_ramp_correlation(explanation, trace) -> float:
    """Mean Spearman correlation of the maps with "earlier image token = larger value"."""
    ramp = -trace.image_positions.astype(float)
    return float(np.mean([spearmanr(np.concatenate([m.ravel() for m in explanation.maps[t]]), ramp).statistic
                          for t in explanation.targets]))


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cascade_goes_top_down_through_language_then_vision(demo_model):
    names = [name for name, _ in cascade_stages(demo_model)]
    assert names == ["lm_head", "decoder.3", "decoder.2", "decoder.1", "decoder.0", "projector",
                     "vision.2", "vision.1", "vision.0"]
    assert [name for name, _ in cascade_stages(demo_model, "block")] == ["language_model", "vision"]


def test_randomisation_is_undone(demo_model, demo_trace):
    before = state(demo_model.model)
    layer = demo_model.adapter.decoder_layers()[0]
    with randomised(demo_model, [layer]):
        assert not torch.equal(layer.self_attn.q_proj.weight, before["model.language_model.layers.0.self_attn."
                                                                        "q_proj.weight"])
        assert not np.allclose(retrace(demo_model, demo_trace).hidden, demo_trace.hidden)
    # a cancelled cascade restores the weights too (the job is closed mid-way)
    tam = _registry_explainer("tam")
    job = model_randomisation(demo_model, demo_trace, tam, tam.resolve_params({}), [1])
    for _ in range(4):
        next(job)
    job.close()
    after = state(demo_model.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def _registry_explainer(method_id):
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry().explainer(method_id)


def test_model_randomisation_changes_every_map(lvlm_registry, demo_model, demo_trace):
    explainers = {i: e for i, e in lvlm_registry.explainers().items() if "model" in e.needs}
    assert {"raw_attention", "rollout", "relevancy", "grad_x_input", "gradcam", "tam"} <= set(explainers)
    targets = list(range(len(demo_trace.answer_ids)))
    everything = [m for _, ms in cascade_stages(demo_model, "model") for m in ms]

    table, randomised_maps = [], {}
    for method_id, explainer in sorted(explainers.items()):
        for params in [{}, *EXTRA_VARIANTS.get(method_id, [])]:
            resolved = explainer.resolve_params(params)
            if getattr(explainer, "applies_to", lambda *a: None)(demo_model, resolved) is not None:
                continue
            label = method_id + "".join(f" {k}={v}" for k, v in params.items())
            result = run_job(model_randomisation(demo_model, demo_trace, explainer, resolved, targets,
                                                 granularity="model"))
            table.append((label, result.values["rho_all"]))
            if label in KNOWN_FAILURES:
                with randomised(demo_model, everything):
                    randomised_maps[label] = run_explainer(explainer, retrace(demo_model, demo_trace), demo_model,
                                                           **params)

    print("\nmodel randomisation (language model and vision side re-initialised): mean Spearman rank correlation")
    for label, rho in table:
        verdict = "ok" if rho < THRESHOLD else "FAILS" + (" (known)" if label in KNOWN_FAILURES else "")
        print(f"  {label:<28} {rho:+.3f}  {verdict}")
    failing = {label for label, rho in table if not rho < THRESHOLD}
    assert failing == set(KNOWN_FAILURES), f"rank correlations {dict(table)}; known failures {set(KNOWN_FAILURES)}"
    # rollout's stated reason holds: the randomised map is a position ramp
    randomised_trace = retrace(demo_model, demo_trace)
    assert position_ramp_correlation(randomised_maps["rollout position_prior=keep"], randomised_trace) > 0.95


def test_vision_side_relevancy_needs_the_vision_cascade(demo_model, demo_trace):
    """Re-initialising the language model leaves the vision tower's attention, which vision-side
    relevancy multiplies through, intact: much of its ranking survives until the vision half of
    the cascade (projector, vision layers) is randomised too."""
    relevancy = _registry_explainer("relevancy")
    params = relevancy.resolve_params({"side": "vision"})
    result = run_job(model_randomisation(demo_model, demo_trace, relevancy, params,
                                         list(range(len(demo_trace.answer_ids))), granularity="block"))
    rho_language, rho_all = result.values["rho_language"], result.values["rho_all"]
    print(f"\nvision-side relevancy: rho {rho_language:+.3f} with the language model randomised, "
          f"{rho_all:+.3f} with the vision side too")
    assert rho_all < THRESHOLD and rho_all < rho_language - 0.2
    assert result.details["stages"] == ["language_model", "vision"]
    assert result.curves["cascade"][1].tolist() == pytest.approx([rho_language, rho_all])


class PositionPrior(Explainer):
    """A map that ignores the image: larger for earlier image tokens."""

    id = "position_prior"

    def explain(self, trace, model, targets, params):
        return Explanation(self.id, {t: [-np.arange(np.prod(r.grid), dtype=float).reshape(r.grid)
                                         for r in trace.regions] for t in targets})


def test_input_independence(demo_model, demo_trace):
    targets = list(range(len(demo_trace.answer_ids)))
    prior = run_job(input_independence(demo_model, demo_trace, PositionPrior(), {}, targets))
    assert prior.values["rho_input"] == pytest.approx(1.0)  # the same map whatever the image: fails
    tam = _registry_explainer("tam")
    moved = run_job(input_independence(demo_model, demo_trace, tam, tam.resolve_params({}), targets))
    assert moved.values["rho_input"] < THRESHOLD
    same = run_job(input_independence(demo_model, demo_trace, tam, tam.resolve_params({}), targets,
                                      other_images=[demo_trace.image.copy()]))
    assert same.values["rho_input"] == pytest.approx(1.0)  # the same image gives the same maps


def test_mean_rank_correlation_skips_constant_originals():
    grid = np.arange(4.0).reshape(2, 2)
    original = Explanation("x", {0: [grid], 1: [np.zeros((2, 2))]})
    assert mean_rank_correlation(original, Explanation("x", {0: [grid * 2], 1: [grid]})) == pytest.approx(1.0)
    assert mean_rank_correlation(original, Explanation("x", {0: [np.ones((2, 2))], 1: [grid]})) == 0.0


def test_retrace_with_another_image_of_another_size_is_refused(demo_model, demo_trace):
    from lvlm_studio.core.errors import InputError

    with pytest.raises(InputError, match="same size"):
        retrace(demo_model, demo_trace, Image.new("RGB", (10, 10)))
