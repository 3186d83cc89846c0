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

A video (``video_grid_thw`` rows ``(t, h, w)``) goes through the same tower with frames taken
``temporal_patch_size`` at a time, so it becomes ``t`` groups of ``(h / merge) x (w / merge)``
``<|video_pad|>`` tokens; each group is a region over the whole frame (see ``image_regions``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter, image_token_positions


class Qwen2VLAdapter(ModelAdapter):
    model_types = ("qwen2_vl",)
    family = "Qwen2-VL"
    merges_vision_tokens = True  # its merger joins 2 x 2 patches into one token

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        """One region per image, then one per temporal group of each video.

        Videos (``video_grid_thw``, rows ``(t, h, w)`` in patches) enter as ``<|video_pad|>`` tokens:
        ``t`` groups of ``(h / merge) x (w / merge)`` tokens, each group the merger output of
        ``temporal_patch_size`` consecutive frames. Each group becomes a region named
        ``"video {v} frames {a}-{b}"`` (``a``/``b``: the first and last sampled frame it encodes),
        whose box is the whole frame. Its positions are taken from the video-token positions in
        order, never from offsets, since text (Qwen3-VL's timestamps) may sit between groups.

        ``image_sizes`` lists each image's (width, height), then each video's frame (width, height),
        each kind in prompt order; a video region's ``image_index`` is ``number of images + v``, so
        ``image_sizes[region.image_index]`` is always the size its box refers to.
        """
        config = self.model.config
        merge = int(config.vision_config.spatial_merge_size)
        image_grids = _grids(inputs.get("image_grid_thw"))
        video_grids = _grids(inputs.get("video_grid_thw"))
        if not image_sizes:
            return []
        if len(image_grids) + len(video_grids) != len(image_sizes):
            raise ValueError(f"{len(image_grids)} image grids and {len(video_grids)} video grids "
                             f"for {len(image_sizes)} image/frame sizes")
        regions = []
        positions = image_token_positions(inputs["input_ids"], config.image_token_id)
        counts = [int(t * h * w) // (merge * merge) for t, h, w in image_grids]
        if sum(counts) != len(positions):
            raise ValueError(f"{len(positions)} image tokens, but the image grids need {sum(counts)}")
        start = 0
        for index, ((frames, height, width), count) in enumerate(zip(image_grids, counts, strict=True)):
            if frames != 1:
                raise ValueError(f"image {index} has {frames} frames; only still images are supported")
            img_w, img_h = image_sizes[index]
            grid = (int(height) // merge, int(width) // merge)
            box = (0.0, 0.0, float(img_w), float(img_h))
            regions.append(ImageRegion(f"image {index}", index, positions[start : start + count], grid, box))
            start += count
        if len(video_grids):
            regions += self._video_regions(inputs, video_grids, image_sizes[len(image_grids) :], len(image_grids))
        return regions

    def _video_regions(self, inputs: dict[str, Any], grids: np.ndarray, frame_sizes: list[tuple[int, int]],
                       first_index: int) -> list[ImageRegion]:
        config = self.model.config
        merge = int(config.vision_config.spatial_merge_size)
        temporal = int(getattr(config.vision_config, "temporal_patch_size", 1) or 1)
        positions = image_token_positions(inputs["input_ids"], config.video_token_id)
        need = sum(int(t * h * w) // (merge * merge) for t, h, w in grids)
        if need != len(positions):
            raise ValueError(f"{len(positions)} video tokens, but the video grids need {need}")
        regions, start = [], 0
        for video, (groups, height, width) in enumerate(grids):
            grid = (int(height) // merge, int(width) // merge)
            per_group = grid[0] * grid[1]
            frame_w, frame_h = frame_sizes[video]
            box = (0.0, 0.0, float(frame_w), float(frame_h))
            for group in range(int(groups)):
                first, last = group * temporal, (group + 1) * temporal - 1
                regions.append(ImageRegion(f"video {video} frames {first}-{last}", first_index + video,
                                           positions[start : start + per_group], grid, box))
                start += per_group
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


def _grids(value: Any) -> np.ndarray:
    """``image_grid_thw`` / ``video_grid_thw`` as an [n, 3] int array (empty when absent)."""
    if value is None:
        return np.zeros((0, 3), dtype=np.int64)
    return np.asarray(_as_numpy(value), dtype=np.int64).reshape(-1, 3)


def _as_numpy(value: Any) -> np.ndarray:
    return value.cpu().numpy() if hasattr(value, "cpu") else np.asarray(value)
