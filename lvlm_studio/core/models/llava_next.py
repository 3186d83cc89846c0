"""LLaVA-NeXT (``llava_next``, "AnyRes"): a low-resolution view of the whole image plus tiles.

How the model lays out one image's tokens (transformers' ``pack_image_features``):

1. the base view: the whole image resized to one vision-tower input, ``g x g`` tokens
   (``g = vision image_size // patch_size``), row-major;
2. the high-resolution view: the image is resized into the best-fitting canvas of
   ``image_grid_pinpoints`` (aspect kept, centred, zero-padded), cut into tiles of one vision-tower
   input each, and the tiles' features are stitched into one ``(tile_rows * g) x (tile_cols * g)``
   feature map. The rows (or columns) that are mostly padding are then cut off ("unpadding"), and a
   learned ``image_newline`` embedding is appended to every remaining row. The map is read row by
   row: ``cols`` features, one newline, ``cols`` features, one newline, ...

We represent this as two regions per image: ``"base"`` (grid ``g x g``, box = the part of the
image the base view shows, the whole image unless the processor's crop is smaller than its resize)
and ``"high-res"`` (grid = rows x cols of the unpadded map, positions without the newline tokens,
box = the part of the original image the unpadded map covers). Keeping the two views apart rather
than merging them lets a heatmap be drawn from either at its own resolution; the newline tokens
belong to no grid, since they carry no location.

The unpadded map almost, but not exactly, matches the image: the model cuts whole feature rows,
rounding its own way, so the high-res box can reach a fraction of a row past the image (keeping a
little padding) or stop short of it. The box is computed from the same arithmetic as the model,
so a heatmap drawn into it lines up with the pixels the tokens saw.

Everything is derived from the config (vision size, patch size, pinpoints, feature strategy) and
the processor outputs (``image_sizes``, ``pixel_values``); no token count is assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lvlm_studio.core.models.geometry import center_crop_box, size_value
from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter, image_token_positions


@dataclass(frozen=True)
class AnyresLayout:
    """Where one image's tokens come from, in feature cells of the stitched high-res map."""

    base_grid: int  # g: the base view is g x g tokens
    base_skip: int  # leading base tokens with no place on the grid (CLS under "full")
    canvas: tuple[int, int]  # (height, width) in pixels of the best-fitting pinpoint
    full_grid: tuple[int, int]  # (rows, cols) of the stitched feature map before unpadding
    kept_rows: tuple[int, int]  # [first, last) rows that survive unpadding
    kept_cols: tuple[int, int]  # [first, last) columns that survive unpadding
    newlines: bool  # whether a newline token follows each kept row

    @property
    def grid(self) -> tuple[int, int]:
        return self.kept_rows[1] - self.kept_rows[0], self.kept_cols[1] - self.kept_cols[0]

    @property
    def token_count(self) -> int:
        rows, cols = self.grid
        return self.base_skip + self.base_grid**2 + rows * (cols + int(self.newlines))


