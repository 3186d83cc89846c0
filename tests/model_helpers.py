"""Checks the model-family tests share."""

from __future__ import annotations

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
