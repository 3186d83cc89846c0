"""The families beyond LLaVA, LLaVA-NeXT and Qwen2-VL, against their real (tiny, random) models.

For every family whose image enters as tokens, each region's positions are checked against what
the model itself does: the decoder's input embeddings at the region's positions must be exactly
the image features of the view the region claims, laid out in the claimed grid (tiles stitched,
newlines left out, pooled maps in the model's order). Boxes are checked against hand-computed
values on square, wide and tall images. Mllama's regions index its cross-attention keys and are
checked against the keys its cross-attention layer receives. The support table (which method
applies to which family) is pinned here, and every method that applies returns finite maps of
the right shape on a generated trace.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from model_helpers import merged_embeddings, stitched, view_features
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.loading import LoadedModel, LoadOptions, load_model
from lvlm_studio.core.plugin.adapter import all_image_positions, image_token_positions
from lvlm_studio.core.plugin.contracts import require_applicable
from lvlm_studio.testing import check_explanation
from lvlm_studio.testing.tiny_models import build_tiny_model

NEW_FAMILIES = ("llava_onevision", "qwen2_5_vl", "qwen3_vl", "gemma3", "idefics3", "smolvlm", "paligemma",
                "internvl", "mllama")
SQUARE, WIDE, TALL = (64, 64), (150, 100), (45, 200)  # (width, height)
SIZES = pytest.mark.parametrize("size", [SQUARE, WIDE, TALL], ids=["square", "wide", "tall"])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("families")
    return {f: load_model(build_tiny_model(f, root / f), LoadOptions(device="cpu")) for f in NEW_FAMILIES}


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(160, 256, (size[1], size[0], 3), dtype=np.uint8))


def process(lm: LoadedModel, images: list, **kwargs) -> dict:
    """Processor inputs for one prompt with ``images`` (a list of images, or one nested list)."""
    count = len(images[0]) if isinstance(images[0], list) else len(images)
    content = [{"type": "image"} for _ in range(count)] + [{"type": "text", "text": "what color is the circle?"}]
    text = lm.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True) \
        if lm.processor.chat_template else "<image>" * count + "what color is the circle?"
    return lm.processor(images=images, text=[text], return_tensors="pt", **kwargs)


# -- every family: regions are image tokens, grids fit, nothing counted twice -----------------


@SIZES
@pytest.mark.parametrize("family", [f for f in NEW_FAMILIES if f != "mllama"])
def test_regions_are_image_tokens_and_cover_them(models, family, size):
    lm = models[family]
    inputs = process(lm, [noise_image(size)])
    regions = lm.adapter.image_regions(inputs, [size])
    image_tokens = image_token_positions(inputs["input_ids"], lm.model.config.image_token_id)
    covered = all_image_positions(regions)
    assert len(set(covered.tolist())) == len(covered)  # no token in two grids
    assert set(covered.tolist()) <= set(image_tokens.tolist())
    newlines = lm.adapter.newline_positions(inputs, [size]) if family == "llava_onevision" else []
    assert len(covered) + len(newlines) == len(image_tokens)
    for region in regions:
        assert region.grid[0] * region.grid[1] == len(region.positions) > 0
        assert region.image_index == 0
        left, top, right, bottom = region.box
        assert right > left and bottom > top


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_two_images_get_their_own_regions_in_prompt_order(models, family):
    lm = models[family]
    sizes = [WIDE, TALL]
    inputs = process(lm, [[noise_image(s, seed=i) for i, s in enumerate(sizes)]])
    regions = lm.adapter.image_regions(inputs, sizes)
    indices = [r.image_index for r in regions]
    assert indices == sorted(indices) and set(indices) == {0, 1}
    first = np.concatenate([r.positions for r in regions if r.image_index == 0])
    second = np.concatenate([r.positions for r in regions if r.image_index == 1])
    assert first.max() < second.min()  # the first image's tokens (or vision keys) come first
    for region in regions:
        width, height = sizes[region.image_index]
        left, top, right, bottom = region.box
        assert left < width and top < height and right > 0 and bottom > 0  # each box overlaps its own image
    if family == "mllama":
        assert second.max() < 2 * inputs["pixel_values"].shape[2] * 17  # within the two images' vision keys
        with torch.no_grad():
            assert torch.isfinite(lm.model(**inputs).logits).all()
    else:
        merged_embeddings(lm, inputs)  # the model accepts the prompt


# -- each family against its model -----------------------------------------------------------


@SIZES
@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl", "paligemma"])
def test_single_grid_holds_the_whole_image_features(models, family, size):
    lm = models[family]
    inputs = process(lm, [noise_image(size)])
    (region,) = lm.adapter.image_regions(inputs, [size])
    assert region.box == (0, 0, *size)  # resized (Qwen) or squeezed (PaliGemma), never cropped
    embeds = merged_embeddings(lm, inputs)
    (features,) = view_features(lm, inputs)
    torch.testing.assert_close(embeds[region.positions], features)
    if family != "paligemma":
        _, height, width = inputs["image_grid_thw"][0].tolist()
        assert region.grid == (height // 2, width // 2)


def test_qwen2_5_vl_window_attention_keeps_row_major_order(models):
    """Window attention permutes patches into windows inside the ViT; the merger output must come
    back row-major. A patch whose pixels change must change only its own token (and, through
    attention, others less): the largest change lands where the grid says."""
    lm = models["qwen2_5_vl"]
    image = noise_image(WIDE)
    inputs = process(lm, [image])
    (region,) = lm.adapter.image_regions(inputs, [WIDE])
    base = merged_embeddings(lm, inputs)[region.positions]
    rows, cols = region.grid
    changed = np.asarray(image).copy()
    # the token at grid (1, cols - 1) covers the top-right block of the resized image
    width, height = WIDE
    x0, y0 = int(width * (cols - 1) / cols), int(height * 1 / rows)
    changed[y0 + 1 : int(height * 2 / rows) - 1, x0 + 1 :] = 0
    after = merged_embeddings(lm, process(lm, [Image.fromarray(changed)]))[region.positions]
    moved = (after - base).norm(dim=-1).reshape(rows, cols)
    assert tuple(np.unravel_index(int(moved.argmax()), (rows, cols))) == (1, cols - 1)


@pytest.mark.parametrize(
    ("size", "pan_and_scan", "boxes"),
    [
        (SQUARE, True, [(0, 0, 64, 64)]),  # square: no crops
        (WIDE, True, [(0, 0, 150, 100), (0, 0, 75, 100), (75, 0, 150, 100)]),  # 1.5: two crops of 75 px
        (TALL, True, [(0, 0, 45, 200), (0, 0, 45, 67), (0, 67, 45, 134), (0, 134, 45, 200)]),  # 4.4: three crops
        (WIDE, False, [(0, 0, 150, 100)]),  # pan-and-scan is off by default
    ],
    ids=["square", "wide", "tall", "wide-no-crops"],
)
def test_gemma3_views_and_pan_and_scan_crops(models, size, pan_and_scan, boxes):
    lm = models["gemma3"]
    inputs = process(lm, [noise_image(size)], do_pan_and_scan=pan_and_scan, pan_and_scan_min_crop_size=16,
                     pan_and_scan_max_num_crops=3)
    regions = lm.adapter.image_regions(inputs, [size])
    assert [r.box for r in regions] == [tuple(map(float, b)) for b in boxes]
    assert [r.name for r in regions] == ["image"] + [f"crop {k}" for k in range(1, len(boxes))]
    assert all(r.grid == (4, 4) for r in regions)  # 16 tokens per view
    embeds = merged_embeddings(lm, inputs)
    features = view_features(lm, inputs)
    assert len(features) == len(regions)
    for region, view in zip(regions, features):
        torch.testing.assert_close(embeds[region.positions], view)


@SIZES
@pytest.mark.parametrize("family", ["idefics3", "smolvlm", "internvl"])
def test_tiles_are_stitched_in_place_and_the_global_view_follows(models, family, size):
    lm = models[family]
    inputs = process(lm, [noise_image(size)])
    regions = lm.adapter.image_regions(inputs, [size])
    embeds = merged_embeddings(lm, inputs)
    features = view_features(lm, inputs)
    side = math.isqrt(features[0].shape[0])
    assert [r.box for r in regions] == [(0, 0, *size)] * len(regions)  # stretched, never cropped or padded
    if len(regions) == 1:  # fits one tile: the global view alone
        torch.testing.assert_close(embeds[regions[0].positions], features[0])
        return
    tiles, last = regions
    assert (tiles.name, last.name) == (("tiles", "global") if family != "internvl" else ("tiles", "thumbnail"))
    rows, cols = tiles.grid[0] // side, tiles.grid[1] // side
    assert rows * cols == len(features) - 1
    torch.testing.assert_close(embeds[tiles.positions], stitched(features[:-1], rows, cols))
    torch.testing.assert_close(embeds[last.positions], features[-1])


@pytest.mark.parametrize(("family", "size", "tiles"), [
    ("idefics3", SQUARE, (2, 2)), ("idefics3", WIDE, (2, 2)), ("idefics3", TALL, (2, 1)), ("idefics3", WIDE, None),
    ("internvl", SQUARE, (2, 2)), ("internvl", WIDE, (2, 2)), ("internvl", TALL, (4, 1)),
    ("internvl", (40, 20), (1, 2)),
])
def test_tile_arrangement_follows_the_processor(models, family, size, tiles):
    """Idefics3 stretches to multiples of 32 px after capping the long side at 64 px; InternVL picks
    the tiling (up to 4) closest in aspect ratio, preferring more tiles on ties."""
    lm = models[family]
    splitting = {} if tiles is not None or family != "idefics3" else {"do_image_splitting": False}
    regions = lm.adapter.image_regions(process(lm, [noise_image(size)], **splitting), [size])
    if tiles is None:
        assert [r.name for r in regions] == ["global"]
    else:
        assert regions[0].grid == (tiles[0] * 2, tiles[1] * 2)


@pytest.mark.parametrize(
    ("size", "grid", "box"),
    [
        # 64 px canvas = 8 x 8 cells of 8 px, over the budget of 2 tiles (32 cells): sqrt(64/32) = 1.41,
        # pooled to int(8 // 1.41) = 5 per side; the map still shows the whole image.
        (SQUARE, (5, 5), (0, 0, 64, 64)),
        # 150 x 100 -> 64 x 43 pasted at y = 10 in the 64 x 64 canvas; unpadding keeps cell rows 1-6
        # (y 8..56 px, i.e. -2..46 px of the pasted image, x 100/43), then 6 x 8 cells pool to 4 x 6.
        (WIDE, (4, 6), (0, -200 / 43, 150, 4600 / 43)),
        # 45 x 200 -> 22 x 96 pasted at x = 5 in the 32 x 96 canvas; unpadding keeps cell columns 1-2
        # (x 8..24 px, i.e. 3..19 px of the pasted image, x 45/22); 12 x 2 = 24 cells: not pooled.
        (TALL, (12, 2), (3 * 45 / 22, 0, 19 * 45 / 22, 200)),
    ],
    ids=["square", "wide", "tall"],
)
def test_llava_onevision_base_and_pooled_high_res(models, size, grid, box):
    lm = models["llava_onevision"]
    width, height = size
    inputs = process(lm, [noise_image(size)])
    base, high = lm.adapter.image_regions(inputs, [size])
    embeds = merged_embeddings(lm, inputs)
    model = lm.model.model
    with torch.no_grad():
        tiles = inputs["pixel_values"][0]
        hidden = model.vision_tower(tiles, output_hidden_states=True).hidden_states[-1]  # vision_feature_layer -1
        features = model.multi_modal_projector(hidden)
        packed, _ = model.pack_image_features([features], inputs["image_sizes"], image_newline=model.image_newline,
                                              vision_aspect_ratio=lm.model.config.vision_aspect_ratio)
    packed = packed[0]
    torch.testing.assert_close(embeds[base.positions], features[0])
    rows, cols = high.grid
    torch.testing.assert_close(embeds[high.positions], packed[16:].reshape(rows, cols + 1, -1)[:, :cols].reshape(
        rows * cols, -1))
    newlines = lm.adapter.newline_positions(inputs, [size])
    assert (embeds[newlines] == model.image_newline).all()
    assert base.box == (0, 0, width, height)
    assert high.grid == grid
    assert high.box == pytest.approx(box)


def test_llava_onevision_several_images_are_padded_squares(models):
    lm = models["llava_onevision"]
    sizes = [WIDE, TALL]
    inputs = process(lm, [[noise_image(s, seed=i) for i, s in enumerate(sizes)]])  # two images of one prompt
    regions = lm.adapter.image_regions(inputs, sizes)
    assert [r.grid for r in regions] == [(4, 4), (4, 4)]
    assert regions[0].box == pytest.approx((0, -25, 150, 125))  # the 150 px square, centred
    assert regions[1].box == pytest.approx((-77.5, 0, 122.5, 200))
    image_tokens = image_token_positions(inputs["input_ids"], lm.model.config.image_token_id)
    assert len(image_tokens) == 2 * (16 + 1)  # one newline after each image
    merged_embeddings(lm, inputs)


@pytest.mark.parametrize(
    ("size", "grid", "box"),
    [
        (SQUARE, (8, 8), (0, 0, 64, 64)),  # 2 x 2 tiles of 4 x 4 patches, the image fills the canvas
        (WIDE, (8, 8), (0, 0, 150, 64 * 100 / 42)),  # 64 x 42 at the top of a 64 x 64 canvas: padded below
        (TALL, (16, 4), (0, 0, 32 * 45 / 28, 200)),  # 4 x 1 tiles; 28 x 128 in a 32 px column: padded right
    ],
    ids=["square", "wide", "tall"],
)
def test_mllama_regions_index_the_cross_attention_keys(models, size, grid, box):
    lm = models["mllama"]
    assert lm.adapter.image_entry == "cross_attention"
    inputs = process(lm, [noise_image(size)])
    (region,) = lm.adapter.image_regions(inputs, [size])
    assert region.grid == grid
    assert region.box == pytest.approx(box)
    seen = {}

    def grab(_module, args, kwargs):
        seen["keys"] = kwargs["cross_attention_states"].detach()

    (cross,) = lm.adapter.cross_attention_modules()
    handle = cross.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            lm.model(**inputs)
    finally:
        handle.remove()
    keys = seen["keys"].reshape(-1, seen["keys"].shape[-1])
    with torch.no_grad():
        vision = lm.model.model.vision_model(inputs["pixel_values"], inputs["aspect_ratio_ids"],
                                             inputs["aspect_ratio_mask"]).last_hidden_state
        projected = lm.model.model.multi_modal_projector(vision)[0, 0]  # [tiles, 1 + g*g, D]
    g = 4
    rows, cols = grid[0] // g, grid[1] // g
    expected = stitched([projected[t, 1:] for t in range(rows * cols)], rows, cols)
    torch.testing.assert_close(keys[region.positions], expected)


# -- what applies where ------------------------------------------------------------------------

TOKEN_METHODS = ("raw_attention", "rollout", "relevancy", "grad_x_input", "gradcam", "tam")


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_support_table(models, lvlm_registry, family):
    """Pinned: every method applies to every token family; Mllama gets raw attention and relevancy
    (through its cross-attention layers) and no method that reads image tokens; vision-side relevancy needs a
    CLS token and one image token per encoder patch, which none of these families has."""
    lm = models[family]
    for method in TOKEN_METHODS:
        explainer = lvlm_registry.explainer(method)
        reason = explainer.applies_to(lm, explainer.resolve_params({}))
        if family == "mllama" and method not in ("raw_attention", "relevancy"):
            assert "cross-attention" in reason
            with pytest.raises(InputError, match="does not apply to this model"):
                require_applicable(explainer, lm, explainer.resolve_params({}))
        else:
            assert reason is None, (family, method, reason)
    relevancy = lvlm_registry.explainer("relevancy")
    assert relevancy.applies_to(lm, relevancy.resolve_params({"side": "vision"})) is not None


@pytest.fixture(scope="module")
def traces(models):
    from lvlm_studio.core.tracing.trace import generate_trace

    out = {}
    for family, lm in models.items():
        trace = generate_trace(lm, noise_image(WIDE), "describe the image.", max_new_tokens=2)
        if len(trace.answer_ids) == 0:  # a random model may stop at once; force two tokens
            trace = generate_trace(lm, noise_image(WIDE, seed=3), "what color is the circle?", max_new_tokens=2)
        out[family] = trace
    return out


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_every_applicable_method_gives_finite_maps(models, traces, lvlm_registry, family):
    from lvlm_studio.testing import run_explainer

    lm, trace = models[family], traces[family]
    assert len(trace.answer_ids) > 0
    ran = []
    for method in TOKEN_METHODS:
        explainer = lvlm_registry.explainer(method)
        if explainer.applies_to(lm, explainer.resolve_params({})) is None:
            check_explanation(run_explainer(explainer, trace, lm), trace)
            ran.append(method)
    assert ran == (["raw_attention", "relevancy"] if family == "mllama" else list(TOKEN_METHODS))


def test_paligemma_answer_is_the_causal_suffix(models, traces):
    """The teacher-forced pass marks answer tokens as suffix (token_type_ids 1), as generation does:
    its log-probabilities match generation's, and changing a later answer token leaves an earlier
    one's log-probability alone (it would not, were the answer in the bidirectional prefix)."""
    from lvlm_studio.core.tracing.relevance import answer_logprobs

    lm, trace = models["paligemma"], traces["paligemma"]
    extras = {k: torch.as_tensor(v) for k, v in trace.model_inputs.items()}
    np.testing.assert_allclose(answer_logprobs(lm, trace, extras), trace.logprobs, atol=1e-4)
    inputs = trace.teacher_forced_inputs(lm)
    assert inputs["token_type_ids"][0, trace.answer_start :].tolist() == [1] * len(trace.answer_ids)
    assert inputs["token_type_ids"][0, : trace.answer_start].tolist() == [0] * trace.answer_start


