"""Video regions of the Qwen2-VL family, against the real (tiny, random) models.

The video processor needs torchvision, which the studio does not install, so the video inputs are
built by hand the way the processor lays them out: ``video_grid_thw`` rows (t, h, w) in patches,
``pixel_values_videos`` with one row per patch (t * h * w rows of channels * temporal_patch_size *
patch_size^2 values), and ``t * h * w / merge^2`` ``<|video_pad|>`` tokens between vision_start
and vision_end. Qwen3-VL's chat template puts each frame group in its own vision_start/end block
after a text timestamp, so its prompts get text between the groups. Each group's region must
cover exactly its block of video tokens, and the decoder's input embeddings there must be the
video features the model computes for that group.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import merged_embeddings
from test_families import noise_image, process

from lvlm_studio.core.models.loading import LoadedModel, LoadOptions, load_model
from lvlm_studio.core.plugin.adapter import all_image_positions, image_token_positions
from lvlm_studio.testing.tiny_models import build_tiny_model

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    root = tmp_path_factory.mktemp("video")
    return {f: load_model(build_tiny_model(f, root / f), LoadOptions(device="cpu")) for f in FAMILIES}


def token_id(lm: LoadedModel, token: str) -> int:
    return int(lm.processor.tokenizer.convert_tokens_to_ids(token))


def video_ids(lm: LoadedModel, grid: tuple[int, int, int], timestamps: bool) -> list[int]:
    """Prompt ids for one video: one vision block holding every group, or (Qwen3-VL style) one block
    per frame group, each after a few text tokens standing in for its timestamp."""
    merge = int(lm.model.config.vision_config.spatial_merge_size)
    groups, height, width = grid
    per_group = height * width // (merge * merge)
    start, end, pad = (token_id(lm, t) for t in ("<|vision_start|>", "<|vision_end|>", "<|video_pad|>"))
    if not timestamps:
        return [start] + [pad] * (groups * per_group) + [end]
    stamp = lm.processor.tokenizer("what color", add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for _ in range(groups):
        ids += list(stamp) + [start] + [pad] * per_group + [end]
    return ids


def video_inputs(lm: LoadedModel, grids: list[tuple[int, int, int]], prefix: dict | None = None,
                 seed: int = 0) -> dict:
    """Hand-built processor output for ``grids`` (one per video), after the ``prefix`` inputs (a
    processed image prompt) or a short text, followed by a question."""
    vision = lm.model.config.vision_config
    columns = int(vision.in_channels) * int(vision.temporal_patch_size) * int(vision.patch_size) ** 2
    tokenizer = lm.processor.tokenizer
    timestamps = lm.family == "qwen3_vl"
    ids = list(prefix["input_ids"][0].tolist()) if prefix is not None else \
        list(tokenizer("what", add_special_tokens=False)["input_ids"])
    for grid in grids:
        ids += video_ids(lm, grid, timestamps)
    ids += list(tokenizer("what color is the circle?", add_special_tokens=False)["input_ids"])
    rows = sum(t * h * w for t, h, w in grids)
    generator = torch.Generator().manual_seed(seed)
    inputs = dict(prefix) if prefix is not None else {}
    inputs.update(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        pixel_values_videos=torch.rand(rows, columns, generator=generator) * 2 - 1,
        video_grid_thw=torch.tensor(grids, dtype=torch.long),
    )
    # the modality of each token (0 text, 1 image, 2 video), as the processor returns it for M-RoPE
    types = torch.zeros(1, len(ids), dtype=torch.long)
    types[inputs["input_ids"] == lm.model.config.image_token_id] = 1
    types[inputs["input_ids"] == lm.model.config.video_token_id] = 2
    inputs["mm_token_type_ids"] = types
    return inputs


def video_features(lm: LoadedModel, inputs: dict) -> list[torch.Tensor]:
    """The model's own video features, one [t * tokens per group, D] tensor per video."""
    with torch.no_grad():
        out = lm.model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    return list(out.pooler_output)


