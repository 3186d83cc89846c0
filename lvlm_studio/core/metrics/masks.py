"""Ground-truth object masks for the plausibility metrics, from wherever they come from.

A metric compares a map with the pixels an answer word names, so every source ends as the same
plain mapping, ``ObjectMasks``: a word (a class name such as "dog" or "red") to a boolean
(height, width) mask of the image, and optionally an answer-token index to the mask of the very
object that token names (more precise than the word's union mask when a scene holds two red
objects). Sources:

* the demo scenes, whose objects carry their own masks (``lvlm_studio.demo.pointing.scene_masks``: the
  demo builds the same mapping, so the core knows nothing of the demo);
* a COCO-format annotation file, read with pycocotools (``coco_masks``: one union mask per
  category present in the image);
* a binary mask image (``mask_from_image``: any pixel above half the range is "in").

A mask whose size differs from the image is resized (nearest neighbour) with a warning, since a
mask exported at another resolution is common and harmless; an empty mask, or a file that cannot
be read, is an ``InputError``: scoring against nothing would silently give zeros.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from lvlm_studio.core.errors import InputError

log = logging.getLogger(__name__)

#: Word (lower case) or answer-token index -> boolean (height, width) mask of the image.
ObjectMasks = dict[str | int, np.ndarray]


def fit_mask(mask: Any, image_size: tuple[int, int], name: str = "mask") -> np.ndarray:
    """``mask`` as a boolean array of the image's (height, width), resized with a warning if needed.

    Raises ``InputError`` for an empty mask or one that is not two-dimensional.
    """
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise InputError(f"{name} has shape {array.shape}, not an image-shaped (height, width) array.",
                         "Give one boolean or 0/1 value per pixel.")
    binary = _binary(array)
    width, height = image_size
    if binary.shape != (height, width):
        message = (f"{name} is {binary.shape[1]}x{binary.shape[0]} pixels but the image is {width}x{height}; "
                   "it was resized (nearest neighbour).")
        warnings.warn(message, stacklevel=2)
        log.warning("%s", message)
        resized = Image.fromarray(binary.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
        binary = np.asarray(resized) > 127
    if not binary.any():
        raise InputError(f"{name} is empty: it marks no pixel of the image.",
                         "Check the annotation; an object mask must cover at least one pixel.")
    return binary


def _binary(array: np.ndarray) -> np.ndarray:
    """True/False as given; 0/1 values above one half; 0-255 values above 127."""
    if array.dtype == bool:
        return array
    values = array.astype(np.float64)
    return values > (127.0 if values.max(initial=0) > 1 else 0.5)


def mask_from_image(path: str | Path, image_size: tuple[int, int]) -> np.ndarray:
    """A binary mask from an image file (white or any bright value = object), fitted to ``image_size``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"mask file {path} does not exist.", "Check the path.")
    try:
        with Image.open(path) as image:
            gray = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path} could not be read as a mask image ({exc}).",
                         "Use a PNG where object pixels are white and the rest black.") from None
    return fit_mask(gray > 127, image_size, f"mask {path.name}")


def coco_masks(annotation_file: str | Path, image_name: str, image_size: tuple[int, int],
               coco: Any = None) -> ObjectMasks:
    """One union mask per category annotated on ``image_name`` (its ``file_name`` in the COCO file).

    ``coco`` is an already loaded ``pycocotools.coco.COCO`` (reading the file once for a dataset).
    Category names become lower-case words; a multi-word name ("traffic light") is also reachable
    by its last word, the head noun an answer is likely to use.
    """
    coco = coco if coco is not None else load_coco(annotation_file)
    matches = [i for i in coco.getImgIds() if Path(coco.imgs[i]["file_name"]).name == Path(image_name).name]
    if not matches:
        raise InputError(f"{annotation_file} has no image named {Path(image_name).name!r}.",
                         "Use the annotation file that belongs to these images.")
    info = coco.imgs[matches[0]]
    masks: ObjectMasks = {}
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[matches[0]], iscrowd=None)):
        name = coco.cats[ann["category_id"]]["name"].lower()
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy= notice, not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = coco.annToMask(ann).astype(bool)
        if not mask.any():
            continue
        for word in {name, name.split()[-1]}:
            masks[word] = masks[word] | mask if word in masks else mask
    if not masks:
        raise InputError(f"{annotation_file} has no non-empty object mask for {info['file_name']!r}.",
                         "Pick images that have segmentation annotations.")
    return {word: fit_mask(mask, image_size, f"{info['file_name']} mask of {word!r}") for word, mask in masks.items()}


def load_coco(annotation_file: str | Path) -> Any:
    """A pycocotools COCO index of the file, with a clear error for a missing or malformed file."""
    from pycocotools.coco import COCO

    path = Path(annotation_file)
    if not path.exists():
        raise InputError(f"annotation file {path} does not exist.", "Check the path to the COCO JSON file.")
    try:
        with _quiet():
            return COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise InputError(f"{path} is not a COCO-format annotation file ({type(exc).__name__}: {exc}).",
                         "It needs 'images', 'annotations' and 'categories' lists.") from None


class _quiet:
    """pycocotools prints progress lines to stdout; keep them out of tables written there."""

    def __enter__(self) -> None:
        import contextlib
        import io

        self._redirect = contextlib.redirect_stdout(io.StringIO())
        self._redirect.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._redirect.__exit__(*exc)


def token_masks(masks: Mapping[Any, np.ndarray], answer_tokens: list[str]) -> dict[int, np.ndarray]:
    """Answer-token index -> the mask it names: its own entry if the source pinned one, else its
    word's (also tried without a plural "s"); tokens naming nothing are left out."""
    found: dict[int, np.ndarray] = {}
    for index, token in enumerate(answer_tokens):
        if index in masks:
            found[index] = masks[index]
            continue
        word = normalise_word(token)
        for candidate in (word, word[:-1] if word.endswith("s") else None, word[:-2] if word.endswith("es") else None):
            if candidate and candidate in masks:
                found[index] = masks[candidate]
                break
    return found


def normalise_word(token: str) -> str:
    """A token as a plain lower-case word: tokenizer space markers and punctuation stripped."""
    return token.replace("\u2581", " ").replace("\u0120", " ").strip().strip(".,;:!?\"'").lower()
