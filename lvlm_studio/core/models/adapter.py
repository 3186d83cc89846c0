"""The model-adapter contract: where a family puts its image tokens, and what its parts are called.

Adding a model family means adding one ``ModelAdapter`` subclass (and registering it through the
``lvlm_studio_model_adapters`` hook); nothing else in LVLM Studio knows about families.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class ImageRegion:
    """One grid of image tokens and the part of the original image it shows.

    ``positions`` are indices into the model's input ids, in row-major order over ``grid``
    (so ``positions.reshape(grid)`` lays them out as the image). Separator tokens such as
    LLaVA-NeXT's row newlines are not part of any grid. ``box`` is (left, top, right, bottom) in
    pixels of the original image: the area whose content this grid encodes (a center crop, a
    tile, or the whole image for a resized base view).
    """

    name: str
    image_index: int
    positions: np.ndarray
    grid: tuple[int, int]
    box: tuple[float, float, float, float]

    def __post_init__(self) -> None:
        rows, cols = self.grid
        if len(self.positions) != rows * cols:
            raise ValueError(f"region {self.name!r}: {len(self.positions)} positions for a {rows}x{cols} grid")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "image_index": self.image_index,
            "positions": [int(p) for p in self.positions],
            "grid": list(self.grid),
            "box": [float(v) for v in self.box],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRegion:
        return cls(
            name=data["name"],
            image_index=int(data["image_index"]),
            positions=np.asarray(data["positions"], dtype=np.int64),
            grid=(int(data["grid"][0]), int(data["grid"][1])),
            box=tuple(float(v) for v in data["box"]),  # type: ignore[arg-type]
        )


def all_image_positions(regions: list[ImageRegion]) -> np.ndarray:
    """Every image-token position of every region, in region order."""
    if not regions:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([r.positions for r in regions])


class ModelAdapter:
    """Knows one family's layout. Subclasses set ``model_types`` and implement ``image_regions``.

    The part accessors default to the layout that transformers uses for most image-text-to-text
    models (``model.model.language_model``, ``model.model.vision_tower``, ...); a family whose
    modules live elsewhere overrides them.
    """

    #: config.model_type values this adapter serves, e.g. ("llava",)
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Human-readable family name for messages and the support table.
    family: ClassVar[str] = ""

    def __init__(self, model: nn.Module, processor: Any):
        self.model = model
        self.processor = processor

    @classmethod
    def matches(cls, config: Any) -> bool:
        return getattr(config, "model_type", None) in cls.model_types

    @classmethod
    def load_processor(cls, folder: Path, **kwargs: Any) -> Any:
        """The processor saved in ``folder`` (``kwargs`` go to ``from_pretrained``).

        A family whose stock processor needs an optional extra that image explanations do not
        (Qwen2-VL's needs torchvision for its video half) overrides this with a fallback.
        """
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(folder, **kwargs)

    # -- geometry ---------------------------------------------------------------------------
    def image_regions(
        self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]
    ) -> list[ImageRegion]:
        """The image regions of one processed example.

        ``inputs`` is the processor's output for a single example (batch size 1: ``input_ids``,
        ``pixel_values`` and family extras such as ``image_sizes`` or ``image_grid_thw``);
        ``image_sizes`` are the original images' (width, height), in prompt order.
        """
        raise NotImplementedError

    # -- parts ------------------------------------------------------------------------------
    def language_model(self) -> nn.Module:
        return self.model.model.language_model

    def decoder_layers(self) -> nn.ModuleList:
        return self.language_model().layers

    def final_norm(self) -> nn.Module:
        return self.language_model().norm

    def lm_head(self) -> nn.Module:
        return self.model.lm_head

    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def projector(self) -> nn.Module:
        return self.model.model.multi_modal_projector

    def attention_modules(self) -> list[nn.Module]:
        """The self-attention module of each decoder layer, in order (hooked by attention methods)."""
        return [layer.self_attn for layer in self.decoder_layers()]

    def vision_attention_modules(self) -> list[nn.Module]:
        """The self-attention module of each vision-encoder layer, in order (hooked by vision-side
        attention methods). The default is the CLIP / SigLIP layout, ``encoder.layers[i].self_attn``."""
        return [layer.self_attn for layer in self.vision_tower().encoder.layers]

    def input_device(self) -> torch.device:
        """Where input tensors go (the embedding's device under accelerate placement)."""
        return self.model.get_input_embeddings().weight.device


def image_token_positions(input_ids: torch.Tensor | np.ndarray, token_id: int) -> np.ndarray:
    """Positions of ``token_id`` in a 1-D or [1, T] id sequence."""
    ids = np.asarray(input_ids.cpu() if isinstance(input_ids, torch.Tensor) else input_ids).reshape(-1)
    return np.flatnonzero(ids == token_id)
