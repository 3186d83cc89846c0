"""Perturbation methods: occlusion (a sliding patch showing a baseline, blurred by default) and RISE (random masks).

Both ask only "how likely is the answer if the image looked like this?", answered in batches by
``lvlm_studio.core.perturbation.perturb.score_images`` (one forward pass per batch of altered images, one
progress report per pass). Images are altered in the original image's pixels with a baseline
picture (``baseline_image``: by default the blur of ``lvlm_studio.core.tracing.relevance``, the same
baseline as the LLR rule and iGOS++; or black, the mean colour, or noise), so
the methods hold for every model family; the pixel-space results are averaged onto each region's
grid (``pixels_to_grids``) like every other map.

Occlusion: a square patch of ``window`` x the image's longer side slides in steps of ``stride``
(steps shrink evenly so that the last patch ends at the right and bottom edges); each
placement's score is the drop of the target's log-odds, log p - log(1 - p), from the unaltered
image. Log-odds rather than log p: both measure a drop in nats and agree where p is small, but a
token the model is sure of (p = 1 - 1e-11, a caption's "a") has log p = -1e-11 under every patch,
so its map would be a blank of 1e-11-sized values, while its log-odds fall by whole nats where the
evidence for it was hidden (``lvlm_studio.core.tracing.scores``). Each
drop is spread over its patch with a tent that peaks at the patch's centre, and the tents are
summed (divided by their mean coverage, so the units stay nats): a pixel scores high when the
patches centred near it hurt the answer. Averaging over the covering patches instead would give
the image's corners, which one patch each covers, the whole drop of whichever patch reached them,
and the maximum of such a map sits in a corner. Dividing by the mean coverage has its own cost:
coverage peaks in the centre, so the map is weighted towards the centre whatever the image
(``aggregate_drops``). ``placement="span"`` puts the patch centres from edge to edge instead, which
makes coverage nearly flat at 1.9x the passes, and ``coverage="pixel"`` divides pixel by pixel
(with "span", a constant drop then maps exactly flat); docs/METHODS.md has the measurements.
The patch must be about as large as an object to hide it from a model that still recognises an
object from part of it (as the demo model does with 24 px patches over its 32 px cells),
hence the default of about a third of the image.

Contrast (``contrast``, a token id): both score the target's logit minus the alternative's instead
(``logit_difference``): occlusion maps the drop of that difference, RISE its mean where each pixel
is shown minus its overall mean (a difference of logits has no probability to take).

RISE (Petsiuk et al. 2018): ``masks`` random binary grids of ``cells`` x ``cells`` cells, each cell
kept with probability ``keep``, upsampled bilinearly to one cell more than the image and cut at a
random offset (so that cell borders fall anywhere); saliency = sum_i p_i M_i / (N keep), p_i being
the target token's probability with mask i applied (from a log p that is exact for confident tokens
too, ``lvlm_studio.core.tracing.scores``; RISE is defined on p, so it stays p: a token the model is sure of
gets a faint map of the right shape). The random draws are made at once from a
seeded generator and the masks built batch by batch, so no more than one batch of images is held
in memory and the result does not depend on the batch size.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lvlm_studio.api import (
    BASELINES,
    CONTRAST,
    Explainer,
    Explanation,
    InputError,
    Param,
    Progress,
    baseline_image,
    blend,
    contrast_token,
    pixels_to_grids,
    relay,
    score_images,
)

#: How provenance names each baseline (``baseline_image``).
BASELINE_NAMES = {"blur": "Gaussian blur (the LLR baseline)", "black": "black", "mean": "the image's mean colour",
                  "noise": "uniform noise (seed 0)"}


def check_targets(trace, model, targets: list[int], title: str) -> None:
    """One clear error for a request a model-reading method cannot serve: no model, no tokens, a
    token the answer does not have."""
    if model is None:
        raise InputError(f"{title} needs the model, not only a saved trace.", "Load the model first.")
    if not targets:
        raise InputError("no answer tokens were chosen to explain.", "Pick at least one answer token.")
    for t in targets:
        trace.answer_position(t)  # raises for a token that does not exist


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Left (or top) edges of a sliding window over ``length`` pixels; the last one ends at the edge."""
    if window >= length:
        return [0]
    count = math.ceil((length - window) / stride) + 1
    return sorted({int(round(v)) for v in np.linspace(0, length - window, count)})


PLACEMENTS = ("fit", "span")


def span_centres(length: int, stride: int) -> list[int]:
    """Patch centres from edge to edge of ``length`` pixels (both edges included), about ``stride`` apart."""
    count = max(1, math.ceil(length / stride)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, length, count)})


