"""Agreement between two methods' maps for the same token, and when to defer to a human.

Two methods that both explain the model should broadly agree on where the evidence is. When they
do not, neither map can be trusted on its own and the grounding should be checked by a person:
``agreement`` says so with its ``inconsistent`` flag.

* Rank correlation: Spearman's rho of the two maps' values over every grid cell (all regions
  concatenated). Maps on different grids are compared in image pixels instead (``to_pixels``).
* Top-k overlap: the share of the k most salient cells of one map that are also among the k most
  salient of the other (ties keep reading order). k defaults to a tenth of the cells.
* The flag: inconsistent when rho < ``MIN_RANK_CORRELATION`` (0.3) or the top-k overlap is below
  ``MIN_TOP_K_OVERLAP`` (0.3). Two unrelated maps score rho ~ 0 and an overlap of about k / n
  (0.1 with the default k), so both thresholds sit well above chance while still tolerating the
  usual disagreement of methods on weak evidence. A constant map has no ranking: rho is NaN and
  the pair is flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lvlm_studio.core.errors import InputError

MIN_RANK_CORRELATION = 0.3
MIN_TOP_K_OVERLAP = 0.3
DEFAULT_TOP_K_FRACTION = 0.1


def flatten(maps: list[np.ndarray]) -> np.ndarray:
    """One token's region maps as a single vector (region order, row-major)."""
    return np.concatenate([np.asarray(m, dtype=np.float64).ravel() for m in maps])


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho between two equal-length vectors (NaN if either is constant)."""
    from scipy.stats import spearmanr

    a, b = _pair(a, b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values (stable: ties keep their order)."""
    return np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")[:k]


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|top_k(a) & top_k(b)| / k."""
    a, b = _pair(a, b)
    if not 1 <= k <= a.size:
        raise InputError(f"top-k overlap with k = {k} on maps of {a.size} cells.", f"Use k from 1 to {a.size}.")
    return len(set(top_k(a, k).tolist()) & set(top_k(b, k).tolist())) / k


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.ravel(np.asarray(a, dtype=np.float64)), np.ravel(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape:
        raise InputError(f"cannot compare maps of {a.size} and {b.size} values.",
                         "Compare maps of the same token on the same grid (or both in image pixels).")
    finite = np.isfinite(a) & np.isfinite(b)
    return a[finite], b[finite]


@dataclass(frozen=True)
class Agreement:
    rank_correlation: float
    top_k_overlap: float
    k: int
    inconsistent: bool  # "grounding is inconsistent, defer to a human"


def agreement(
    a: np.ndarray,
    b: np.ndarray,
    k: int | None = None,
    min_rank_correlation: float = MIN_RANK_CORRELATION,
    min_top_k_overlap: float = MIN_TOP_K_OVERLAP,
) -> Agreement:
    """Compare two maps of the same token (flattened, see ``flatten``) and flag disagreement."""
    a, b = _pair(a, b)
    k = max(1, round(DEFAULT_TOP_K_FRACTION * a.size)) if k is None else k
    rho = rank_correlation(a, b)
    overlap = top_k_overlap(a, b, k)
    inconsistent = not (rho >= min_rank_correlation) or overlap < min_top_k_overlap
    return Agreement(rho, overlap, k, bool(inconsistent))
