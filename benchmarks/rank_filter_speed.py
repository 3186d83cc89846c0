"""Speed of the vectorised rank Gaussian filter (TAM's denoiser) against a per-pixel loop.

The reference states the filter as METHODS.md does, one 3x3 window at a time with NumPy calls
per window, as the public TAM code runs it; the vectorised ``rank_gaussian_filter`` must give the
same numbers, much faster. A second loop on plain Python floats (no per-call NumPy overhead) is
timed too, as a stricter baseline. All run on the same random 24 x 24 map (LLaVA-1.5's grid),
each timed as the best of several repeats.

Target: speedup >= 100x over the NumPy-per-window loop, max abs difference <= 1e-9.

    python benchmarks/rank_filter_speed.py
"""

from __future__ import annotations

import math
import sys
import timeit

import numpy as np

from lvlm_explainers.tam import rank_gaussian_filter, rank_gaussian_filter_loop

TARGET_SPEEDUP = 100.0
TOLERANCE = 1e-9
GRID = (24, 24)


def pure_python_reference(grid: np.ndarray) -> np.ndarray:
    """The same loop on Python floats (no NumPy call per cell): a faster, stricter baseline."""
    padded = np.pad(grid, 1, mode="reflect").tolist()
    out = np.zeros(grid.shape)
    for y in range(grid.shape[0]):
        for x in range(grid.shape[1]):
            window = sorted(v for row in padded[y : y + 3] for v in row[x : x + 3])
            mean = sum(window) / 9
            if mean <= 0:
                continue
            spread = (sum((v - mean) ** 2 for v in window) / 9) ** 0.5 / mean
            if spread == 0:
                out[y, x] = window[4]
                continue
            weights = [math.exp(-(a * a) / (2 * spread * spread)) for a in range(-4, 5)]
            out[y, x] = sum(v * w for v, w in zip(window, weights)) / sum(weights)
    return out


def best_time(function, grid: np.ndarray, repeats: int) -> float:
    runs = max(1, int(0.2 / max(timeit.timeit(lambda: function(grid), number=1), 1e-6)))
    return min(timeit.repeat(lambda: function(grid), number=runs, repeat=repeats)) / runs


def main() -> int:
    grid = np.maximum(np.random.default_rng(0).normal(0.3, 0.5, size=GRID), 0.0)
    fast_map = rank_gaussian_filter(grid)
    difference = float(np.abs(fast_map - rank_gaussian_filter_loop(grid)).max())
    python_difference = float(np.abs(fast_map - pure_python_reference(grid)).max())
    loop = best_time(rank_gaussian_filter_loop, grid, repeats=5)
    python_loop = best_time(pure_python_reference, grid, repeats=5)
    fast = best_time(rank_gaussian_filter, grid, repeats=5)
    speedup = loop / fast
    print(f"{GRID[0]}x{GRID[1]} map: vectorised {fast * 1e3:.3f} ms")
    print(f"per-pixel loop (NumPy per window): {loop * 1e3:7.2f} ms, speedup {speedup:6.0f}x "
          f"(target >= {TARGET_SPEEDUP:.0f}x), max abs difference {difference:.1e}")
    print(f"per-pixel loop (plain floats):     {python_loop * 1e3:7.2f} ms, speedup {python_loop / fast:6.0f}x, "
          f"max abs difference {python_difference:.1e}")
    met = speedup >= TARGET_SPEEDUP and difference <= TOLERANCE
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