def occlusion_boxes(size: tuple[int, int], window: float, stride: float,
                    placement: str = "fit") -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of every patch placement, sizes as fractions of the longer side.

    "fit": every patch lies inside the image (the last one ends at the right and bottom edges).
    "span": patch centres run from edge to edge, so patches near the edges hang over them; each box
    is the whole patch, which may reach past the image (``clip_box`` cuts it to the image).
    """
    width, height = size
    side = max(1, round(window * max(size)))
    step = max(1, round(stride * max(size)))
    if placement == "span":
        lefts = [int(round(cx - side / 2)) for cx in span_centres(width, step)]
        tops = [int(round(cy - side / 2)) for cy in span_centres(height, step)]
        return [(x, y, x + side, y + side) for y in tops for x in lefts]
    return [(x, y, min(x + side, width), min(y + side, height))
            for y in window_starts(height, side, step) for x in window_starts(width, side, step)]


def clip_box(box: tuple[int, int, int, int],
             size: tuple[int, int]) -> tuple[tuple[int, int, int, int], tuple[slice, slice]]:
    """``box`` cut to an image of ``size`` (width, height), and the rows and columns of the whole
    box's ``tent`` that fall inside it."""
    left, top, right, bottom = box
    width, height = size
    inside = (max(left, 0), max(top, 0), min(right, width), min(bottom, height))
    rows = slice(inside[1] - top, inside[3] - top)
    cols = slice(inside[0] - left, inside[2] - left)
    return inside, (rows, cols)


def tent(box: tuple[int, int, int, int]) -> np.ndarray:
    """Weights over a patch (rows, cols): 1 at its centre, falling linearly towards its edges
    (pixel centres, so edge pixels keep a little weight)."""
    left, top, right, bottom = box

    def ramp(size: int) -> np.ndarray:
        centres = (np.arange(size) + 0.5) / size * 2 - 1  # -1..1 across the patch
        return 1 - np.abs(centres)

    return np.outer(ramp(bottom - top), ramp(right - left))


COVERAGES = ("mean", "pixel")


def aggregate_drops(boxes: list[tuple[int, int, int, int]], drops: np.ndarray, size: tuple[int, int],
                    coverage: str = "mean") -> np.ndarray:
    """The occlusion map over the image's pixels (height, width) from one drop per placement.

    Each drop is spread over its patch with a ``tent`` and the tents are summed. ``coverage`` says
    what the sum is divided by:

    - "mean": the tents' mean coverage over the image, one number (the units stay nats). Coverage
      itself is not flat, so the map carries the coverage's shape whatever the image: with patches
      that fit inside the image ("fit") the corners lie under one patch's edge and the centre under
      many patches' middles, and a constant drop of 1 nat maps to about 0.07 in the corner cells and
      1.8-1.9 in the centre of the demo model's 8x8 grid; with centres from edge to edge ("span")
      coverage is nearly flat and the same drop maps to 0.89-1.05.
    - "pixel": the coverage at each pixel, so that each pixel is the tent-weighted mean of the
      drops of the patches over it, and a constant drop maps to exactly that constant wherever a
      patch reaches. With "fit" placements a corner then takes the whole drop of the one patch that
      touches it, centred far from it.
    """
    width, height = size
    total = np.zeros((height, width))
    cover = np.zeros((height, width))
    for box, drop in zip(boxes, drops):
        (left, top, right, bottom), cut = clip_box(box, size)
        weights = tent(box)[cut]
        total[top:bottom, left:right] += drop * weights
        cover[top:bottom, left:right] += weights
    if coverage == "pixel":
        return np.where(cover > 0, total / np.maximum(cover, 1e-12), 0.0)
    scale = cover.mean() if cover.mean() > 0 else 1.0
    return total / scale

