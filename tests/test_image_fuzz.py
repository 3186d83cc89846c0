"""Fuzzing ``open_image``: whatever bytes a file holds, the result is an RGB image or an InputError,
and no warning escapes to the terminal.

Arbitrary bytes rarely get past Pillow's format detection, so most examples start from a real file
of each format and are cut short or have bytes overwritten: that reaches the decoders themselves.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hostile_helpers import assert_rgb_or_input_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image


def _encoded(fmt: str, image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


_GRADIENT = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
SEEDS = [
    _encoded("PNG", Image.new("RGB", (16, 16), (10, 200, 30))),
    _encoded("PNG", Image.fromarray((_GRADIENT * 65535).astype(np.uint16))),
    _encoded("TIFF", Image.fromarray(_GRADIENT)),
    _encoded("JPEG", Image.new("RGB", (16, 16), (200, 10, 30))),
    _encoded("GIF", Image.new("P", (16, 16), 3)),
    _encoded("BMP", Image.new("RGB", (16, 16))),
    _encoded("WEBP", Image.new("RGBA", (16, 16), (1, 2, 3, 100))),
]


@st.composite
def damaged_files(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@pytest.mark.hostile("images")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=damaged_files(), suffix=st.sampled_from([".png", ".jpg", ".tif", ".gif"]))
def test_damaged_image_files_open_or_are_refused(data, suffix):
    assert_rgb_or_input_error(data, suffix)


@pytest.mark.hostile("images")
@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_open_or_are_refused(data):
    assert_rgb_or_input_error(data, ".png")
