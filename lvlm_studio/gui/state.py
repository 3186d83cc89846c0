"""What the window shows, kept without Qt: the model, the image, the answer, its maps, the selection.

Widgets never own this data. They subscribe to changes and redraw (glue's habit), so panels and
saved sessions see one source of truth, and tests can read it without scraping widgets. Core
modules that pull in torch are imported only inside methods that need a trace, so creating the
state (and the window) stays instant.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from lvlm_studio.core.io.windowing import MedicalImage, Window
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.plugin.contracts import MetricResult
    from lvlm_studio.core.plugin.explanation import Explanation
    from lvlm_studio.core.tracing.head_attention import HeadAttention
    from lvlm_studio.core.tracing.token_stats import TokenStats
    from lvlm_studio.core.tracing.trace import Trace

DEFAULT_METHOD = "raw_attention"
DEFAULT_OPACITY = 0.6
DEFAULT_COLORMAP = "inferno"
COLORMAPS = ("inferno", "viridis", "magma", "plasma", "cividis", "turbo")
CHIP_MODES = ("probability", "relevance")

#: Called with the name of what changed: "model", "image", "trace", "selected", "method",
#: "explanations", "view" (opacity, colormap, threshold, chip colouring), "stats", "metrics",
#: "heads", "masks", "window" (the grey-level window the image is shown in) or "params" (a
#: method's chosen parameters).
Listener = Callable[[str], None]
MetricKey = tuple[str, int, str]  # method, answer token, metric id


class StudioState:
    """One analysis: a model, an image, the trace of one answer and everything computed from it."""

    def __init__(self, method: str = DEFAULT_METHOD, opacity: float = DEFAULT_OPACITY) -> None:
        self.model: LoadedModel | None = None
        self.model_source: str | None = None  # the loaded model's folder (None: the demo model)
        self.image: Image.Image | None = None
        self.image_name = ""
        # A DICOM or more-than-8-bit image's values (None for others), the window the viewer shows it
        # in (None: its default, which is also what the model is given) and the image as shown.
        self.medical: MedicalImage | None = None
        self.window: Window | None = None
        self.shown_image: Image.Image | None = None
        self.masks: dict[str, np.ndarray] = {}  # ground truth for the image, when it has any
        self.trace: Trace | None = None
        self.method = method
        self.explanations: dict[str, Explanation] = {}  # by method id, for the current trace and chosen params
        self.selected: int | None = None  # answer token index
        self.opacity = opacity
        self.colormap = DEFAULT_COLORMAP
        self.threshold = 0.0  # map values below this fraction of their range are not drawn
        self.shared_scale = False  # one colour scale for every token's map (else each its own range)
        self.chip_mode = CHIP_MODES[0]
        self.stats: TokenStats | None = None
        self.heads: HeadAttention | None = None
        self.metrics: dict[MetricKey, MetricResult] = {}
        # The parameters chosen for each method, as the values that differ from its defaults (so that
        # "the defaults" has one spelling, {}); a method not named here runs with its defaults.
        self.params: dict[str, dict[str, Any]] = {}
        # Every explanation of the current trace by (method, params_key) with the metrics of its maps,
        # so that going back to a parameter set shows its maps again instead of computing them anew.
        self._cache: dict[tuple[str, str], tuple[Explanation, dict[MetricKey, MetricResult]]] = {}
        self.revision = 0  # counts changes worth saving (autosave compares it)
        self._pixels: dict[tuple[str, int], tuple[np.ndarray, tuple[float, float]]] = {}
        self._shared: dict[str, tuple[Any, tuple[float, float]]] = {}  # method -> (explanation key, levels)
        self._styles: dict[str, tuple[Any, tuple[bool, str]]] = {}  # method -> (explanation key, style)
        self._listeners: list[Listener] = []

    # -- observing ---------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, name: str) -> None:
        if name not in ("selected", "view", "model", "window"):
            self.revision += 1
        for listener in list(self._listeners):
            listener(name)

    # -- changing ----------------------------------------------------------------------------
    def set_model(self, model: LoadedModel, source: str | None = None) -> None:
        """A new model (from folder ``source``; None: the demo model); the old answer was not
        generated by it, so it goes."""
        self.model, self.model_source = model, source
        self._notify("model")
        self.set_trace(None)

    def set_image(self, image: Image.Image, name: str, masks: dict[str, np.ndarray] | None = None,
                  medical: MedicalImage | None = None) -> None:
        """A new image (with its ground-truth masks, if any, and its values when it is a DICOM or
        more-than-8-bit image); the old answer was about another image."""
        self.image, self.image_name, self.masks = image, name, dict(masks or {})
        self.medical, self.window, self.shown_image = medical, None, image
        self._notify("image")
        self._notify("masks")
        self.set_trace(None)

    def set_trace(self, trace: Trace | None) -> None:
        """A new answer: every explanation, statistic, metric and the selection belonged to the old one."""
        self.trace = trace
        self.explanations = {}
        self.stats = None
        self.heads = None
        self.metrics = {}
        self._cache = {}
        self._pixels = {}
        self.selected = None
        self._notify("trace")

    def select(self, index: int | None) -> None:
        """Select answer token ``index`` (clamped to the answer), or nothing."""
        if index is not None:
            count = len(self.trace.answer_tokens) if self.trace is not None else 0
            index = min(max(index, 0), count - 1) if count else None
        if index != self.selected:
            self.selected = index
            self._notify("selected")

    def step(self, delta: int) -> None:
        """Move the selection by ``delta`` tokens; with nothing selected, start at an end."""
        if self.trace is None or not self.trace.answer_tokens:
            return
        if self.selected is None:
            self.select(0 if delta > 0 else len(self.trace.answer_tokens) - 1)
        else:
            self.select(self.selected + delta)

    def set_method(self, method: str) -> None:
        if method != self.method:
            self.method = method
            self._notify("method")

    def add_explanation(self, trace: Trace, method: str, explanation: Explanation,
                        params: dict[str, Any] | None = None) -> bool:
        """Keep ``method``'s ``explanation``, made with the parameters ``params`` (as chosen: the values
        that differ from the defaults; None: the ones chosen now), if it explains the current trace; a
        late result for an answer that has since been replaced is dropped (False). A result for
        parameters that are no longer the chosen ones is kept in the cache only (False)."""
        if trace is not self.trace:
            return False
        key = params_key(self.params.get(method, {}) if params is None else params)
        if key != self.params_key(method):
            self._cache[(method, key)] = (explanation, {})
            return False
        self.explanations[method] = explanation
        self._cache[(method, key)] = (explanation, {k: v for k, v in self.metrics.items() if k[0] == method})
        self._pixels = {k: v for k, v in self._pixels.items() if k[0] != method}
        self._notify("explanations")
        return True

    def add_maps(self, trace: Trace, method: str, explanation: Explanation,
                 params: dict[str, Any] | None = None) -> bool:
        """Add the token maps of ``explanation`` (some answer tokens, computed one call at a time) to
        ``method``'s explanation for the parameters ``params`` (None: the ones chosen now); the first
        maps start it. Maps already there stay: each token is computed once. Same answer and
        parameter checks as ``add_explanation``; True when the maps shown changed."""
        if trace is not self.trace:
            return False
        key = params_key(self.params.get(method, {}) if params is None else params)
        current = key == self.params_key(method)
        kept = self.explanations.get(method) if current else None
        if kept is None:
            cached = self._cache.get((method, key))
            kept = cached[0] if cached is not None else None
        if kept is None:
            from lvlm_studio.core.plugin.explanation import Explanation

            kept = Explanation(explanation.method, {}, dict(explanation.params), dict(explanation.provenance))
        else:  # per-token entries of the provenance (dicts keyed by token, at any depth) are gathered too
            _gather(kept.provenance, explanation.provenance)
        for token, maps in explanation.maps.items():
            kept.maps.setdefault(token, maps)
        if not current:
            self._cache.setdefault((method, key), (kept, {}))
            return False
        if self.explanations.get(method) is not kept:
            self.explanations[method] = kept
            self._cache[(method, key)] = (kept, {k: v for k, v in self.metrics.items() if k[0] == method})
            self._pixels = {k: v for k, v in self._pixels.items() if k[0] != method}
        self._notify("explanations")
        return True

    def missing_tokens(self, method: str) -> list[int]:
        """The answer tokens ``method`` has no map for yet (with the chosen parameters), in order."""
        if self.trace is None:
            return []
        made = self.explanations.get(method)
        return [t for t in range(len(self.trace.answer_tokens)) if made is None or t not in made.maps]

    def set_params(self, method: str, params: dict[str, Any]) -> None:
        """Choose ``method``'s parameters (the values that differ from its defaults, already checked).
        Its maps and their metrics become those of the new parameter set: from the cache when they
        were computed before on this answer, else none until they are computed."""
        params = dict(params)
        if params_key(params) == self.params_key(method):
            return
        old = (method, self.params_key(method))
        if method in self.explanations:  # keep the old set's maps and scores for a way back
            self._cache[old] = (self.explanations[method], {k: v for k, v in self.metrics.items() if k[0] == method})
        if params:
            self.params[method] = params
        else:
            self.params.pop(method, None)
        self.metrics = {k: v for k, v in self.metrics.items() if k[0] != method}
        self.explanations.pop(method, None)
        cached = self._cache.get((method, self.params_key(method)))
        if cached is not None:
            self.explanations[method] = cached[0]
            self.metrics.update(cached[1])
        self._pixels = {k: v for k, v in self._pixels.items() if k[0] != method}
        self._notify("params")
        self._notify("explanations")
        self._notify("metrics")

    def params_key(self, method: str) -> str:
        """The cache key of ``method``'s chosen parameters."""
        return params_key(self.params.get(method, {}))

    def set_stats(self, trace: Trace, stats: TokenStats) -> bool:
        if trace is not self.trace:
            return False
        self.stats = stats
        self._notify("stats")
        return True

    def set_heads(self, trace: Trace, heads: HeadAttention) -> bool:
        if trace is not self.trace:
            return False
        self.heads = heads
        self._notify("heads")
        return True

    def add_metric(self, trace: Trace, key: MetricKey, result: MetricResult) -> bool:
        if trace is not self.trace:
            return False
        self.metrics[key] = result
        cached = self._cache.get((key[0], self.params_key(key[0])))
        if cached is not None and cached[0] is self.explanations.get(key[0]):
            cached[1][key] = result
        self._notify("metrics")
        return True

    def set_view(self, **changes: Any) -> None:
        """Change how maps and chips are drawn: ``opacity``, ``colormap``, ``threshold``, ``chip_mode``,
        ``shared_scale``."""
        changed = False
        for name, value in changes.items():
            if name == "opacity":
                value = min(max(float(value), 0.0), 1.0)
            elif name == "threshold":
                value = min(max(float(value), 0.0), 1.0)
            elif name == "colormap" and value not in COLORMAPS:
                continue
            elif name == "chip_mode" and value not in CHIP_MODES:
                continue
            elif name == "shared_scale":
                value = bool(value)
            elif name not in ("opacity", "threshold", "colormap", "chip_mode"):
                raise ValueError(f"unknown view setting {name!r}")
            if getattr(self, name) != value:
                setattr(self, name, value)
                changed = True
        if changed:
            self._notify("view")

    def set_window(self, window: Window | None) -> None:
        """Show the image in ``window`` (None: its default). Only the view changes: the model keeps
        the image in its default window, so the answer and its maps stay."""
        if self.medical is None or window == self.window:
            return
        self.window = window
        self.shown_image = self.image if window is None else self.medical.render(window)
        self._notify("window")

    def set_opacity(self, opacity: float) -> None:
        self.set_view(opacity=opacity)

    # -- reading -----------------------------------------------------------------------------
    @property
    def explanation(self) -> Explanation | None:
        """The chosen method's explanation of the current trace, if computed."""
        return self.explanations.get(self.method)

    @property
    def selected_token(self) -> str | None:
        if self.trace is None or self.selected is None:
            return None
        return self.trace.answer_tokens[self.selected]

    def pixels(self, method: str, token: int) -> tuple[np.ndarray, tuple[float, float]] | None:
        """Token ``token``'s map by ``method`` on image pixels (NaN where no region covers the image)
        and its colour levels (its own range, symmetric about 0 for signed maps; with
        ``shared_scale`` the range over every token's map; or the one scale the explanation fixes),
        or None when not computed. Resampled once and cached, so stepping through tokens only redraws."""
        explanation = self.explanations.get(method)
        if self.trace is None or explanation is None or token not in explanation.maps:
            return None
        from lvlm_studio.core.plugin.explanation import fixed_levels, map_levels, to_pixels

        key = (method, token)
        if key not in self._pixels:
            pixels = to_pixels(explanation.maps[token], self.trace.regions, self.trace.image.size)
            self._pixels[key] = (pixels, map_levels(explanation, pixels))
        signed = self.map_style(method)[1]
        if signed and self._pixels[key][1][0] != -self._pixels[key][1][1] and fixed_levels(explanation) is None:
            # A later token's negative values made the maps signed: this map's scale becomes symmetric.
            self._pixels[key] = (self._pixels[key][0], map_levels(explanation, self._pixels[key][0]))
        if not self.shared_scale:
            return self._pixels[key]
        # The shared scale grows while maps arrive: it is kept per explanation and number of maps.
        shared_key = (id(explanation), len(explanation.maps))
        if self._shared.get(method, (None,))[0] != shared_key:
            self._shared[method] = (shared_key, map_levels(explanation, shared=True))
        return self._pixels[key][0], self._shared[method][1]

    def map_style(self, method: str) -> tuple[str, bool, str]:
        """How ``method``'s maps are coloured: the colormap (the chosen one, or a diverging one for
        signed maps), whether they are signed, and what their values are (a colour-bar label)."""
        explanation = self.explanations.get(method)
        if explanation is None:
            return self.colormap, False, ""
        from lvlm_studio.core.plugin.explanation import colormap_for, is_signed, value_label

        key = (id(explanation), len(explanation.maps))
        if self._styles.get(method, (None,))[0] != key:
            self._styles[method] = (key, (is_signed(explanation), value_label(explanation)))
        signed, label = self._styles[method][1]
        return (colormap_for(explanation, self.colormap) if signed else self.colormap), signed, label

    def selected_pixels(self) -> np.ndarray | None:
        """The selected token's map by the chosen method on image pixels, or None."""
        if self.selected is None:
            return None
        found = self.pixels(self.method, self.selected)
        return None if found is None else found[0]


