"""Tiny random models of the families beyond LLaVA, LLaVA-NeXT and Qwen2-VL (see ``tiny_models``).

One function per family returns ``(processor, config)``: a processor built offline on the
word-level tokenizer of ``tiny_models`` (plus the family's special tokens) and its image processor's
PIL backend, and a stock transformers config at toy size (hidden size 64, two or three decoder
layers, a two-layer vision encoder, images of a few dozen pixels, at most four tiles or crops).
Sizes are picked so that every layout rule of the family is exercised on 40-200 px test images:
LLaVA-OneVision's canvases are large enough for its "anyres_max" pooling to shrink them, Gemma-3
pans and scans wide and tall images, SmolVLM and InternVL cut them into tiles, Mllama into tiles
with an aspect-ratio id.

Families whose stock processor carries a video processor (which needs torchvision) are built with
the same processor minus its video half (``lvlm_studio.core.models.image_only``), and saved under the
stock class name so that they load exactly like a released checkpoint where torchvision exists.
"""

from __future__ import annotations

from typing import Any

from lvlm_studio.testing.tiny_parts import MEAN_STD, qwen_image_settings, qwen_tokenizer, text_kwargs, word_tokenizer


# Chat templates: "user: <image> describe the image. assistant:" in each family's image marker.
def _template(image_marker: str) -> str:
    return (
        "{% for message in messages %}{{ message['role'] }}: "
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image_marker + " {% elif part['type'] == 'text' %}{{ part['text'] }}"
        "{% endif %}{% endfor %}{% endif %} {% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )


QWEN_CHAT_TEMPLATE = _template("<|vision_start|><|image_pad|><|vision_end|>")

#: The stock processor and video processor classes each family's saved folder names (built and
#: loaded here without the video half, which needs torchvision).
STOCK_PROCESSORS = {
    "llava_onevision": ("LlavaOnevisionProcessor", "LlavaOnevisionVideoProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLVideoProcessor"),
    "smolvlm": ("SmolVLMProcessor", "SmolVLMVideoProcessor"),
    "internvl": ("InternVLProcessor", "InternVLVideoProcessor"),
}

MODEL_CLASSES = {
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "smolvlm": "SmolVLMForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "internvl": "InternVLForConditionalGeneration",
    "mllama": "MllamaForConditionalGeneration",
}


def _text(tokenizer: Any, **extra: Any) -> dict[str, Any]:

    return {**text_kwargs(tokenizer), **extra}


def _siglip(image_size: int, patch_size: int) -> Any:
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=patch_size)


def _image_only(family: str) -> type:
    from lvlm_studio.core.models.image_only import image_only_processor_class

    return image_only_processor_class(STOCK_PROCESSORS[family][0])


# -- LLaVA-OneVision: SigLIP, "full" features, AnyRes canvases pooled down to anyres_max_2 -------
ONEVISION_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]


