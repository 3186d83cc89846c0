"""Grounding assessment: is this answer grounded in the image well enough to accept, or should a person look?

``assess`` answers a question about an image, then measures the signals of ``combine.SIGNALS`` for
the answer's *key words* and combines them into a consistency score in [0, 1]:

* **Key words**: the content words the answer adds to the question ("red" in "the circle is red"
  after "what color is the circle?"); when it adds none (an exist answer "the red square is
  there"), the answer's least probable word, where the model decided. At most ``max_key_tokens``
  of them, the least probable first. The answer's content words taken *from* the question
  ("circle") are its **subject**.
* **The model's own signals**: the probability of the key words (their product), the entropy of
  the next-word distribution at them, their visual relevance (LLR against the blurred image,
  ``core.tracing.relevance``).
* **Where the evidence is**: each method of ``settings.methods`` maps every key word; per word,
  every pair of methods is compared by Spearman's rank correlation and by the overlap of their
  critical regions (their top tenth of cells), over the grid cells that show the image. The share
  of each map's mass on those cells, rather than on the padding a processor adds, is ``on_image``.
* **Critical region**: the methods' maps, normalised and averaged (the consensus), above both its
  Otsu threshold and its ``critical_quantile``; ``regions`` are its contours in image pixels.
* **Stability**: the fall of the key words' log-odds when the critical region is hidden (replaced
  by the blurred image; a grounded answer should fall), when everything but the critical region is
  hidden (it should not), and their change either way under a slight blur (a grounded answer
  hardly moves); and their fall when the whole image is blurred away, the LLR's comparison in
  log-odds, which still moves where the model is so sure that log p does not. One batch of five
  images.
* **Logit lens** at the image positions (as TAM reads them): the best probability of each key word
  and of the subject (all its words at one position) at any image position (is what the answer
  names visible at all?), and how strongly the subject is seen inside the critical region (is the
  evidence where the subject is?). An answer that says something is not there has no subject.

One rule holds whatever the calibration: an answer that keeps its probability exactly when the
image is blurred away, when its critical region is hidden and under a slight blur is deferred (the
image made no difference to it), as is an empty answer or one no method could explain.

The combination and every threshold come from the shipped ``calibration.json`` (``calibrate``),
fitted on the demo world; docs/REVIEW.md reports how well they separate grounded answers from
failures on a held-out split, and why each method and signal was chosen.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import ImageFilter

from lvlm_studio.core.errors import Cancelled, InputError, LVLMError
from lvlm_studio.core.plugin.jobs import Job, Progress, relay
from lvlm_studio.review.combine import SIGNALS, Combiner, feature

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.plugin.explanation import Explanation
    from lvlm_studio.core.tracing.trace import Trace

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
CALIBRATION_FORMAT = "lvlm-studio-review-calibration/1"
TOP_FRACTION = 0.1  # a method's critical region: this share of the grid cells that show the image
CONFIDENCE = ("high", "medium", "low")
DECISIONS = ("accept", "defer")


# -- settings -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _read_calibration(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"the review calibration {path} is missing.",
                         "Run `python -m lvlm_studio.review.calibrate` or reinstall LVLM Studio.") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"the review calibration {path} cannot be read ({type(exc).__name__}).",
                         "Run `python -m lvlm_studio.review.calibrate` or reinstall LVLM Studio.") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise InputError(f"{path} is not a review calibration of this version ({CALIBRATION_FORMAT}).",
                         "Run `python -m lvlm_studio.review.calibrate` to write one.")
    return data


def shipped_calibration() -> dict[str, Any]:
    """The calibration that ships with LVLM Studio (``review/calibration.json``), read once."""
    return _read_calibration(str(CALIBRATION_FILE))


def _shipped(key: str, convert: Any = float) -> Any:
    return lambda: convert(shipped_calibration()[key])


@dataclass
class ReviewSettings:
    """What an assessment uses: the methods, the thresholds on the consistency score (defer below
    ``threshold_defer``; high confidence from ``threshold_high``), the fitted combination, each
    signal's cutoff (a reason is given when a signal is worse than it) and the measurement's
    sizes. Every default comes from the shipped calibration; ``from_file`` reads another."""

    methods: tuple[str, ...] = field(default_factory=_shipped("methods", tuple))
    threshold_defer: float = field(default_factory=_shipped("threshold_defer"))
    threshold_high: float = field(default_factory=_shipped("threshold_high"))
    combiner: Combiner = field(default_factory=lambda: Combiner.from_dict(shipped_calibration()["combiner"]))
    cutoffs: dict[str, float] = field(default_factory=_shipped("cutoffs", dict))
    max_key_tokens: int = field(default_factory=_shipped("max_key_tokens", int))
    critical_quantile: float = field(default_factory=_shipped("critical_quantile"))
    mild_blur: float = field(default_factory=_shipped("mild_blur"))  # sigma, as a fraction of the longer side
    calibration: str = field(default_factory=_shipped("description", str))

    def __post_init__(self) -> None:
        self.methods = tuple(self.methods)
        if not self.methods:
            raise InputError("no explanation method is chosen for the review.", "Choose at least two methods.")
        for name, value in (("threshold_defer", self.threshold_defer), ("threshold_high", self.threshold_high)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise InputError(f"the review's {name} is {value!r}; it must be a number from 0 to 1.",
                                 "The calibrated defaults are in lvlm_studio/review/calibration.json.")
        if self.threshold_high < self.threshold_defer:
            raise InputError(f"the review's threshold for high confidence ({self.threshold_high:.2f}) is below "
                             f"the threshold to defer ({self.threshold_defer:.2f}).", "Raise it or lower the other.")

    @classmethod
    def from_file(cls, path: str | Path) -> ReviewSettings:
        """Settings from a calibration file written by ``calibrate``."""
        data = _read_calibration(str(Path(path)))
        try:
            return cls(methods=tuple(data["methods"]), threshold_defer=float(data["threshold_defer"]),
                       threshold_high=float(data["threshold_high"]), combiner=Combiner.from_dict(data["combiner"]),
                       cutoffs={str(k): float(v) for k, v in data["cutoffs"].items()},
                       max_key_tokens=int(data["max_key_tokens"]), critical_quantile=float(data["critical_quantile"]),
                       mild_blur=float(data["mild_blur"]), calibration=str(data.get("description", path)))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"the review calibration {path} is damaged ({type(exc).__name__}: {exc}).",
                             "Rerun `python -m lvlm_studio.review.calibrate`.") from None

    def thresholds(self) -> dict[str, float]:
        """Every threshold the verdict was held to: "defer" and "high" on the consistency score, and each
        signal's cutoff under the signal's name."""
        return {"defer": self.threshold_defer, "high": self.threshold_high,
                **{name: float(self.cutoffs[name]) for name in self.combiner.names if name in self.cutoffs}}


# -- the result -----------------------------------------------------------------------------------
@dataclass
class Assessment:
    """The verdict on one answer. ``probability`` is the product of the key words' probabilities.
    ``maps`` hold, per method, the mean of its normalised maps of the key words in image pixels
    (NaN where no image token covers a pixel); ``regions`` the critical region's contours as (N, 2)
    arrays of (row, col) image pixels."""

    question: str
    answer: str
    probability: float
    key_tokens: list[int]
    consistency: float
    confidence: str  # "high" | "medium" | "low"
    decision: str  # "accept" | "defer"
    reasons: list[str]
    signals: dict[str, float]
    maps: dict[str, np.ndarray]
    regions: list[np.ndarray]
    thresholds: dict[str, float]
    key_words: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # the methods whose maps were made
    critical_mask: np.ndarray | None = field(default=None, repr=False)
    model: dict[str, Any] = field(default_factory=dict)  # the trace's model description
    trace: Trace | None = field(default=None, repr=False)

    @property
    def deferred(self) -> bool:
        return self.decision == "defer"

    def verdict(self) -> str:
        """One line a reviewer reads first: "Defer to a human expert: <first reason>" or the confidence."""
        if self.deferred:
            return "Defer to a human expert" + (f": {self.reasons[0]}" if self.reasons else "")
        return f"{self.confidence.capitalize()} confidence: the answer is grounded in the image"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (no maps): the verdict, the signals (None where not measured) and the contours."""
        return {
            "question": self.question,
            "answer": self.answer,
            "probability": _finite(self.probability),
            "key_tokens": [int(t) for t in self.key_tokens],
            "key_words": list(self.key_words),
            "consistency": _finite(self.consistency),
            "confidence": self.confidence,
            "decision": self.decision,
            "verdict": self.verdict(),
            "reasons": list(self.reasons),
            "signals": {k: _finite(v) for k, v in self.signals.items()},
            "thresholds": {k: _finite(v) for k, v in self.thresholds.items()},
            "methods": list(self.methods),
            "regions": [np.round(np.asarray(r, dtype=np.float64), 1).tolist() for r in self.regions],
            "model": {k: v for k, v in self.model.items() if k != "source"},
        }


