"""Reading the user's images: any format Pillow reads, as RGB, with clear errors otherwise.

Kept apart from the model code so that opening an image never waits for PyTorch to import.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from lvlm_studio.core.errors import InputError

MIN_IMAGE_SIDE = 4


def open_image(source: str | Path | Image.Image) -> Image.Image:
    """An RGB image from a path or a PIL image, with EXIF rotation applied; clear errors otherwise."""
    if isinstance(source, Image.Image):
        image = source
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"image {path} does not exist.", "Check the path.")
        try:
            image = Image.open(path)
            image.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{path} could not be read as an image ({exc}).",
                             "Use a PNG, JPEG, WebP, BMP or TIFF file.") from None
        image = ImageOps.exif_transpose(image)
    if min(image.size) < MIN_IMAGE_SIDE:
        raise InputError(f"the image is {image.size[0]}x{image.size[1]} pixels, too small to look at.",
                         f"Use an image at least {MIN_IMAGE_SIDE} pixels on each side.")
    if image.mode != "RGB":
        # Flatten transparency onto white rather than black, as a viewer would show it.
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, rgba)
        image = image.convert("RGB")
    return image
