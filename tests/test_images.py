"""Opening images of every depth and mode as 8-bit RGB the way a viewer shows them.

Files are written here from arrays with a known gradient; the opened image must keep the gradient's
order and span most of 0..255 (Pillow's own conversion clips 16-bit values to white and float
values of 0..1 to black).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.images import open_image

SIDE = 48


def ramp(low: float, high: float, dtype) -> np.ndarray:
    """A left-to-right gradient from ``low`` to ``high``, the same in every row."""
    return np.broadcast_to(np.linspace(low, high, SIDE), (SIDE, SIDE)).astype(dtype)


def grey_row(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image)
    assert image.mode == "RGB" and (pixels[..., 0] == pixels[..., 2]).all()
    return pixels[SIDE // 2, :, 0].astype(int)


def assert_gradient_kept(image: Image.Image, span: int = 240) -> None:
    row = grey_row(image)
    assert (np.diff(row) >= 0).all(), row  # the order of the values is kept
    assert row[-1] - row[0] >= span, row  # they span most of 0..255 (not all white or all black)
    assert len(set(row)) >= 0.9 * SIDE, row  # and stay apart (no clipping to one value)


def test_16_bit_greyscale_png_keeps_its_gradient(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp(0, 65535, np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    assert_gradient_kept(open_image(path))


def test_16_bit_big_endian_tiff_keeps_its_gradient(tmp_path):
    path = tmp_path / "grey16b.tif"
    values = ramp(0, 65535, np.uint16)
    Image.frombytes("I;16B", (SIDE, SIDE), values.astype(">u2").tobytes()).save(path)
    assert Image.open(path).mode == "I;16B"
    assert_gradient_kept(open_image(path))


def test_12_bit_values_in_a_16_bit_file_are_read_at_12_bits(tmp_path):
    path = tmp_path / "grey12.png"
    Image.fromarray(ramp(0, 4095, np.uint16)).save(path)
    row = grey_row(open_image(path))
    assert row[0] == 0 and row[-1] == 255
    assert row[SIDE // 2] == pytest.approx(128, abs=4)


def test_8_bit_values_in_a_16_bit_file_keep_their_brightness(tmp_path):
    path = tmp_path / "grey8in16.png"
    Image.fromarray(ramp(20, 200, np.uint16)).save(path)
    row = grey_row(open_image(path))
    assert row[0] == 20 and row[-1] == 200


def test_32_bit_integer_tiff_with_negative_values_is_stretched(tmp_path):
    path = tmp_path / "signed.tif"
    Image.fromarray(ramp(-30000, 90000, np.int32)).save(path)
    assert Image.open(path).mode == "I"
    assert_gradient_kept(open_image(path), span=255)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-3.5, 12.0), (0.25, 0.26)])
def test_float_tiff_is_stretched_over_its_range(tmp_path, low, high):
    path = tmp_path / "float.tif"
    Image.fromarray(ramp(low, high, np.float32)).save(path)
    assert Image.open(path).mode == "F"
    assert_gradient_kept(open_image(path), span=250)


def test_float_tiff_with_nan_and_inf_uses_the_finite_range(tmp_path):
    values = ramp(0.0, 1.0, np.float32).copy()
    values[0, 0], values[0, 1], values[0, 2] = np.nan, np.inf, -np.inf
    path = tmp_path / "nonfinite.tif"
    Image.fromarray(values).save(path)
    opened = open_image(path)
    assert_gradient_kept(opened)
    assert np.asarray(opened)[0, :3, 0].tolist() == [0, 255, 0]


def test_transparency_is_flattened_onto_white():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert open_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert open_image(Image.new("LA", (8, 8), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert open_image(Image.new("LA", (8, 8), (0, 255))).getpixel((0, 0)) == (0, 0, 0)
    palette = Image.new("P", (8, 8), 3)
    palette.info["transparency"] = 3
    assert open_image(palette).getpixel((0, 0)) == (255, 255, 255)


def test_palette_and_cmyk_images_become_rgb(tmp_path):
    palette = Image.new("RGB", (8, 8), (200, 30, 40)).quantize(4)
    assert open_image(palette).getpixel((0, 0)) == (200, 30, 40)
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=100)
    red, green, blue = open_image(path).getpixel((8, 8))
    assert red > 200 and green < 60 and blue < 60


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    opened = open_image(path)
    assert opened.size == (20, 40)
    assert opened.getpixel((10, 2))[0] > 200 and opened.getpixel((10, 37))[0] < 50  # white now on top
    assert ImageOps.exif_transpose(Image.open(path)).size == opened.size


def test_animated_gif_opens_at_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "animated.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 2
    assert open_image(path).getpixel((8, 8)) == (255, 0, 0)


def test_large_images_open_without_pillows_warning(tmp_path, monkeypatch):
    """Between one and two of Pillow's pixel limits an image opens, and the warning stays quiet;
    above two it is refused in one line."""
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert open_image(path).size == (40, 40)
    assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(InputError, match="too large to open safely"):
        open_image(path)


def test_an_unconvertible_mode_is_an_input_error():
    """A PIL image handed in by code, in a mode Pillow cannot turn into RGB (premultiplied LA)."""
    with pytest.raises(InputError, match="cannot be shown as RGB"):
        open_image(Image.new("La", (8, 8)))


def test_the_app_opens_a_16_bit_image_with_its_gradient(qtbot, make_window, dialogs, tmp_path):
    """The app reads images through the same ``open_image`` as the command line."""
    pytest.importorskip("PySide6")
    from gui_helpers import wait_idle

    from lvlm_studio.core.plugin.registry import create_registry

    path = tmp_path / "grey16.png"
    Image.fromarray(ramp(0, 65535, np.uint16)).save(path)
    window = make_window(create_registry())
    window.open_image(path)
    wait_idle(qtbot, window)
    assert dialogs == [] and window.state.image_name == path.name
    assert_gradient_kept(window.state.image)
