"""Reading the user's images: any format Pillow reads, and DICOM, as 8-bit RGB, with clear errors otherwise.

Kept apart from the model code so that opening an image never waits for PyTorch to import. The
command line, the app, the benchmark and the SAE tools all open images through ``open_image``, so an
image looks the same to the model wherever it was opened.

An image with more than 8 bits of levels (a DICOM file, a 12- or 16-bit or float PNG or TIFF) is
shown through a window (``core/io/windowing.py``): the file's own for DICOM, else one taken from the
data. ``open_with_levels`` also returns its values, so that a viewer can change the window.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.dicom import looks_like_dicom, read_dicom
from lvlm_studio.core.io.windowing import MedicalImage, range_window

MIN_IMAGE_SIDE = 4
#: Depths a more-than-8-bit integer image is read at: the smallest that holds its brightest value.
#: Cameras and scanners store 10, 12 or 14 significant bits in 16-bit files; dividing by 65535
#: would show a 12-bit image at 1/16 of its brightness.
INTEGER_DEPTHS = (8, 10, 12, 14, 16)
FORMATS_HINT = "Use a PNG, JPEG, WebP, BMP, TIFF or DICOM file."


def open_image(source: str | Path | Image.Image, frame: int = 0) -> Image.Image:
    """An RGB image from a path or a PIL image, with EXIF rotation applied; clear errors otherwise.

    Of an animated image (GIF, APNG, WebP) or a multi-page TIFF, the first frame is used; of a
    multi-frame DICOM file, frame ``frame`` (from 0), in the file's window. Pillow's
    decompression-bomb guard stays on: an image over twice its pixel limit is refused, and its
    warning for images between one and two limits is not passed on (such images are opened).
    Every failure of a decoder on a damaged or foreign file becomes an ``InputError``: Pillow's
    plugins raise many kinds of exception on bad bytes, and none of them is a bug of ours.
    """
    return open_with_levels(source, frame)[0]


def open_with_levels(source: str | Path | Image.Image, frame: int = 0) -> tuple[Image.Image, MedicalImage | None]:
    """``open_image``'s RGB image and, for a DICOM file or an image of more than 8-bit levels, its
    values with their default window (None for an ordinary 8-bit image)."""
    if isinstance(source, Image.Image):
        try:
            levels = levels_of(source)
            return _checked_rgb(source if levels is None else levels.render()), levels
        except (ValueError, OSError) as exc:
            raise InputError(f"the image (mode {source.mode}) cannot be shown as RGB ({_first_line(exc)}).",
                             FORMATS_HINT) from None
    path = Path(source)
    if not path.exists():
        raise InputError(f"image {path} does not exist.", "Check the path.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image.", "Pass an image file.")
    if looks_like_dicom(path):
        medical = read_dicom(path, frame)
        return _checked_rgb(medical.render()), medical
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as opened:
                opened.load()
                kind = opened.format or path.suffix.lstrip(".").upper()
                image = ImageOps.exif_transpose(opened)
        levels = levels_of(image, kind)
        return _checked_rgb(image if levels is None else levels.render()), levels
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
    so those are shown through a window (``levels_of``). Transparency is flattened onto white, not black.
    """
    if image.mode == "RGB":
        return image
    levels = levels_of(image)
    if levels is not None:
        return levels.render()
    if image.mode in ("RGBA", "RGBa", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def levels_of(image: Image.Image, kind: str = "") -> MedicalImage | None:
    """The values of a greyscale image of more than 8-bit levels (16- or 32-bit integers, floats) with
    a default window; None for any other image.

    Integers are read at the bit depth their brightest value needs (``INTEGER_DEPTHS``: a 12-bit image
    in a 16-bit file is shown at 12 bits, and 8-bit values in a 16-bit file keep their brightness),
    or over their range when negative or beyond 16 bits; floats over their finite minimum and maximum
    (NaN shows black).
    """
    if not (image.mode in ("I", "F") or image.mode.startswith("I;16")):
        return None
    values = np.asarray(image)
    finite = values[np.isfinite(values)] if image.mode == "F" else values.reshape(-1)
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    integer = image.mode != "F"
    if integer and low >= 0 and high < 2 ** INTEGER_DEPTHS[-1]:
        depth = next(d for d in INTEGER_DEPTHS if high < 2 ** d)
        window = range_window(0.0, float(2 ** depth - 1), source=f"{depth}-bit range")
    else:
        depth = 16 if image.mode.startswith("I;16") else 32
        window = range_window(low, high, exact=not integer, source="the image's range")
    return MedicalImage(values.astype(np.float32), window, kind=kind or image.format or "image",
                        photometric="greyscale" + (" float" if not integer else ""), bits_stored=depth,
                        signed=integer and low < 0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