# -- parts and tiny models -----------------------------------------------------------------------


def test_adapters_name_the_parts_of_each_family(models):
    for family, lm in models.items():
        adapter = lm.adapter
        layers = adapter.decoder_layers()
        attention = adapter.attention_modules()
        assert len(attention) == 2 and all(any(a is m for m in layers.modules()) for a in attention), family
        assert adapter.lm_head().out_features == lm.model.config.get_text_config().vocab_size
        assert adapter.final_norm() is adapter.language_model().norm
        assert adapter.input_device() == torch.device("cpu")
        assert any(adapter.projector() is m for m in lm.model.modules()), family
        vision = adapter.vision_attention_modules()
        assert len(vision) >= 2 and all(any(v is m for m in adapter.vision_tower().modules()) for v in vision)
        assert len(adapter.cross_attention_modules()) == (1 if family == "mllama" else 0)
    assert models["qwen3_vl"].adapter.projector() is models["qwen3_vl"].model.model.visual.merger
    assert models["idefics3"].adapter.language_model() is models["idefics3"].model.model.text_model


def test_tiny_models_are_tiny_and_load_as_stock(models):
    import json
    from pathlib import Path

    from lvlm_studio.testing.tiny_families import STOCK_PROCESSORS

    for family, lm in models.items():
        folder = Path(lm.source)
        assert (folder / "model.safetensors").stat().st_size < 1_000_000, family
        text = lm.model.config.get_text_config()
        assert text.hidden_size == 64 and text.num_key_value_heads < text.num_attention_heads
        if family in STOCK_PROCESSORS:  # saved as the stock processor; loaded here without its video half
            saved = json.loads((folder / "processor_config.json").read_text())
            stock, video = STOCK_PROCESSORS[family]
            assert saved["processor_class"] == stock and saved["video_processor"]["video_processor_type"] == video
            assert type(lm.processor).__name__ == stock + "ImageOnly"


