"""Draw LVLM Studio's application icon: an eye whose iris is a grid of image patches lit like a heat map.

    python installer/make_icon.py            # writes installer/icon/lvlm-studio.png

The eye stands for looking inside a model, the grid for the image regions (patch tokens) whose
relevance the app shows; the colours are the app's own (the dark background of the image view,
its light text colour, and an inferno-like ramp as in the overlay). Drawn at 4x and scaled down
for smooth edges. The PNG (256 x 256) is the Linux desktop icon and the bundle's icon on every
system: PyInstaller turns it into an .ico (Windows) or .icns (macOS) itself, with Pillow.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
SCALE = 4  # supersampling factor
OUT_DIR = Path(__file__).resolve().parent / "icon"

BACKGROUND = (32, 33, 36, 255)  # gui/image_view.py BACKGROUND #202124
OUTLINE = (218, 220, 224, 255)  # gui/image_view.py FOREGROUND #dadce0
# An inferno-like ramp, dark to bright: the overlay's default colour map.
RAMP = [(20, 11, 52), (101, 21, 110), (180, 54, 90), (237, 105, 37), (251, 180, 26), (252, 255, 164)]


def ramp(value: float) -> tuple[int, int, int, int]:
    """The colour of ``value`` in [0, 1] on RAMP, linearly interpolated."""
    value = min(max(value, 0.0), 1.0) * (len(RAMP) - 1)
    low = min(int(value), len(RAMP) - 2)
    t = value - low
    a, b = RAMP[low], RAMP[low + 1]
    return (*(round(x + (y - x) * t) for x, y in zip(a, b)), 255)


def eye_mask(size: int, cx: float, cy: float, half_width: float, half_height: float) -> Image.Image:
    """An almond (two circular arcs meeting at the corners) as an "L" mask."""
    # Each lid is an arc of a circle through both corners and the top (or bottom) of the eye.
    radius = (half_width**2 + half_height**2) / (2 * half_height)
    mask = Image.new("L", (size, size), 0)
    upper = Image.new("L", (size, size), 0)
    lower = Image.new("L", (size, size), 0)
    # The upper lid's circle has its centre below the eye, the lower lid's above it.
    ImageDraw.Draw(upper).ellipse(_box(cx, cy - half_height + radius, radius), fill=255)
    ImageDraw.Draw(lower).ellipse(_box(cx, cy + half_height - radius, radius), fill=255)
    mask.paste(upper, (0, 0), lower)  # the intersection of the two discs
    return mask


def _box(cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
    return (cx - r, cy - r, cx + r, cy + r)


def draw(size: int = SIZE) -> Image.Image:
    """The icon as an RGBA image of ``size`` x ``size``."""
    big = size * SCALE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    margin = big * 0.04
    draw.rounded_rectangle((margin, margin, big - margin, big - margin), radius=big * 0.18, fill=BACKGROUND)

    cx = cy = big / 2
    half_width, half_height = big * 0.40, big * 0.25
    stroke = big * 0.035
    outer = eye_mask(big, cx, cy, half_width + stroke, half_height + stroke)
    inner = eye_mask(big, cx, cy, half_width, half_height)
    image.paste(OUTLINE, (0, 0), outer)
    image.paste(BACKGROUND, (0, 0), inner)

    # The iris: a 7 x 7 grid of patches, brightest where the eye "looks" (up and to the right of centre).
    iris_r = big * 0.19
    cells = 7
    cell = 2 * iris_r / cells
    gap = cell * 0.12
    hot_x, hot_y = cx + iris_r * 0.25, cy - iris_r * 0.2
    grid = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    grid_draw = ImageDraw.Draw(grid)
    for row in range(cells):
        for col in range(cells):
            x0, y0 = cx - iris_r + col * cell, cy - iris_r + row * cell
            dist = math.hypot(x0 + cell / 2 - hot_x, y0 + cell / 2 - hot_y) / (2 * iris_r)
            grid_draw.rectangle((x0 + gap, y0 + gap, x0 + cell - gap, y0 + cell - gap), fill=ramp(1.0 - 1.4 * dist))
    iris = Image.new("L", (big, big), 0)
    ImageDraw.Draw(iris).ellipse(_box(cx, cy, iris_r), fill=255)
    clipped = Image.new("L", (big, big), 0)
    clipped.paste(iris, (0, 0), inner)  # the iris stays inside the lids
    image.paste(grid, (0, 0), clipped)
    # The pupil, and its catch-light.
    draw.ellipse(_box(cx, cy, iris_r * 0.30), fill=BACKGROUND)
    draw.ellipse(_box(cx + iris_r * 0.12, cy - iris_r * 0.12, iris_r * 0.08), fill=OUTLINE)
    return image.resize((size, size), Image.LANCZOS)


def main(out_dir: Path = OUT_DIR) -> Path:
    """Write the PNG into ``out_dir``; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "lvlm-studio.png"
    draw().save(path)
    return path


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT_DIR))
