"""What an explainer returns, and the one function that turns grid maps into image pixels."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lvlm_studio.core.plugin.adapter import ImageRegion


@dataclass
class Explanation:
    """Maps for some answer tokens: ``maps[token_index][region_index]`` is a (rows, cols) array.

    ``token_index`` counts answer tokens from 0. ``provenance`` says how the maps were made
    (method, parameters, model, attention implementation, time) so a saved result can be trusted
    and reproduced. A ``provenance["levels"]`` of [low, high] asks viewers to draw every token's
    map on that one scale instead of each on its own range (``fixed_levels``). A
    ``provenance["values"]`` text says what the values are (colour-bar labels: ``value_label``),
    and a ``provenance["signed"]`` bool whether their sign means something (diverging colormaps
    centred at 0: ``is_signed``; without it, negative values make a map signed).
    """

    method: str
    maps: dict[int, list[np.ndarray]]
    params: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def targets(self) -> list[int]:
        return sorted(self.maps)

    def save_npz(self, path: Path) -> None:
        """Plain arrays (``token{t}_region{r}``) plus a JSON header: no pickle to load it."""
        arrays = {f"token{t}_region{r}": m for t, ms in self.maps.items() for r, m in enumerate(ms)}
        header = json.dumps({"method": self.method, "params": self.params, "provenance": self.provenance})
        np.savez_compressed(path, __header__=np.frombuffer(header.encode(), dtype=np.uint8), **arrays)

    @classmethod
    def load_npz(cls, path: Path) -> Explanation:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["__header__"]).decode())
            maps: dict[int, list[np.ndarray]] = {}
            keys = sorted(
                (k for k in data.files if k.startswith("token")),
                key=lambda k: tuple(int(x) for x in k[5:].split("_region")),
            )
            for key in keys:
                token = int(key[5:].split("_region")[0])
                maps.setdefault(token, []).append(data[key])
        return cls(header["method"], maps, header["params"], header["provenance"])


def fixed_levels(explanation: Explanation) -> tuple[float, float] | None:
    """The one colour scale an explainer asked all its maps to be drawn on (e.g. TAM's joint scale
    [0, 1]), or None: draw each map on its own range. Checked, since a session file carries it."""
    levels = explanation.provenance.get("levels")
    if not isinstance(levels, (list, tuple)) or len(levels) != 2:
        return None
    try:
        low, high = float(levels[0]), float(levels[1])
    except (TypeError, ValueError):
        return None
    return (low, high) if np.isfinite(low) and np.isfinite(high) and high > low else None


#: The colormap of signed maps (a value's sign is its colour, 0 the colormap's white centre).
DIVERGING_COLORMAP = "RdBu_r"


def is_signed(explanation: Explanation) -> bool:
    """Whether the maps have a sign worth showing (negative cells pushed the token down): as the
    method declared it (``provenance["signed"]``, a bool), else whether any map has a negative value."""
    declared = explanation.provenance.get("signed")
    if isinstance(declared, bool):
        return declared
    return any(float(np.min(m)) < 0 for maps in explanation.maps.values() for m in maps if np.size(m))


def value_label(explanation: Explanation) -> str:
    """What a map's values are, for colour-bar labels: the method's ``provenance["values"]`` if it
    says, else the method's id ("signed" added when the maps have a sign)."""
    said = explanation.provenance.get("values")
    if isinstance(said, str) and said.strip():
        return said.strip()
    return f"{explanation.method} value" + (" (signed)" if is_signed(explanation) else "")