def rise_draws(count: int, cells: int, keep: float, size: tuple[int, int],
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Everything random about ``count`` RISE masks, drawn at once (cheap: cells x cells booleans and
    an offset each) so that the masks do not depend on how they are later batched: the binary grids
    [count, cells, cells] and the vertical and horizontal offsets, in pixels."""
    width, height = size
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    grids = rng.random((count, cells, cells)) < keep
    return grids, rng.integers(0, cell_h, count), rng.integers(0, cell_w, count)


def rise_masks(grids: np.ndarray, dy: np.ndarray, dx: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RISE masks [count, height, width] in [0, 1] from ``rise_draws``: each grid upsampled bilinearly
    to one cell more than the image and cut at its offset."""
    width, height = size
    cells = grids.shape[-1]
    cell_h, cell_w = math.ceil(height / cells), math.ceil(width / cells)
    up = F.interpolate(torch.as_tensor(grids[:, None], dtype=torch.float32),
                       size=((cells + 1) * cell_h, (cells + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0].clamp(0.0, 1.0).numpy()  # rounding can overshoot 1 by an ulp
    return np.stack([up[i, dy[i]:dy[i] + height, dx[i]:dx[i] + width] for i in range(len(grids))])


def _provenance(method: str, model, extra: dict[str, Any]) -> dict[str, Any]:
    return {"method": method, **extra, "model": model.describe(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class Occlusion(Explainer):
    id = "occlusion"
    title = "Occlusion (sliding patch)"
    needs = frozenset({"model"})
    params = (
        Param("window", 0.35, "patch side as a fraction of the image's longer side", minimum=0.01, maximum=1.0),
        Param("stride", 0.1, "step between placements, as a fraction of the longer side", minimum=0.01,
              maximum=1.0),
        Param("placement", "fit", "fit: patches inside the image (coverage peaks in the centre); span: patch "
              "centres from edge to edge (nearly flat coverage, about 1.9x the passes)", choices=PLACEMENTS),
        Param("coverage", "mean", "what the summed drops are divided by: the mean coverage (one number, units "
              "stay nats) or the coverage at each pixel (each pixel the mean drop of the patches over it)",
              choices=COVERAGES),
        Param("batch_size", 16, "images per forward pass", minimum=1, maximum=1024),
        Param("baseline", "blur", "what the patch shows instead of the image: blur, black, mean colour or noise",
              choices=BASELINES),
        CONTRAST,
    )

    def explain(self, trace, model, targets, params: dict[str, Any]):
        check_targets(trace, model, targets, self.title)
        image = trace.image.convert("RGB")
        baseline = baseline_image(image, params["baseline"])
        placement = params["placement"]
        boxes = occlusion_boxes(image.size, params["window"], params["stride"], placement)
        width, height = image.size
        images = [image]
        for box in boxes:
            (left, top, right, bottom), _ = clip_box(box, image.size)
            keep = np.ones((height, width), dtype=np.float32)
            keep[top:bottom, left:right] = 0.0
            images.append(blend(image, baseline, keep))
        alternative = contrast_token(params)
        scores = yield from score_images(model, trace, images, params["batch_size"], "occluded images",
                                         log_odds=True, upto=max(targets) + 1, contrast=alternative)
        drops = scores[0][None, :] - scores[1:]  # [placements, answer tokens]
        maps = {t: pixels_to_grids(aggregate_drops(boxes, drops[:, t], image.size, params["coverage"]), trace.regions)
                for t in targets}
        provenance = _provenance(self.id, model, {
            "score": "drop of the target's log-odds when the patch shows the baseline" if alternative is None else
                     f"drop of the target's logit minus that of token {alternative} when the patch shows the baseline",
            "placement": placement, "coverage": params["coverage"], "placements": len(boxes),
            "forward_passes": math.ceil(len(images) / params["batch_size"]),
            "baseline": BASELINE_NAMES[params["baseline"]]})
        return Explanation(self.id, maps, params, provenance)


class RISE(Explainer):
    id = "rise"
    title = "RISE (randomised input sampling)"
    needs = frozenset({"model"})
    params = (
        Param("masks", 500, "number of random masks", minimum=1, maximum=100_000),
        Param("cells", 8, "mask grid cells a side before upsampling", minimum=1, maximum=256),
        Param("keep", 0.5, "probability that a cell shows the image", minimum=0.01, maximum=1.0),
        Param("seed", 0, "seed of the random masks"),
        Param("batch_size", 16, "images per forward pass", minimum=1, maximum=1024),
        Param("baseline", "blur", "what a masked cell shows instead of the image: blur, black, mean colour or noise",
              choices=BASELINES),
        CONTRAST,
    )

    def explain(self, trace, model, targets, params: dict[str, Any]):
        check_targets(trace, model, targets, self.title)
        image = trace.image.convert("RGB")
        baseline = baseline_image(image, params["baseline"])
        width, height = image.size
        total, batch = params["masks"], params["batch_size"]
        grids, dy, dx = rise_draws(total, params["cells"], params["keep"], image.size,
                                   np.random.default_rng(params["seed"]))
        weighted = np.zeros((len(targets), height * width))  # sum over masks of p * mask
        shown = np.zeros(height * width)  # how often each pixel was shown
        score_sum = np.zeros(len(targets))
        alternative = contrast_token(params)
        for start in range(0, total, batch):
            chunk = slice(start, start + batch)
            masks = rise_masks(grids[chunk], dy[chunk], dx[chunk], image.size)
            images = [blend(image, baseline, m) for m in masks]
            scores = yield from relay(score_images(model, trace, images, batch, upto=max(targets) + 1,
                                                   contrast=alternative),
                                      lambda p, start=start: Progress(start + p.done, total, "masked images"))
            # p of the target; or, against an alternative, the logit difference itself (it has no p)
            probabilities = scores[:, targets].astype(np.float64)
            if alternative is None:
                probabilities = np.exp(probabilities)  # [batch, targets]
            flat = masks.reshape(len(masks), -1).astype(np.float64)
            weighted += probabilities.T @ flat
            shown += flat.sum(axis=0)
            score_sum += probabilities.sum(axis=0)
        # E[p | pixel shown] - E[p]: RISE's weighted average with the masks' own density divided out
        # and the mean score subtracted, so where the score ignores the masks the map is flat, not a
        # picture of where the seeded masks happened to fall (which fails model randomisation).
        saliency = weighted / np.maximum(shown, 1e-12) - (score_sum / total)[:, None]
        maps = {t: pixels_to_grids(saliency[i].reshape(height, width), trace.regions) for i, t in enumerate(targets)}
        provenance = _provenance(self.id, model, {
            "score": "mean probability of the target token when each pixel is shown, minus its mean over all masks"
                     if alternative is None else f"mean of the target's logit minus that of token {alternative} when "
                     "each pixel is shown, minus its mean over all masks",
            "forward_passes": math.ceil(total / batch), "baseline": BASELINE_NAMES[params["baseline"]]})
        return Explanation(self.id, maps, params, provenance)
