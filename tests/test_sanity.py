"""Model-randomisation sanity check (Adebayo et al. 2018) for every explainer that reads the model.

A map that explains the model must change when the model's weights are destroyed. The language
model (decoder layers, final norm and LM head) of a copy of the demo model is re-initialised with a
fixed seed; the maps of the same trace (same prompt, same answer tokens, teacher-forced) are
recomputed, and their Spearman rank correlation with the trained model's maps, averaged over the
answer tokens, must stay below 0.5. Explainers registered later are checked too, by their defaults.

The textbook attention rollout (``position_prior=keep``) and vision-side relevancy fail, for
reasons the test states (``KNOWN_FAILURES``; rollout's is checked); the default rollout divides
that position prior out and passes. Run
with ``-s`` to see the table.
"""

import copy
import dataclasses

import numpy as np
import torch
from scipy.stats import spearmanr

from lvlm_studio.core.models.loading import LoadedModel
from lvlm_studio.testing import run_explainer

THRESHOLD = 0.5
SEED = 0
#: Variants checked besides each explainer's defaults.
EXTRA_VARIANTS = {"relevancy": [{"side": "vision"}], "rollout": [{"position_prior": "keep"}]}
#: Methods that fail the check for a reason understood and shown below; the test fails if they
#: start passing (update this) or if any other method fails.
KNOWN_FAILURES = {
    "relevancy side=vision": "its attention product runs through the vision tower, which re-initialising "
                             "the language model leaves intact; only the gradient weighting changes "
                             "(a vision-tower randomisation check is the right test for it)",
    "rollout position_prior=keep": "in a causal decoder the residual-mixed product of attentions piles mass onto early "
               "positions; with the language model randomised (near-uniform attention) the map is a pure "
               "position ramp, and the trained model's map is mostly that ramp too (start_layer >= 2 passes)",
}


def randomised_language_model(loaded: LoadedModel) -> LoadedModel:
    """A copy of ``loaded`` whose decoder layers, final norm and LM head are re-initialised:
    weight matrices from N(0, initializer_range), norm scales 1, biases 0, with a fixed seed."""
    model = copy.deepcopy(loaded.model)
    adapter = type(loaded.adapter)(model, loaded.processor)
    std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for module in (adapter.decoder_layers(), adapter.final_norm(), adapter.lm_head()):
            for name, param in module.named_parameters():
                if param.dim() >= 2:
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
                elif "norm" in name or module is adapter.final_norm():
                    param.fill_(1.0)
                else:
                    param.zero_()
    return LoadedModel(model, loaded.processor, adapter, loaded.source + " (language model randomised)",
                       loaded.options)


def retraced(loaded: LoadedModel, trace):
    """The same trace with the cached hidden states recomputed by ``loaded`` (teacher-forced on the
    same tokens): methods that read the cache must see the randomised model too."""
    captured = []
    handle = loaded.adapter.final_norm().register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            loaded.model(**trace.teacher_forced_inputs(loaded), use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return dataclasses.replace(trace, hidden=captured[-1][0].float().numpy())


def mean_rank_correlation(original, randomised) -> float:
    """Spearman correlation of the flattened maps, averaged over tokens. Tokens whose original map
    is constant carry no ranking and are skipped; a randomised map that became constant has lost
    the ranking entirely and counts as 0."""
    values = []
    for token in original.targets:
        before = np.concatenate([m.ravel() for m in original.maps[token]])
        after = np.concatenate([m.ravel() for m in randomised.maps[token]])
        if np.ptp(before) == 0:
            continue
        values.append(0.0 if np.ptp(after) == 0 else float(spearmanr(before, after).statistic))
    return float(np.mean(values)) if values else float("nan")


def position_ramp_correlation(explanation, trace) -> float:
    """Mean Spearman correlation of the maps with "earlier image token = larger value"."""
    ramp = -trace.image_positions.astype(float)
    return float(np.mean([spearmanr(np.concatenate([m.ravel() for m in explanation.maps[t]]), ramp).statistic
                          for t in explanation.targets]))


def test_model_randomisation_changes_every_map(lvlm_registry, demo_model, demo_trace):
    randomised = randomised_language_model(demo_model)
    random_trace = retraced(randomised, demo_trace)
    assert not np.allclose(random_trace.hidden, demo_trace.hidden)
    explainers = {i: e for i, e in lvlm_registry.explainers().items() if "model" in e.needs}
    assert {"raw_attention", "rollout", "relevancy", "grad_x_input", "gradcam", "tam"} <= set(explainers)

    table, randomised_maps = [], {}
    for method_id, explainer in sorted(explainers.items()):
        for params in [{}, *EXTRA_VARIANTS.get(method_id, [])]:
            before = run_explainer(explainer, demo_trace, demo_model, **params)
            after = run_explainer(explainer, random_trace, randomised, **params)
            label = method_id + "".join(f" {k}={v}" for k, v in params.items())
            table.append((label, mean_rank_correlation(before, after)))
            randomised_maps[label] = after

    print("\nmodel randomisation (language model re-initialised): mean Spearman rank correlation")
    for label, rho in table:
        verdict = "ok" if rho < THRESHOLD else "FAILS" + (" (known)" if label in KNOWN_FAILURES else "")
        print(f"  {label:<28} {rho:+.3f}  {verdict}")
    failing = {label for label, rho in table if not rho < THRESHOLD}
    assert failing == set(KNOWN_FAILURES), f"rank correlations {dict(table)}; known failures {set(KNOWN_FAILURES)}"
    # rollout's stated reason holds: the randomised map is a position ramp
    assert position_ramp_correlation(randomised_maps["rollout position_prior=keep"], random_trace) > 0.95
