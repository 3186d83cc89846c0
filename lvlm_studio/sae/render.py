"""PNGs for feature inspection: a feature's map over an image, and a dashboard of its top patches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from lvlm_studio.core.io.images import open_image
from lvlm_studio.core.plugin.explanation import overlay

if TYPE_CHECKING:
    from lvlm_studio.sae.inspect import PatchHit

TILE = 96  # pixels per dashboard tile


def grid_to_pixels(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [rows, cols] map stretched over an image of ``size`` (width, height), cell by cell."""
    width, height = size
    rows, cols = grid_map.shape
    ys = np.minimum((np.arange(height) * rows) // height, rows - 1)
    xs = np.minimum((np.arange(width) * cols) // width, cols - 1)
    return grid_map[ys[:, None], xs[None, :]].astype(np.float64)


def map_overlay(image: Image.Image, grid_map: np.ndarray, title: str = "") -> Image.Image:
    """The image with the feature's activation per patch laid over it (and the peak value written)."""
    shown = overlay(image, grid_to_pixels(grid_map, image.size))
    factor = max(1, 288 // max(shown.width, 1))  # small images (the demo's 96 px) are enlarged to be read
    shown = shown.resize((shown.width * factor, shown.height * factor), Image.NEAREST)
    if title:
        ImageDraw.Draw(shown).text((4, 4), f"{title}  max {float(grid_map.max()):.2f}", fill=(255, 255, 255))
    return shown


def dashboard(hits: Sequence[PatchHit], grid: tuple[int, int], title: str = "", columns: int = 4) -> Image.Image:
    """Top-activating patches as tiles: each tile is the image around the patch (three patches wide)
    with the patch outlined, labelled with the activation and the file name."""
    rows_of_tiles = max(1, -(-len(hits) // columns))
    sheet = Image.new("RGB", (columns * TILE, rows_of_tiles * (TILE + 14) + 16), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 2), title, fill=(0, 0, 0))
    cache: dict[str, Image.Image] = {}
    for index, hit in enumerate(hits):
        if hit.image not in cache:
            cache[hit.image] = open_image(hit.image)  # as the coder saw it: same depth, same rotation
        image = cache[hit.image]
        rows, cols = grid
        cell_w, cell_h = image.width / cols, image.height / rows
        box = (max(0.0, (hit.col - 1) * cell_w), max(0.0, (hit.row - 1) * cell_h),
               min(image.width, (hit.col + 2) * cell_w), min(image.height, (hit.row + 2) * cell_h))
        crop = image.crop(tuple(int(round(v)) for v in box)).resize((TILE, TILE), Image.NEAREST)
        scale_x, scale_y = TILE / (box[2] - box[0]), TILE / (box[3] - box[1])
        patch = ((hit.col * cell_w - box[0]) * scale_x, (hit.row * cell_h - box[1]) * scale_y)
        ImageDraw.Draw(crop).rectangle([patch[0], patch[1], patch[0] + cell_w * scale_x - 1,
                                        patch[1] + cell_h * scale_y - 1], outline=(255, 0, 255), width=2)
        x, y = (index % columns) * TILE, 16 + (index // columns) * (TILE + 14)
        sheet.paste(crop, (x, y))
        name = hit.image.rsplit("/", 1)[-1][:10]
        draw.text((x + 2, y + TILE), f"{hit.activation:.2f} {name}", fill=(0, 0, 0))
    return sheet