def test_image_only_processor_round_trips_its_settings(models, tmp_path):
    """The image-only stand-in saves and loads the stock settings (InternVL's image_seq_length, the
    OneVision token budget), and refuses video with a clear error instead of a missing attribute."""
    from lvlm_studio.core.models.image_only import load_image_only, save_as_stock

    lm = models["internvl"]
    save_as_stock(lm.processor, tmp_path, "InternVLProcessor", "InternVLVideoProcessor")
    again = load_image_only("InternVLProcessor", tmp_path)
    assert again.image_seq_length == lm.processor.image_seq_length == 4
    assert models["llava_onevision"].processor.vision_aspect_ratio == "anyres_max_2"
    with pytest.raises(ImportError, match="without its video processor"):
        again.video_processor([])


def test_mllama_relevancy_runs_through_the_cross_attention(models, traces, lvlm_registry):
    """Relevancy on Mllama equals the matrix form computed by hand from every layer's weights and
    gradients: map = sum over cross-attention layers l of e_q (prod over later self-attention layers
    m of (I + A_bar_m)) A_bar_l, with A_bar = mean over heads of relu(grad * A)."""
    from lvlm_explainers.gradients import target_scores
    from lvlm_explainers.relevancy import decoder_attention
    from lvlm_studio.core.models.capture import attention_implementation
    from lvlm_studio.testing import run_explainer

    lm, trace = models["mllama"], traces["mllama"]
    explanation = run_explainer(lvlm_registry.explainer("relevancy"), trace, lm, targets=[0])
    check_explanation(explanation, trace, [0])

    modules, cross = decoder_attention(lm)
    assert [type(m).__name__ for m in modules] == ["MllamaTextSelfAttention", "MllamaTextCrossAttention",
                                                   "MllamaTextSelfAttention"] and cross == {1}
    kept = {}

    def keep(index):
        def hook(_module, _args, output):
            output[1].retain_grad()
            kept[index] = output[1]
        return hook

    query = trace.answer_start - 1
    inputs = trace.teacher_forced_inputs(lm, upto=query + 1)
    inputs["pixel_values"] = inputs["pixel_values"].detach().requires_grad_(True)
    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    try:
        with torch.enable_grad(), attention_implementation(lm.model, "eager"):
            logits = lm.model(**inputs, use_cache=False, logits_to_keep=torch.tensor([query])).logits[0]
            target_scores(logits, [int(trace.answer_ids[0])], "logit")[0].backward()
    finally:
        for handle in handles:
            handle.remove()
    a_bar = {i: (w.grad * w).clamp(min=0).mean(dim=1)[0].detach() for i, w in kept.items()}
    length = a_bar[0].shape[0]
    row = torch.eye(length)[query]
    expected = torch.zeros(a_bar[1].shape[-1])
    for layer in reversed(range(len(modules))):
        if layer in cross:
            expected += row @ a_bar[layer]
        else:
            row = row + row @ a_bar[layer]
    region = trace.regions[0]
    np.testing.assert_allclose(explanation.maps[0][0], expected[region.positions].reshape(region.grid).numpy(),
                               rtol=1e-4, atol=1e-7)
    assert np.abs(explanation.maps[0][0]).max() > 0  # the image does reach the answer