def _finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# -- the job --------------------------------------------------------------------------------------
def assess(loaded: LoadedModel, image: Any, question: str, settings: ReviewSettings | None = None,
           registry: Any = None) -> Job[Assessment]:
    """Answer ``question`` about ``image`` and assess the answer's grounding (a job: yields
    ``Progress``, returns the ``Assessment``)."""
    from lvlm_studio.core.tracing.trace import generate_trace

    settings = settings or ReviewSettings()
    total = steps(settings)
    yield Progress(0, total, "answering")
    trace = generate_trace(loaded, image, question)
    return (yield from relay(assess_trace(loaded, trace, settings, registry),
                             lambda p: Progress(p.done + 1, total, p.message)))


def steps(settings: ReviewSettings) -> int:
    """How many progress steps ``assess`` reports (answer, relevance, entropy, each method, stability)."""
    return len(settings.methods) + 4


def assess_trace(loaded: LoadedModel, trace: Trace, settings: ReviewSettings | None = None,
                 registry: Any = None) -> Job[Assessment]:
    """Assess an answer already given (a job)."""
    settings = settings or ReviewSettings()
    measured = yield from measure(loaded, trace, settings.methods, registry, settings.max_key_tokens,
                                  settings.critical_quantile, settings.mild_blur)
    return verdict(measured, settings)


