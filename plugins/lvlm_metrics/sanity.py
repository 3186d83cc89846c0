"""Sanity checks as metric plugins: cascading model randomisation and input independence.

Both re-run the explanation's own method (looked up by ``explanation.method`` in the plugin
registry) with the explanation's own parameters, on the same answer tokens.
"""

from __future__ import annotations

from typing import Any

from lvlm_studio.api import InputError, Metric, Param, input_independence, model_randomisation


def method_of(explanation) -> Any:
    """The registered explainer that made ``explanation``."""
    from lvlm_studio.api import create_registry

    available = create_registry().explainers()
    if explanation.method not in available:
        raise InputError(f"the explanation was made by {explanation.method!r}, which is not an installed method.",
                         "Sanity checks re-run the method; explain with an installed one.")
    return available[explanation.method]


class ModelRandomisation(Metric):
    """Re-initialise the model top layer down (language model, projector, vision encoder) and
    report the rank correlation of the maps with the trained model's (low is good)."""

    id = "model_randomisation"
    title = "Sanity: model randomisation (cascading)"
    needs = frozenset({"model"})
    directions = {"rho_language": "lower", "rho_all": "lower"}  # a map that ignores the weights stays alike
    params = (Param("granularity", "layer", "one stage per layer, two (language model, then vision side) or one",
                    choices=("layer", "block", "model")),)

    def score(self, trace, explanation, model, masks, params: dict[str, Any]):
        if model is None:
            raise InputError("model randomisation needs the model.", "Load the model that produced the trace.")
        explainer = method_of(explanation)
        return (yield from model_randomisation(model, trace, explainer, explainer.resolve_params(explanation.params),
                                               explanation.targets, original=explanation,
                                               granularity=params["granularity"]))


class InputIndependence(Metric):
    """Explain the same answer on the image turned by 180 degrees and report the rank correlation
    with the original maps (near 1: the map does not depend on the image)."""

    id = "input_independence"
    title = "Sanity: input independence"
    needs = frozenset({"model"})
    directions = {"rho_input": "lower"}  # a map that ignores the image stays alike

    def score(self, trace, explanation, model, masks, params: dict[str, Any]):
        if model is None:
            raise InputError("the input-independence check needs the model.", "Load the model that produced the trace.")
        explainer = method_of(explanation)
        return (yield from input_independence(model, trace, explainer, explainer.resolve_params(explanation.params),
                                              explanation.targets, original=explanation))
