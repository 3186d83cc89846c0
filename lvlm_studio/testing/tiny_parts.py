"""The pieces every tiny family shares: a word-level vocabulary and tokenizer built offline, image
normalisation, Qwen's image settings and the tiny decoder's size (tiny_models and tiny_families)."""

from __future__ import annotations

from typing import Any

#: Enough English for test prompts ("describe the image.", "what color is the circle?") and answers.
WORDS = (
    "a", "an", "the", "and", "or", "of", "in", "on", "at", "to", "with", "is", "are", "it", "this",
    "that", "there", "what", "where", "which", "how", "many", "color", "colour", "shape", "describe",
    "image", "picture", "photo", "show", "me", "you", "see", "yes", "no", "left", "right", "top", "bottom",
    "middle", "center", "circle", "square", "triangle", "red", "green", "blue", "yellow", "black", "white",
    "one", "two", "three", "user", "assistant", "system", ".", ",", "?", "!", ":",
)

# Qwen2-VL: 8 px patches merged 2x2, so resized sides are multiples of 16; 1024-4096 pixels in all.
QWEN_PATCH_SIZE = 8
QWEN_MERGE_SIZE = 2
QWEN_MIN_PIXELS = 32 * 32
QWEN_MAX_PIXELS = 64 * 64
MEAN_STD = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}



def word_tokenizer(special_tokens: list[str], *, bos: str | None, eos: str, pad: str, unk: str,
                   image_token: str, extra_special: dict[str, str] | None = None) -> Any:
    """A word-level fast tokenizer over ``WORDS`` plus ``special_tokens``, built offline.

    Special tokens are registered as such so the tokenizer never splits them and the processors
    find the image token. ``bos``, when given, is prepended to every sequence as Llama does.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys([*special_tokens, *WORDS]))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos is not None:
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    named = {"eos_token": eos, "unk_token": unk, "pad_token": pad}
    if bos is not None:
        named["bos_token"] = bos
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        extra_special_tokens={"image_token": image_token, **(extra_special or {})},
        **named,
    )
    others = [token for token in special_tokens if token not in named.values()]
    tokenizer.add_special_tokens({"additional_special_tokens": others})
    return tokenizer


def qwen_tokenizer() -> Any:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    return word_tokenizer(
        specials, bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk="<unk>", image_token="<|image_pad|>",
        extra_special={"video_token": "<|video_pad|>", "vision_start_token": "<|vision_start|>",
                       "vision_end_token": "<|vision_end|>"},
    )


def qwen_image_settings() -> dict[str, Any]:
    return {
        "size": {"shortest_edge": QWEN_MIN_PIXELS, "longest_edge": QWEN_MAX_PIXELS},
        "patch_size": QWEN_PATCH_SIZE,
        "merge_size": QWEN_MERGE_SIZE,
        "temporal_patch_size": 2,
        **MEAN_STD,
    }


def text_kwargs(tokenizer: Any) -> dict[str, Any]:
    """Decoder settings shared by every family: tiny, with grouped-query attention."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
