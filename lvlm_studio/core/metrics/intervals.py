"""Confidence intervals for the numbers studies and benchmarks report."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

#: Resamples of ``bootstrap_interval``: enough for stable 95% percentile bounds of a mean.
BOOTSTRAP_RESAMPLES = 2000


def bootstrap_interval(values: Iterable[float], statistic: Callable[..., np.ndarray] = np.mean, level: float = 0.95,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` over ``values`` (non-finite values are dropped).

    ``statistic`` takes an array and ``axis=`` (``np.mean``, ``np.median``). Resampling is seeded, so
    the same values give the same interval. No value gives (NaN, NaN); one value gives (it, it).
    """
    data = np.asarray([float(v) for v in values], dtype=np.float64)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return (float("nan"), float("nan"))
    if data.size == 1:
        return (float(data[0]), float(data[0]))
    rng = np.random.default_rng(seed)
    drawn = data[rng.integers(0, data.size, size=(resamples, data.size))]
    stats = np.asarray(statistic(drawn, axis=1), dtype=np.float64)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(stats, [tail, 100.0 - tail])
    return (float(low), float(high))
