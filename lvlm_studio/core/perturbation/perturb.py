"""Score the answer on altered images, many at once: the engine of every perturbation method.

Occlusion, RISE, deletion/insertion curves and the validation of causal token subsets all ask the
same question: *how likely is the answer the model gave, if the image looked like this instead?*
``score_images`` answers it for a list of images in batches (one forward pass per batch, not one
per image), teacher-forced over the trace's prompt + answer, and reports progress once per batch
so that the caller can cancel between passes.

Images are altered in the original image's pixel space (``blend``), then go through the model's
own processor, so the same code serves every model family: the processor does the resizing,
tiling and patching, and the image-token layout must come out the same as the trace's (checked).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.plugin.jobs import Job, Progress
from lvlm_studio.core.tracing.relevance import blurred_baseline
from lvlm_studio.core.tracing.scores import log_odds as target_log_odds
from lvlm_studio.core.tracing.scores import log_probability, logit_difference

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.tracing.trace import Trace

DEFAULT_BATCH_SIZE = 16

#: What replaces the image where a perturbation method hides it (``baseline_image``).
BASELINES = ("blur", "black", "mean", "noise")


def baseline_image(image: Image.Image, kind: str = "blur", seed: int = 0) -> Image.Image:
    """The picture that stands for "no information" where a method hides or removes the image.

    ``blur``: the strong Gaussian blur of ``blurred_baseline`` (the LLR rule's baseline: colours and
    layout stay, detail goes); ``black``: every pixel 0; ``mean``: every pixel the image's mean colour
    (per channel, rounded); ``noise``: uniform random pixels in 0..255 from ``seed``, the same for
    the same seed and size. Which one is right depends on the question: black and noise are far
    from natural images, so removing a region also adds an edge or texture the model may react to;
    blur and mean keep the image's overall colour.
    """
    image = image.convert("RGB")
    width, height = image.size
    if kind == "blur":
        return blurred_baseline(image)
    if kind == "black":
        return Image.new("RGB", image.size, (0, 0, 0))
    if kind == "mean":
        colour = np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)
        return Image.new("RGB", image.size, tuple(int(v) for v in np.rint(colour)))
    if kind == "noise":
        pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        return Image.fromarray(pixels)
    raise InputError(f"unknown baseline {kind!r}.", f"Choose one of: {', '.join(BASELINES)}.")


def blend(image: Image.Image, baseline: Image.Image, keep: np.ndarray) -> Image.Image:
    """``image * keep + baseline * (1 - keep)`` per pixel; ``keep`` is (height, width) in [0, 1]."""
    keep = np.clip(np.asarray(keep, dtype=np.float32), 0.0, 1.0)
    width, height = image.size
    if keep.shape != (height, width):
        raise InputError(f"a mask of shape {keep.shape} cannot alter an image of {width}x{height} pixels.",
                         "Resample the mask to the image size first.")
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    b = np.asarray(baseline.convert("RGB").resize(image.size), dtype=np.float32)
    mixed = a * keep[..., None] + b * (1.0 - keep[..., None])
    return Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))


def score_images(
    loaded: LoadedModel,
    trace: Trace,
    images: Sequence[Image.Image],
    batch_size: int = DEFAULT_BATCH_SIZE,
    what: str = "scoring images",
    log_odds: bool = False,
    upto: int | None = None,
    contrast: int | None = None,
) -> Job[np.ndarray]:
    """log p of every answer token, teacher-forced, for each image: an (n_images, n_answer) float64 array.

    A job: yields one ``Progress`` per batch (so it cancels within one forward pass) and returns
    the array. ``batch_size=1`` is the unbatched reference the benchmarks compare against.
    log p is exact for confident tokens too (``core.tracing.scores``: it does not round to 0 for
    p = 1 - 1e-11, as float32 log_softmax does). ``log_odds=True`` returns log(p / (1 - p)) instead:
    the same order as p, on a scale where a confident token's evidence can still move by nats.
    ``upto`` scores only the answer's first ``upto`` tokens (an (n_images, upto) array): the
    forward pass then stops at the last of them instead of running over the whole answer, which
    is what a method that explains one early token needs. ``contrast`` (a token id) scores every
    answer token against that alternative instead: its logit minus the alternative's
    (``core.tracing.scores.logit_difference``, equal to the difference of their log p), whatever
    ``log_odds`` says.
    """
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} is not positive.", "Use a batch size of 1 or more.")
    n_answer = len(trace.answer_ids) if upto is None else min(int(upto), len(trace.answer_ids))
    scores = np.zeros((len(images), n_answer), dtype=np.float64)
    yield Progress(0, len(images), what)
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        if n_answer:
            extras = processed_images(loaded, trace, chunk)
            scores[start:start + len(chunk)] = _answer_logprobs(loaded, trace, extras, len(chunk), n_answer, log_odds,
                                                                contrast)
        yield Progress(start + len(chunk), len(images), what)
    return scores


def processed_images(loaded: LoadedModel, trace: Trace, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
    """The processor's image inputs for ``images`` (one row each) with the trace's prompt.

    Every row's prompt ids must equal the trace's, or the passes would not be comparable: an
    altered image of the same size always gives the same layout, so a mismatch means the family's
    processor depends on image content.
    """
    encoded = loaded.processor(images=[[im.convert("RGB")] for im in images],
                               text=[trace.prompt_text] * len(images), return_tensors="pt")
    ids = encoded["input_ids"].cpu().numpy()
    if ids.shape[1] != len(trace.input_ids) or not (ids == trace.input_ids[None]).all():
        raise InputError("an altered image was laid out differently from the original by the processor.",
                         "This model family's processor depends on image content; perturbation methods "
                         "cannot be used with it.")
    return {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}


@torch.no_grad()
def _answer_logprobs(loaded: LoadedModel, trace: Trace, extras: dict[str, Any], rows: int, n: int,
                     log_odds: bool = False, contrast: int | None = None) -> np.ndarray:
    """Scores of the answer's first ``n`` tokens (``n`` >= 1) for ``rows`` images."""
    from lvlm_studio.core.models.inputs import forward_inputs

    # Answer token i is predicted at the position before it, so the pass runs over the prompt and
    # the answer's first n - 1 tokens and keeps the last n logits. ``rows`` is the number of
    # images: families that send tiles as rows of pixel_values (InternVL) have no per-image key.
    ids = torch.as_tensor(trace.sequence_ids[: trace.answer_start + n - 1], device=loaded.device)
    ids = ids.long()[None].expand(rows, -1)
    extras = {k: v.to(loaded.device) for k, v in extras.items()}
    inputs = forward_inputs(ids, extras, loaded.model.dtype, loaded.adapter.generated_token_inputs)
    logits = loaded.model(**inputs, use_cache=False, logits_to_keep=n).logits
    answer = torch.as_tensor(trace.answer_ids[:n], device=logits.device).long()[None].expand(rows, -1)
    if contrast is not None:
        return logit_difference(logits, answer, contrast).double().cpu().numpy()
    score = target_log_odds if log_odds else log_probability
    return score(logits, answer).double().cpu().numpy()