@dataclass
class Measured:
    """Everything ``measure`` found, before the verdict: the signals and what they were read from."""

    trace: Trace
    key_tokens: list[int]
    subject_tokens: list[int]
    signals: dict[str, float]
    maps: dict[str, np.ndarray]
    critical_mask: np.ndarray | None
    regions: list[np.ndarray]
    problems: list[str]  # plain-words notes of what could not be measured (a method that failed)
    methods: list[str]
    grids: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)  # method -> per key word, normalised


def measure(loaded: LoadedModel, trace: Trace, methods: tuple[str, ...] | list[str], registry: Any = None,
            max_key_tokens: int = 6, critical_quantile: float = 0.8, mild_blur: float = 0.02) -> Job[Measured]:
    """Every signal of ``combine.SIGNALS`` for the trace's answer (a job, one step per forward pass
    or method); NaN for a signal that does not apply (no subject in a caption question)."""
    from lvlm_studio.core.tracing.relevance import visual_relevance
    from lvlm_studio.core.tracing.token_stats import answer_entropy

    total = len(methods) + 3
    keys = key_tokens(trace, max_key_tokens)
    subject = subject_tokens(trace)
    if not keys:
        yield Progress(total, total, "no answer")
        return Measured(trace, [], subject, {}, {}, None, [], [], [])
    signals: dict[str, float] = {}
    yield Progress(0, total, "visual relevance")
    relevance = visual_relevance(trace, loaded)
    probabilities = np.exp(np.asarray(trace.logprobs, dtype=np.float64))
    signals["probability"] = float(np.prod(probabilities[keys]))
    signals["llr"] = float(np.mean(relevance.llr[keys]))
    yield Progress(1, total, "entropy")
    signals["entropy"] = float(np.max(answer_entropy(trace, loaded)[keys]))

    explanations: dict[str, Explanation] = {}
    problems: list[str] = []
    if registry is None:
        from lvlm_studio.core.plugin.registry import create_registry

        registry = create_registry()
    for i, method in enumerate(methods):
        yield Progress(2 + i, total, method)
        try:
            explanations[method] = yield from relay(_explain(registry, method, trace, loaded, keys),
                                                    lambda p, i=i, m=method: Progress(2 + i, total, m))
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken method is reported; the others still count
            detail = exc.message if isinstance(exc, LVLMError) else f"{type(exc).__name__}: {exc}"
            problems.append(f"the method {method} could not explain the answer ({detail})")
    inside = image_cells(trace)
    grids = {m: [_normalised(e.maps[t]) for t in keys] for m, e in explanations.items()}
    signals.update(_agreement(grids, inside))
    maps = {m: _pixel_map(g, trace) for m, g in grids.items()}
    mask, regions = critical_region(maps, critical_quantile)
    consensus = _cell_consensus(grids)
    signals.update(_lens(loaded, trace, keys, subject, consensus, inside))

    yield Progress(2 + len(methods), total, "stability")
    if mask is not None:
        step = Progress(2 + len(methods), total, "stability")
        signals.update((yield from relay(_stability(loaded, trace, keys, mask, mild_blur), lambda p: step)))
    yield Progress(total, total, "done")
    return Measured(trace, keys, subject, signals, maps, mask, regions, problems, list(explanations), grids)


