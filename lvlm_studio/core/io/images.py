"""Reading the user's images: any format Pillow reads, as 8-bit RGB, with clear errors otherwise.

Kept apart from the model code so that opening an image never waits for PyTorch to import. The
command line, the app, the benchmark and the SAE tools all open images through ``open_image``, so an
image looks the same to the model wherever it was opened.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lvlm_studio.core.errors import InputError

MIN_IMAGE_SIDE = 4
#: Depths a more-than-8-bit integer image is read at: the smallest that holds its brightest value.
#: Cameras and scanners store 10, 12 or 14 significant bits in 16-bit files; dividing by 65535
#: would show a 12-bit image at 1/16 of its brightness.
INTEGER_DEPTHS = (8, 10, 12, 14, 16)
FORMATS_HINT = "Use a PNG, JPEG, WebP, BMP or TIFF file."


def open_image(source: str | Path | Image.Image) -> Image.Image:
    """An RGB image from a path or a PIL image, with EXIF rotation applied; clear errors otherwise.

    Of an animated image (GIF, APNG, WebP) or a multi-page TIFF, the first frame is used. Pillow's
    decompression-bomb guard stays on: an image over twice its pixel limit is refused, and its
    warning for images between one and two limits is not passed on (such images are opened).
    Every failure of a decoder on a damaged or foreign file becomes an ``InputError``: Pillow's
    plugins raise many kinds of exception on bad bytes, and none of them is a bug of ours.
    """
    if isinstance(source, Image.Image):
        try:
            return _checked_rgb(source)
        except (ValueError, OSError) as exc:
            raise InputError(f"the image (mode {source.mode}) cannot be shown as RGB ({_first_line(exc)}).",
                             FORMATS_HINT) from None
    path = Path(source)
    if not path.exists():
        raise InputError(f"image {path} does not exist.", "Check the path.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image.", "Pass an image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened)
        return _checked_rgb(image)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"{path} is too large to open safely ({_first_line(exc)}).",
                         "Downscale the image (e.g. to at most 4096 pixels a side) and try again.") from None
    except PermissionError:
        raise InputError(f"{path} cannot be read: permission denied.", "Check the file's permissions.") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not a readable image"
        raise InputError(f"{path} could not be read as an image ({_first_line(exc)}).", FORMATS_HINT) from None


def _checked_rgb(image: Image.Image) -> Image.Image:
    if min(image.size) < MIN_IMAGE_SIDE:
        raise InputError(f"the image is {image.size[0]}x{image.size[1]} pixels, too small to look at.",
                         f"Use an image at least {MIN_IMAGE_SIDE} pixels on each side.")
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB, as a viewer would show the image.

    Pillow's own ``convert("RGB")`` clips 16-bit and 32-bit integer values at 255 (a 16-bit
    greyscale PNG becomes white) and float values to 0..255 (a float TIFF of 0..1 becomes black),
    so those are rescaled here: integers by the bit depth their brightest value needs
    (``INTEGER_DEPTHS``; by their range when negative or beyond 16 bits), floats by their finite
    minimum and maximum (NaN shows black). Transparency is flattened onto white, not black.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        grey = _rescaled(np.asarray(image), integer=image.mode != "F")
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("RGBA", "RGBa", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _rescaled(values: np.ndarray, integer: bool) -> np.ndarray:
    """8-bit values of a greyscale array of integers or floats (see ``to_rgb``)."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if integer and low >= 0 and high < 2 ** INTEGER_DEPTHS[-1]:
        depth = next(d for d in INTEGER_DEPTHS if high < 2 ** d)
        low, high = 0.0, float(2 ** depth - 1)
    span = high - low if high > low else 1.0
    scaled = np.nan_to_num((values - low) / span, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
