"""Gemma-3 (``gemma3``): a fixed number of tokens per view, optional pan-and-scan crops.

Each view of an image (the image itself, squeezed to the SigLIP input size, aspect not kept) is
encoded by SigLIP and average-pooled to ``mm_tokens_per_image`` tokens (256 in the released models,
a 16 x 16 grid, row-major). With pan-and-scan on (``do_pan_and_scan=True``, off by default in the
released processors), an image whose aspect ratio is at least ``pan_and_scan_min_ratio_to_activate``
is also cut into 2 to ``pan_and_scan_max_num_crops`` equal crops along its long side, each
encoded as one more view: the prompt then reads "here is the original image <view> and here are
some crops to help you see better <view> <view> ...". Crops are ``ceil(side / n)`` pixels wide
(tall), so the last one may be cut short by the image border; each is squeezed to the input size.

Regions per image: ``"image"`` (the whole image) and ``"crop k"`` for each crop, with its box.
Image tokens attend to each other bidirectionally within a view (``token_type_ids``), which
changes attention patterns but no positions.
"""

from __future__ import annotations

import math
from typing import Any

from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter, image_token_positions


def pan_and_scan_count(width: int, height: int, settings: dict[str, Any]) -> int:
    """How many crops pan-and-scan cuts a ``width x height`` image into (0: none), by the processor's rule."""
    long_side, short_side = max(width, height), min(width, height)
    if long_side / short_side < settings["pan_and_scan_min_ratio_to_activate"]:
        return 0
    count = int(math.floor(long_side / short_side + 0.5))
    count = min(int(math.floor(long_side / settings["pan_and_scan_min_crop_size"])), count)
    count = min(settings["pan_and_scan_max_num_crops"], max(2, count))
    crop = int(math.ceil(long_side / count))
    return 0 if min(crop, short_side) < settings["pan_and_scan_min_crop_size"] else count


def crop_boxes(width: int, height: int, count: int) -> list[tuple[float, float, float, float]]:
    """The boxes of ``count`` pan-and-scan crops along the long side of a ``width x height`` image."""
    if width >= height:
        step = math.ceil(width / count)
        return [(float(i * step), 0.0, float(min((i + 1) * step, width)), float(height)) for i in range(count)]
    step = math.ceil(height / count)
    return [(0.0, float(i * step), float(width), float(min((i + 1) * step, height))) for i in range(count)]


class Gemma3Adapter(ModelAdapter):
    model_types = ("gemma3",)
    family = "Gemma-3"
    merges_vision_tokens = True
    #: generated tokens are text (0), not image (1), in the bidirectional-attention mask
    generated_token_inputs = {"token_type_ids": 0}

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        config = self.model.config
        positions = image_token_positions(inputs["input_ids"], config.image_token_id)
        if not image_sizes:
            return []
        per_view = int(config.mm_tokens_per_image)
        side = math.isqrt(per_view)
        views = len(positions) // per_view
        if views * per_view != len(positions) or views < len(image_sizes):
            raise ValueError(f"{len(positions)} image tokens are not {len(image_sizes)}+ views of {per_view}")
        crops = self._crop_counts(image_sizes, views)
        regions, view = [], 0
        for index, ((width, height), count) in enumerate(zip(image_sizes, crops)):
            boxes = [(0.0, 0.0, float(width), float(height)), *(crop_boxes(width, height, count) if count else [])]
            for k, box in enumerate(boxes):
                block = positions[view * per_view : (view + 1) * per_view]
                regions.append(ImageRegion("image" if k == 0 else f"crop {k}", index, block, (side, side), box))
                view += 1
        return regions

    def _crop_counts(self, image_sizes: list[tuple[int, int]], views: int) -> list[int]:
        """Crops per image. Pan-and-scan is a call-time option, so the token count decides whether it
        ran: one view per image means it did not; otherwise the processor's own rule gives each count."""
        if views == len(image_sizes):
            return [0] * len(image_sizes)
        settings = self._pan_and_scan_settings()
        counts = [pan_and_scan_count(w, h, settings) for w, h in image_sizes]
        if len(image_sizes) == 1:  # the count is the views beyond the image itself, whatever the settings
            counts = [views - 1]
        if sum(counts) + len(image_sizes) != views:
            raise ValueError(f"{views} image views do not match pan-and-scan of {len(image_sizes)} images "
                             "(were its settings changed in the call? They are read from the processor's defaults)")
        return counts

    def _pan_and_scan_settings(self) -> dict[str, Any]:
        """The settings a call without overrides uses: the processor's own defaults win over the image
        processor's attributes (transformers' kwargs merging), so ask the processor to merge them."""
        processor = self.processor
        try:
            merged = processor._merge_kwargs(processor.valid_processor_kwargs,
                                             tokenizer_init_kwargs=processor.tokenizer.init_kwargs)["images_kwargs"]
        except (AttributeError, KeyError, TypeError):  # an older or custom processor: its attributes
            merged = vars(processor.image_processor)
        defaults = {"pan_and_scan_min_crop_size": 256, "pan_and_scan_max_num_crops": 4,
                    "pan_and_scan_min_ratio_to_activate": 1.2}
        return {k: merged.get(k) or v for k, v in defaults.items()}