def verdict(measured: Measured, settings: ReviewSettings) -> Assessment:
    """Combine the measured signals into the consistency score, the confidence, the decision and its reasons."""
    trace = measured.trace
    combiner = settings.combiner
    signals = measured.signals
    reasons = list(measured.problems)
    if not measured.key_tokens or not measured.methods:
        consistency = 0.0
        reasons.append("no explanation method could show where the evidence is" if measured.key_tokens
                       else "the model gave no answer")
    else:
        consistency = combiner.consistency(signals)
        contributions = combiner.contributions(signals)
        failing = []
        for name in combiner.names:
            value = signals.get(name, math.nan)
            cutoff = settings.cutoffs.get(name)
            if cutoff is None or not math.isfinite(value):
                continue
            if feature(name, value) < feature(name, cutoff):
                failing.append((contributions.get(name, 0.0), SIGNALS[name].reason.format(value=value)))
        reasons += [text for _, text in sorted(failing, key=lambda item: item[0])]
        if len(measured.methods) < 2:
            reasons.append("only one method could explain the answer, so the methods' agreement was not checked")
    blind = _image_made_no_difference(signals)
    if blind:  # whatever the calibration says: nothing of the image was read
        consistency = 0.0
        reasons.insert(0, "the answer does not change at all when the image is blurred away or its critical region "
                          "is hidden: it does not come from the image")
    if consistency < settings.threshold_defer or blind:
        confidence, decision = "low", "defer"
        if not reasons:
            reasons.append(f"the signals are weak together (consistency {consistency:.2f}, "
                           f"below {settings.threshold_defer:.2f})")
    else:
        confidence = "high" if consistency >= settings.threshold_high else "medium"
        decision = "accept"
    words = [trace.answer_tokens[t].strip() for t in measured.key_tokens]
    probability = signals.get("probability", 0.0 if not measured.key_tokens else math.nan)
    return Assessment(
        question=trace.prompt, answer=trace.answer_text, probability=float(probability),
        key_tokens=list(measured.key_tokens), consistency=float(consistency), confidence=confidence,
        decision=decision, reasons=reasons, signals=dict(signals), maps=measured.maps, regions=measured.regions,
        thresholds=settings.thresholds(), key_words=words, methods=list(measured.methods),
        critical_mask=measured.critical_mask, model=dict(trace.model_info), trace=trace,
    )


NO_DIFFERENCE = 0.01  # nats: below this, blurring the image or hiding its critical region changed nothing


def consistency_of(signals: dict[str, float], combiner: Combiner) -> float:
    """The consistency score of measured signals: the combination's, or 0 when the image made no
    difference to the answer (the rule that holds whatever the calibration)."""
    return 0.0 if _image_made_no_difference(signals) else combiner.consistency(signals)


