"""Checks and references the model tests share."""

from __future__ import annotations

import numpy as np
import torch

from lvlm_studio.core.models.loading import LoadedModel


def merged_embeddings(lm: LoadedModel, inputs: dict) -> torch.Tensor:
    """Run the model and return what its decoder received: text embeddings with the image features
    scattered in, [T, D]."""
    seen = {}

    def grab(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach()

    handle = lm.adapter.language_model().register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = lm.model(**inputs).logits
    finally:
        handle.remove()
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()
    return seen["embeds"][0]


def hand_built_gradients(model: LoadedModel, trace, tokens: list[int],
                         score: str = "logprob") -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """(features, {token: d score / d features}) at the image positions of a LLaVA-family model, as a
    reference independent of the explainers: the input embeddings are built by hand (token
    embeddings with the projected image features written at the image positions) and the language
    model is run from them, with no image input and no hooks. ``score`` is "logprob" (taken in
    float64: float32 log_softmax loses 1 - p for confident tokens) or "logit". A float64 model gives
    a float64 reference throughout."""
    inputs = trace.teacher_forced_inputs(model)
    llava = model.model.model
    with torch.no_grad():
        embeds = llava.get_input_embeddings()(inputs["input_ids"])
        features = llava.get_image_features(pixel_values=inputs["pixel_values"], vision_feature_layer=-1,
                                            vision_feature_select_strategy="default").pooler_output[0]
        embeds[0, trace.image_positions] = features
    embeds.requires_grad_(True)
    logits = model.model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], use_cache=False).logits[0]
    grads = {}
    for token in tokens:
        row = logits[trace.answer_position(token) - 1]
        value = torch.log_softmax(row.double(), dim=-1) if score == "logprob" else row
        (grad,) = torch.autograd.grad(value[trace.answer_ids[token]], embeds, retain_graph=True)
        grads[token] = grad[0, trace.image_positions].double().numpy()
    return features.double().numpy(), grads
