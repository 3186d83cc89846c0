"""LLaVA-OneVision (``llava_onevision``): LLaVA-NeXT's AnyRes, pooled down to a budget of tiles.

One image in a prompt is laid out as in LLaVA-NeXT (``llava_next``): a base view of the whole
image (``g x g`` tokens, no newline), then the stitched high-resolution map of its best canvas
with the padding rows or columns cut off and a newline token after each row. Two differences:

* "anyres_max_N": when the unpadded map holds more than about ``N`` tiles' worth of cells
  (``ratio = sqrt(rows * cols / (N * g * g)) > 1.1``), the model shrinks it bilinearly to
  ``int(rows // ratio) x int(cols // ratio)`` before adding the newlines. The shrunk map still
  shows the same part of the image, so its box is the unpadded map's box; only the grid is coarser.
* Several images in one prompt are not tiled: each is padded to a square (its longer side, centred)
  and resized to one vision-tower input, ``g x g`` tokens followed by a single newline token.

The vision tower is SigLIP, which has no CLS token, so "full" feature selection keeps exactly the
``g x g`` patches (LLaVA-NeXT's CLIP adds a CLS token under "full").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lvlm_studio.core.models.image_only import load_image_only
from lvlm_studio.core.models.llava_next import AnyresLayout, anyres_layout, high_res_box
from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter, image_token_positions


@dataclass(frozen=True)
class PooledLayout(AnyresLayout):
    """An AnyRes layout whose unpadded map may have been shrunk to ``pooled`` (rows, cols)."""

    pooled: tuple[int, int] | None = None

    @property
    def grid(self) -> tuple[int, int]:
        if self.pooled is not None:
            return self.pooled
        return super().grid


def onevision_layout(config: Any, height: int, width: int) -> PooledLayout:
    """The token layout of one image alone in its prompt (mirrors ``pack_image_features``)."""
    base = anyres_layout(config, height, width)
    has_cls = getattr(config.vision_config, "model_type", "") == "clip_vision_model"
    skip = 1 if has_cls and config.vision_feature_select_strategy == "full" else 0
    layout = PooledLayout(**{**base.__dict__, "base_skip": skip})
    rows, cols = super(PooledLayout, layout).grid
    budget = int(str(config.vision_aspect_ratio).removeprefix("anyres_max_"))
    ratio = math.sqrt(rows * cols / (budget * layout.base_grid**2))
    if ratio > 1.1:
        layout = replace(layout, pooled=(int(rows // ratio), int(cols // ratio)))
    return layout


class LlavaOnevisionAdapter(ModelAdapter):
    model_types = ("llava_onevision",)
    family = "LLaVA-OneVision"

    @classmethod
    def load_processor(cls, folder: Path, **kwargs: Any) -> Any:
        try:
            return super().load_processor(folder, **kwargs)
        except ImportError:  # the video processor needs torchvision; images do not
            return load_image_only("LlavaOnevisionProcessor", folder, **kwargs)

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        return self._layout(inputs, image_sizes)[0]

    def newline_positions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> np.ndarray:
        """The positions of the newline tokens (after each high-res row, or after each image of
        several), which belong to no region."""
        return self._layout(inputs, image_sizes)[1]

    def _layout(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]
                ) -> tuple[list[ImageRegion], np.ndarray]:
        config = self.model.config
        positions = image_token_positions(inputs["input_ids"], config.image_token_id)
        if not image_sizes:
            return [], np.zeros(0, dtype=np.int64)
        side = int(config.vision_config.image_size)
        g = side // int(config.vision_config.patch_size)
        processed = inputs.get("image_sizes")
        processed = (np.asarray(processed.cpu() if hasattr(processed, "cpu") else processed).reshape(-1, 2)
                     if processed is not None else np.asarray([(h, w) for w, h in image_sizes]))
        if len(processed) != len(image_sizes):
            raise ValueError(f"the processor saw {len(processed)} images, but got {len(image_sizes)} sizes")
        several = len(image_sizes) > 1
        regions, newlines, start = [], [], 0
        for index, ((img_w, img_h), (proc_h, proc_w)) in enumerate(zip(image_sizes, processed)):
            proc_h, proc_w = int(proc_h), int(proc_w)
            sx, sy = img_w / proc_w, img_h / proc_h
            if several:  # padded to a centred square, resized: g x g tokens and one newline
                block = positions[start : start + g * g + 1]
                start += g * g + 1
                half = (max(proc_w, proc_h) - proc_w) / 2, (max(proc_w, proc_h) - proc_h) / 2
                box = (-half[0] * sx, -half[1] * sy, (proc_w + half[0]) * sx, (proc_h + half[1]) * sy)
                regions.append(ImageRegion(f"image {index}", index, block[: g * g], (g, g), box))
                newlines.append(block[g * g :])
                continue
            layout = onevision_layout(config, proc_h, proc_w)
            block = positions[start : start + layout.token_count]
            start += layout.token_count
            base_end = layout.base_skip + g * g
            regions.append(ImageRegion("base", index, block[layout.base_skip : base_end], (g, g),
                                       (0.0, 0.0, float(img_w), float(img_h))))
            rows, cols = layout.grid
            high = block[base_end:].reshape(rows, cols + 1)
            left, top, right, bottom = high_res_box(layout, proc_h, proc_w)
            regions.append(ImageRegion("high-res", index, high[:, :cols].reshape(-1), (rows, cols),
                                       (left * sx, top * sy, right * sx, bottom * sy)))
            newlines.append(high[:, cols])
        if start != len(positions):
            raise ValueError(f"{len(positions)} image tokens, but the OneVision layout needs {start}")
        return regions, np.concatenate(newlines)