def llava_onevision() -> tuple[Any, Any]:
    import transformers

    tokenizer = word_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<image>", "<video>"], bos="<s>", eos="</s>",
                               pad="<pad>", unk="<unk>", image_token="<image>",
                               extra_special={"video_token": "<video>"})
    image_processor = transformers.LlavaOnevisionImageProcessorPil(
        size={"height": 32, "width": 32}, image_grid_pinpoints=ONEVISION_PINPOINTS, do_center_crop=False, **MEAN_STD)
    processor = _image_only("llava_onevision")(
        image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=16,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_2",
        chat_template=_template("<image>"))
    config = transformers.LlavaOnevisionConfig(
        vision_config=_siglip(32, 8), text_config=transformers.Qwen2Config(**_text(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, vision_aspect_ratio="anyres_max_2",
        image_grid_pinpoints=ONEVISION_PINPOINTS)
    return processor, config


# -- Qwen2.5-VL and Qwen3-VL: 8 px patches merged 2x2 (as tiny_models' Qwen2-VL) -----------------


def _qwen_image_processor() -> Any:
    from transformers import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(**qwen_image_settings())


def _qwen_ids(tokenizer: Any) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return {"image_token_id": ids("<|image_pad|>"), "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"), "vision_end_token_id": ids("<|vision_end|>")}


def qwen2_5_vl() -> tuple[Any, Any]:
    import transformers

    tokenizer = qwen_tokenizer()
    processor = _image_only("qwen2_5_vl")(image_processor=_qwen_image_processor(), tokenizer=tokenizer,
                                          chat_template=QWEN_CHAT_TEMPLATE)
    head_dim = 16
    text = transformers.Qwen2_5_VLTextConfig(**_text(tokenizer), rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    # Windows of 32 px are 2x2 merged tokens; block 0 attends within windows, block 1 globally.
    vision = transformers.Qwen2_5_VLVisionConfig(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=8,
        spatial_merge_size=2, temporal_patch_size=2, window_size=32, fullatt_block_indexes=[1])
    config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_ids(tokenizer))
    return processor, config


def qwen3_vl() -> tuple[Any, Any]:
    import transformers

    tokenizer = qwen_tokenizer()
    processor = _image_only("qwen3_vl")(image_processor=_qwen_image_processor(), tokenizer=tokenizer,
                                        chat_template=QWEN_CHAT_TEMPLATE)
    text = transformers.Qwen3VLTextConfig(**_text(tokenizer, head_dim=16), rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    # DeepStack: the features after vision block 0 are added to the hidden states of decoder layer 0.
    vision = transformers.Qwen3VLVisionConfig(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=8,
        spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64, deepstack_visual_indexes=[0])
    config = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **_qwen_ids(tokenizer))
    return processor, config


# -- Gemma-3: SigLIP 32 px / 4 px patches pooled to 4x4 = 16 tokens per crop; pan and scan -------
GEMMA3_TOKENS_PER_IMAGE = 16


def gemma3() -> tuple[Any, Any]:
    import transformers

    tokenizer = word_tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", image_token="<image_soft_token>",
        extra_special={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    image_processor = transformers.Gemma3ImageProcessorPil(
        size={"height": 32, "width": 32}, do_pan_and_scan=True, pan_and_scan_min_crop_size=16,
        pan_and_scan_max_num_crops=3, pan_and_scan_min_ratio_to_activate=1.2, **MEAN_STD)
    processor = transformers.Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                             image_seq_length=GEMMA3_TOKENS_PER_IMAGE,
                                             chat_template=_template("<start_of_image>"))
    ids = tokenizer.convert_tokens_to_ids
    text = transformers.Gemma3TextConfig(**_text(tokenizer, head_dim=16, query_pre_attn_scalar=16,
                                                 sliding_window=64, layer_types=["sliding_attention",
                                                                                 "full_attention"]))
    config = transformers.Gemma3Config(
        text_config=text, vision_config=_siglip(32, 4), mm_tokens_per_image=GEMMA3_TOKENS_PER_IMAGE,
        boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"))
    return processor, config


# -- Idefics3 / SmolVLM: 32 px tiles of 8 px patches, pixel shuffle x2 -> 2x2 tokens per tile ----
IDEFICS_TILE = 32
IDEFICS_SEQ_LEN = 4


def _idefics_tokenizer(global_tag: str) -> Any:
    markers = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "<fake_token_around_image>", global_tag,
                "<end_of_utterance>", *markers]
    extra = {"fake_image_token": "<fake_token_around_image>", "global_image_token": global_tag,
             "end_of_utterance_token": "<end_of_utterance>"}
    return word_tokenizer(specials, bos="<s>", eos="<end_of_utterance>", pad="<pad>", unk="<unk>",
                          image_token="<image>", extra_special=extra)


def _idefics_image_settings() -> dict[str, Any]:
    return {"size": {"longest_edge": 2 * IDEFICS_TILE}, "max_image_size": {"longest_edge": IDEFICS_TILE},
            "do_image_splitting": True, **MEAN_STD}


def _idefics_config(config_class: Any, vision_class: Any, tokenizer: Any) -> Any:
    import transformers

    vision = vision_class(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          image_size=IDEFICS_TILE, patch_size=8)
    return config_class(vision_config=vision, text_config=transformers.LlamaConfig(**_text(tokenizer)),
                        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2)


def idefics3() -> tuple[Any, Any]:
    import transformers

    tokenizer = _idefics_tokenizer("<global-img>")
    processor = transformers.Idefics3Processor(
        image_processor=transformers.Idefics3ImageProcessorPil(**_idefics_image_settings()), tokenizer=tokenizer,
        image_seq_len=IDEFICS_SEQ_LEN, chat_template=_template("<image>"))
    return processor, _idefics_config(transformers.Idefics3Config, transformers.Idefics3VisionConfig, tokenizer)


def smolvlm() -> tuple[Any, Any]:
    import transformers

    tokenizer = _idefics_tokenizer("<global-img>")
    processor = _image_only("smolvlm")(
        image_processor=transformers.SmolVLMImageProcessorPil(**_idefics_image_settings()), tokenizer=tokenizer,
        image_seq_len=IDEFICS_SEQ_LEN, chat_template=_template("<image>"))
    return processor, _idefics_config(transformers.SmolVLMConfig, transformers.SmolVLMVisionConfig, tokenizer)


# -- PaliGemma: SigLIP 32 px / 8 px patches = 16 image tokens before the prompt; prefix-LM ---------


def paligemma() -> tuple[Any, Any]:
    import transformers

    tokenizer = word_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], bos="<bos>", eos="<eos>",
                               pad="<pad>", unk="<unk>", image_token="<image>")
    image_processor = transformers.SiglipImageProcessorPil(size={"height": 32, "width": 32}, **MEAN_STD)
    image_processor.image_seq_length = 16
    processor = transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = transformers.GemmaConfig(**_text(processor.tokenizer, head_dim=16))
    config = transformers.PaliGemmaConfig(
        vision_config=_siglip(32, 8), text_config=text, image_token_index=processor.image_token_id,
        projection_dim=64, hidden_size=64, vocab_size=len(processor.tokenizer))
    return processor, config


