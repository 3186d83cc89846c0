"""Where an answer's attention goes in the image, summed up in four numbers that compare across models.

Models of different families cut an image into different token grids (one view, tiles plus a
thumbnail, merged patches), so every statistic here treats each image token as a point: the centre
of the part of the original image it encodes (its region's ``box`` split by its ``grid``), weighted
by the attention it receives. The attention is the answer's (``answer_image_attention``): every
decoder layer and head that sees the image, from every query that predicts an answer token, averaged,
then renormalised over the image tokens (weights w, summing to 1 over the N image tokens).

* ``entropy``: -Σ w log w / log N, in [0, 1]: 0 when one token takes everything, 1 when attention is
  spread evenly (divided by log N so that models with more image tokens are not penalised).
* ``spread``: the attention-weighted standard distance of the tokens from the centre of mass c,
  sqrt(Σ w |p - c|²), as a fraction of the image diagonal.
* ``object_distance``: the distance from c to the nearest pixel of any object mask, as a fraction of
  the image diagonal (0 when c lies on an object; NaN when the image has no object masks).
* ``fine_share``: the share of the attention on tokens that cover fine detail: a token covers fine
  detail when the mean gradient magnitude of the grey image inside its box is above the mean over
  the whole image (edges, texture and small parts, rather than flat background or object interiors).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.capture import capture_attention

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.plugin.adapter import ImageRegion
    from lvlm_studio.core.tracing.trace import Trace

STATISTICS = ("entropy", "spread", "object_distance", "fine_share")


@dataclass(frozen=True)
class AttentionStats:
    """The four statistics of one answer's attention over one image (module docstring)."""

    entropy: float
    spread: float
    object_distance: float
    fine_share: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def token_boxes(regions: list[ImageRegion]) -> np.ndarray:
    """[N, 4] (left, top, right, bottom) in original-image pixels of every image token, region order."""
    boxes = []
    for region in regions:
        rows, cols = region.grid
        left, top, right, bottom = region.box
        xs = np.linspace(left, right, cols + 1)
        ys = np.linspace(top, bottom, rows + 1)
        for r in range(rows):
            for c in range(cols):
                boxes.append((xs[c], ys[r], xs[c + 1], ys[r + 1]))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)


def detail_map(image: Image.Image) -> np.ndarray:
    """Gradient magnitude of the grey image, [H, W] (central differences)."""
    grey = np.asarray(image.convert("L"), dtype=np.float64)
    dy, dx = np.gradient(grey)
    return np.hypot(dx, dy)


def fine_tokens(image: Image.Image, boxes: np.ndarray) -> np.ndarray:
    """[N] bool: whether each token's box has a mean gradient magnitude above the image's mean."""
    detail = detail_map(image)
    height, width = detail.shape
    threshold = detail.mean()
    out = np.zeros(len(boxes), dtype=bool)
    for i, (left, top, right, bottom) in enumerate(boxes):
        x0, x1 = int(np.clip(np.floor(left), 0, width - 1)), int(np.clip(np.ceil(right), 1, width))
        y0, y1 = int(np.clip(np.floor(top), 0, height - 1)), int(np.clip(np.ceil(bottom), 1, height))
        out[i] = detail[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].mean() > threshold
    return out


def pattern_stats(weights: np.ndarray, regions: list[ImageRegion], image: Image.Image,
                  object_masks: list[np.ndarray] | None = None) -> AttentionStats:
    """The statistics of attention ``weights`` [N] over the image tokens of ``regions`` (module docstring).

    ``object_masks`` are boolean arrays of the image's size (height, width), one per object.
    """
    boxes = token_boxes(regions)
    w = np.clip(np.asarray(weights, dtype=np.float64).ravel(), 0, None)
    if len(w) != len(boxes):
        raise InputError(f"{len(w)} attention weights for {len(boxes)} image tokens.",
                         "Pass one weight per image token, in region order.")
    if not len(w) or w.sum() <= 0:
        raise InputError("the attention on the image is zero everywhere.", "Check the model attends to the image.")
    w = w / w.sum()
    n = len(w)
    nonzero = w[w > 0]
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(n)) if n > 1 else 0.0
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    centre = (w[:, None] * centres).sum(axis=0)
    width, height = image.size
    diagonal = float(np.hypot(width, height))
    spread = float(np.sqrt((w * ((centres - centre) ** 2).sum(axis=1)).sum()) / diagonal)
    distance = float("nan")
    masks = [np.asarray(m, dtype=bool) for m in (object_masks or []) if np.asarray(m).any()]
    if masks:
        ys, xs = np.nonzero(np.logical_or.reduce(masks))
        distance = float(np.hypot(xs + 0.5 - centre[0], ys + 0.5 - centre[1]).min())
        cx, cy = int(np.clip(centre[0], 0, width - 1)), int(np.clip(centre[1], 0, height - 1))
        if np.logical_or.reduce(masks)[cy, cx]:
            distance = 0.0
        distance /= diagonal
    fine_share = float(w[fine_tokens(image, boxes)].sum())
    return AttentionStats(entropy, spread, distance, fine_share)


def answer_image_attention(loaded: LoadedModel, trace: Trace) -> np.ndarray:
    """[N] the answer's attention on each image token (``trace.image_positions`` order): one eager
    teacher-forced pass, the mean over layers, heads and the queries that predict answer tokens,
    renormalised to sum to 1 over the image."""
    if not len(trace.answer_ids):
        raise InputError("the answer is empty.", "Ask again; there is no token to look at.")
    queries = [trace.answer_position(t) - 1 for t in range(len(trace.answer_ids))]
    inputs = trace.teacher_forced_inputs(loaded, upto=max(queries) + 1)
    weights = capture_attention(loaded, inputs, queries, trace.image_positions)  # [L, H, Q, K]
    mean = weights.astype(np.float64).mean(axis=(0, 1, 2))
    total = mean.sum()
    return mean / total if total > 0 else mean


def trace_stats(loaded: LoadedModel, trace: Trace, object_masks: list[np.ndarray] | None = None
                ) -> dict[str, Any]:
    """``pattern_stats`` of the answer's attention in ``trace`` (one attention pass)."""
    weights = answer_image_attention(loaded, trace)
    return pattern_stats(weights, trace.regions, trace.image, object_masks).to_dict()
