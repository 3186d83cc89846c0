"""Checks and references the model tests share."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from lvlm_studio.core.models.loading import LoadedModel


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch computes with one thread inside, and with as many as before afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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


def clip_tile_features(lm: LoadedModel, tiles: torch.Tensor) -> torch.Tensor:
    """Projected vision features of each tile of a LLaVA-family model, from the layer its config reads,
    the CLS token dropped under the "default" strategy: [N, tokens, D]."""
    config = lm.model.config
    with torch.no_grad():
        hidden = lm.adapter.vision_tower()(tiles, output_hidden_states=True).hidden_states
        hidden = hidden[config.vision_feature_layer]
        if config.vision_feature_select_strategy == "default":
            hidden = hidden[:, 1:]
        return lm.adapter.projector()(hidden)


def view_features(lm: LoadedModel, inputs: dict) -> list[torch.Tensor]:
    """The model's own image features, one [tokens, D] tensor per view (tile, crop, thumbnail)."""
    family = lm.family
    model = lm.model.model
    with torch.no_grad():
        if family in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl"):
            return list(model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output)
        if family in ("idefics3", "smolvlm"):
            flat = model.get_image_features(inputs["pixel_values"], inputs["pixel_attention_mask"]).pooler_output[0]
            views = inputs["pixel_values"].shape[1]
            return list(flat.reshape(views, -1, flat.shape[-1]))
        return list(model.get_image_features(inputs["pixel_values"]).pooler_output)


def stitched(views: list[torch.Tensor], rows: int, cols: int) -> torch.Tensor:
    """Tiles' features (row-major tiles, each s x s row-major) as one (rows*s) x (cols*s) map, flattened."""
    side = math.isqrt(views[0].shape[0])
    grid = torch.stack(views).reshape(rows, cols, side, side, -1).permute(0, 2, 1, 3, 4)
    return grid.reshape(rows * side * cols * side, -1)


def region_features(lm: LoadedModel, inputs: dict, regions: list) -> list[torch.Tensor]:
    """For each region of one image, the model's own features of the view it claims, laid out in the
    region's grid (row-major): what the decoder must receive at the region's positions (or, for
    Mllama, what its cross-attention keys hold there). Built from the vision tower and projector,
    never from the adapter's arithmetic: LLaVA-NeXT and LLaVA-OneVision through the model's own
    packing (unpadding, pooling, newlines dropped), tiles stitched where a family cuts them."""
    family = lm.family
    model = lm.model.model
    if family in ("llava", "llava_next", "llava_onevision"):
        features = clip_tile_features(lm, inputs["pixel_values"][0] if family != "llava" else inputs["pixel_values"])
        if family == "llava":
            return [features[0]]
        extra = ({"vision_aspect_ratio": lm.model.config.vision_aspect_ratio} if family == "llava_onevision"
                 else {"vision_feature_select_strategy": lm.model.config.vision_feature_select_strategy})
        with torch.no_grad():
            packed, _ = model.pack_image_features([features], inputs["image_sizes"], image_newline=model.image_newline,
                                                  **extra)
        base, high = regions
        rows, cols = high.grid
        first = len(base.positions)
        return [packed[0][:first], packed[0][first:].reshape(rows, cols + 1, -1)[:, :cols].reshape(rows * cols, -1)]
    if family == "mllama":
        with torch.no_grad():
            vision = model.vision_model(inputs["pixel_values"], inputs["aspect_ratio_ids"],
                                        inputs["aspect_ratio_mask"]).last_hidden_state
            projected = model.multi_modal_projector(vision)[0, 0]  # [tiles, 1 + g*g, D]
        (region,) = regions
        config = lm.model.config.vision_config
        g = config.image_size // config.patch_size
        rows, cols = region.grid[0] // g, region.grid[1] // g
        return [stitched([projected[t, 1:] for t in range(rows * cols)], rows, cols)]
    views = view_features(lm, inputs)
    if family in ("idefics3", "smolvlm", "internvl") and len(regions) == 2:
        side = math.isqrt(views[0].shape[0])
        rows, cols = regions[0].grid[0] // side, regions[0].grid[1] // side
        return [stitched(views[:-1], rows, cols), views[-1]]
    return views


def region_inputs(lm: LoadedModel, inputs: dict) -> torch.Tensor:
    """What the regions' positions index: the decoder's input embeddings [T, D], or for a model whose
    image enters through cross-attention, the keys its cross-attention layers receive [keys, D]."""
    if lm.adapter.image_entry != "cross_attention":
        return merged_embeddings(lm, inputs)
    seen = {}

    def grab(_module, _args, kwargs):
        seen["keys"] = kwargs["cross_attention_states"].detach()

    handle = lm.adapter.cross_attention_modules()[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        handle.remove()
    return seen["keys"].reshape(-1, seen["keys"].shape[-1])


def assert_regions_match_model(lm: LoadedModel, inputs: dict, regions: list) -> None:
    """Every region's positions hold exactly the model's features of the view it claims, in grid order."""
    received = region_inputs(lm, inputs)
    expected = region_features(lm, inputs, regions)
    assert len(expected) == len(regions)
    for region, features in zip(regions, expected):
        assert region.grid[0] * region.grid[1] == len(region.positions) == len(features), region.name
        torch.testing.assert_close(received[region.positions], features, msg=lambda m, r=region: f"{r.name}: {m}")
