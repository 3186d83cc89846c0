"""Publication figures of one map: the image with the map over it, a labelled colour bar, the token
and the method, written as PNG, SVG or PDF at a chosen resolution.

Built with matplotlib's ``Figure`` (no pyplot, no display, no Qt), so the app's Export figure and
``lvlm-studio explain --figure`` write the same picture. The map is drawn as the app draws it: the
session's colormap, opacity and threshold; signed maps on a diverging colormap centred at 0
(``colormap_for``, ``map_levels``), optionally on one scale shared by every token.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import atomic_path
from lvlm_studio.core.plugin.explanation import (
    colormap_for,
    is_signed,
    map_levels,
    thresholded,
    to_pixels,
    value_label,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image

    from lvlm_studio.core.plugin.explanation import Explanation
    from lvlm_studio.core.tracing.trace import Trace

#: The formats a figure can be written in, by file suffix.
FORMATS = ("png", "svg", "pdf")
DEFAULT_DPI = 300
MIN_DPI, MAX_DPI = 50, 1200
WIDTH_INCHES = 4.0  # a single column of a two-column paper, with room for the colour bar
TITLE_CHARACTERS = 58  # a title line at 9 pt that fits WIDTH_INCHES


def draw_map(axes: Axes, image: Image.Image, pixels: np.ndarray, levels: tuple[float, float], colormap: str,
             opacity: float = 0.6, signed: bool = False):
    """Draw ``image`` on ``axes`` and ``pixels`` over it (NaN transparent) on ``levels`` in ``colormap``;
    returns the map's image artist, for a colour bar. A signed map covers the image in proportion
    to its size (as ``overlay`` draws it), so values near 0 leave the picture as it is."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    axes.imshow(np.asarray(image.convert("RGB")))
    low, high = levels
    norm = Normalize(vmin=low, vmax=high, clip=True)
    alpha = None
    if signed:
        with np.errstate(invalid="ignore"):
            alpha = np.where(np.isfinite(pixels), opacity * np.clip(np.abs(norm(pixels) - 0.5) * 2, 0, 1), 0.0)
    shown = np.ma.masked_invalid(pixels)
    artist = axes.imshow(shown, cmap=colormaps[colormap], norm=norm, alpha=opacity if alpha is None else alpha,
                         interpolation="nearest")
    axes.set_xticks([])
    axes.set_yticks([])
    return artist


def add_color_bar(figure: Figure, artist, axes: Axes, label: str, fontsize: float = 8):
    """A colour bar beside ``axes`` for ``artist``, labelled with what the values are; drawn opaque
    even where the map itself is translucent."""
    from matplotlib.cm import ScalarMappable

    bar = figure.colorbar(ScalarMappable(norm=artist.norm, cmap=artist.cmap), ax=axes, fraction=0.046, pad=0.03)
    bar.set_label(label, fontsize=fontsize)
    bar.ax.tick_params(labelsize=fontsize - 1)
    return bar


def map_figure(image: Image.Image, pixels: np.ndarray, levels: tuple[float, float], colormap: str, label: str,
               title: str, opacity: float = 0.6, signed: bool = False) -> Figure:
    """One map over its image with a colour bar labelled ``label`` and ``title`` above (token and method)."""
    from matplotlib.figure import Figure

    width, height = image.size
    plot_height = WIDTH_INCHES * 0.74 * height / max(width, 1)  # the image's share of the width, its aspect
    lines = textwrap.wrap(title, TITLE_CHARACTERS) or [""]
    figure = Figure(figsize=(WIDTH_INCHES, plot_height + 0.3 + 0.15 * len(lines)), layout="constrained")
    axes = figure.add_subplot()
    artist = draw_map(axes, image, pixels, levels, colormap, opacity, signed)
    add_color_bar(figure, artist, axes, label)
    # A figure-level title, wrapped to the figure's width: a title on the image axes is centred over
    # the image alone and a long one ("“circle” (token 3) · Relevancy (...)") ran off the left edge.
    figure.suptitle("\n".join(lines), fontsize=9)
    return figure


def explanation_figure(trace: Trace, explanation: Explanation, token: int, colormap: str = "inferno",
                       opacity: float = 0.6, threshold: float = 0.0, shared: bool = False,
                       image: Image.Image | None = None, method_title: str | None = None) -> Figure:
    """The figure of answer token ``token``'s map by ``explanation``: the colormap chosen (a diverging
    one for signed maps), its threshold, the map's own scale or (``shared``) one for every token.
    ``image`` is the picture to draw under the map (default: the trace's image)."""
    if token not in explanation.maps:
        raise InputError(f"the {explanation.method} explanation has no map of answer token {token}.",
                         "Explain that token first, or pick one that has a map.")
    pixels = to_pixels(explanation.maps[token], trace.regions, trace.image.size)
    signed = is_signed(explanation)
    levels = map_levels(explanation, pixels, shared)
    text = trace.answer_tokens[token].strip() or repr(trace.answer_tokens[token])
    scale = ", one scale for all tokens" if shared else ""
    title = f"\u201c{text}\u201d (token {token + 1}) \u00b7 {method_title or explanation.method}{scale}"
    return map_figure(image or trace.image, thresholded(pixels, levels, threshold, signed), levels,
                      colormap_for(explanation, colormap), value_label(explanation), title, opacity, signed)


def figure_format(path: str | Path) -> str:
    """The format a figure at ``path`` is written in, from its suffix; ``InputError`` for others."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise InputError(f"cannot write a figure as {Path(path).name!r}.",
                         f"End the file name with one of: {', '.join('.' + f for f in FORMATS)}.")
    return suffix


def check_dpi(dpi: int) -> int:
    """``dpi`` if it is a sensible resolution for a figure, else ``InputError``."""
    if not MIN_DPI <= int(dpi) <= MAX_DPI:
        raise InputError(f"a resolution of {dpi} dpi is outside {MIN_DPI} to {MAX_DPI}.",
                         f"Choose, e.g., {DEFAULT_DPI} dpi for print or 150 for screens.")
    return int(dpi)


def save_figure(figure: Figure, path: str | Path, dpi: int = DEFAULT_DPI) -> Path:
    """Write ``figure`` to ``path`` (PNG, SVG or PDF by its suffix) at ``dpi``, atomically."""
    kind = figure_format(path)
    dpi = check_dpi(dpi)
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format=kind, dpi=dpi, metadata=_metadata(kind))
    return path


def _metadata(kind: str) -> dict[str, str | None]:
    """The Creator of the file; SVG and PDF otherwise carry a date, which makes reruns differ."""
    if kind == "png":
        return {"Software": "LVLM Studio"}
    if kind == "svg":
        return {"Creator": "LVLM Studio", "Date": None}
    return {"Creator": "LVLM Studio", "CreationDate": None}
