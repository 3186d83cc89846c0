"""Attention-pattern statistics (study 4) on planted patterns whose numbers are known."""

import numpy as np
import pytest
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.plugin.adapter import ImageRegion
from lvlm_studio.core.tracing.attention_stats import pattern_stats, token_boxes


def _region(rows=4, cols=4, size=64):
    return ImageRegion("base", 0, np.arange(rows * cols), (rows, cols), (0.0, 0.0, float(size), float(size)))


def _flat(size=64):
    return Image.new("RGB", (size, size), (128, 128, 128))


def test_token_boxes_tile_the_region():
    boxes = token_boxes([_region()])
    assert boxes.shape == (16, 4)
    assert tuple(boxes[0]) == (0, 0, 16, 16) and tuple(boxes[5]) == (16, 16, 32, 32)


def test_uniform_and_one_hot_attention():
    region, image = _region(), _flat()
    uniform = pattern_stats(np.ones(16), [region], image)
    assert uniform.entropy == pytest.approx(1.0)
    # token centres at 8, 24, 40, 56: the spread about the centre (32, 32) is sqrt(2 * 320) px (320 per axis)
    assert uniform.spread == pytest.approx(np.sqrt(640) / np.hypot(64, 64))
    one = np.zeros(16)
    one[5] = 3.0
    focused = pattern_stats(one, [region], image)
    assert focused.entropy == pytest.approx(0.0) and focused.spread == pytest.approx(0.0)
    assert np.isnan(focused.object_distance)


def test_distance_to_the_nearest_object():
    region, image = _region(), _flat()
    mask = np.zeros((64, 64), bool)
    mask[16:32, 16:32] = True  # token 5's box
    on = np.zeros(16)
    on[5] = 1
    assert pattern_stats(on, [region], image, [mask]).object_distance == 0.0
    far = np.zeros(16)
    far[15] = 1  # centre (56, 56); nearest mask pixel centre (31.5, 31.5)
    expected = np.hypot(24.5, 24.5) / np.hypot(64, 64)
    assert pattern_stats(far, [region], image, [mask]).object_distance == pytest.approx(expected)


def test_fine_share_follows_the_textured_quadrant():
    pixels = np.full((64, 64, 3), 128, np.uint8)
    pixels[:32, :32] = (np.indices((32, 32)).sum(axis=0) % 2 * 255)[..., None]  # checkerboard top-left
    image, region = Image.fromarray(pixels), _region()
    on_texture = np.zeros(16)
    on_texture[[0, 1, 4, 5]] = 1
    assert pattern_stats(on_texture, [region], image).fine_share == pytest.approx(1.0)
    on_flat = np.zeros(16)
    on_flat[[10, 11, 14, 15]] = 1
    assert pattern_stats(on_flat, [region], image).fine_share == pytest.approx(0.0)


def test_tokens_of_several_regions_are_points_in_the_image():
    base = _region(2, 2)
    tile = ImageRegion("tile", 0, np.arange(4, 8), (2, 2), (0.0, 0.0, 32.0, 32.0))
    weights = np.zeros(8)
    weights[4] = 1  # the tile's first token: centre (8, 8)
    mask = np.zeros((64, 64), bool)
    mask[8, 8] = True
    assert pattern_stats(weights, [base, tile], _flat(), [mask]).object_distance == 0.0


def test_wrong_length_is_refused():
    with pytest.raises(InputError, match="15 attention weights"):
        pattern_stats(np.ones(15), [_region()], _flat())