def _image_made_no_difference(signals: dict[str, float]) -> bool:
    """A rule that holds whatever the calibration: an answer whose key words keep their probability
    exactly when the image is blurred away (LLR), when the critical region is hidden and under a
    slight blur was not read from the image (a blank picture, an answer from the prompt alone)."""
    values = [signals.get(name, math.nan) for name in ("llr", "relevance_odds", "mask_drop", "blur_change")]
    return all(math.isfinite(v) for v in values) and all(abs(v) < NO_DIFFERENCE for v in values)


# -- key words ------------------------------------------------------------------------------------
def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^\w]+", text.lower()) if w}


def key_tokens(trace: Trace, limit: int = 6) -> list[int]:
    """The answer tokens whose evidence is assessed (see the module docstring), in answer order."""
    from lvlm_studio.core.tracing.relevance import is_content_token

    asked = _words(trace.prompt)
    tokens = trace.answer_tokens
    chosen = [i for i, t in enumerate(tokens) if is_content_token(t) and t.strip().lower() not in asked]
    if not chosen:  # the answer adds no content word: where the model decided, its least probable word
        words = [i for i, t in enumerate(tokens) if any(c.isalnum() for c in t)] or list(range(len(tokens)))
        chosen = [min(words, key=lambda i: trace.logprobs[i])] if words else []
    chosen = sorted(chosen, key=lambda i: trace.logprobs[i])[:max(1, limit)]
    return sorted(chosen)


def subject_tokens(trace: Trace) -> list[int]:
    """The answer's content tokens taken from the question: what the question asks about."""
    from lvlm_studio.core.tracing.relevance import is_content_token

    asked = _words(trace.prompt)
    return [i for i, t in enumerate(trace.answer_tokens) if is_content_token(t) and t.strip().lower() in asked]


# -- maps -----------------------------------------------------------------------------------------
def _explain(registry: Any, method: str, trace: Trace, loaded: LoadedModel, targets: list[int]) -> Job[Explanation]:
    from lvlm_studio.core.plugin.checks import blamed_on, check_explanation
    from lvlm_studio.core.plugin.contracts import require_applicable

    explainer = registry.explainer(method)
    params = explainer.resolve_params({})
    require_applicable(explainer, loaded, params)
    with blamed_on(explainer):
        explanation = yield from relay(explainer.explain(trace, loaded, targets, params), lambda p: p)
    return check_explanation(explanation, trace, targets, explainer)


def _normalised(grids: list[np.ndarray]) -> list[np.ndarray]:
    """One token's region maps min-max normalised together to [0, 1] (a constant map becomes zeros)."""
    values = np.concatenate([np.asarray(g, dtype=np.float64).ravel() for g in grids])
    finite = values[np.isfinite(values)]
    low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    out = []
    for g in grids:
        g = np.asarray(g, dtype=np.float64)
        scaled = (g - low) / (high - low) if high > low else np.zeros_like(g)
        out.append(np.where(np.isfinite(scaled), scaled, 0.0))
    return out


def image_cells(trace: Trace) -> np.ndarray:
    """Per grid cell (all regions, flattened in order): whether its centre falls on the image
    itself rather than on padding or another image."""
    width, height = trace.image.size
    inside = []
    for region in trace.regions:
        rows, cols = region.grid
        left, top, right, bottom = region.box
        cy = top + (np.arange(rows) + 0.5) * (bottom - top) / rows
        cx = left + (np.arange(cols) + 0.5) * (right - left) / cols
        within = (cy[:, None] >= 0) & (cy[:, None] < height) & (cx[None, :] >= 0) & (cx[None, :] < width)
        inside.append(within.ravel() & (region.image_index == 0))
    flat = np.concatenate(inside) if inside else np.zeros(0, bool)
    return flat if flat.any() else np.ones_like(flat)


