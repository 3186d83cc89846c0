"""PaliGemma (``paligemma``): the image as a prefix of ``g x g`` tokens, read with prefix-LM attention.

The processor squeezes each image to the SigLIP input size (aspect not kept) and puts its
``image_seq_length = g * g`` tokens, row-major, at the very start of the prompt (before ``<bos>``);
so one grid per image shows the whole image. The image and the prompt form the "prefix", which
attends bidirectionally (``token_type_ids`` 0); generated tokens are the causal "suffix"
(``token_type_ids`` 1). A teacher-forced pass over prompt + answer must mark the answer as suffix,
or each answer token would see the ones after it: ``generated_token_inputs`` says so.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter, image_token_positions


class PaliGemmaAdapter(ModelAdapter):
    model_types = ("paligemma",)
    family = "PaliGemma"
    generated_token_inputs = {"token_type_ids": 1}

    @classmethod
    def load_processor(cls, folder: Path, **kwargs: Any) -> Any:
        """The stock processor, minus the training ``labels`` it returns with every call (all -100
        without a suffix): passed on to the model, they would make it compute a loss and fail."""
        return inference_processor_class().from_pretrained(folder, **kwargs)

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        config = self.model.config
        positions = image_token_positions(inputs["input_ids"], config.image_token_id)
        if not image_sizes:
            return []
        patch = int(config.vision_config.patch_size)
        height, width = (int(v) for v in inputs["pixel_values"].shape[-2:])
        rows, cols = height // patch, width // patch
        if len(positions) != rows * cols * len(image_sizes):
            raise ValueError(f"{len(positions)} image tokens for {len(image_sizes)} images of {rows}x{cols}")
        per_image = rows * cols
        return [ImageRegion(f"image {i}", i, positions[i * per_image : (i + 1) * per_image], (rows, cols),
                            (0.0, 0.0, float(w), float(h))) for i, (w, h) in enumerate(image_sizes)]


@functools.lru_cache(maxsize=1)
def inference_processor_class() -> type:
    """``PaliGemmaProcessor`` whose outputs hold model inputs only (built on first use)."""
    from transformers import PaliGemmaProcessor

    class PaliGemmaInferenceProcessor(PaliGemmaProcessor):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            outputs = super().__call__(*args, **kwargs)
            if "suffix" not in kwargs:
                outputs.pop("labels", None)
            return outputs

    PaliGemmaInferenceProcessor.__module__ = __name__
    return PaliGemmaInferenceProcessor


def __getattr__(name: str) -> Any:
    if name == "PaliGemmaInferenceProcessor":
        return inference_processor_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
