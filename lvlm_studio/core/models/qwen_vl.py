"""Qwen2.5-VL (``qwen2_5_vl``) and Qwen3-VL (``qwen3_vl``): Qwen2-VL's token layout, newer vision towers.

Both keep Qwen2-VL's geometry (``qwen2_vl``): ``smart_resize`` to multiples of patch x merge, one
``<|image_pad|>`` token per ``merge x merge`` block of patches, row-major over the blocks, the whole
image in one grid. What changes lives inside the vision tower and does not move a token:

* Qwen2.5-VL's ViT attends within windows of ``window_size`` pixels in most blocks (and globally in
  ``fullatt_block_indexes``). It permutes the patches into window order on the way in and restores
  the original order after the merger, so the tokens still come out row-major.
* Qwen3-VL's ViT adds learned absolute position embeddings and "DeepStack": the merged features
  of a few intermediate vision blocks are added to the hidden states of the first decoder layers at
  the image positions. Methods that read the decoder's input embeddings (gradient x input, Grad-CAM)
  therefore see the main merger's features only; the DeepStack additions reach the answer through
  the decoder layers they enter, which attention methods do see.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from lvlm_studio.core.models.image_only import load_image_only
from lvlm_studio.core.models.qwen2_vl import Qwen2VLAdapter
from lvlm_studio.core.plugin.adapter import ModelAdapter


class Qwen2_5_VLAdapter(Qwen2VLAdapter):  # noqa: N801 (the family's own spelling)
    model_types = ("qwen2_5_vl",)
    family = "Qwen2.5-VL"
    merges_vision_tokens = True
    stock_processor = "Qwen2_5_VLProcessor"

    @classmethod
    def load_processor(cls, folder: Path, **kwargs: Any) -> Any:
        """The stock processor, or without its video half where that needs torchvision."""
        try:
            return ModelAdapter.load_processor.__func__(cls, folder, **kwargs)  # type: ignore[attr-defined]
        except ImportError:
            return load_image_only(cls.stock_processor, folder, **kwargs)

    def projector(self) -> nn.Module:
        return self.model.model.visual.merger


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    model_types = ("qwen3_vl",)
    family = "Qwen3-VL"
    stock_processor = "Qwen3VLProcessor"