@pytest.mark.parametrize("family", FAMILIES)
def test_video_groups_are_the_video_tokens_in_order(models, family):
    lm = models[family]
    grids = [(2, 4, 6), (3, 6, 4)]
    frame_sizes = [(48, 32), (30, 50)]  # (width, height) of each video's frames
    inputs = video_inputs(lm, grids)
    regions = lm.adapter.image_regions(inputs, frame_sizes)
    video_tokens = image_token_positions(inputs["input_ids"], lm.model.config.video_token_id)
    np.testing.assert_array_equal(all_image_positions(regions), video_tokens)
    assert [r.name for r in regions] == ["video 0 frames 0-1", "video 0 frames 2-3", "video 1 frames 0-1",
                                         "video 1 frames 2-3", "video 1 frames 4-5"]
    assert [r.image_index for r in regions] == [0, 0, 1, 1, 1]
    assert [r.grid for r in regions] == [(2, 3)] * 2 + [(3, 2)] * 3
    assert [r.box for r in regions] == [(0, 0, 48, 32)] * 2 + [(0, 0, 30, 50)] * 3
    if family == "qwen3_vl":  # timestamps split the groups: positions are not one run
        assert all(np.all(np.diff(r.positions) == 1) for r in regions)
        assert all(a.positions[-1] + 1 < b.positions[0] for a, b in zip(regions, regions[1:], strict=False))

    embeds = merged_embeddings(lm, inputs)
    for video, features in enumerate(video_features(lm, inputs)):
        groups = [r for r in regions if r.image_index == video]
        positions = np.concatenate([r.positions for r in groups])
        torch.testing.assert_close(embeds[positions], features)
        per_group = groups[0].grid[0] * groups[0].grid[1]
        for group, region in enumerate(groups):  # each group holds its own frames' features
            torch.testing.assert_close(embeds[region.positions], features[group * per_group:(group + 1) * per_group])


@pytest.mark.parametrize("family", FAMILIES)
def test_images_come_first_and_videos_continue_the_index(models, family):
    lm = models[family]
    image_size, frame_size = (64, 64), (40, 24)
    prefix = process(lm, [noise_image(image_size)])
    inputs = video_inputs(lm, [(2, 4, 4)], prefix=dict(prefix))
    regions = lm.adapter.image_regions(inputs, [image_size, frame_size])
    assert [r.image_index for r in regions] == [0, 1, 1]
    assert regions[0].name == "image 0" and regions[0].box == (0, 0, *image_size)
    assert [r.box for r in regions[1:]] == [(0, 0, *frame_size)] * 2
    config = lm.model.config
    np.testing.assert_array_equal(regions[0].positions, image_token_positions(inputs["input_ids"],
                                                                              config.image_token_id))
    np.testing.assert_array_equal(all_image_positions(regions[1:]),
                                  image_token_positions(inputs["input_ids"], config.video_token_id))
    embeds = merged_embeddings(lm, inputs)
    with torch.no_grad():
        (image_features,) = lm.model.model.get_image_features(inputs["pixel_values"],
                                                              inputs["image_grid_thw"]).pooler_output
    torch.testing.assert_close(embeds[regions[0].positions], image_features)
    (features,) = video_features(lm, inputs)
    torch.testing.assert_close(embeds[all_image_positions(regions[1:])], features)


def test_sizes_must_cover_images_and_videos(models):
    lm = models["qwen2_vl"]
    inputs = video_inputs(lm, [(2, 4, 4)])
    with pytest.raises(ValueError, match="video grids"):
        lm.adapter.image_regions(inputs, [(32, 32), (32, 32)])
    inputs["input_ids"] = inputs["input_ids"][:, 1:]  # drop a text token: still fine
    assert len(lm.adapter.image_regions(inputs, [(32, 32)])) == 2
    pad = token_id(lm, "<|video_pad|>")
    inputs["input_ids"] = inputs["input_ids"][inputs["input_ids"] != pad][None][:, :-1]
    with pytest.raises(ValueError, match="video tokens"):
        lm.adapter.image_regions(inputs, [(32, 32)])
