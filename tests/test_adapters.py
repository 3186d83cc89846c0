"""Model adapters against the real models: tiny random LLaVA, LLaVA-NeXT and Qwen2-VL checkpoints
are built, saved and loaded through ``load_model``, and every region an adapter reports is checked
against what the model does with its inputs (which embedding lands at which position), not only
against the adapter's own arithmetic. Also: ``load_model`` fails clearly on broken folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import clip_tile_features, merged_embeddings
from PIL import Image

from lvlm_studio.core.errors import ModelLoadError, UnsupportedModelError
from lvlm_studio.core.models.loading import LoadedModel, LoadOptions, load_model
from lvlm_studio.core.plugin.adapter import all_image_positions, image_token_positions
from lvlm_studio.testing.tiny_models import build_tiny_model

# The first three families; the others are checked against their models in test_families.py.
TINY_FAMILIES = ("llava", "llava_next", "qwen2_vl")
SQUARE, WIDE, TALL = (64, 64), (150, 100), (45, 200)  # (width, height); WIDE and TALL get unpadded
REGIONS_PER_IMAGE = {"llava": 1, "llava_next": 2, "qwen2_vl": 1}


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_model(family, root / family) for family in TINY_FAMILIES}


@pytest.fixture(scope="module")
def loaded(tiny_folders: dict[str, Path]) -> dict[str, LoadedModel]:
    return {family: load_model(folder, LoadOptions(device="cpu")) for family, folder in tiny_folders.items()}


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Bright noise: every patch differs (so features identify their place), and every pixel stays
    above mid-grey after normalisation, which tells image from the processor's black padding."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(160, 256, (size[1], size[0], 3), dtype=np.uint8))


def process(lm: LoadedModel, images: list[Image.Image], prompt: str = "what color is the circle?") -> dict:
    content = [{"type": "image", "image": im} for im in images] + [{"type": "text", "text": prompt}]
    messages = [{"role": "user", "content": content}]
    return lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=True, return_tensors="pt")


# -- the contract, for every family and image shape ------------------------------------------


@pytest.mark.parametrize("size", [SQUARE, WIDE, TALL], ids=["square", "wide", "tall"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_regions_are_the_image_tokens_in_grid_order(loaded, family, size):
    lm = loaded[family]
    inputs = process(lm, [noise_image(size)])
    regions = lm.adapter.image_regions(inputs, [size])

    assert len(regions) == REGIONS_PER_IMAGE[family]
    image_tokens = image_token_positions(inputs["input_ids"], lm.model.config.image_token_id)
    covered = all_image_positions(regions)
    assert set(covered.tolist()) <= set(image_tokens.tolist())
    assert len(set(covered.tolist())) == len(covered)  # no token in two grids
    separators = regions[-1].grid[0] if family == "llava_next" else 0  # one newline per high-res row
    assert len(covered) + separators == len(image_tokens)
    for region in regions:
        rows, cols = region.grid
        assert rows * cols == len(region.positions) > 0
        assert np.all(np.diff(region.positions) > 0)
        assert region.image_index == 0
        json.dumps(region.to_dict())  # a run record can store it


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_two_images_get_their_own_regions_in_prompt_order(loaded, family):
    lm = loaded[family]
    sizes = [WIDE, SQUARE]
    inputs = process(lm, [noise_image(s, seed=i) for i, s in enumerate(sizes)], "describe the image.")
    regions = lm.adapter.image_regions(inputs, sizes)
    per_image = REGIONS_PER_IMAGE[family]
    assert [r.image_index for r in regions] == [i for i in range(2) for _ in range(per_image)]
    assert np.all(np.diff(all_image_positions(regions)) > 0)
    merged_embeddings(lm, inputs)  # the model accepts the prompt


# -- each family against its model -----------------------------------------------------------


@pytest.mark.parametrize("size", [SQUARE, WIDE, TALL], ids=["square", "wide", "tall"])
def test_llava_grid_holds_the_projected_patches_in_row_major_order(loaded, size):
    lm = loaded["llava"]
    inputs = process(lm, [noise_image(size)])
    (region,) = lm.adapter.image_regions(inputs, [size])
    embeds = merged_embeddings(lm, inputs)
    features = clip_tile_features(lm, inputs["pixel_values"])[0]
    torch.testing.assert_close(embeds[region.positions], features)


@pytest.mark.parametrize(
    ("size", "box"),
    [
        (SQUARE, (0, 0, 64, 64)),
        ((200, 100), (50, 0, 150, 100)),  # shortest edge to 32 gives 64x32; the centre 32x32 is kept
        ((100, 200), (0, 50, 100, 150)),
    ],
    ids=["square", "wide", "tall"],
)
def test_llava_box_is_what_survives_the_centre_crop(loaded, size, box):
    lm = loaded["llava"]
    (region,) = lm.adapter.image_regions(process(lm, [noise_image(size)]), [size])
    assert region.box == pytest.approx(box)


@pytest.mark.parametrize("size", [SQUARE, WIDE, TALL], ids=["square", "wide", "tall"])
def test_llava_next_layout_matches_the_model(loaded, size):
    """Rebuild the model's high-res feature map from the tiles by hand and find where the
    high-res grid sits in it; the newlines must be exactly where the model put image_newline,
    and the box must be that part of the canvas mapped back to the image."""
    from transformers.image_processing_utils import select_best_resolution

    lm = loaded["llava_next"]
    width, height = size
    inputs = process(lm, [noise_image(size)])
    base, high = lm.adapter.image_regions(inputs, [size])
    embeds = merged_embeddings(lm, inputs)

    newline = lm.model.model.image_newline.detach()
    newlines = lm.adapter.newline_positions(inputs, [size])
    assert len(newlines) == high.grid[0]
    image_tokens = set(image_token_positions(inputs["input_ids"], lm.model.config.image_token_id).tolist())
    is_newline = (embeds == newline).all(dim=-1)
    assert set(torch.nonzero(is_newline).flatten().tolist()) & image_tokens == set(newlines.tolist())

    # The processor's documented rule: best pinpoint canvas, cut row-major into vision-sized tiles.
    side = lm.model.config.vision_config.image_size
    canvas_h, canvas_w = select_best_resolution((height, width), lm.processor.image_processor.image_grid_pinpoints)
    tile_rows, tile_cols = canvas_h // side, canvas_w // side
    pixels = inputs["pixel_values"][0]
    assert pixels.shape[0] == 1 + tile_rows * tile_cols
    features = clip_tile_features(lm, pixels)
    g = base.grid[0]
    torch.testing.assert_close(embeds[base.positions], features[0])
    assert base.box == pytest.approx((0, 0, width, height))  # the base view squeezes the whole image

    dim = features.shape[-1]
    full = features[1:].reshape(tile_rows, tile_cols, g, g, dim).permute(0, 2, 1, 3, 4)
    full = full.reshape(tile_rows * g, tile_cols * g, dim)
    rows, cols = high.grid
    shown = embeds[high.positions].reshape(rows, cols, dim)
    offsets = [(r, c) for r in range(full.shape[0] - rows + 1) for c in range(full.shape[1] - cols + 1)
               if torch.allclose(full[r : r + rows, c : c + cols], shown, atol=1e-5)]
    assert len(offsets) == 1
    (top_row, left_col), cell = offsets[0], side // g

    canvas = torch.zeros(3, canvas_h, canvas_w)
    for index, tile in enumerate(pixels[1:]):
        r, c = divmod(index, tile_cols)
        canvas[:, r * side : (r + 1) * side, c * side : (c + 1) * side] = tile
    content = canvas.mean(0) > -0.99  # padding is black, which normalises to exactly -1
    ys, xs = torch.nonzero(content.any(1)).flatten(), torch.nonzero(content.any(0)).flatten()
    y0, x0 = int(ys[0]), int(xs[0])
    shown_h, shown_w = int(ys[-1]) + 1 - y0, int(xs[-1]) + 1 - x0
    expected = (
        (left_col * cell - x0) * width / shown_w,
        (top_row * cell - y0) * height / shown_h,
        ((left_col + cols) * cell - x0) * width / shown_w,
        ((top_row + rows) * cell - y0) * height / shown_h,
    )
    assert high.box == pytest.approx(expected)
    if size != SQUARE:  # the shorter side was padded, and unpadding kept less than the full canvas
        assert rows * cols < full.shape[0] * full.shape[1]


@pytest.mark.parametrize("size", [SQUARE, WIDE, TALL, (200, 100)], ids=["square", "wide", "tall", "wider"])
def test_qwen2_vl_grid_holds_the_merged_patches_of_the_whole_image(loaded, size):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    lm = loaded["qwen2_vl"]
    width, height = size
    inputs = process(lm, [noise_image(size)])
    (region,) = lm.adapter.image_regions(inputs, [size])
    image_processor = lm.processor.image_processor
    factor = image_processor.patch_size * image_processor.merge_size
    resized_h, resized_w = smart_resize(height, width, factor=factor, min_pixels=image_processor.size.shortest_edge,
                                        max_pixels=image_processor.size.longest_edge)
    assert region.grid == (resized_h // factor, resized_w // factor)
    assert region.box == (0, 0, width, height)  # resized, never cropped or padded

    embeds = merged_embeddings(lm, inputs)
    with torch.no_grad():
        merged = lm.adapter.vision_tower()(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
    torch.testing.assert_close(embeds[region.positions], merged)


def test_adapters_name_the_parts_of_each_family(loaded):
    for family, lm in loaded.items():
        adapter = lm.adapter
        layers = adapter.decoder_layers()
        assert len(layers) == len(adapter.attention_modules()) == 2, family
        assert adapter.lm_head().out_features == lm.model.config.text_config.vocab_size
        assert adapter.final_norm() is adapter.language_model().norm
        assert adapter.input_device() == torch.device("cpu")
        assert any(adapter.projector() is m for m in lm.model.modules())
    assert loaded["qwen2_vl"].adapter.vision_tower() is loaded["qwen2_vl"].model.model.visual
    assert loaded["qwen2_vl"].adapter.projector() is loaded["qwen2_vl"].model.model.visual.merger


def test_tiny_models_are_tiny_gqa_and_seeded(tiny_folders, tmp_path):
    for family, folder in tiny_folders.items():
        config = json.loads((folder / "config.json").read_text())
        text = config["text_config"]
        assert config["model_type"] == family
        assert text["num_key_value_heads"] < text["num_attention_heads"]
        assert (folder / "model.safetensors").stat().st_size < 2_000_000
        assert (folder / "chat_template.jinja").exists() or "chat_template" in json.loads(
            (folder / "processor_config.json").read_text())
    again = build_tiny_model("llava", tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (tiny_folders["llava"] / "model.safetensors").read_bytes()
    processor_config = json.loads((tiny_folders["qwen2_vl"] / "processor_config.json").read_text())
    assert processor_config["processor_class"] == "Qwen2VLProcessor"  # loads as stock where torchvision is
    with pytest.raises(ValueError, match="llava_next"):
        build_tiny_model("bert", tmp_path / "bert")


# -- load_model on broken folders ------------------------------------------------------------


def _break_missing(folder: Path) -> Path:
    return folder.parent / "does-not-exist"


def _break_no_weights(folder: Path) -> Path:
    (folder / "model.safetensors").unlink()
    return folder


def _break_pickle_only(folder: Path) -> Path:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    return folder


def _break_model_type(folder: Path) -> Path:
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "bert"
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _break_no_processor(folder: Path) -> Path:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink(missing_ok=True)
    return folder


@pytest.mark.parametrize(
    ("damage", "problem", "fix"),
    [
        (_break_missing, "does not exist", "local folder"),
        (_break_no_weights, "has no weights", "model.safetensors"),
        (_break_pickle_only, "pickle weights", "--allow-pickle"),
        (_break_model_type, "'bert' is not supported",
         "Supported families: gemma3, idefics3, internvl, llava, llava_next, llava_onevision, mllama, paligemma, "
         "qwen2_5_vl, qwen2_vl, qwen3_vl, smolvlm"),
        (_break_no_processor, "no processor or tokenizer files", "save_pretrained"),
    ],
    ids=["missing", "no-weights", "pickle-only", "bert", "no-processor"],
)
def test_load_model_says_what_is_wrong_and_what_to_do(tiny_folders, tmp_path, damage, problem, fix):
    folder = tmp_path / "model"
    shutil.copytree(tiny_folders["llava"], folder)
    with pytest.raises(ModelLoadError) as caught:
        load_model(damage(folder), LoadOptions(device="cpu"))
    assert problem in caught.value.message
    assert fix in caught.value.hint
    if damage is _break_model_type:
        assert isinstance(caught.value, UnsupportedModelError)
