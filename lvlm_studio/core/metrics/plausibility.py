"""Plausibility: does a map light up what its word names, and nothing for words that name nothing?

The Token Activation Map protocol, restated:

* Answer tokens are grouped into words (a word spans the tokens between two spaces of the answer
  text; punctuation stands alone).
* **Obj-IoU**, for each object word (a word that names a ground-truth mask): each of its tokens'
  maps, in image pixels, is binarised with Otsu's threshold and compared with the mask by
  intersection over union; the word scores the best of its tokens.
* **Func-IoU**, for each function word (``FUNCTION_WORDS``: determiners, pronouns, conjunctions,
  modals and auxiliaries, possessives, wh-words, existential "there", interjections; *not*
  prepositions or numbers, which can point at something): the threshold is the mean of the Otsu
  thresholds of the answer's object tokens, and the word scores the fraction of pixels *below*
  it, since a function word should light up nothing. Without an object word in the answer there
  is no threshold, and function words are not scored.
* **F1-IoU** is the harmonic mean of Obj-IoU and Func-IoU (over a dataset: of their dataset means).
* **Pointing game**: a hit when the map's brightest pixel lies inside the mask.

All maps of one answer are min-max normalised *jointly* (one minimum and maximum over every
token's map) before any threshold: Otsu on a single map does not depend on its scale, but a
function word's map is only "dark" relative to the object words' maps of the same answer.
A constant map has an Otsu threshold equal to its value and so no pixel above it: IoU 0, and it
points at its first pixel (top-left). An empty mask is an ``InputError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lvlm_studio.core.errors import InputError

#: Closed list of English function words in the TAM protocol's sense (no download, no tagger).
FUNCTION_WORDS = frozenset(
    """
    a an the this that these those each every either neither some any no all both few many much
    several such what whatever which whichever
    i me you he him she her it we us they them myself yourself himself herself itself ourselves
    yourselves themselves one ones someone somebody something anyone anybody anything everyone
    everybody everything nobody nothing none
    and or but nor so yet if because although though while whereas unless whether than
    can could may might must shall should will would is am are was were be been being do does did
    have has had
    my your his its our their mine yours hers ours theirs whose
    who whom when where why how
    there
    oh ah yes well hey wow hmm uh um okay ok
    """.split()
)


@dataclass(frozen=True)
class Word:
    """One word of the answer and the answer tokens it spans."""

    text: str
    tokens: tuple[int, ...]


def group_words(tokens: list[str], text: str | None = None) -> list[Word]:
    """Group answer tokens into words, using the answer text's spaces where the tokens carry none.

    Tokens are located in ``text`` in order; a token starts a new word when whitespace precedes it
    there, when it or the previous token is punctuation, or when it carries a space marker itself
    (a leading space, "\u2581" or "\u0120"). Without ``text`` only the last two rules apply.
    """
    words: list[tuple[str, list[int]]] = []
    cursor = 0
    text = text or ""
    previous_punct = True
    for index, token in enumerate(tokens):
        piece = _clean(token)
        marked = token[:1] in (" ", "\u2581", "\u0120")
        spaced = False
        if text and piece:
            found = text.find(piece, cursor)
            if found >= 0:
                spaced = found > 0 and text[found - 1].isspace()
                cursor = found + len(piece)
        punct = bool(piece) and not any(c.isalnum() for c in piece)
        if not words or marked or spaced or punct or previous_punct:
            words.append((piece, [index]))
        else:
            words[-1] = (words[-1][0] + piece, [*words[-1][1], index])
        previous_punct = punct
    return [Word(w.lower(), tuple(ts)) for w, ts in words]


def _clean(token: str) -> str:
    return token.replace("\u2581", " ").replace("\u0120", " ").strip()


def is_function_word(word: str) -> bool:
    return word.strip().lower() in FUNCTION_WORDS


def otsu_threshold(pixel_map: np.ndarray) -> float:
    """Otsu's threshold of the map's finite values (scikit-image); a constant map returns its value."""
    from skimage.filters import threshold_otsu

    values = np.asarray(pixel_map, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise InputError("the map has no finite value to threshold.", "Check the explanation's maps.")
    if values.min() == values.max():
        return float(values[0])
    return float(threshold_otsu(values))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean arrays (0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise InputError(f"a mask of shape {mask.shape} cannot score a map of shape {shape}.",
                         "Fit masks to the image size first (lvlm_studio.core.metrics.masks.fit_mask).")
    if not mask.any():
        raise InputError("the object mask is empty.", "Every object mask must cover at least one pixel.")
    return mask


def obj_iou(pixel_map: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(IoU of the Otsu-binarised map with the mask, the Otsu threshold)."""
    pixel_map = np.asarray(pixel_map, dtype=np.float64)
    mask = _check_mask(mask, pixel_map.shape)
    threshold = otsu_threshold(pixel_map)
    return iou(np.nan_to_num(pixel_map, nan=-np.inf) > threshold, mask), threshold


