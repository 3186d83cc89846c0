"""The demo model's parts: a word-level tokenizer, a LLaVA processor and a small LLaVA config.

Everything is built offline from the demo world's vocabulary, so the embedded model needs nothing
from a model hub. The architecture is stock ``LlavaForConditionalGeneration`` (CLIP vision tower,
two-layer projector, Llama decoder), so every code path that serves real LLaVA checkpoints serves
the demo model too.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from lvlm_studio.demo.scenes import vocabulary

IMAGE_SIZE = 128  # the square the model sees
# 8 px patches: 16 x 16 image tokens. On 8 x 8 most of the open world's objects are smaller than a
# cell, and a map read at the image tokens cannot point at them: a resampled grid map peaks next to
# a cell centre, which a quarter of the objects do not cover, and TAM's 3x3 rank filter flattens
# one-cell peaks (benchmarks/tam_grid.py; docs/DEMO_WORLD.md).
PATCH_SIZE = 8
GRID = IMAGE_SIZE // PATCH_SIZE
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
# CLIP's normalisation, as LLaVA-1.5 uses it. Padding to a square fills with this mean colour, a
# warm grey (122, 116, 104) that differs from the neutral greys users draw backgrounds in.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

# LLaVA-style turns, lower-case to match the word-level vocabulary, with the question *before* the
# image: every image token can then attend to the question, and the answer reads question-aware
# image tokens. With the image first, two training runs learned to caption but never to condition on
# the question (the answer's logits did not change with the asked colour or shape).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }} {% endif %}"
    "{% endfor %}{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% endif %}"
    "{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words, tidies " ," and " ?"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def build_processor() -> LlavaProcessor:
    # Pad to a square of the longer side, then resize: the model sees the whole image at any
    # aspect ratio (LLaVA-1.5's "pad" aspect mode), never a centre crop of it.
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token the projector drops
        chat_template=CHAT_TEMPLATE,
    )


def build_config(tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=128,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as in most modern decoders
        max_position_embeddings=512,  # 256 image tokens, the prompt and the answer
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=GRID * GRID,
        projector_hidden_act="gelu",
    )


def build_model(seed: int = 0, like: Path | None = None) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A freshly initialised demo model and its processor (seeded): the next demo model's
    architecture, or with ``like`` the architecture and processor of that model folder (weights
    fresh; the shipped model's shortcut twin is built like resources/demo-model)."""
    processor = LlavaProcessor.from_pretrained(like) if like is not None else build_processor()
    config = LlavaConfig.from_pretrained(like) if like is not None else build_config(processor.tokenizer)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model, processor


def pixel_values(images: list, processor: LlavaProcessor | None = None) -> torch.Tensor:
    """The processor's pixel values for a batch of images of any sizes (padded, resized)."""
    image_processor = (processor or _default_processor()).image_processor
    return image_processor(images=list(images), return_tensors="pt")["pixel_values"]


@functools.cache
def _default_processor() -> LlavaProcessor:
    return build_processor()


def grid_of(processor: LlavaProcessor) -> int:
    """Image tokens per side of the square a demo processor makes (8 for the shipped model)."""
    return processor.image_processor.crop_size["height"] // processor.patch_size


def padded_coverage(mask: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Fraction of each of the model's grid cells that ``mask`` (the image's size) covers, after
    the processor's pad to a square (the image centred, offsets rounded down)."""
    height, width = mask.shape
    side = max(height, width)
    square = np.zeros((side, side), np.float32)
    top, left = (side - height) // 2, (side - width) // 2
    square[top : top + height, left : left + width] = mask
    return np.asarray(Image.fromarray(square, "F").resize((grid, grid), Image.BOX))


def save_demo(model: LlavaForConditionalGeneration, processor: LlavaProcessor, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