def params_key(params: dict[str, Any]) -> str:
    """One text per parameter set (names sorted, tuples and lists alike): the key of the maps cache."""
    from lvlm_studio.core.io.records import jsonable

    return json.dumps(jsonable(params), sort_keys=True)


def finite_range(values: np.ndarray) -> tuple[float, float] | None:
    """The smallest and largest finite value, or None when there is none."""
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else None


def display_levels(pixels: np.ndarray) -> tuple[float, float]:
    """The colour scale for one map: its own finite range, so every token's map uses the whole
    colormap (as the CLI's overlays do); a flat or empty map gets a scale that shows it flat."""
    span = finite_range(pixels)
    if span is None:
        return 0.0, 1.0
    low, high = span
    return (low, high) if high > low else (low, low + 1.0)


def thresholded(pixels: np.ndarray, levels: tuple[float, float], threshold: float,
                signed: bool = False) -> np.ndarray:
    """The map with values below ``threshold`` of its colour range hidden (NaN draws transparent);
    for a ``signed`` map, values whose size is below ``threshold`` of the scale's reach (the core's
    ``thresholded``, which figures and reports use too)."""
    from lvlm_studio.core.plugin.explanation import thresholded as core_thresholded

    return core_thresholded(pixels, levels, threshold, signed)


def _gather(have: dict[str, Any], new: dict[str, Any]) -> None:
    """Add to ``have`` what ``new`` holds that it lacks, through nested dicts: the provenance of one
    token's explanation joins the others' (e.g. relevancy's text relevance ``{"values": {token: ...}}``,
    the causal subset's ``{"tokens": {token: ...}}``); what ``have`` already holds stays."""
    for name, value in new.items():
        if name not in have:
            have[name] = value
        elif isinstance(value, dict) and isinstance(have[name], dict):
            _gather(have[name], value)