def _flat(grids: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([g.ravel() for g in grids])


def _agreement(grids: dict[str, list[list[np.ndarray]]], inside: np.ndarray) -> dict[str, float]:
    """Rank correlation and critical-region overlap of every pair of methods (mean over pairs and
    key words, on the cells that show the image), and the maps' share on those cells."""
    methods = list(grids)
    out: dict[str, float] = {}
    shares = []
    for per_token in grids.values():
        for token_grids in per_token:
            values = _flat(token_grids)
            total = values.sum()
            if total > 0:
                shares.append(values[inside].sum() / total)
    out["on_image"] = float(np.mean(shares)) if shares else math.nan
    if len(methods) < 2:
        return {**out, "rank_agreement": math.nan, "region_overlap": math.nan}
    k = max(1, round(TOP_FRACTION * int(inside.sum())))
    rhos, overlaps = [], []
    tokens = len(next(iter(grids.values())))
    for t in range(tokens):
        for i, a in enumerate(methods):
            for b in methods[i + 1:]:
                rho, overlap = pair_agreement(_flat(grids[a][t])[inside], _flat(grids[b][t])[inside], k)
                rhos.append(rho)
                overlaps.append(overlap)
    out["rank_agreement"] = float(np.mean(rhos))
    out["region_overlap"] = float(np.mean(overlaps))
    return out


def pair_agreement(a: np.ndarray, b: np.ndarray, k: int) -> tuple[float, float]:
    """Spearman's rho and the top-``k`` overlap of two maps' cells (``core.metrics.agreement``); a map
    that is the same everywhere shows no evidence, so it agrees with nothing (0, 0)."""
    from lvlm_studio.core.metrics.agreement import rank_correlation, top_k_overlap

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0, 0.0
    rho = rank_correlation(a, b)
    return (rho if math.isfinite(rho) else 0.0), top_k_overlap(a, b, k)


def _pixel_map(per_token: list[list[np.ndarray]], trace: Trace) -> np.ndarray:
    """The mean of a method's normalised key-word maps, in image pixels."""
    from lvlm_studio.core.plugin.explanation import to_pixels

    stack = [to_pixels(g, trace.regions, trace.image.size) for g in per_token]
    with np.errstate(invalid="ignore"):
        return np.mean(stack, axis=0)


def _cell_consensus(grids: dict[str, list[list[np.ndarray]]]) -> np.ndarray | None:
    """Per grid cell: the mean over methods and key words of the normalised maps."""
    if not grids:
        return None
    return np.mean([_flat(g) for per_token in grids.values() for g in per_token], axis=0)


def critical_region(maps: dict[str, np.ndarray], quantile: float = 0.8) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """The pixels where the methods' consensus (the mean of their maps, normalised) exceeds both its
    Otsu threshold and its ``quantile``, and the region's contours (skimage ``find_contours``,
    (row, col) image pixels). None and no contours when there is no map."""
    from skimage.measure import find_contours

    from lvlm_studio.core.metrics.plausibility import otsu_threshold

    if not maps:
        return None, []
    stack = np.stack([np.asarray(m, dtype=np.float64) for m in maps.values()])
    counts = np.isfinite(stack).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        consensus = np.where(counts > 0, np.nansum(stack, axis=0) / counts, np.nan)
    finite = np.isfinite(consensus)
    if not finite.any():
        return None, []
    values = consensus[finite]
    level = max(otsu_threshold(values), float(np.quantile(values, quantile)))
    mask = finite & (consensus >= level)
    if not mask.any() or mask.all():  # a constant map: its brightest pixel (the first) alone
        mask = np.zeros_like(finite)
        mask[np.unravel_index(np.argmax(np.where(finite, consensus, -np.inf)), consensus.shape)] = True
    padded = np.pad(mask.astype(np.float64), 1)  # closed contours also where the region meets the border
    limit = np.array(mask.shape, dtype=np.float64) - 1
    contours = [np.clip(c - 1.0, 0.0, limit) for c in find_contours(padded, 0.5)]
    return mask, contours


# -- logit lens -----------------------------------------------------------------------------------
def _lens(loaded: LoadedModel, trace: Trace, keys: list[int], subject: list[int],
          consensus: np.ndarray | None, inside: np.ndarray) -> dict[str, float]:
    """``answer_seen``, ``subject_seen`` and ``subject_overlap`` (module docstring) from the trace's
    cached last-layer states at the image positions; NaN where they do not apply.

    The subject is seen where *all* its words are (a "red circle" where one position reads both
    "red" and "circle", not a red square and a blue circle): per position, the least probable of
    its words. An answer that says something is not there has no subject to find."""
    out = {"answer_seen": math.nan, "subject_seen": math.nan, "subject_overlap": math.nan}
    if loaded.adapter.image_entry != "tokens" or len(trace.image_positions) == 0:
        return out
    ids = trace.answer_ids
    wanted = np.unique(np.concatenate([ids[keys], ids[subject]]).astype(np.int64))
    probs = _lens_probabilities(loaded, trace, wanted)  # [image positions, wanted]
    if inside.shape[0] != probs.shape[0]:
        inside = np.ones(probs.shape[0], dtype=bool)
    column = {int(k): j for j, k in enumerate(wanted)}
    out["answer_seen"] = float(min(probs[inside, column[int(ids[t])]].max() for t in keys))
    if subject and not _negated(trace):
        joint = np.min([probs[:, column[int(ids[t])]] for t in subject], axis=0)
        best = float(joint[inside].max())
        out["subject_seen"] = best
        if consensus is not None and consensus.shape == joint.shape:
            k = max(1, round(TOP_FRACTION * int(inside.sum())))
            cells = np.flatnonzero(inside)
            critical = cells[np.argsort(-consensus[cells], kind="stable")[:k]]
            out["subject_overlap"] = float(joint[critical].mean() / best) if best > 0 else 0.0
    return out


NEGATIONS = frozenset({"not", "no", "none", "nothing", "nobody", "never", "neither", "nor", "without"})


def _negated(trace: Trace) -> bool:
    """Whether the answer says that something is not there ("the red square is not there")."""
    words = _words(trace.answer_text)
    return bool(words & NEGATIONS) or "n't" in trace.answer_text.lower()


def _lens_probabilities(loaded: LoadedModel, trace: Trace, ids: np.ndarray, chunk: int = 256) -> np.ndarray:
    """softmax(W h) of the given vocabulary ids at every image position (h: the cached normed states)."""
    import torch

    weight = loaded.adapter.lm_head_weight().float().cpu()
    hidden = torch.as_tensor(trace.hidden[trace.image_positions], dtype=torch.float32)
    rows = []
    for start in range(0, hidden.shape[0], chunk):
        logits = hidden[start:start + chunk] @ weight.T
        rows.append((logits[:, torch.as_tensor(ids)] - torch.logsumexp(logits, dim=-1, keepdim=True)).exp())
    return torch.cat(rows).numpy().astype(np.float64)


# -- stability ------------------------------------------------------------------------------------
def _stability(loaded: LoadedModel, trace: Trace, keys: list[int], mask: np.ndarray,
               mild_blur: float) -> Job[dict[str, float]]:
    """Falls of the key words' log-odds (nats, mean over key words) with the critical region hidden,
    with all but it hidden and with the whole image blurred away, and their change either way under
    a slight blur: one batch of five images (the first unaltered)."""
    from lvlm_studio.core.perturbation.perturb import blend, score_images
    from lvlm_studio.core.tracing.relevance import blurred_baseline

    image = trace.image
    baseline = blurred_baseline(image)
    keep = mask.astype(np.float32)
    images = [image, blend(image, baseline, 1.0 - keep), blend(image, baseline, keep),
              image.filter(ImageFilter.GaussianBlur(mild_blur * max(image.size))), baseline]
    scores = yield from score_images(loaded, trace, images, log_odds=True, upto=max(keys) + 1, what="stability")
    falls = scores[0][None, keys] - scores[1:][:, keys]
    return {"mask_drop": float(np.mean(falls[0])), "keep_drop": float(np.mean(falls[1])),
            "blur_change": float(np.mean(np.abs(falls[2]))), "relevance_odds": float(np.mean(falls[3]))}

