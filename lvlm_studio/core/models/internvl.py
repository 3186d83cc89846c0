"""InternVL in its transformers-native form (``internvl``): tiles plus a thumbnail, pixel-shuffled.

The processor (GOT-OCR2's image processor with ``crop_to_patches``) picks the arrangement of
``cols x rows`` tiles, between ``min_patches`` and ``max_patches`` of them, whose aspect ratio is
closest to the image's (ties go to more tiles while they cover less than twice the image's area),
squeezes the whole image onto that canvas and cuts it row-major into tiles; when there is more than
one tile, a thumbnail (the whole image squeezed to one tile) comes last. Each tile goes through the
vision encoder, its CLS token is dropped, and pixel shuffle folds each 2 x 2 block of patches into
one token: ``s x s`` tokens per tile, row-major (``s * s = image_seq_length``). The prompt holds
``<img>`` + ``<IMG_CONTEXT>`` x (``image_seq_length`` x views) + ``</img>`` per image.

Regions per image: ``"tiles"`` (the tiles stitched into one ``(rows*s) x (cols*s)`` grid over the
whole image) and ``"thumbnail"``; an image that got a single tile has one region, ``"image"``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from lvlm_studio.core.models.geometry import size_value
from lvlm_studio.core.models.idefics3 import stitch_tiles, token_runs
from lvlm_studio.core.models.image_only import load_image_only
from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter, image_token_positions


class InternVLAdapter(ModelAdapter):
    model_types = ("internvl",)
    family = "InternVL"
    merges_vision_tokens = True

    @classmethod
    def load_processor(cls, folder: Path, **kwargs: Any) -> Any:
        try:
            return super().load_processor(folder, **kwargs)
        except ImportError:  # the video processor needs torchvision; images do not
            return load_image_only("InternVLProcessor", folder, **kwargs)

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        config = self.model.config
        positions = image_token_positions(inputs["input_ids"], config.image_token_id)
        if not image_sizes:
            return []
        runs = token_runs(positions)
        if len(runs) != len(image_sizes):
            raise ValueError(f"{len(runs)} runs of image tokens for {len(image_sizes)} images")
        per_view = int(config.image_seq_length)
        side = math.isqrt(per_view)
        image_processor = self.processor.image_processor
        tile = (size_value(image_processor.size, "height"), size_value(image_processor.size, "width"))
        regions = []
        for index, (run, (width, height)) in enumerate(zip(runs, image_sizes)):
            box = (0.0, 0.0, float(width), float(height))
            views = len(run) // per_view
            if views * per_view != len(run):
                raise ValueError(f"image {index}: {len(run)} tokens are not whole views of {per_view}")
            if views == 1:
                regions.append(ImageRegion("image", index, run, (side, side), box))
                continue
            cols, rows = get_optimal_tiled_canvas((height, width), tile, int(image_processor.min_patches),
                                                  int(image_processor.max_patches))
            if cols * rows != views - 1:
                raise ValueError(f"image {index}: {views - 1} tiles, but the processor's rule gives {cols}x{rows}")
            tiles = [run[i * per_view : (i + 1) * per_view] for i in range(views - 1)]
            regions.append(ImageRegion("tiles", index, stitch_tiles(tiles, rows, cols, side),
                                       (rows * side, cols * side), box))
            regions.append(ImageRegion("thumbnail", index, run[-per_view:], (side, side), box))
        return regions

    def vision_attention_modules(self) -> list[nn.Module]:
        return [layer.attention for layer in self.vision_tower().encoder.layer]
