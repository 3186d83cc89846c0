"""Plausibility metrics against ground-truth masks: Obj-IoU / Func-IoU / F1-IoU and the pointing game.

``masks`` is an ``ObjectMasks`` mapping (``lvlm_studio.core.metrics.masks``): words to masks of the image,
and optionally answer-token indices to the mask of the object that token names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lvlm_studio.api import (
    InputError,
    Metric,
    MetricResult,
    PlausibilityScores,
    fit_mask,
    group_words,
    plausibility,
    to_pixels,
    token_masks,
)


def score_answer(trace, explanation, masks) -> PlausibilityScores:
    """The plausibility of every explained token of the answer, in image pixels."""
    if not masks:
        raise InputError("plausibility metrics need ground-truth object masks.",
                         "Give masks from a demo scene, a COCO annotation file or a mask image.")
    fitted = {key: fit_mask(mask, trace.image.size, f"mask of {key!r}") for key, mask in masks.items()}
    pixel_maps = {t: to_pixels(explanation.maps[t], trace.regions, trace.image.size) for t in explanation.targets}
    words = group_words(trace.answer_tokens, trace.answer_text)
    return plausibility(pixel_maps, words, token_masks(fitted, trace.answer_tokens))


class PlausibilityIoU(Metric):
    """Token Activation Map protocol: Otsu-binarised maps of object words against their masks
    (Obj-IoU), function words that should light up nothing (Func-IoU), and their harmonic mean."""

    id = "iou"
    title = "Obj-IoU, Func-IoU, F1-IoU"
    needs = frozenset({"masks"})
    directions = {"obj_iou": "higher", "func_iou": "higher", "f1_iou": "higher"}

    def score(self, trace, explanation, model, masks, params: dict[str, Any]) -> MetricResult:
        scores = score_answer(trace, explanation, masks)
        return MetricResult(
            values={"obj_iou": scores.obj_iou, "func_iou": scores.func_iou, "f1_iou": scores.f1_iou},
            details={"object_words": scores.object_words, "function_words": scores.function_words,
                     "otsu_thresholds": {str(t): v for t, v in scores.thresholds.items()}},
        )


class PointingGame(Metric):
    """A hit when a token's map peaks inside the mask of the object it names; the hit rate."""

    id = "pointing_game"
    title = "Pointing game"
    needs = frozenset({"masks"})
    directions = {"pointing": "higher"}

    def score(self, trace, explanation, model, masks, params: dict[str, Any]) -> MetricResult:
        scores = score_answer(trace, explanation, masks)
        hits = {str(t): bool(h) for t, h in scores.hits.items()}
        return MetricResult(values={"pointing": scores.pointing},
                            details={"hits": hits, "trials": len(hits), "hit_count": int(np.sum(list(hits.values())))})
