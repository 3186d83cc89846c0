"""Llama-3.2-Vision (``mllama``): the image enters through cross-attention layers, not tokens.

The prompt holds a single ``<|image|>`` marker per image; no image features are placed in the
sequence. Instead, some decoder layers (``cross_attention_layers``) are cross-attention blocks whose
keys and values are the vision tokens, ``cross_attention_states``: for each image, ``max_num_tiles``
tiles (unused ones are padding, masked out by ``cross_attention_mask``), each a CLS token followed
by ``g x g`` patch tokens, row-major. So ``image_entry = "cross_attention"`` and region positions
index those keys: key = ((image * max_num_tiles) + tile) * (g * g + 1) + 1 + patch.

Tiles: the processor picks the canvas of ``rows x cols`` tiles that fits the image best (at most
``max_image_tiles``), resizes the image to fit the canvas with its aspect ratio kept (no side below
one tile), pastes it at the top left and pads the rest, then cuts the canvas row-major into tiles.
The arrangement travels as ``aspect_ratio_ids`` (1-based into the supported arrangements). One
region per image, ``"tiles"``: the tiles' patches stitched into a ``(rows*g) x (cols*g)`` grid whose
box is the canvas mapped back to the image (so it reaches past the right or bottom edge where the
canvas was padded).

What applies: raw attention reads the cross-attention layers (the answer's query row over the
vision keys); relevancy propagates through the self-attention layers and adds what each
cross-attention layer reads from the vision keys; perturbation methods (occlusion, RISE, iGOS++)
work from pixels and apply as to any family. Methods that read image positions of the sequence
(TAM's logit lens, gradients of the decoder's input embeddings, rollout over self-attention,
vision-side relevancy) do not apply: there are no image positions in the sequence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from lvlm_studio.core.models.idefics3 import stitch_tiles
from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter


class MllamaAdapter(ModelAdapter):
    model_types = ("mllama",)
    family = "Llama-3.2-Vision"
    image_entry = "cross_attention"
    #: generated tokens see the same images as the last prompt token (generation repeats its row)
    generated_token_inputs = {"cross_attention_mask": None}

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        from transformers.models.mllama.image_processing_pil_mllama import (
            get_all_supported_aspect_ratios,
            get_image_size_fit_to_canvas,
        )

        if not image_sizes:
            return []
        vision = self.model.config.vision_config
        tile = int(vision.image_size)
        g = tile // int(vision.patch_size)
        per_tile = g * g + 1
        pixels = inputs["pixel_values"]
        max_tiles = int(pixels.shape[2])
        ids = np.asarray(inputs["aspect_ratio_ids"].cpu() if hasattr(inputs["aspect_ratio_ids"], "cpu")
                         else inputs["aspect_ratio_ids"]).reshape(-1)
        if len(ids) != len(image_sizes):
            raise ValueError(f"{len(ids)} aspect-ratio ids for {len(image_sizes)} images")
        arrangements = get_all_supported_aspect_ratios(int(self.processor.image_processor.max_image_tiles))
        regions = []
        for index, ((width, height), ratio_id) in enumerate(zip(image_sizes, ids)):
            rows, cols = arrangements[int(ratio_id) - 1]
            first = index * max_tiles * per_tile
            tiles = [first + t * per_tile + 1 + np.arange(g * g) for t in range(rows * cols)]
            new_h, new_w = get_image_size_fit_to_canvas(height, width, rows * tile, cols * tile, tile)
            box = (0.0, 0.0, float(cols * tile * width / new_w), float(rows * tile * height / new_h))
            regions.append(ImageRegion("tiles", index, stitch_tiles(tiles, rows, cols, g), (rows * g, cols * g), box))
        return regions

    # -- parts ----------------------------------------------------------------------------------
    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_model

    def attention_modules(self) -> list[nn.Module]:
        """The self-attention modules (cross-attention layers have none)."""
        return [layer.self_attn for layer in self.decoder_layers() if hasattr(layer, "self_attn")]

    def cross_attention_modules(self) -> list[nn.Module]:
        """The cross-attention module of each cross-attention layer, in order: where the image enters."""
        return [layer.cross_attn for layer in self.decoder_layers() if hasattr(layer, "cross_attn")]

    def vision_attention_modules(self) -> list[nn.Module]:
        tower = self.vision_tower()
        return [layer.self_attn for layer in [*tower.transformer.layers, *tower.global_transformer.layers]]