def anyres_layout(config: Any, height: int, width: int) -> AnyresLayout:
    """The token layout the model builds for a ``height x width`` original image.

    Mirrors transformers' ``get_anyres_image_grid_shape`` and ``unpad_image``: the same best
    pinpoint, the same rounding.
    """
    from transformers.image_processing_utils import select_best_resolution

    vision = config.vision_config
    side = int(vision.image_size)
    g = side // int(vision.patch_size)
    pinpoints = [list(p) for p in config.image_grid_pinpoints]
    canvas_h, canvas_w = select_best_resolution((height, width), pinpoints)
    rows, cols = (canvas_h // side) * g, (canvas_w // side) * g
    kept_rows, kept_cols = (0, rows), (0, cols)
    if width / height > cols / rows:  # wider than the canvas: padding above and below
        new_rows = int(round(height * (cols / width), 7))
        pad = (rows - new_rows) // 2
        kept_rows = (pad, rows - pad)
    else:  # taller (or equal): padding left and right
        new_cols = int(round(width * (rows / height), 7))
        pad = (cols - new_cols) // 2
        kept_cols = (pad, cols - pad)
    skip = 1 if getattr(config, "vision_feature_select_strategy", "default") == "full" else 0
    return AnyresLayout(g, skip, (canvas_h, canvas_w), (rows, cols), kept_rows, kept_cols, newlines=True)


def high_res_box(layout: AnyresLayout, height: int, width: int) -> tuple[float, float, float, float]:
    """The part of a ``height x width`` image that the unpadded feature map covers, in its pixels.

    The processor resizes the image to fit the canvas (the limiting side exactly, the other side
    rounded up) and pastes it centred; each feature cell covers ``canvas / full_grid`` pixels.
    """
    canvas_h, canvas_w = layout.canvas
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:
        new_w, new_h = canvas_w, min(math.ceil(height * scale_w), canvas_h)
    else:
        new_w, new_h = min(math.ceil(width * scale_h), canvas_w), canvas_h
    paste_x, paste_y = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
    cell_h, cell_w = canvas_h / layout.full_grid[0], canvas_w / layout.full_grid[1]

    def to_image_x(cell: int) -> float:
        return (cell * cell_w - paste_x) * width / new_w

    def to_image_y(cell: int) -> float:
        return (cell * cell_h - paste_y) * height / new_h

    return (to_image_x(layout.kept_cols[0]), to_image_y(layout.kept_rows[0]),
            to_image_x(layout.kept_cols[1]), to_image_y(layout.kept_rows[1]))


class LlavaNextAdapter(ModelAdapter):
    model_types = ("llava_next",)
    family = "LLaVA-NeXT"

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        regions = []
        for index, (layout, block, (proc_h, proc_w)) in enumerate(self._image_blocks(inputs, image_sizes)):
            img_w, img_h = image_sizes[index]
            # Boxes are computed in the processor's pixels, then scaled to the caller's image size.
            sx, sy = img_w / proc_w, img_h / proc_h
            base_end = layout.base_skip + layout.base_grid**2
            left, top, right, bottom = self._base_box(proc_w, proc_h)
            regions.append(ImageRegion("base", index, block[layout.base_skip : base_end],
                                       (layout.base_grid, layout.base_grid),
                                       (left * sx, top * sy, right * sx, bottom * sy)))
            rows, cols = layout.grid
            high = block[base_end:].reshape(rows, cols + int(layout.newlines))[:, :cols].reshape(-1)
            left, top, right, bottom = high_res_box(layout, proc_h, proc_w)
            regions.append(ImageRegion("high-res", index, high, (rows, cols),
                                       (left * sx, top * sy, right * sx, bottom * sy)))
        return regions

    def newline_positions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> np.ndarray:
        """The positions of the row-newline tokens, which belong to no region."""
        found = []
        for layout, block, _ in self._image_blocks(inputs, image_sizes):
            if layout.newlines:
                rows, cols = layout.grid
                found.append(block[layout.base_skip + layout.base_grid**2 :].reshape(rows, cols + 1)[:, cols])
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def _image_blocks(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]
                      ) -> list[tuple[AnyresLayout, np.ndarray, tuple[int, int]]]:
        """(layout, image-token positions, processor (height, width)) for each image, in order."""
        config = self.model.config
        positions = image_token_positions(inputs["input_ids"], config.image_token_id)
        if not image_sizes:
            return []
        tile = int(inputs["pixel_values"].shape[-1])
        if tile != int(config.vision_config.image_size):
            raise ValueError(f"{tile} px tiles, but the vision tower takes {config.vision_config.image_size} px")
        # The processor's image_sizes (height, width) are what the model lays its tokens out by.
        processed = inputs.get("image_sizes")
        if processed is None:
            processed = [(h, w) for w, h in image_sizes]
        processed = np.asarray(processed.cpu() if hasattr(processed, "cpu") else processed).reshape(-1, 2)
        if len(processed) != len(image_sizes):
            raise ValueError(f"the processor saw {len(processed)} images, but got {len(image_sizes)} sizes")
        layouts = [anyres_layout(config, int(h), int(w)) for h, w in processed]
        needed = sum(layout.token_count for layout in layouts)
        if needed != len(positions):
            raise ValueError(f"{len(positions)} image tokens, but the AnyRes layout needs {needed}")
        blocks = []
        start = 0
        for layout, (height, width) in zip(layouts, processed, strict=True):
            blocks.append((layout, positions[start : start + layout.token_count], (int(height), int(width))))
            start += layout.token_count
        return blocks

    def _base_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The base view squeezes the whole image to the processor's size (aspect not kept), then
        applies the usual resize and centre crop, which cut only when the crop is the smaller."""
        image_processor = self.processor.image_processor
        size = getattr(image_processor, "size", None)
        squeezed = (size_value(size, "width"), size_value(size, "height"))
        if not all(squeezed):  # the processor prefers height x width, else a shortest_edge square
            squeezed = (size_value(size, "shortest_edge"),) * 2
        if not all(squeezed):
            return 0.0, 0.0, float(width), float(height)
        cropping = getattr(image_processor, "do_center_crop", True)
        crop = getattr(image_processor, "crop_size", None) if cropping else None
        left, top, right, bottom = center_crop_box(squeezed[0], squeezed[1], size, crop)
        sx, sy = width / squeezed[0], height / squeezed[1]
        return left * sx, top * sy, right * sx, bottom * sy