def map_levels(explanation: Explanation, pixels: np.ndarray | None = None,
               shared: bool = False) -> tuple[float, float]:
    """The colour scale (low, high) to draw one of ``explanation``'s maps (``pixels``) on.

    The explainer's fixed scale (``fixed_levels``) wins. Otherwise the range of ``pixels`` alone,
    or with ``shared`` the range over every token's map, so that strengths compare across tokens.
    A signed map's scale is symmetric about 0 (-m, m), so 0 falls on a diverging colormap's centre.
    A flat or empty map gets a scale that shows it flat.
    """
    fixed = fixed_levels(explanation)
    if fixed is not None:
        return fixed
    if shared or pixels is None:
        arrays = [np.asarray(m, dtype=np.float64).ravel() for maps in explanation.maps.values() for m in maps]
        values = np.concatenate(arrays) if arrays else np.zeros(0)
    else:
        values = np.asarray(pixels, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not finite.size:
        return (-1.0, 1.0) if is_signed(explanation) else (0.0, 1.0)
    low, high = float(finite.min()), float(finite.max())
    if is_signed(explanation):
        reach = max(abs(low), abs(high))
        return (-reach, reach) if reach > 0 else (-1.0, 1.0)
    return (low, high) if high > low else (low, low + 1.0)


def colormap_for(explanation: Explanation, chosen: str) -> str:
    """The colormap to draw ``explanation``'s maps in: the chosen (sequential) one, or for signed
    maps the diverging ``DIVERGING_COLORMAP`` (a sequential one would put 0 at a dark middle)."""
    return DIVERGING_COLORMAP if is_signed(explanation) else chosen


def thresholded(pixels: np.ndarray, levels: tuple[float, float], threshold: float,
                signed: bool = False) -> np.ndarray:
    """The map with weak values hidden (NaN draws transparent): values below ``threshold`` of the
    colour range, or for a ``signed`` map values whose size is below ``threshold`` of the largest
    the scale reaches (strong negative values stay)."""
    if threshold <= 0:
        return pixels
    with np.errstate(invalid="ignore"):
        if signed:
            reach = max(abs(levels[0]), abs(levels[1]))
            return np.where(np.abs(pixels) >= threshold * reach, pixels, np.nan)
        cut = levels[0] + threshold * (levels[1] - levels[0])
        return np.where(pixels >= cut, pixels, np.nan)


def to_pixels(
    maps: list[np.ndarray], regions: list[ImageRegion], image_size: tuple[int, int], image_index: int = 0
) -> np.ndarray:
    """Resample one token's region maps onto the original image: a (height, width) float array.

    Each grid is stretched bilinearly over its region's box (cell centres land on the centres of
    the box's cells). Where regions overlap (a base view and its tiles) their values are averaged;
    pixels that no region covers are NaN. Every pixel-space map in LVLM Studio comes from here.
    """
    width, height = image_size
    total = np.zeros((height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.float64)
    ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
    for grid_map, region in zip(maps, regions):
        if region.image_index != image_index:
            continue
        left, top, right, bottom = region.box
        rows, cols = region.grid
        # Continuous grid coordinates of each pixel centre (cell centres at integers).
        gy = (ys - top) / (bottom - top) * rows - 0.5
        gx = (xs - left) / (right - left) * cols - 0.5
        inside = (ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)
        if not inside.any():
            continue
        total[inside] += _bilinear(np.asarray(grid_map, dtype=np.float64), gy[inside], gx[inside])
        count[inside] += 1
    with np.errstate(invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _bilinear(grid: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    rows, cols = grid.shape
    gy = np.clip(gy, 0, rows - 1)
    gx = np.clip(gx, 0, cols - 1)
    y0 = np.floor(gy).astype(int)
    x0 = np.floor(gx).astype(int)
    y1 = np.minimum(y0 + 1, rows - 1)
    x1 = np.minimum(x0 + 1, cols - 1)
    wy = gy - y0
    wx = gx - x0
    top = grid[y0, x0] * (1 - wx) + grid[y0, x1] * wx
    bottom = grid[y1, x0] * (1 - wx) + grid[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1], ignoring NaN; a constant map becomes all zeros."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros_like(values, dtype=np.float64)
    low, high = np.nanmin(values), np.nanmax(values)
    out = (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=np.float64)
    return np.where(finite, out, 0.0)


def overlay(image: Image.Image, pixel_map: np.ndarray, colormap: str = "inferno", opacity: float = 0.55,
            levels: tuple[float, float] | None = None, signed: bool = False) -> Image.Image:
    """The image with a heat map blended on top (uncovered and NaN pixels are left as they are). The
    map spans the whole colormap, or with ``levels`` (low, high) is drawn on that fixed scale.

    A ``signed`` map (drawn with a diverging colormap on levels symmetric about 0) covers the image
    in proportion to its size, so values near 0 leave the picture as it is instead of veiling it.
    """
    from matplotlib import colormaps  # the Agg-free colormap registry; no pyplot, no GUI

    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    if levels is None:
        shown = normalise(pixel_map)
    else:
        low, high = levels
        with np.errstate(invalid="ignore"):
            shown = np.where(np.isfinite(pixel_map), np.clip((pixel_map - low) / (high - low), 0.0, 1.0), 0.0)
    heat = colormaps[colormap](shown)[..., :3]
    strength = np.clip(np.abs(shown - 0.5) * 2.0, 0.0, 1.0) if signed else 1.0
    alpha = np.where(np.isfinite(pixel_map), opacity * strength, 0.0)[..., None]
    blended = rgb * (1 - alpha) + heat * alpha
    return Image.fromarray((blended * 255).round().astype(np.uint8), "RGB")
