"""Qwen2-VL (``qwen2_vl``): one grid per image, at a resolution chosen per image.

The processor resizes each image with ``smart_resize``: both sides are rounded to a multiple of
``patch_size * merge_size`` (28 px for the released models) and then scaled together, if needed, so
the pixel count lies within the processor's min/max pixels. Nothing is cropped or padded, so each
grid shows the whole original image; the rounding only stretches it a little, differently along
each axis (by at most half a multiple per side before the pixel-count scaling), which moves token
borders by a fraction of a token but never the box.

The vision tower cuts the resized image into ``grid_h x grid_w`` patches (``image_grid_thw``) and its
merger joins each ``merge x merge`` block into one token, in row-major order over the blocks, so
an image becomes ``(grid_h / merge) x (grid_w / merge)`` ``<|image_pad|>`` tokens.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lvlm_studio.core.models.adapter import ImageRegion, ModelAdapter, image_token_positions


class Qwen2VLAdapter(ModelAdapter):
    model_types = ("qwen2_vl",)
    family = "Qwen2-VL"
    merges_vision_tokens = True  # its merger joins 2 x 2 patches into one token

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        config = self.model.config
        positions = image_token_positions(inputs["input_ids"], config.image_token_id)
        if not image_sizes:
            return []
        grids = np.asarray(_as_numpy(inputs["image_grid_thw"]), dtype=np.int64).reshape(-1, 3)
        if len(grids) != len(image_sizes):
            raise ValueError(f"{len(grids)} image grids for {len(image_sizes)} images")
        merge = int(config.vision_config.spatial_merge_size)
        counts = [int(t * h * w) // (merge * merge) for t, h, w in grids]
        if sum(counts) != len(positions):
            raise ValueError(f"{len(positions)} image tokens, but the image grids need {sum(counts)}")
        regions = []
        start = 0
        for index, ((frames, height, width), count) in enumerate(zip(grids, counts, strict=True)):
            if frames != 1:
                raise ValueError(f"image {index} has {frames} frames; only still images are supported")
            img_w, img_h = image_sizes[index]
            grid = (int(height) // merge, int(width) // merge)
            box = (0.0, 0.0, float(img_w), float(img_h))
            regions.append(ImageRegion(f"image {index}", index, positions[start : start + count], grid, box))
            start += count
        return regions

    # -- parts: the vision encoder lives in ``model.model.visual`` and ends in its patch merger ---
    def vision_tower(self) -> nn.Module:
        return self.model.model.visual

    def projector(self) -> nn.Module:
        return self.model.model.visual.merger

    def vision_attention_modules(self) -> list[nn.Module]:
        return [block.attn for block in self.model.model.visual.blocks]

    def vision_blocks(self) -> nn.ModuleList:
        return self.model.model.visual.blocks

    def vision_patch_grids(self, inputs: dict[str, Any]) -> list[np.ndarray]:
        """The ViT sees each image's patches window by window: ``merge x merge`` blocks in row-major
        order, row-major inside each block (the order the merger joins them in), images one after
        another in a flat [patches, features] sequence."""
        merge = int(self.model.config.vision_config.spatial_merge_size)
        grids, start = [], 0
        for frames, height, width in np.asarray(_as_numpy(inputs["image_grid_thw"]), dtype=np.int64).reshape(-1, 3):
            rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
            window = (rows // merge) * (width // merge) + cols // merge
            grids.append(start + window * merge * merge + (rows % merge) * merge + cols % merge)
            start += int(frames * height * width)
        return grids

    @classmethod
    def load_processor(cls, folder: Path, **kwargs: Any) -> Any:
        """The stock processor, or, where its video half cannot load (it needs torchvision), the
        same processor without it: images are all the studio explains."""
        try:
            return super().load_processor(folder, **kwargs)
        except ImportError:
            return image_only_processor_class().from_pretrained(folder, **kwargs)


@functools.lru_cache(maxsize=1)
def image_only_processor_class() -> type:
    """``Qwen2VLProcessor`` without a video processor.

    transformers insists on a video processor for Qwen2-VL, and Qwen2-VL's video processor needs
    torchvision, which LVLM Studio does not otherwise need. Leaving ``video_processor`` out of
    ``__init__`` makes the processor machinery neither require nor load one; text and image
    handling are the stock code. Built on first use so importing this module stays cheap.
    """
    from transformers import Qwen2VLProcessor

    class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
        def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None,
                     **kwargs: Any) -> None:
            super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=chat_template, **kwargs)

    # Named as a module attribute (see __getattr__ below), so pickle finds it in any process.
    Qwen2VLImageOnlyProcessor.__module__ = __name__
    Qwen2VLImageOnlyProcessor.__qualname__ = "Qwen2VLImageOnlyProcessor"
    return Qwen2VLImageOnlyProcessor


def __getattr__(name: str) -> Any:
    if name == "Qwen2VLImageOnlyProcessor":
        return image_only_processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_numpy(value: Any) -> np.ndarray:
    return value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)
