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
    #: How the image reaches the language model. "tokens": image features replace placeholder
    #: tokens of the sequence, and region positions index ``input_ids``. "cross_attention": the
    #: sequence holds one marker per image and the decoder's cross-attention layers read the vision
    #: tokens as keys (Mllama); region positions then index those keys (tile-major, the order of
    #: ``cross_attention_states``), and methods that read image positions of the sequence do not apply.
    image_entry: ClassVar[str] = "tokens"
    #: Per-token processor outputs (one entry per prompt token, e.g. ``token_type_ids``) and the value
    #: a generated token takes in them, so a teacher-forced pass over prompt + answer can extend them
    #: as generation does. None repeats the last prompt token's entry.
    generated_token_inputs: ClassVar[dict[str, int | None]] = {}
    #: Whether the projector folds several vision-encoder tokens into one image token (pixel
    #: shuffle, pooling, patch merging), so that no image token stands for a single encoder patch.
    merges_vision_tokens: ClassVar[bool] = False

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

    def lm_head_weight(self) -> torch.Tensor:
        """The LM head's weight [vocab, hidden], detached, even where accelerate offloaded it (to the
        CPU or disk, leaving a "meta" placeholder in the module between calls)."""
        head = self.lm_head()
        if head.weight.device.type != "meta":
            return head.weight.detach()
        from accelerate.utils import align_module_device

        with align_module_device(head):
            return head.weight.detach().clone()

    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_tower

    def projector(self) -> nn.Module:
        return self.model.model.multi_modal_projector

    def attention_modules(self) -> list[nn.Module]:
        """The self-attention module of each decoder layer, in order (hooked by attention methods)."""
        return [layer.self_attn for layer in self.decoder_layers()]

    def cross_attention_modules(self) -> list[nn.Module]:
        """The decoder's cross-attention modules, which read the image (``image_entry ==
        "cross_attention"``); none for families whose image enters as tokens."""
        return []

    def vision_attention_modules(self) -> list[nn.Module]:
        """The self-attention module of each vision-encoder layer, in order (hooked by vision-side
        attention methods). The default is the CLIP / SigLIP layout, ``encoder.layers[i].self_attn``."""
        return [layer.self_attn for layer in self.vision_tower().encoder.layers]

    def vision_blocks(self) -> nn.ModuleList:
        """The vision encoder's transformer blocks, in order (named ``blocks.{i}`` by the hook points
        of ``lvlm_studio.core.models.hooks``). The default finds the tower's layer list: ``encoder.layers``
        (CLIP, SigLIP), ``encoder.layer`` (InternViT-style) or ``blocks`` (Qwen-style ViTs)."""
        tower = self.vision_tower()
        for path in ("encoder.layers", "encoder.layer", "blocks", "layers", "transformer.layers"):
            found: Any = tower
            for part in path.split("."):
                found = getattr(found, part, None)
            if isinstance(found, nn.ModuleList) and len(found):
                return found
        raise NotImplementedError(f"{type(self).__name__}: no list of vision blocks found; override vision_blocks()")

    def vision_patch_grids(self, inputs: dict[str, Any]) -> list[np.ndarray]:
        """Where each image's patches sit in the vision tower's activations, one array per image.

        Entry ``[r, c]`` of an image's array is the index of the patch at row ``r``, column ``c`` in
        the tower's token activations flattened over everything but the feature axis (``[tiles *
        tokens]``). The default serves CLIP / SigLIP towers: ``pixel_values`` [images (, tiles), 3,
        H, W], one token per ``patch_size`` square, after a class token when the embeddings have one;
        only each image's first tile (the base view of tiled families) is laid out.
        """
        pixels = inputs["pixel_values"]
        height, width = pixels.shape[-2:]
        patch = self.model.config.vision_config.patch_size
        patch_h, patch_w = (int(patch[0]), int(patch[-1])) if isinstance(patch, (list, tuple)) else (patch, patch)
        rows, cols = int(height) // int(patch_h), int(width) // int(patch_w)
        embeddings = getattr(self.vision_tower(), "embeddings", None)
        has_cls = any(getattr(embeddings, name, None) is not None for name in ("class_embedding", "cls_token"))
        per_tile = rows * cols + int(has_cls)
        grid = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols) + int(has_cls)
        if pixels.dim() == 5:
            tiles = int(pixels.shape[1])
            return [grid + image * tiles * per_tile for image in range(int(pixels.shape[0]))]
        # [views, 3, H, W]: one view per image, or every image's tiles in a row (InternVL). Image
        # token runs in the prompt, one per image, share the views in proportion to their length.
        views = int(pixels.shape[0])
        token_id = getattr(self.model.config, "image_token_id", None)
        positions = image_token_positions(inputs["input_ids"], token_id) if "input_ids" in inputs and isinstance(
            token_id, int) else np.zeros(0, dtype=np.int64)
        runs = np.split(positions, np.flatnonzero(np.diff(positions) > 1) + 1) if len(positions) else []
        if not runs or len(runs) >= views:
            return [grid + view * per_tile for view in range(views)]
        firsts = np.cumsum([0] + [round(len(run) * views / len(positions)) for run in runs[:-1]])
        return [grid + int(first) * per_tile for first in firsts]

    def input_device(self) -> torch.device:
        """Where input tensors go: the embedding's device under accelerate placement, or, when its
        weights were offloaded (to the CPU or disk, so they sit on the "meta" device between
        calls), the device accelerate runs it on."""
        embeddings = self.model.get_input_embeddings()
        device = embeddings.weight.device
        if device.type == "meta":
            hook = getattr(embeddings, "_hf_hook", None)
            execution = getattr(hook, "execution_device", None)
            return torch.device(execution if execution is not None else "cpu")
        return device


def image_token_positions(input_ids: torch.Tensor | np.ndarray, token_id: int) -> np.ndarray:
    """Positions of ``token_id`` in a 1-D or [1, T] id sequence."""
    ids = np.asarray(input_ids.cpu() if isinstance(input_ids, torch.Tensor) else input_ids).reshape(-1)
    return np.flatnonzero(ids == token_id)
