"""Skeletons of released checkpoints: every real setting, a tiny width, random weights, built offline.

The tiny models (``tiny_models``) check plumbing on images of a few dozen pixels. A skeleton checks
what only shows at the size users run: the released checkpoint's configuration (depth, heads and
key/value heads, image and patch sizes, grid pinpoints, pixel limits, tile and crop rules) and its
processor settings (image token counts, resizing, special tokens), kept as they are in
``resources/skeletons/<checkpoint>/`` (``config.json``, ``preprocessor_config.json`` and the
processor's own settings in ``processor.json``; ``resources/skeletons/SOURCE.md`` says where each
came from). Only widths shrink: every attention keeps its number of heads, each head gets
``TEXT_HEAD_DIM`` (or ``VISION_HEAD_DIM``) dimensions, so hidden sizes become heads x head_dim and
MLPs ``MLP_RATIO`` times that. Qwen's multimodal RoPE sections shrink in the same proportion as the
head, Gemma's query scaling follows its head size. The tokenizer is the offline word-level one of
``tiny_parts`` plus the family's special tokens, and a word-level stand-in of the chat template.

``layers`` caps the depth of the decoder and of the vision encoder for a run where full depth is too
slow on a CPU (geometry does not depend on depth); the index lists that point into the layers
(Mllama's cross-attention layers, Qwen2.5-VL's full-attention blocks, Qwen3-VL's DeepStack taps)
keep the entries that still exist. Without it the saved configuration has the real depth.

    python -m lvlm_studio.testing.skeletons llava-v1.6-mistral-7b-hf OUT [--layers N]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from lvlm_studio.testing.tiny_parts import word_tokenizer

SKELETON_DIR = Path(__file__).resolve().parents[2] / "resources" / "skeletons"
TEXT_HEAD_DIM = 8
VISION_HEAD_DIM = 8
QWEN_TEXT_HEAD_DIM = 16  # multimodal RoPE needs three sections in half a head
MLP_RATIO = 2

#: Each skeleton's family (``lvlm_studio.core.models.families``), in the families' order.
SKELETONS = {
    "llava-1.5-7b-hf": "llava",
    "llava-v1.6-mistral-7b-hf": "llava_next",
    "Qwen2-VL-7B-Instruct": "qwen2_vl",
    "llava-onevision-qwen2-7b-ov-hf": "llava_onevision",
    "Qwen2.5-VL-7B-Instruct": "qwen2_5_vl",
    "Qwen3-VL-8B-Instruct": "qwen3_vl",
    "gemma-3-4b-it": "gemma3",
    "SmolVLM-Instruct": "idefics3",
    "SmolVLM2-2.2B-Instruct": "smolvlm",
    "paligemma-3b-pt-448": "paligemma",
    "InternVL3-1B-hf": "internvl",
    "Llama-3.2-11B-Vision-Instruct": "mllama",
}

# Where the image goes in the word-level stand-in of each family's chat template.
IMAGE_MARKERS = {
    "llava": "<image>", "llava_next": "<image>", "llava_onevision": "<image>",
    "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "gemma3": "<start_of_image>", "idefics3": "<image>", "smolvlm": "<image>", "paligemma": None,
    "internvl": "<IMG_CONTEXT>", "mllama": "<|image|>",
}

# Named special tokens of processor.json and the tokenizer attribute each becomes.
EXTRA_TOKENS = {
    "video": "video_token", "vision_start": "vision_start_token", "vision_end": "vision_end_token",
    "boi": "boi_token", "eoi": "eoi_token", "fake_image": "fake_image_token",
    "global_image": "global_image_token", "start_image": "start_image_token", "end_image": "end_image_token",
}


def skeleton_settings(name: str) -> dict[str, Any]:
    """The stored settings of skeleton ``name``: ``config``, ``preprocessor`` and ``processor`` dicts."""
    if name not in SKELETONS:
        raise ValueError(f"no skeleton {name!r}; choose one of {', '.join(SKELETONS)}")
    folder = SKELETON_DIR / name
    return {key: json.loads((folder / file).read_text()) for key, file in
            (("config", "config.json"), ("preprocessor", "preprocessor_config.json"),
             ("processor", "processor.json"))}


def build_skeleton(name: str, folder: Path, *, layers: int | None = None, seed: int = 0) -> Path:
    """Build the skeleton of released checkpoint ``name`` in ``folder`` (loadable by ``load_model``).

    ``layers`` caps the decoder's and the vision encoder's depth (see the module's docstring).
    """
    import torch
    import transformers

    from lvlm_studio.testing.tiny_models import _model_class, save_checkpoint

    family = SKELETONS.get(name)
    settings = skeleton_settings(name)
    processor = build_processor(family, settings)
    config_dict = skeleton_config(family, settings["config"], len(processor.tokenizer), layers)
    _set_token_ids(family, config_dict, processor.tokenizer)
    config = transformers.CONFIG_MAPPING[config_dict.pop("model_type")](**config_dict)
    torch.manual_seed(seed)
    model = _model_class(family)(config)
    return save_checkpoint(family, model, processor, folder)


# -- configuration ------------------------------------------------------------------------------


def skeleton_config(family: str, released: dict[str, Any], vocab: int, layers: int | None) -> dict[str, Any]:
    """The released configuration at a tiny width (and at most ``layers`` deep, when given)."""
    config = {k: v for k, v in copy.deepcopy(released).items() if k not in ("architectures", "_name_or_path")}
    if family in ("qwen2_vl", "qwen2_5_vl"):  # released flat: the text settings live at the top level
        text_keys = [k for k in config if k not in ("model_type", "vision_config", "image_token_id", "video_token_id",
                                                     "vision_start_token_id", "vision_end_token_id",
                                                     "vision_token_id", "tie_word_embeddings")]
        config["text_config"] = {k: config.pop(k) for k in text_keys}
    text, vision = config["text_config"], config["vision_config"]
    _shrink_text(family, text, vocab)
    _shrink_vision(family, vision, text["hidden_size"])
    if "vocab_size" in config:
        config["vocab_size"] = vocab
    if family == "paligemma":
        config["hidden_size"] = config["projection_dim"] = vision["projection_dim"] = text["hidden_size"]
    if layers is not None:
        _cap_depth(family, text, vision, layers)
    return config


def _shrink_text(family: str, text: dict[str, Any], vocab: int) -> None:
    head_dim = QWEN_TEXT_HEAD_DIM if family.startswith("qwen") else TEXT_HEAD_DIM
    real_head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    text["hidden_size"] = text["num_attention_heads"] * head_dim
    text["intermediate_size"] = MLP_RATIO * text["hidden_size"]
    text["head_dim"] = head_dim
    text["vocab_size"] = vocab
    if "query_pre_attn_scalar" in text:  # Gemma scales queries by 1/sqrt(this): the head size
        text["query_pre_attn_scalar"] = head_dim
    rope = text.pop("rope_scaling", None) or {}
    if "mrope_section" in rope:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": text.pop("rope_theta"),
                                   "mrope_section": _scaled_sections(rope["mrope_section"], head_dim // 2,
                                                                     real_head_dim // 2)}
        if rope.get("mrope_interleaved"):
            text["rope_parameters"]["mrope_interleaved"] = True
    elif rope:
        text["rope_scaling"] = rope


def _scaled_sections(sections: list[int], half: int, real_half: int) -> list[int]:
    """RoPE sections (time, height, width) of a half head of ``real_half`` dims scaled to ``half``."""
    scaled = [max(1, round(s * half / real_half)) for s in sections]
    scaled[0] += half - sum(scaled)  # rounding leftovers go to time, so the sections fill the half head
    return scaled


def _shrink_vision(family: str, vision: dict[str, Any], text_hidden: int) -> None:
    heads = vision.get("num_attention_heads") or vision.get("num_heads") or vision.get("attention_heads")
    width = heads * VISION_HEAD_DIM
    if family == "qwen2_vl":
        vision["embed_dim"] = width  # its MLP is mlp_ratio x embed_dim
        vision["hidden_size"] = text_hidden  # the merger's output
        return
    vision["hidden_size"] = width
    vision["intermediate_size"] = MLP_RATIO * width
    if "out_hidden_size" in vision:
        vision["out_hidden_size"] = text_hidden
    if "projection_dim" in vision:
        vision["projection_dim"] = width
    if family == "mllama":  # the projector reads the last layer and every intermediate one, side by side
        vision["vision_output_dim"] = width * (1 + len(vision["intermediate_layers_indices"]))


def _cap_depth(family: str, text: dict[str, Any], vision: dict[str, Any], layers: int) -> None:
    text["num_hidden_layers"] = min(text["num_hidden_layers"], layers)
    depth_key = "depth" if "depth" in vision else "num_hidden_layers"
    vision[depth_key] = min(vision[depth_key], max(layers, 2))  # LLaVA reads the second-to-last layer
    depth = vision[depth_key]
    if "fullatt_block_indexes" in vision:
        vision["fullatt_block_indexes"] = [i for i in vision["fullatt_block_indexes"] if i < depth] or [depth - 1]
    if "deepstack_visual_indexes" in vision:
        kept = [i for i in vision["deepstack_visual_indexes"] if i < depth][: text["num_hidden_layers"]]
        vision["deepstack_visual_indexes"] = kept or [0]
    if family == "mllama":
        vision["intermediate_layers_indices"] = [i for i in vision["intermediate_layers_indices"] if i < depth] or [0]
        vision["vision_output_dim"] = vision["hidden_size"] * (1 + len(vision["intermediate_layers_indices"]))
        vision["num_global_layers"] = min(vision["num_global_layers"], max(layers, 1))
        count = text["num_hidden_layers"]
        text["cross_attention_layers"] = ([i for i in text["cross_attention_layers"] if i < count]
                                          or [min(text["cross_attention_layers"][0], count - 1)])


def _set_token_ids(family: str, config: dict[str, Any], tokenizer: Any) -> None:
    """Point the configuration's token ids at the word-level tokenizer's ids of the same tokens."""
    ids = tokenizer.convert_tokens_to_ids
    image = ids(tokenizer.image_token)
    for key in ("image_token_index", "image_token_id"):
        if key in config:
            config[key] = image
    if family.startswith("qwen"):
        config.update(image_token_id=image, video_token_id=ids("<|video_pad|>"),
                      vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
        config.pop("vision_token_id", None)
    if family == "llava_onevision":
        config["video_token_index"] = ids("<video>")
    if family == "gemma3":
        config.update(boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"))
        config.pop("eos_token_id", None)
    text = config["text_config"]
    for key, token in (("pad_token_id", tokenizer.pad_token_id), ("bos_token_id", tokenizer.bos_token_id),
                       ("eos_token_id", tokenizer.eos_token_id)):
        text[key] = token
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        config.pop(key, None)


# -- processor ----------------------------------------------------------------------------------


def build_processor(family: str, settings: dict[str, Any]) -> Any:
    """The family's stock processor with the released image settings and processor settings."""
    import transformers

    from lvlm_studio.testing.tiny_families import STOCK_PROCESSORS, _template

    processor_settings = dict(settings["processor"])
    kind = processor_settings.pop("processor_class")
    tokens = processor_settings.pop("tokens")
    image_settings = dict(settings["preprocessor"])
    image_type = image_settings.pop("image_processor_type")
    image_class = getattr(transformers, image_type + "Pil", None) or getattr(transformers, image_type)
    seq_length = image_settings.pop("image_seq_length", None)
    for key in ("min_pixels", "max_pixels"):  # Qwen: the same limits as size's edges
        image_settings.pop(key, None)
    image_processor = image_class(**{k: v for k, v in image_settings.items() if v is not None})
    if seq_length is not None:
        image_processor.image_seq_length = seq_length
    if family == "qwen2_vl":  # built without its video half, as tiny_models does
        from lvlm_studio.core.models.qwen2_vl import image_only_processor_class as qwen2_vl_image_only

        processor_class = qwen2_vl_image_only()
    elif family in STOCK_PROCESSORS:
        from lvlm_studio.core.models.image_only import image_only_processor_class

        processor_class = image_only_processor_class(kind)
    else:
        processor_class = getattr(transformers, kind)
    marker = IMAGE_MARKERS[family]
    if marker is not None:
        processor_settings["chat_template"] = _template(marker)
    return processor_class(image_processor=image_processor, tokenizer=_tokenizer(family, tokens),
                           **processor_settings)


def _tokenizer(family: str, tokens: dict[str, Any]) -> Any:
    named = [tokens[k] for k in ("pad", "bos", "eos", "unk", "image") if tokens.get(k)]
    extra = {EXTRA_TOKENS[k]: v for k, v in tokens.items() if k in EXTRA_TOKENS}
    if family in ("idefics3", "smolvlm"):
        extra["end_of_utterance_token"] = tokens["eos"]
        markers = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    else:
        markers = []
    if family == "internvl":
        extra["context_image_token"] = tokens["image"]
    specials = list(dict.fromkeys([*named, *extra.values(), *tokens.get("more", []), *markers]))
    return word_tokenizer(specials, bos=tokens.get("bos"), eos=tokens["eos"], pad=tokens["pad"], unk=tokens["unk"],
                          image_token=tokens["image"], extra_special=extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the skeleton of a released checkpoint.")
    parser.add_argument("name", choices=list(SKELETONS))
    parser.add_argument("folder", type=Path)
    parser.add_argument("--layers", type=int, default=None, help="cap the decoder's and vision encoder's depth")
    args = parser.parse_args(argv)
    print(build_skeleton(args.name, args.folder, layers=args.layers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
