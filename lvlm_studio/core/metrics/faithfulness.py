"""Deletion and insertion: does removing what a map calls important destroy the answer?

A map orders the image by saliency, most salient first, either by grid cell (the unit every method
computes on) or by pixel (after the shared ``to_pixels`` resampling). In ``steps`` equal steps:

* deletion replaces the ordered units with the blurred baseline one step at a time, starting from
  the image: a faithful map makes the answer collapse early, so the area under the curve is low;
* insertion starts from the blurred image and reveals the units in the same order: a faithful map
  brings the answer back early, so the area is high.

The score of an image is the mean probability of the scored answer tokens, teacher-forced on the
trace's prompt + answer: either the token the map explains, or the answer's visually relevant
tokens (``relevance.py``); it comes from a log p that does not round to 0 for confident tokens
(``scores.py``). ``normalise`` rescales each curve to ``(s - s_blur) / (s_0 - s_blur)``
so that curves of different scenes share a scale (1 = the image's score, 0 = the blurred one's).
The area is the trapezoid rule over the fraction of units removed (or revealed), from 0 to 1.

Both curves of one ordering share their end points (the image, the fully blurred image), so an
ordering costs ``2 * steps`` images, scored in batches by ``perturb.score_images`` with progress
after each batch. Ties in saliency keep reading order (stable sort): a constant map removes the
image from its top-left corner, which no method can claim credit for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.perturbation.perturb import DEFAULT_BATCH_SIZE, blend, score_images
from lvlm_studio.core.plugin.explanation import normalise, to_pixels
from lvlm_studio.core.plugin.jobs import Job, Progress, relay

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.plugin.adapter import ImageRegion
    from lvlm_studio.core.tracing.trace import Trace

DEFAULT_STEPS = 50
SPAN_TOLERANCE = 1e-6  # a blur that moves the score less than this leaves nothing to normalise by
Space = Literal["grid", "pixels"]


@dataclass
class FaithfulnessCurves:
    """Deletion and insertion curves of one ordering; ``fraction`` is shared by both."""

    fraction: np.ndarray  # (steps + 1,) fraction of units removed / revealed, 0 to 1
    deletion: np.ndarray  # score after removing that fraction
    insertion: np.ndarray  # score after revealing that fraction
    tokens: list[int] = field(default_factory=list)  # answer tokens scored
    normalised: bool = False

    @property
    def deletion_auc(self) -> float:
        return auc(self.fraction, self.deletion)

    @property
    def insertion_auc(self) -> float:
        return auc(self.fraction, self.insertion)


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under ``y(x)`` by the trapezoid rule."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def removal_rank(
    maps: list[np.ndarray], regions: list[ImageRegion], image_size: tuple[int, int], space: Space = "grid"
) -> tuple[np.ndarray, int]:
    """Per pixel, the position in the saliency order of the unit it belongs to, and the number of units.

    A pixel is removed at a step that removes ``n`` units when its rank is below ``n``. In grid
    space a pixel covered by several regions' cells (a base view under its tiles) goes with the
    first of them removed. Pixels no region covers rank last (removed only at the final step).
    """
    width, height = image_size
    if space == "pixels":
        pixels = to_pixels(maps, regions, image_size).ravel()
        covered = np.isfinite(pixels)
        order = np.argsort(-np.where(covered, pixels, -np.inf), kind="stable")
        rank = np.empty(pixels.size, dtype=np.float64)
        rank[order] = np.arange(pixels.size)
        n_units = pixels.size
        return rank.reshape(height, width), n_units
    if space != "grid":
        raise InputError(f"unknown space {space!r} for deletion/insertion.", "Use grid or pixels.")
    saliency = np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])
    saliency = np.where(np.isfinite(saliency), saliency, -np.inf)
    order = np.argsort(-saliency, kind="stable")
    cell_rank = np.empty(saliency.size, dtype=np.float64)
    cell_rank[order] = np.arange(saliency.size)
    n_units = saliency.size
    rank = np.full((height, width), n_units - 0.5)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    offset = 0
    for grid_map, region in zip(maps, regions):
        rows, cols = np.asarray(grid_map).shape
        left, top, right, bottom = region.box
        inside = (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)
        row = np.clip(((ys - top) / (bottom - top) * rows).astype(int), 0, rows - 1)
        col = np.clip(((xs - left) / (right - left) * cols).astype(int), 0, cols - 1)
        region_rank = cell_rank[offset + row * cols + col]
        rank = np.where(inside, np.minimum(rank, region_rank), rank)
        offset += rows * cols
    return rank, n_units


def step_counts(n_units: int, steps: int = DEFAULT_STEPS) -> np.ndarray:
    """Units removed after each of ``steps`` equal steps (0 first, all last); fewer steps than units."""
    steps = max(1, min(steps, n_units))
    return np.rint(np.arange(steps + 1) * n_units / steps).astype(int)


def perturbed_images(
    image: Image.Image, baseline: Image.Image, rank: np.ndarray, counts: np.ndarray
) -> tuple[list[Image.Image], list[Image.Image]]:
    """Deletion images (``counts[k]`` top units blurred) and insertion images (only those revealed)."""
    deletion, insertion = [], []
    for count in counts:
        removed = (rank < count).astype(np.float32)
        deletion.append(blend(image, baseline, 1.0 - removed))
        insertion.append(blend(image, baseline, removed))
    return deletion, insertion


def deletion_insertion(
    loaded: LoadedModel,
    trace: Trace,
    orderings: list[tuple[list[np.ndarray], list[int]]],
    steps: int = DEFAULT_STEPS,
    space: Space = "grid",
    normalise_scores: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    baseline: Image.Image | None = None,
) -> Job[list[FaithfulnessCurves]]:
    """Curves for each ``(maps, tokens)`` ordering: the region maps that order the image and the
    answer tokens whose mean probability is the score. A job with progress after every batch.

    The baseline is the trace image's blurred version (``relevance.blurred_baseline``) unless given.
    """
    from lvlm_studio.core.tracing.relevance import blurred_baseline

    baseline = blurred_baseline(trace.image) if baseline is None else baseline.convert("RGB").resize(trace.image.size)
    results: list[FaithfulnessCurves] = []
    total = len(orderings)
    for index, (maps, tokens) in enumerate(orderings):
        if not tokens:
            raise InputError("deletion/insertion needs at least one answer token to score.",
                             "Choose target tokens, or score on the visually relevant tokens.")
        if len(maps) != len(trace.regions):
            raise InputError(f"got {len(maps)} region maps for an image with {len(trace.regions)} regions.",
                             "Pass one map per image region, as an Explanation holds them.")
        rank, n_units = removal_rank(maps, trace.regions, trace.image.size, space)
        counts = step_counts(n_units, steps)
        deletion_images, insertion_images = perturbed_images(trace.image, baseline, rank, counts)
        # The end points are shared: deletion starts at the image and insertion ends there, and
        # vice versa for the blurred image; score them once.
        images = deletion_images + insertion_images[1:-1]
        logprobs = yield from _scored(loaded, trace, images, batch_size, index, total)
        scores = np.exp(logprobs[:, tokens]).mean(axis=1)
        m = len(counts)
        deletion = scores[:m]
        insertion = np.concatenate([[deletion[-1]], scores[m:], [deletion[0]]])
        curves = FaithfulnessCurves(counts / n_units, deletion, insertion, list(tokens))
        results.append(normalised(curves) if normalise_scores else curves)
    yield Progress(total, total, "deletion/insertion done")
    return results


def _scored(loaded: LoadedModel, trace: Trace, images: list[Image.Image], batch_size: int, index: int,
            total: int) -> Job[np.ndarray]:
    """score_images, with its progress re-expressed over all orderings (in images)."""
    n = len(images)
    return relay(score_images(loaded, trace, images, batch_size, "deletion/insertion"),
                 lambda p: Progress(index * n + p.done, total * n, f"deletion/insertion {index + 1} of {total}"))


def normalised(curves: FaithfulnessCurves) -> FaithfulnessCurves:
    """Both curves as ``(s - s_blur) / (s_0 - s_blur)``; NaN when the blur does not change the score
    (by less than ``SPAN_TOLERANCE``: there is then nothing for a map to explain)."""
    s_0, s_blur = curves.deletion[0], curves.deletion[-1]
    span = s_0 - s_blur
    if abs(span) < SPAN_TOLERANCE:
        nan = np.full_like(curves.deletion, np.nan)
        return FaithfulnessCurves(curves.fraction, nan, nan.copy(), curves.tokens, True)
    return FaithfulnessCurves(curves.fraction, (curves.deletion - s_blur) / span, (curves.insertion - s_blur) / span,
                              curves.tokens, True)


def combined_map(maps_per_token: list[list[np.ndarray]]) -> list[np.ndarray]:
    """One ordering for several tokens: the mean of their maps, each min-max normalised over all its
    regions first so that no token dominates by scale alone."""
    if not maps_per_token:
        raise InputError("there are no maps to combine.", "Explain at least one answer token.")
    sizes = [m.size for m in maps_per_token[0]]
    total = np.zeros(sum(sizes))
    for maps in maps_per_token:
        total += normalise(np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps]))
    total /= len(maps_per_token)
    split = np.split(total, np.cumsum(sizes)[:-1])
    return [part.reshape(np.asarray(m).shape) for part, m in zip(split, maps_per_token[0])]
