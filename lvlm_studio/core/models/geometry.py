"""Shared arithmetic for where a resized, cropped or padded image lands in the original."""

from __future__ import annotations

from typing import Any


def size_value(size: Any, key: str) -> int | None:
    """Read ``key`` from a processor size spec (a dict or a SizeDict object)."""
    if size is None:
        return None
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value is not None else None


def resized_shape(width: int, height: int, size: Any) -> tuple[float, float]:
    """(width, height) after a CLIP-style resize: shortest edge to N, or a fixed height x width."""
    shortest = size_value(size, "shortest_edge")
    if shortest:
        scale = shortest / min(width, height)
        return width * scale, height * scale
    return float(size_value(size, "width") or width), float(size_value(size, "height") or height)


def center_crop_box(width: int, height: int, size: Any, crop: Any | None) -> tuple[float, float, float, float]:
    """The box of the original image that survives resize-then-center-crop.

    A crop larger than the resized image pads instead, so the box then reaches past the image.
    """
    new_w, new_h = resized_shape(width, height, size)
    scale_x, scale_y = new_w / width, new_h / height
    if crop is None:
        return 0.0, 0.0, float(width), float(height)
    crop_w = size_value(crop, "width") or new_w
    crop_h = size_value(crop, "height") or new_h
    left = (new_w - crop_w) / 2
    top = (new_h - crop_h) / 2
    return left / scale_x, top / scale_y, (left + crop_w) / scale_x, (top + crop_h) / scale_y
