"""LLaVA-1.5 (``llava``): one square grid per image, after a resize and center crop."""

from __future__ import annotations

from typing import Any

import numpy as np

from lvlm_studio.core.models.geometry import center_crop_box
from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter, image_token_positions


class LlavaAdapter(ModelAdapter):
    model_types = ("llava",)
    family = "LLaVA-1.5"

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        config = self.model.config
        positions = image_token_positions(inputs["input_ids"], config.image_token_id)
        if not image_sizes:
            return []
        per_image = len(positions) // len(image_sizes)
        image_processor = self.processor.image_processor
        crop = getattr(image_processor, "crop_size", None) if getattr(image_processor, "do_center_crop", True) else None
        height, width = inputs["pixel_values"].shape[-2:]
        patch = config.vision_config.patch_size
        rows, cols = height // patch, width // patch
        # "full" keeps the CLS token as the first image token; it has no place on the grid.
        skip = per_image - rows * cols
        if skip not in (0, 1):
            raise ValueError(f"{per_image} image tokens per image do not fit a {rows}x{cols} grid")
        regions = []
        for index, (img_w, img_h) in enumerate(image_sizes):
            block = positions[index * per_image : (index + 1) * per_image]
            box = _box(img_w, img_h, image_processor, crop)
            regions.append(ImageRegion(f"image {index}", index, np.asarray(block[skip:]), (rows, cols), box))
        return regions


def _box(width: int, height: int, image_processor: Any, crop: Any) -> tuple[float, float, float, float]:
    """The original-image box a grid shows. LLaVA's processor may first pad the image to a square
    of its longer side ("expand to square", the image centred with its offset rounded down); the
    resize and crop then apply to that square."""
    size = getattr(image_processor, "size", None)
    if not getattr(image_processor, "do_pad", False):
        return center_crop_box(width, height, size, crop)
    side = max(width, height)
    left, top, right, bottom = center_crop_box(side, side, size, crop)
    dx, dy = -((side - width) // 2), -((side - height) // 2)
    return left + dx, top + dy, right + dx, bottom + dy