def pixels_to_grids(pixel_map: np.ndarray, regions: Sequence[Any], image_index: int = 0) -> list[np.ndarray]:
    """A (height, width) map over the original image, averaged onto each region's grid.

    The inverse of ``explanation.to_pixels`` for perturbation methods, whose results live in pixel
    space: each cell takes the mean over the pixels whose centres fall in its part of the region's
    box; a cell that holds no pixel centre (a box reaching past the image, cells finer than pixels)
    takes the pixel nearest its centre.
    """
    pixel_map = np.asarray(pixel_map, dtype=np.float64)
    height, width = pixel_map.shape
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    grids = []
    for region in regions:
        rows, cols = region.grid
        if region.image_index != image_index:
            grids.append(np.zeros((rows, cols)))
            continue
        left, top, right, bottom = region.box
        gy = np.floor((ys - top) / (bottom - top) * rows).astype(int)
        gx = np.floor((xs - left) / (right - left) * cols).astype(int)
        inside = (gy >= 0) & (gy < rows) & (gx >= 0) & (gx < cols)
        cell = gy[inside] * cols + gx[inside]
        sums = np.bincount(cell, weights=pixel_map[inside], minlength=rows * cols)
        counts = np.bincount(cell, minlength=rows * cols)
        cy = top + (np.arange(rows) + 0.5) * (bottom - top) / rows
        cx = left + (np.arange(cols) + 0.5) * (right - left) / cols
        py = np.clip(np.floor(cy).astype(int), 0, height - 1)
        px = np.clip(np.floor(cx).astype(int), 0, width - 1)
        nearest = pixel_map[np.ix_(py, px)].reshape(-1)
        values = np.where(counts > 0, sums / np.maximum(counts, 1), nearest)
        grids.append(values.reshape(rows, cols))
    return grids
