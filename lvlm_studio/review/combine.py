"""One consistency score from many signals: a logistic regression that is monotone in every signal.

Each signal is first put on a scale where larger means "more trustworthy" (``feature``: clipped to
a plausible range, log for probabilities, the sign flipped for signals where less is better, such
as entropy), then standardised with the calibration split's mean and standard deviation. The
consistency is ``sigmoid(bias + sum w_s x_s)``, fitted by L2-regularised logistic regression
(Newton's method; NumPy only) on the calibration split with both classes weighted equally, so the
score reads as "how likely is this a grounded answer rather than a failure, at even odds".

Every weight is kept >= 0: a signal whose fitted weight comes out negative (it only helps through
its correlation with others) is dropped and the rest refitted, until none is negative; a signal
left with weight 0 (one that is constant on the calibration split) is dropped too. A grounded
answer then never loses consistency because one of its signals got better, and every reason
given to a reviewer points the way the signal does.

``auroc`` and ``bootstrap_auroc`` measure how well a score separates two groups (the probability
that a random grounded answer scores above a random failure, ties counting half).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lvlm_studio.core.errors import InputError


@dataclass(frozen=True)
class Signal:
    """How one signal is read: its direction (+1: larger is more trustworthy), the range it is
    clipped to, whether it is a probability (taken as a log), what it measures, and the reason a
    reviewer reads when it fails."""

    direction: int
    low: float
    high: float
    log: bool
    meaning: str
    reason: str


#: Every signal ``assess`` measures, in the order they are shown. docs/REVIEW.md explains each.
SIGNALS: dict[str, Signal] = {
    "probability": Signal(+1, 1e-6, 1.0, True, "probability of the answer's key words (their product)",
                          "the model is unsure of its answer (probability {value:.2f})"),
    "entropy": Signal(-1, 0.0, 5.0, False, "largest entropy of the next-word distribution at a key word (nats)",
                      "the model is less sure of its words than grounded answers are ({value:.2g} nats of "
                      "uncertainty)"),
    "llr": Signal(+1, -5.0, 15.0, False, "mean visual relevance of the key words: log p(image) - log p(blurred "
                  "image), nats", "the answer hardly depends on the image: with the image blurred the model "
                                  "says much the same (visual relevance {value:.2f} nats)"),
    "relevance_odds": Signal(+1, -5.0, 30.0, False, "fall of the key words' log-odds when the image is blurred "
                             "away (the LLR's comparison on the log-odds scale), nats",
                             "blurring the image away hardly changes the answer ({value:.2f} nats)"),
    "rank_agreement": Signal(+1, -1.0, 1.0, False, "mean Spearman correlation between the methods' maps",
                             "the methods disagree on where the evidence is (rank correlation {value:.2f})"),
    "region_overlap": Signal(+1, 0.0, 1.0, False, "mean overlap of the methods' critical regions (top tenth)",
                             "the methods' critical regions hardly overlap ({value:.0%})"),
    "on_image": Signal(+1, 0.0, 1.0, False, "share of the maps on the image itself rather than its padding",
                       "much of the evidence lies on the padding around the image ({value:.0%} on the image)"),
    "mask_drop": Signal(+1, -2.0, 20.0, False, "fall of the key words' log-odds when the critical region is hidden",
                        "hiding the critical region hardly changes the answer ({value:.2f} nats)"),
    "keep_drop": Signal(-1, -2.0, 20.0, False, "fall of the key words' log-odds when all but the critical region "
                        "is hidden", "the critical region alone does not support the answer ({value:.2f} nats lost)"),
    "blur_change": Signal(-1, 0.0, 20.0, False, "change of the key words' log-odds, either way, under a slight blur",
                          "a slight blur changes the answer ({value:.2f} nats)"),
    "answer_seen": Signal(+1, 1e-6, 1.0, True, "how clearly the image shows the key words: the best logit-lens "
                          "probability of each at an image position (the weakest key word)",
                          "the image does not seem to show what the answer names (logit lens {value:.2g})"),
    "subject_seen": Signal(+1, 1e-6, 1.0, True, "how clearly the image shows what the question asks about "
                           "(the answer's words taken from the question, all at one place), by the logit lens",
                           "what the question asks about does not seem to be in the image (logit lens {value:.2g})"),
    "subject_overlap": Signal(+1, 0.0, 1.0, False, "how strongly the question's subject is seen inside the "
                              "critical region, against where it is seen best",
                              "the evidence is not where the question's subject is ({value:.0%})"),
}


def feature(name: str, value: float) -> float:
    """``value`` of signal ``name`` on the oriented scale (larger: more trustworthy); NaN stays NaN."""
    spec = SIGNALS[name]
    if value is None or not math.isfinite(value):
        return math.nan
    clipped = min(max(float(value), spec.low), spec.high)
    return spec.direction * (math.log(clipped) if spec.log else clipped)


def features(rows: Sequence[Mapping[str, float]], names: Sequence[str]) -> np.ndarray:
    """An (n, len(names)) array of oriented features (NaN where a signal was not measured)."""
    return np.array([[feature(n, row.get(n, math.nan)) for n in names] for row in rows], dtype=np.float64)


def sigmoid(z: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


@dataclass
class Combiner:
    """The fitted combination: ``consistency = sigmoid(bias + weights . (x - center) / scale)``
    over the oriented features of ``names``. ``neutral`` fills a signal that does not apply to an
    answer (a caption has no subject): its calibration mean over grounded answers, on the raw scale."""

    names: tuple[str, ...]
    center: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    neutral: dict[str, float]

    def consistency(self, signals: Mapping[str, float]) -> float:
        x = self._standardised(signals)
        return float(sigmoid(self.bias + float(self.weights @ x)))

    def contributions(self, signals: Mapping[str, float]) -> dict[str, float]:
        """Each signal's share of the logit (positive: it argues for acceptance)."""
        x = self._standardised(signals)
        return {n: float(w * v) for n, w, v in zip(self.names, self.weights, x)}

    def _standardised(self, signals: Mapping[str, float]) -> np.ndarray:
        values = []
        for name in self.names:
            value = feature(name, signals.get(name, math.nan))
            if not math.isfinite(value):
                value = feature(name, self.neutral.get(name, math.nan))
            values.append(value)
        x = (np.array(values, dtype=np.float64) - self.center) / self.scale
        return np.where(np.isfinite(x), x, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"signals": list(self.names), "center": _named(self.names, self.center),
                "scale": _named(self.names, self.scale), "weights": _named(self.names, self.weights),
                "bias": float(self.bias), "neutral": {k: float(v) for k, v in self.neutral.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Combiner:
        try:
            names = tuple(str(n) for n in data["signals"])
            unknown = [n for n in names if n not in SIGNALS]
            if unknown:
                raise ValueError(f"unknown signal {unknown[0]!r}")
            center = np.array([float(data["center"][n]) for n in names])
            scale = np.array([float(data["scale"][n]) for n in names])
            weights = np.array([float(data["weights"][n]) for n in names])
            bias = float(data["bias"])
            neutral = {str(k): float(v) for k, v in dict(data.get("neutral", {})).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the review calibration is damaged ({type(exc).__name__}: {exc}).",
                             "Rerun `python -m lvlm_studio.review.calibrate` or reinstall LVLM Studio.") from None
        if not (np.isfinite(center).all() and np.isfinite(weights).all() and (scale > 0).all()
                and math.isfinite(bias)):
            raise InputError("the review calibration holds numbers that are not finite.",
                             "Rerun `python -m lvlm_studio.review.calibrate` or reinstall LVLM Studio.")
        return cls(names, center, scale, weights, bias, neutral)


def _named(names: Sequence[str], values: np.ndarray) -> dict[str, float]:
    return {n: float(v) for n, v in zip(names, values)}


def fit(rows: Sequence[Mapping[str, float]], grounded: Sequence[bool], names: Sequence[str],
        l2: float = 1.0) -> Combiner:
    """Fit the combination on signal rows labelled grounded (True) or failure (False).

    Both classes weigh the same in total. Signals with a negative weight are dropped one at a time
    (the most negative first) and the rest refitted, so the result is monotone in every signal.
    """
    labels = np.asarray(grounded, dtype=bool)
    if labels.all() or not labels.any():
        raise InputError("fitting the consistency score needs grounded answers and failures.",
                         "Give calibration cases of both kinds.")
    raw = features(rows, names)
    neutral = {}
    for j, name in enumerate(names):  # a signal that does not apply takes the grounded answers' mean
        column = np.array([row.get(name, math.nan) for row, ok in zip(rows, labels) if ok], dtype=np.float64)
        column = column[np.isfinite(column)]
        neutral[name] = float(column.mean()) if column.size else math.nan
        fill = feature(name, neutral[name])
        raw[:, j] = np.where(np.isfinite(raw[:, j]), raw[:, j], fill if math.isfinite(fill) else 0.0)
    center = raw.mean(axis=0)
    scale = raw.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    x = (raw - center) / scale
    sample = np.where(labels, 0.5 / labels.sum(), 0.5 / (~labels).sum()) * len(labels)
    kept = list(range(len(names)))
    while True:
        weights, bias = _logistic(x[:, kept], labels.astype(np.float64), sample, l2)
        if kept and weights.min() < 0:
            kept.pop(int(np.argmin(weights)))
            continue
        break
    useful = [i for i, w in enumerate(weights) if w > 1e-9]  # a constant signal gets weight 0: it says nothing
    kept, weights = [kept[i] for i in useful], weights[useful]
    chosen = [names[j] for j in kept]
    return Combiner(tuple(chosen), center[kept], scale[kept], weights, float(bias),
                    {n: neutral[n] for n in chosen if math.isfinite(neutral[n])})


def _logistic(x: np.ndarray, y: np.ndarray, sample: np.ndarray, l2: float,
              iterations: int = 100) -> tuple[np.ndarray, float]:
    """Weighted logistic regression with an L2 penalty on the weights (not the bias), by Newton's method."""
    n, d = x.shape
    design = np.hstack([np.ones((n, 1)), x])
    beta = np.zeros(d + 1)
    penalty = np.full(d + 1, l2)
    penalty[0] = 0.0
    for _ in range(iterations):
        p = sigmoid(design @ beta)
        gradient = design.T @ (sample * (p - y)) + penalty * beta
        hessian = (design * (sample * p * (1 - p))[:, None]).T @ design + np.diag(penalty) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta[1:], float(beta[0])


def auroc(grounded: Sequence[float], failures: Sequence[float]) -> float:
    """Probability that a grounded answer scores above a failure (ties count half): Mann-Whitney U / (n m)."""
    from scipy.stats import rankdata

    a = np.asarray(grounded, dtype=np.float64)
    b = np.asarray(failures, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        return math.nan
    ranks = rankdata(np.concatenate([a, b]))
    return float((ranks[: a.size].sum() - a.size * (a.size + 1) / 2) / (a.size * b.size))


def bootstrap_auroc(grounded: Sequence[float], failures: Sequence[float], n: int = 1000,
                    seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """The AUROC and its percentile bootstrap interval (each group resampled on its own)."""
    a = np.asarray(grounded, dtype=np.float64)
    b = np.asarray(failures, dtype=np.float64)
    value = auroc(a, b)
    if a.size == 0 or b.size == 0:
        return value, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = [auroc(a[rng.integers(0, a.size, a.size)], b[rng.integers(0, b.size, b.size)]) for _ in range(n)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return value, float(low), float(high)