# -- InternVL: 32 px tiles (up to 4) plus a thumbnail; 8 px patches, pixel shuffle -> 2x2 ---------


def internvl() -> tuple[Any, Any]:
    import transformers

    tokenizer = word_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk="<unk>", image_token="<IMG_CONTEXT>",
        extra_special={"start_image_token": "<img>", "end_image_token": "</img>",
                       "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    image_processor = transformers.GotOcr2ImageProcessorPil(
        size={"height": 32, "width": 32}, crop_to_patches=True, min_patches=1, max_patches=4, **MEAN_STD)
    processor = _image_only("internvl")(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=4,
                                        chat_template=_template("<IMG_CONTEXT>"))
    vision = transformers.InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8)
    config = transformers.InternVLConfig(
        vision_config=vision, text_config=transformers.Qwen2Config(**_text(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=4, downsample_ratio=0.5)
    return processor, config


# -- Mllama: 32 px tiles (up to 4), 8 px patches; the image enters through cross-attention --------


def mllama() -> tuple[Any, Any]:
    import transformers

    tokenizer = word_tokenizer(["<pad>", "<s>", "</s>", "<unk>", "<|image|>", "<|python_tag|>"], bos="<s>",
                               eos="</s>", pad="<pad>", unk="<unk>", image_token="<|image|>")
    image_processor = transformers.MllamaImageProcessorPil(size={"height": 32, "width": 32}, max_image_tiles=4,
                                                           **MEAN_STD)
    processor = transformers.MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                             chat_template=_template("<|image|>"))
    vision = transformers.MllamaVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1, attention_heads=2,
        image_size=32, patch_size=8, max_num_tiles=4, intermediate_layers_indices=[0], vision_output_dim=64,
        supported_aspect_ratios=[[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]])
    # Three decoder layers: self-attention, cross-attention to the image, self-attention.
    text = transformers.MllamaTextConfig(**_text(tokenizer, num_hidden_layers=3), cross_attention_layers=[1])
    config = transformers.MllamaConfig(vision_config=vision, text_config=text,
                                       image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))
    return processor, config


BUILDERS = {
    "llava_onevision": llava_onevision,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
    "gemma3": gemma3,
    "idefics3": idefics3,
    "smolvlm": smolvlm,
    "paligemma": paligemma,
    "internvl": internvl,
    "mllama": mllama,
}