def func_iou(pixel_map: np.ndarray, threshold: float) -> float:
    """Fraction of the map's pixels below ``threshold`` (1 = the word lights up nothing)."""
    values = np.asarray(pixel_map, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float((values < threshold).mean()) if values.size else float("nan")


def f1_iou(obj: float, func: float) -> float:
    """Harmonic mean of Obj-IoU and Func-IoU (0 when both are 0, NaN when either is missing)."""
    if not (np.isfinite(obj) and np.isfinite(func)):
        return float("nan")
    return 0.0 if obj + func == 0 else float(2 * obj * func / (obj + func))


def pointing_hit(pixel_map: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's brightest pixel lies inside the mask (first pixel on ties; a map with no
    finite value hits nothing). The one hit rule of the pointing game everywhere."""
    pixel_map = np.asarray(pixel_map, dtype=np.float64)
    mask = _check_mask(mask, pixel_map.shape)
    if not np.isfinite(pixel_map).any():
        return False
    y, x = np.unravel_index(np.nanargmax(pixel_map), pixel_map.shape)
    return bool(mask[y, x])


@dataclass
class PlausibilityScores:
    """One answer's plausibility: per-word values and their means (NaN where nothing was scored)."""

    obj_iou: float
    func_iou: float
    f1_iou: float
    pointing: float  # hit rate over the object tokens
    object_words: dict[str, float] = field(default_factory=dict)  # word -> Obj-IoU
    function_words: dict[str, float] = field(default_factory=dict)  # word -> Func-IoU
    hits: dict[int, bool] = field(default_factory=dict)  # object token -> pointing hit
    thresholds: dict[int, float] = field(default_factory=dict)  # object token -> Otsu threshold


def plausibility(
    pixel_maps: dict[int, np.ndarray], words: list[Word], masks: dict[int, np.ndarray]
) -> PlausibilityScores:
    """Score one answer. ``pixel_maps``: answer token -> map in image pixels (tokens without a map
    are skipped); ``masks``: answer token -> the mask it names (``masks.token_masks``)."""
    if not pixel_maps:
        raise InputError("there are no maps to score.", "Explain the answer's tokens first.")
    joint = _jointly_normalised(pixel_maps)
    object_scores: dict[str, float] = {}
    thresholds: dict[int, float] = {}
    hits: dict[int, bool] = {}
    for word in words:
        scored = [t for t in word.tokens if t in joint and t in masks]
        if not scored:
            continue
        values = []
        for t in scored:
            value, thresholds[t] = obj_iou(joint[t], masks[t])
            hits[t] = pointing_hit(joint[t], masks[t])
            values.append(value)
        object_scores[_key(word, object_scores)] = max(values)
    function_scores: dict[str, float] = {}
    if thresholds:
        threshold = float(np.mean(list(thresholds.values())))
        for word in words:
            scored = [t for t in word.tokens if t in joint and t not in masks]
            if scored and is_function_word(word.text):
                function_scores[_key(word, function_scores)] = float(np.mean([func_iou(joint[t], threshold)
                                                                              for t in scored]))
    obj = float(np.mean(list(object_scores.values()))) if object_scores else float("nan")
    func = float(np.mean(list(function_scores.values()))) if function_scores else float("nan")
    pointing = float(np.mean(list(hits.values()))) if hits else float("nan")
    return PlausibilityScores(obj, func, f1_iou(obj, func), pointing, object_scores, function_scores, hits,
                              thresholds)


def _key(word: Word, taken: dict[str, float]) -> str:
    """The word, made unique within one answer ("a", "a#4") by its first token's index."""
    return word.text if word.text not in taken else f"{word.text}#{word.tokens[0]}"


def _jointly_normalised(pixel_maps: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    stacked = np.stack([np.asarray(m, dtype=np.float64) for m in pixel_maps.values()])
    finite = np.isfinite(stacked)
    if not finite.any():
        return {t: np.asarray(m, dtype=np.float64) for t, m in pixel_maps.items()}
    low, high = stacked[finite].min(), stacked[finite].max()
    scale = high - low if high > low else 1.0
    return {t: (np.asarray(m, dtype=np.float64) - low) / scale for t, m in pixel_maps.items()}


def peak_on(pixel_map: np.ndarray, masks: dict[str, np.ndarray], grow: float = 0.0) -> str | None:
    """The name of the first of ``masks`` (in their order) that holds the map's brightest pixel, each
    mask grown by ``grow`` pixels; None when none does, or when the map is flat or has no finite
    value (a map with one value everywhere points nowhere). ``pointing_hit``'s rule, over named masks:
    which object (or cue, or region) an explanation points at."""
    pixel_map = np.asarray(pixel_map, dtype=np.float64)
    finite = pixel_map[np.isfinite(pixel_map)]
    if finite.size == 0 or finite.max() == finite.min():
        return None
    y, x = np.unravel_index(np.nanargmax(pixel_map), pixel_map.shape)
    for name, mask in masks.items():
        mask = _check_mask(mask, pixel_map.shape)
        if mask[y, x]:
            return name
        if grow > 0:
            from scipy.ndimage import distance_transform_edt

            if distance_transform_edt(~mask)[y, x] <= grow:
                return name
    return None
