"""Tiny random vision-language models, one per supported family, saved like real checkpoints.

Tests (ours and plugin authors') need a model of each family that loads through ``load_model``
exactly as a downloaded checkpoint would: config, safetensors weights, processor, tokenizer and
chat template in one folder. Real checkpoints are gigabytes and need a model hub; these are
built offline in well under a second, with random weights, so they check plumbing (token
positions, shapes, hooks), never answers.

Each model is stock transformers architecture at toy size: hidden size 64, two decoder layers with
grouped-query attention (plus one cross-attention layer for Mllama), a two-layer vision encoder and
images of a few dozen pixels. The families beyond LLaVA, LLaVA-NeXT and Qwen2-VL are built in
``lvlm_studio.testing.tiny_families``. The tokenizer
is a word-level one over a small English vocabulary plus the family's special tokens; words outside
the vocabulary become the unknown token, so any prompt works.

torch and transformers are imported inside the functions: this module may be imported by a pytest
plugin at start-up, when nothing heavy should load.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lvlm_studio.testing.tiny_parts import (
    MEAN_STD,
    QWEN_MERGE_SIZE,
    QWEN_PATCH_SIZE,
    qwen_image_settings,
    qwen_tokenizer,
    text_kwargs,
    word_tokenizer,
)

TINY_FAMILIES = ("llava", "llava_next", "qwen2_vl", "llava_onevision", "qwen2_5_vl", "qwen3_vl", "gemma3", "idefics3",
                 "smolvlm", "paligemma", "internvl", "mllama")

# Image sizes shared by the CLIP-based families: a 32 px view cut into 8 px patches is a 4x4 grid.
CLIP_IMAGE_SIZE = 32
CLIP_PATCH_SIZE = 8
# LLaVA-NeXT tiles: (height, width) canvases made of 32 px tiles, as the real model's 336 px ones.
LLAVA_NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]
# "user: <image> describe the image. assistant:": LLaVA-1.5 turns, lower-case to fit the vocabulary.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> {% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
# Qwen's ChatML turns, with each image wrapped in vision start/end markers as Qwen2-VL expects.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(family: str, folder: Path, seed: int = 0, llm_layers: int | None = None) -> Path:
    """Build a tiny random model of ``family`` with its processor, save both in ``folder``, return it.

    The same ``seed`` gives the same weights. The folder is created if needed; files already in it
    are overwritten. ``llm_layers`` gives the language model that many decoder layers instead of the
    family's two or three (a bigger LLM on the same vision tower, for studies that compare sizes).
    """
    from lvlm_studio.testing import tiny_families

    builders = {"llava": _build_llava, "llava_next": _build_llava_next, "qwen2_vl": _build_qwen2_vl}
    if family not in builders and family not in tiny_families.BUILDERS:
        raise ValueError(f"no tiny model for family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    import torch

    if family in builders:
        processor = builders[family]()
        config = _config(family, processor.tokenizer)
    else:
        processor, config = tiny_families.BUILDERS[family]()
    if llm_layers is not None:
        _set_decoder_layers(config.get_text_config(), llm_layers)
    torch.manual_seed(seed)
    model = _model_class(family)(config)
    return save_checkpoint(family, model, processor, folder)


def save_checkpoint(family: str, model: Any, processor: Any, folder: Path) -> Path:
    """Save ``model`` and ``processor`` of ``family`` in ``folder`` as a released checkpoint is laid out.

    Mllama's cross-attention gates start at 0 (tanh 0 = 0: the image would not count), so they are
    opened to 0.5 first; the stock processor classes are written for families built without their
    video half. Shared by the tiny models and the skeletons of released checkpoints.
    """
    import torch

    from lvlm_studio.testing import tiny_families

    if family == "mllama":
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                    parameter.fill_(0.5)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if family == "qwen2_vl":
        _save_qwen2_vl_processor(processor, folder)
    elif family in tiny_families.STOCK_PROCESSORS:
        from lvlm_studio.core.models.image_only import save_as_stock

        save_as_stock(processor, folder, *tiny_families.STOCK_PROCESSORS[family])
    else:
        processor.save_pretrained(folder)
    return folder


def _set_decoder_layers(text: Any, layers: int) -> None:
    """Resize the decoder to ``layers`` layers; per-layer lists (Gemma-3's sliding and full layer
    types) repeat their pattern."""
    if layers < 2:
        raise ValueError("a tiny model needs at least two decoder layers")
    text.num_hidden_layers = layers
    pattern = getattr(text, "layer_types", None)
    if pattern:
        text.layer_types = [pattern[i % len(pattern)] for i in range(layers)]


# -- tokenizers -----------------------------------------------------------------------------


def _llava_tokenizer() -> Any:
    return word_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>"],
                          bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", image_token="<image>")


# -- processors -----------------------------------------------------------------------------


def _build_llava() -> Any:
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        **MEAN_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=_llava_tokenizer(),
        patch_size=CLIP_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which "default" drops
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def _build_llava_next() -> Any:
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": CLIP_IMAGE_SIZE},
        crop_size={"height": CLIP_IMAGE_SIZE, "width": CLIP_IMAGE_SIZE},
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        **MEAN_STD,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=_llava_tokenizer(),
        patch_size=CLIP_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def _build_qwen2_vl() -> Any:
    from transformers import Qwen2VLImageProcessor

    from lvlm_studio.core.models.qwen2_vl import image_only_processor_class

    # The stock processor insists on a video processor, which needs torchvision; the image-only
    # variant is the same processor without it. _save_qwen2_vl_processor saves it as the stock one.
    return image_only_processor_class()(
        image_processor=Qwen2VLImageProcessor(**qwen_image_settings()),
        tokenizer=qwen_tokenizer(),
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def _plain(value: Any) -> Any:
    """A setting as JSON can hold it (image processors keep sizes in dict-like ``SizeDict`` objects)."""
    if dataclasses.is_dataclass(value):
        return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    return value


def _save_qwen2_vl_processor(processor: Any, folder: Path) -> None:
    """Save as a stock ``Qwen2VLProcessor`` with a video processor entry, so that where
    torchvision is installed transformers loads the folder exactly like a released checkpoint."""
    processor.save_pretrained(folder)
    path = folder / "processor_config.json"
    saved = json.loads(path.read_text())
    saved["processor_class"] = "Qwen2VLProcessor"
    image = processor.image_processor
    settings = {key: _plain(getattr(image, key)) for key in ("size", "patch_size", "merge_size", "temporal_patch_size",
                                                     "image_mean", "image_std")}
    saved["video_processor"] = {"video_processor_type": "Qwen2VLVideoProcessor", **settings}
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


# -- models ---------------------------------------------------------------------------------


def _model_class(family: str) -> Any:
    import transformers

    from lvlm_studio.testing.tiny_families import MODEL_CLASSES

    names = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
             "qwen2_vl": "Qwen2VLForConditionalGeneration", **MODEL_CLASSES}
    return getattr(transformers, names[family])


def _clip_vision() -> Any:
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=CLIP_IMAGE_SIZE, patch_size=CLIP_PATCH_SIZE, projection_dim=32)


def _config(family: str, tokenizer: Any) -> Any:
    import transformers

    image_token_id = tokenizer.convert_tokens_to_ids(tokenizer.image_token)
    grid = CLIP_IMAGE_SIZE // CLIP_PATCH_SIZE
    if family == "llava":
        return transformers.LlavaConfig(
            vision_config=_clip_vision(), text_config=transformers.LlamaConfig(**text_kwargs(tokenizer)),
            image_token_id=image_token_id, vision_feature_layer=-1, vision_feature_select_strategy="default",
            image_seq_length=grid * grid,
        )
    if family == "llava_next":
        return transformers.LlavaNextConfig(
            vision_config=_clip_vision(), text_config=transformers.LlamaConfig(**text_kwargs(tokenizer)),
            image_token_index=image_token_id, vision_feature_layer=-1,
            vision_feature_select_strategy="default", image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
            image_seq_length=grid * grid,
        )
    head_dim = 64 // 4
    text = transformers.Qwen2VLTextConfig(
        **text_kwargs(tokenizer),
        # Multimodal RoPE splits each head's rotary half into (time, height, width) sections.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": [head_dim // 8, head_dim * 3 // 16, head_dim * 3 // 16]},
    )
    vision = transformers.Qwen2VLVisionConfig(
        depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=QWEN_PATCH_SIZE,
        spatial_merge_size=QWEN_MERGE_SIZE, temporal_patch_size=2,
    )
    ids = tokenizer.convert_tokens_to_ids
    return transformers.Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=image_token_id,
        video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
