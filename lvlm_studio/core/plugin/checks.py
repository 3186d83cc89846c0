"""The contract checks on what explainers and metrics return, where their results enter the CLI, the
app and the benchmark.

An explainer or a metric is a plugin's code. Without these checks a map of the wrong grid or full of
NaN is drawn as if it were a result, a missing token fails later as a ``KeyError``, and a wrong type
fails inside a built-in panel, which then takes the blame. Each check raises ``PluginError`` naming
the method (or metric) and the distribution that installed it, so the user knows whom to tell.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from lvlm_studio.core.errors import Cancelled, LVLMError, PluginError
from lvlm_studio.core.plugin.contracts import MetricResult
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.registry import distribution_of

if TYPE_CHECKING:
    from lvlm_studio.core.plugin.contracts import Explainer, Metric
    from lvlm_studio.core.tracing.trace import Trace

HINT = "The plugin is at fault: report it to its authors, and use another {} meanwhile."


@contextlib.contextmanager
def blamed_on(plugin: Explainer | Metric, kind: str = "explanation method") -> Iterator[None]:
    """Run a plugin's code so that an error it did not mean (a ``ValueError`` deep in its maths) is
    reported as that plugin's failure, naming it and its distribution, instead of as a bug of LVLM
    Studio. Errors that tell the user what to do (``LVLMError``), cancellation and running out of
    memory pass through unchanged."""
    try:
        yield
    except (LVLMError, Cancelled, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's own bug, named as such
        raise PluginError(f"{kind} {plugin.id!r} ({distribution_of(plugin)}) failed: {type(exc).__name__}: {exc}.",
                          HINT.format(kind.split()[-1])) from exc


def check_explanation(explanation: Any, trace: Trace, targets: Sequence[int], explainer: Explainer) -> Explanation:
    """``explanation`` if it keeps the contract for ``trace`` and ``targets``, else ``PluginError``.

    The contract: an ``Explanation`` with, for every target token, one map per image region, each
    of its region's grid shape (rows, cols) and all finite. Maps for other tokens are allowed.
    """

    def refuse(problem: str) -> PluginError:
        return PluginError(f"explanation method {explainer.id!r} ({distribution_of(explainer)}) {problem}.",
                           HINT.format("method"))

    if not isinstance(explanation, Explanation):
        raise refuse(f"returned a {type(explanation).__name__}, not an Explanation")
    if not isinstance(explanation.maps, dict):
        raise refuse(f"returned maps as a {type(explanation.maps).__name__}, not a dict of token -> maps")
    missing = [t for t in targets if t not in explanation.maps]
    if missing:
        raise refuse(f"gave no map for answer token {', '.join(map(str, missing))}")
    regions = trace.regions
    for token in targets:
        maps = explanation.maps[token]
        if not isinstance(maps, (list, tuple)) or len(maps) != len(regions):
            count = len(maps) if isinstance(maps, (list, tuple)) else f"a {type(maps).__name__} of"
            raise refuse(f"gave {count} maps for answer token {token}; it must give one per region of the image "
                         f"({len(regions)})")
        for index, (grid_map, region) in enumerate(zip(maps, regions)):
            where = f"answer token {token}, region {index}"
            try:
                values = np.asarray(grid_map, dtype=np.float64)
            except (TypeError, ValueError):
                raise refuse(f"gave a {type(grid_map).__name__} as the map of {where}, not an array") from None
            if values.shape != tuple(region.grid):
                shape = "x".join(map(str, values.shape)) or "scalar"
                raise refuse(f"gave a {shape} map for {where}, whose grid is {region.grid[0]}x{region.grid[1]}")
            if not np.isfinite(values).all():
                raise refuse(f"gave NaN or infinite values in the map of {where}")
    return explanation


def check_metric_result(result: Any, metric: Metric) -> MetricResult:
    """``result`` if it is a ``MetricResult`` of named numbers and (x, y) curves, else ``PluginError``.

    A value may be NaN: that is how a metric says "undefined here" (the built-in ones do, e.g. for a
    token with no mask); an infinite value, or one that is not a number, breaks the contract.
    """

    def refuse(problem: str) -> PluginError:
        return PluginError(f"metric {metric.id!r} ({distribution_of(metric)}) {problem}.", HINT.format("metric"))

    if not isinstance(result, MetricResult):
        raise refuse(f"returned a {type(result).__name__}, not a MetricResult")
    if not isinstance(result.values, dict) or not isinstance(result.curves, dict):
        raise refuse("returned values or curves that are not dicts")
    for name, value in result.values.items():
        if not isinstance(value, numbers.Real) or math.isinf(value):
            raise refuse(f"returned {value!r} as its value {name!r}, not a finite number (or NaN for undefined)")
    for name, curve in result.curves.items():
        try:
            x, y = (np.asarray(part, dtype=np.float64) for part in curve)
        except (TypeError, ValueError):
            raise refuse(f"returned a curve {name!r} that is not a pair of number arrays (x, y)") from None
        if x.ndim != 1 or x.shape != y.shape or np.isinf(x).any() or np.isinf(y).any():
            raise refuse(f"returned a curve {name!r} whose x and y are not finite arrays of one length")
    return result
