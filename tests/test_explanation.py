"""Grid maps to pixels (the one shared resampler), overlays, and explanation files."""

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from lvlm_studio.core.plugin.adapter import ImageRegion
from lvlm_studio.core.plugin.explanation import Explanation, fixed_levels, normalise, overlay, to_pixels


def region(grid=(4, 4), box=(0, 0, 40, 40), index=0, name="r"):
    return ImageRegion(name, index, np.arange(grid[0] * grid[1]), grid, box)


def test_constant_grid_stays_constant():
    pixels = to_pixels([np.full((4, 4), 3.0)], [region()], (40, 40))
    assert pixels.shape == (40, 40)
    np.testing.assert_allclose(pixels, 3.0)


def test_hot_cell_peaks_at_its_centre():
    grid = np.zeros((4, 4))
    grid[1, 2] = 1.0
    pixels = to_pixels([grid], [region()], (40, 40))
    y, x = np.unravel_index(np.argmax(pixels), pixels.shape)
    assert 10 <= y < 20 and 20 <= x < 30  # inside cell (1, 2)
    assert pixels[y, x] == pytest.approx(1.0, abs=0.1)


def test_uncovered_pixels_are_nan_and_boxes_place_the_grid():
    # A center crop of a wide image: the grid covers only the middle square.
    pixels = to_pixels([np.ones((2, 2))], [region((2, 2), (30, 0, 70, 40))], (100, 40))
    assert np.isnan(pixels[:, :30]).all() and np.isnan(pixels[:, 70:]).all()
    np.testing.assert_allclose(pixels[:, 30:70], 1.0)


def test_overlapping_regions_are_averaged():
    base = region((2, 2), (0, 0, 40, 40), name="base")
    tile = ImageRegion("tile", 0, np.arange(4), (2, 2), (0, 0, 20, 20))
    pixels = to_pixels([np.zeros((2, 2)), np.ones((2, 2))], [base, tile], (40, 40))
    np.testing.assert_allclose(pixels[:20, :20], 0.5)
    np.testing.assert_allclose(pixels[20:, 20:], 0.0)


def test_regions_of_other_images_are_ignored():
    pixels = to_pixels([np.ones((2, 2))], [region((2, 2), index=1)], (40, 40), image_index=0)
    assert np.isnan(pixels).all()


def test_normalise_handles_constant_and_nan():
    np.testing.assert_array_equal(normalise(np.full((3, 3), 5.0)), np.zeros((3, 3)))
    out = normalise(np.array([np.nan, 1.0, 3.0]))
    np.testing.assert_allclose(out, [0.0, 0.0, 1.0])


def test_overlay_keeps_size_and_leaves_uncovered_pixels():
    image = Image.new("RGB", (50, 30), (10, 200, 10))
    heat = np.full((30, 50), np.nan)
    heat[:, :25] = np.linspace(0, 1, 25)[None, :]
    out = overlay(image, heat)
    assert out.size == (50, 30)
    assert out.getpixel((40, 10)) == (10, 200, 10)
    assert out.getpixel((5, 10)) != (10, 200, 10)


def test_fixed_levels_draw_a_weak_map_dim():
    image = Image.new("RGB", (20, 10), (0, 0, 0))
    weak = np.full((10, 20), 0.1)
    weak[:, 10:] = 0.2
    own = overlay(image, weak, opacity=1.0)
    fixed = overlay(image, weak, opacity=1.0, levels=(0.0, 1.0))
    top = tuple(round(255 * c) for c in colormaps["inferno"](1.0)[:3])
    assert own.getpixel((15, 5)) == top  # stretched to the whole colormap
    assert sum(fixed.getpixel((15, 5))) < sum(own.getpixel((15, 5)))
    assert fixed.getpixel((5, 5)) != fixed.getpixel((15, 5))


def test_fixed_levels_are_read_from_provenance_and_checked():
    def levels(value):
        return fixed_levels(Explanation("m", {}, {}, {"levels": value}))

    assert levels([0, 1]) == (0.0, 1.0)
    assert fixed_levels(Explanation("m", {}, {}, {})) is None
    for bad in ([1, 0], [0, float("nan")], "01", [0, 1, 2], None, 3):
        assert levels(bad) is None


def test_explanation_npz_round_trip_without_pickle(tmp_path):
    maps = {0: [np.arange(4.0).reshape(2, 2)], 3: [np.ones((2, 2))]}
    explanation = Explanation("m", maps, {"layers": [0, 1]}, {"model": "x"})
    explanation.save_npz(tmp_path / "maps.npz")
    back = Explanation.load_npz(tmp_path / "maps.npz")  # np.load(allow_pickle=False) inside
    assert back.method == "m" and back.params == {"layers": [0, 1]} and back.targets == [0, 3]
    np.testing.assert_array_equal(back.maps[0][0], maps[0][0])
