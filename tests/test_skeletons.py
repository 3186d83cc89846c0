"""Skeletons of released checkpoints at real resolution: token counts and regions against the model.

Every skeleton (``lvlm_studio.testing.skeletons``) keeps its checkpoint's processor and geometry, so
on a real photo size it must produce the released model's number of image tokens, and its adapter's
regions must hold exactly the model's own features of the views they claim (the check the tiny
families pass, ``model_helpers.assert_regions_match_model``). Counts need only the processor; the
region check builds each skeleton one layer deep (geometry does not depend on depth). Four layouts
run on a 640 x 480 photo with the suite (about 50 s in all); the other skeletons, and every
skeleton on 1920 x 1080 and 300 x 1200 photos, are marked slow (32 cases, about 2 minutes on two shared cores).
Capture's memory at real shape (no eager weights; output_attentions estimated and refused) is
checked here too; its measurement is ``benchmarks/attention_memory.py --skeleton``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_helpers import assert_regions_match_model
from PIL import Image

from lvlm_studio.core.models.loading import LoadedModel, LoadOptions, load_model
from lvlm_studio.core.plugin.adapter import all_image_positions, image_token_positions
from lvlm_studio.testing.skeletons import SKELETON_DIR, SKELETONS, build_processor, build_skeleton, skeleton_settings

PHOTO, WIDE, TALL = (640, 480), (1920, 1080), (300, 1200)  # (width, height)

# Image tokens the released models' processors give each size (Gemma-3 with pan-and-scan on). Each
# follows the checkpoint's rule:
#   LLaVA-1.5      24 x 24 patches of a 336 px crop, whatever the size
#   LLaVA-NeXT     576 base + the best pinpoint canvas (672x672, 672x672, 1008x336), unpadded to the
#                  image's aspect ratio, one newline per row: 576+36*48+36, 576+28*48+28, 576+72*18+72
#   Qwen2-VL/2.5   sides rounded to multiples of 28 px, 2x2 patches merged: 17x23, 39x69, 43x11
#   Qwen3-VL       the same with 32 px: 15x20, 34x60, 38x9
#   OneVision      729 base + the pinpoint canvas pooled down to at most 9 views' worth, plus newlines
#   Gemma-3        256 per view: the image and 2, 2 or 4 pan-and-scan crops
#   SmolVLM        81 per 384 px tile after the long side goes to 1536 px, plus a global view: 12+1, 12+1, 4+1
#   PaliGemma-448  32 x 32 patches, always
#   InternVL3      256 per 448 px tile (the tiling closest in aspect ratio, at most 12) and a thumbnail:
#                  4x3+1, 4x2+1, 1x4+1
#   Mllama         one <|image|> token; the image enters through cross-attention
TOKENS = {
    "llava-1.5-7b-hf": (576, 576, 576),
    "llava-v1.6-mistral-7b-hf": (2340, 1948, 1944),
    "Qwen2-VL-7B-Instruct": (391, 2691, 473),
    "llava-onevision-qwen2-7b-ov-hf": (2929, 7269, 3753),
    "Qwen2.5-VL-7B-Instruct": (391, 2691, 473),
    "Qwen3-VL-8B-Instruct": (300, 2040, 342),
    "gemma-3-4b-it": (768, 768, 1280),
    "SmolVLM-Instruct": (1053, 1053, 405),
    "SmolVLM2-2.2B-Instruct": (1053, 1053, 405),
    "paligemma-3b-pt-448": (1024, 1024, 1024),
    "InternVL3-1B-hf": (3328, 2304, 1280),
    "Llama-3.2-11B-Vision-Instruct": (1, 1, 1),
}
NEWLINES = ("llava_next", "llava_onevision")
SIZES = pytest.mark.parametrize("size", [PHOTO, WIDE, TALL], ids=["640x480", "1920x1080", "300x1200"])


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Bright noise (every patch differs; padding, which is black, stays distinguishable)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(160, 256, (size[1], size[0], 3), dtype=np.uint8))


def process(processor, family: str, image: Image.Image) -> dict:
    content = [{"type": "image"}, {"type": "text", "text": "describe the image."}]
    text = (processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
            if processor.chat_template else "<image>describe the image.")
    extra = {"do_pan_and_scan": True} if family == "gemma3" else {}
    return processor(images=[image], text=[text], return_tensors="pt", **extra)


def test_every_family_has_a_skeleton_with_its_sources():
    from lvlm_studio.core.models.families import lvlm_studio_model_adapters

    for adapter in lvlm_studio_model_adapters():  # every adapter serves at least one skeleton
        assert set(adapter.model_types) & set(SKELETONS.values()), adapter.family
    sources = (SKELETON_DIR / "SOURCE.md").read_text()
    for name in SKELETONS:
        assert f"| {name} |" in sources
        for file in ("config.json", "preprocessor_config.json", "processor.json"):
            json.loads((SKELETON_DIR / name / file).read_text())


@pytest.mark.parametrize("name", list(SKELETONS))
def test_image_token_counts_are_the_released_models(name):
    family = SKELETONS[name]
    processor = build_processor(family, skeleton_settings(name))
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.tokenizer.image_token)
    counts = tuple(int((process(processor, family, photo(size))["input_ids"] == image_token).sum())
                   for size in (PHOTO, WIDE, TALL))
    assert counts == TOKENS[name]


def test_skeleton_keeps_the_real_depth_and_heads(tmp_path):
    """The saved configuration is the released one except for widths: LLaVA-NeXT-7B keeps 32 decoder
    layers of 32 heads (8 key/value heads), a 24-layer CLIP of 16 heads, its pinpoints and 576 base
    tokens; every head is TEXT_HEAD_DIM wide."""
    from transformers import AutoConfig

    from lvlm_studio.testing.skeletons import TEXT_HEAD_DIM

    config = AutoConfig.from_pretrained(build_skeleton("llava-v1.6-mistral-7b-hf", tmp_path / "next"))
    text, vision = config.text_config, config.vision_config
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (32, 32, 8)
    assert text.hidden_size == 32 * TEXT_HEAD_DIM == text.num_attention_heads * text.head_dim
    assert (vision.num_hidden_layers, vision.num_attention_heads, vision.image_size, vision.patch_size) == (
        24, 16, 336, 14)
    assert config.image_grid_pinpoints == [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    assert config.vision_feature_layer == -2


@pytest.fixture(scope="module")
def skeletons(tmp_path_factory: pytest.TempPathFactory):
    """Loads each skeleton on first use, one layer deep (vision towers keep two: LLaVA reads the
    second-to-last), and keeps it for the module."""
    root = tmp_path_factory.mktemp("skeletons")
    cache: dict[str, LoadedModel] = {}

    def get(name: str) -> LoadedModel:
        if name not in cache:
            cache[name] = load_model(build_skeleton(name, root / name, layers=1), LoadOptions(device="cpu"))
        return cache[name]

    return get


def check_regions(lm: LoadedModel, name: str, size: tuple[int, int]) -> None:
    inputs = process(lm.processor, lm.family, photo(size))
    regions = lm.adapter.image_regions(inputs, [size])
    assert_regions_match_model(lm, inputs, regions)
    if lm.family == "mllama":
        return
    image_tokens = image_token_positions(inputs["input_ids"], lm.model.config.image_token_id)
    covered = all_image_positions(regions)
    newlines = lm.adapter.newline_positions(inputs, [size]) if lm.family in NEWLINES else []
    assert len(covered) + len(newlines) == len(image_tokens) == TOKENS[name][[PHOTO, WIDE, TALL].index(size)]


# Each skeleton's region check on one photo costs 3-30 s of CPU (Mllama's vision encoder attends over
# its four 1601-token tiles at once); four layouts run by default, the rest with the slow ones.
QUICK = ("llava-1.5-7b-hf", "llava-v1.6-mistral-7b-hf", "Qwen2-VL-7B-Instruct", "paligemma-3b-pt-448")
ON_A_PHOTO = [name if name in QUICK else pytest.param(name, marks=pytest.mark.slow) for name in SKELETONS]


@pytest.mark.parametrize("name", ON_A_PHOTO)
def test_regions_match_the_model_on_a_photo(skeletons, name):
    check_regions(skeletons(name), name, PHOTO)


@pytest.mark.slow
@pytest.mark.parametrize("size", [WIDE, TALL], ids=["1920x1080", "300x1200"])
@pytest.mark.parametrize("name", list(SKELETONS))
def test_regions_match_the_model_on_wide_and_tall_photos(skeletons, name, size):
    check_regions(skeletons(name), name, size)


# -- memory at real shape ------------------------------------------------------------------------


def test_capture_keeps_rows_without_eager_weights(skeletons, monkeypatch):
    """On LLaVA-1.5's 576 image tokens capture runs SDPA and recomputes only the requested rows: the
    eager fallback (a layer's full weights at a time) is never taken, and the rows are
    probabilities over the whole sequence."""
    from lvlm_studio.core.models import capture

    lm = skeletons("llava-1.5-7b-hf")
    inputs = process(lm.processor, lm.family, photo(PHOTO))
    length = inputs["input_ids"].shape[1]
    monkeypatch.setattr(capture, "_eager_capture", lambda *a, **k: pytest.fail("fell back to eager attention"))
    rows = capture.capture_attention(lm, inputs, [length - 1], range(length))
    assert rows.shape == (1, 32, 1, length)
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-5)


def test_output_attentions_is_estimated_and_refused_when_it_cannot_fit(tmp_path):
    """LLaVA-NeXT-7B at its largest anyres input (2,928 image tokens plus the prompt) would need
    32 layers x 32 heads x T^2 float32 weights: about 36 GB. Asking for it on a 16 GiB machine is a
    clear InputError naming what to do instead, not an out-of-memory death."""
    from lvlm_studio.core.errors import InputError
    from lvlm_studio.core.models.capture import full_attention_bytes, require_full_attention_fits

    lm = load_model(build_skeleton("llava-v1.6-mistral-7b-hf", tmp_path / "next"), LoadOptions(device="cpu"))
    assert full_attention_bytes(lm, 2950) == 32 * 32 * 2950**2 * 4
    with pytest.raises(InputError, match="capture_attention"):
        require_full_attention_fits(lm, 2950, available=16 * 2**30)
    assert require_full_attention_fits(lm, 100, available=16 * 2**30) == 32 * 32 * 100**2 * 4
