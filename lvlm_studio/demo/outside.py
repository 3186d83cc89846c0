"""An out-of-generator test set for the demo model: shape scenes that look drawn by hand.

The demo model is trained on scenes from ``scenes.py``. Exact match on more scenes from that same
generator says little about how the model copes with what users really give it: a doodle in a
paint program, a crayon drawing on paper, a matplotlib figure, a JPEG of a scan. This module draws
the same world (1-3 circles, squares and triangles in red, green, blue or yellow, one per cell of
a 3x3 grid) by its own code path: polygons rasterised with scikit-image and anti-aliased by
supersampling, wobbly hand-drawn outlines, crayon and marker fills, pen strokes, plus plain
aliased Paint-like and ImageDraw drawings in named colours; on white, black, grey, pastel,
gradient, noisy, paper, ruled and graph-paper backgrounds; at many image sizes and aspect ratios;
about a third saved as JPEG and a tenth blurred and noisy like a scan.

Every scene is a pure function of (SEED, index), so ``python -m lvlm_studio.demo.outside --out
resources/demo-outside`` rebuilds the committed set byte for byte (same numpy, scipy, scikit-image
and Pillow). ``answers.json`` holds each scene's objects (with pixel bounding boxes) and one
question and answer per task; a label PNG per scene holds the object masks (0 background, i + 1
object i) so pointing can be scored. ``outside_examples(task)`` loads it as (scene, Example) pairs
shaped like the training scenes.

The answers follow the training rules of ``scenes.make_example`` (restated here, not imported,
so that the two can be compared): caption in reading order, colour questions name a unique shape
or else the shape and its cell, existence questions are half negatives (mostly near misses).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFilter
from scipy import ndimage
from skimage import color as skcolor
from skimage import draw as skdraw

from lvlm_studio.demo.scenes import COLOURS, SHAPES, TASKS, Example, Scene, SceneObject, where_words

OUTSIDE_DIR = Path(__file__).resolve().parents[2] / "resources" / "demo-outside"
SEED = 7_301_457  # unrelated to the training and held-out seeds
N_SCENES = 132
ANSWERS = "answers.json"
PNG_GRAIN_AREA = 24_000  # pixels; larger grainy scenes (noise, paper, crayon, scans) are drawn smaller or saved as JPEG

COLOUR_NAMES = tuple(COLOURS)  # ("red", "green", "blue", "yellow"); scenes.py may hold them as a dict
# The world's object colours as hue ranges in degrees (red wraps around 0), and their floors.
HUE_RANGES = {"red": (345.0, 15.0), "yellow": (45.0, 65.0), "green": (90.0, 150.0), "blue": (200.0, 245.0)}
MIN_SATURATION = 0.55
MIN_VALUE = 0.5
CENTRE_MARGIN = 0.12  # an object's centre stays this fraction of a cell away from its cell's borders

# Fixed colours people pick: the Paint palette, pure primaries, PIL/CSS names, matplotlib's tab colours.
PAINT_COLOURS = {
    "red": ["#ed1c24", "#ff0000"],
    "green": ["#22b14c", "#008000", "#00c800"],
    "blue": ["#3f48cc", "#0000ff"],
    "yellow": ["#fff200", "#ffff00"],
}
NAMED_COLOURS = {
    "red": ["red", "crimson", "#d62728"],
    "green": ["green", "lime", "forestgreen", "limegreen", "seagreen", "#2ca02c"],
    "blue": ["blue", "royalblue", "dodgerblue", "mediumblue", "#1f77b4"],
    "yellow": ["yellow", "gold", "#ffd92f"],
}
STYLES = ("paint", "imagedraw", "vector", "marker", "crayon", "pen")
BACKGROUNDS = ("plain", "gradient", "noise", "paper", "plain", "ruled", "grid")
# Sizes named in the set's brief come first, then common ones; the rest are drawn at random.
FIXED_SIZES = [(48, 48), (64, 192), (640, 480), (320, 128), (200, 600), (512, 512), (96, 96), (128, 128),
               (256, 256), (224, 224), (144, 48), (48, 144), (600, 200), (160, 120), (120, 160), (300, 100),
               (100, 300), (480, 640), (64, 64), (80, 60), (400, 300), (336, 336), (150, 150), (240, 180),
               (640, 640)]


# ----------------------------------------------------------------------------- colour rules


def rgb_to_hsv(rgb) -> np.ndarray:
    """HSV of RGB values in 0-255 (any leading shape): hue in degrees, saturation and value in 0-1."""
    return skcolor.rgb2hsv(np.asarray(rgb, dtype=np.float64).reshape(-1, 1, 3) / 255.0).reshape(
        np.shape(rgb)) * np.array([360.0, 1.0, 1.0])


def object_colour(rgb) -> str | None:
    """The object colour an RGB value (0-255) counts as in this world, or None when it is none."""
    h, s, v = rgb_to_hsv(rgb)
    if s < MIN_SATURATION or v < MIN_VALUE:
        return None
    for name, (lo, hi) in HUE_RANGES.items():
        if (lo <= h <= hi) if lo < hi else (h >= lo or h <= hi):
            return name
    return None


def background_allowed(rgb) -> bool:
    """Whether an RGB value (0-255) may be a background: grey, light and pale, or dark and muted.

    Near black (value under 0.1) counts as black whatever hue its last bits give it."""
    _, s, v = rgb_to_hsv(rgb)
    return bool(v < 0.1 or s <= 0.3 or (v <= 0.35 and s <= 0.4))


def size_limits(width: int, height: int) -> tuple[float, float]:
    """Smallest and largest bounding-box side an object may have in an image of this size."""
    short, long = min(width, height), max(width, height)
    return max(0.08 * short, 0.1 * long), 0.45 * short


def cell_of(bbox, width: int, height: int) -> tuple[int, int, float, float]:
    """(row, col) of the 3x3 cell holding a box's centre, and where in that cell it lies (0-1 across, down)."""
    x0, y0, x1, y1 = bbox
    fx, fy = 3 * (x0 + x1) / 2 / width, 3 * (y0 + y1) / 2 / height
    col, row = min(int(fx), 2), min(int(fy), 2)
    return row, col, fx - col, fy - row


def caption_of(objects) -> str:
    """Objects in reading order (rows top to bottom, then columns): "a red circle and a blue square"."""
    parts = [f"a {o['colour']} {o['shape']}" for o in sorted(objects, key=lambda o: (o["row"], o["col"]))]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def questions_for(objects, rng: np.random.Generator) -> list[dict]:
    """One question and its exact answer per task, by the training set's answer rules."""
    out = [{"task": "caption", "prompt": "describe the image.", "answer": caption_of(objects)}]

    counts = {s: sum(o["shape"] == s for o in objects) for s in SHAPES}
    unique = [o for o in objects if counts[o["shape"]] == 1]
    if unique:
        o = unique[int(rng.integers(len(unique)))]
        subject = f"the {o['shape']}"
    else:  # every shape is there twice or more: name the cell too
        o = objects[int(rng.integers(len(objects)))]
        subject = f"the {o['shape']} on the {where_words(o['row'], o['col'])}"
    out.append({"task": "colour", "prompt": f"what color is {subject}?", "answer": f"{subject} is {o['colour']}"})

    present = sorted({(o["colour"], o["shape"]) for o in objects})
    if rng.random() < 0.5:
        c, s = present[int(rng.integers(len(present)))]
        answer = f"the {c} {s} is there"
    else:  # mostly near misses: a present shape in another colour, or a present colour on another shape
        absent = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (c, s) not in present]
        near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
        pool = near if near and rng.random() < 0.8 else absent
        c, s = pool[int(rng.integers(len(pool)))]
        answer = f"the {c} {s} is not there"
    out.append({"task": "exist", "prompt": f"is there a {c} {s}?", "answer": answer})

    o = objects[int(rng.integers(len(objects)))]
    name = f"{o['colour']} {o['shape']}"
    out.append({"task": "where", "prompt": f"where is the {name}?",
                "answer": f"the {name} is at the {where_words(o['row'], o['col'])}"})
    return out


# ----------------------------------------------------------------------------- backgrounds


def _hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    return skcolor.hsv2rgb(np.array([[[h / 360.0, s, v]]]))[0, 0] * 255.0


def _background_colour(rng: np.random.Generator, tone: str) -> np.ndarray:
    """One allowed background colour of a tone: white, black, light/dark grey, pastel or dark tint."""
    if tone == "white":
        return np.full(3, rng.uniform(243, 255))
    if tone == "black":
        return np.full(3, rng.uniform(0, 22))
    if tone == "light grey":
        return np.full(3, rng.uniform(170, 235))
    if tone == "dark grey":
        return np.full(3, rng.uniform(30, 88))
    if tone == "pastel":
        return _hsv_rgb(rng.uniform(0, 360), rng.uniform(0.06, 0.26), rng.uniform(0.86, 0.98))
    if tone == "dark tint":
        return _hsv_rgb(rng.uniform(0, 360), rng.uniform(0.15, 0.36), rng.uniform(0.12, 0.32))
    raise ValueError(tone)


LIGHT_TONES = ("white", "light grey", "pastel")
DARK_TONES = ("black", "dark grey", "dark tint")


def _smooth_field(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """Low-frequency noise in about -1..1: blotches about ``scale`` pixels across."""
    small = rng.normal(size=(max(2, int(height / scale) + 2), max(2, int(width / scale) + 2)))
    big = np.asarray(Image.fromarray(small.astype(np.float32), "F").resize((width, height), Image.BICUBIC))
    return np.clip(big / 1.5, -1.5, 1.5)


def make_background(rng: np.random.Generator, kind: str, width: int, height: int, light: bool):
    """A background canvas (float RGB 0-255) and a note of how it was made (its base colours)."""
    tones = LIGHT_TONES if light else DARK_TONES
    tone = tones[int(rng.integers(len(tones)))]
    base = _background_colour(rng, tone)
    canvas = np.broadcast_to(base, (height, width, 3)).astype(np.float64)
    colours = [base]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    if kind == "gradient":
        other = _background_colour(rng, tones[int(rng.integers(len(tones)))])
        colours.append(other)
        if rng.random() < 0.7:  # linear, any direction
            angle = rng.uniform(0, 2 * np.pi)
            t = xx * np.cos(angle) + yy * np.sin(angle)
        else:  # radial, a soft vignette
            t = np.hypot(xx - width / 2, yy - height / 2)
        t = (t - t.min()) / max(np.ptp(t), 1e-9)
        canvas = base * (1 - t[..., None]) + other * t[..., None]
    elif kind == "noise":
        sigma = rng.uniform(2, 5)
        canvas = canvas + rng.normal(0, sigma, size=(height, width, 1)) + rng.normal(0, 1, size=(height, width, 3))
    elif kind == "paper":
        if light and rng.random() < 0.6:  # cream or grey-white paper rather than the tone's colour
            base = _hsv_rgb(rng.uniform(30, 55), rng.uniform(0.03, 0.14), rng.uniform(0.88, 0.97))
            colours = [base]
        blotch = _smooth_field(rng, height, width, max(6.0, min(width, height) / 6))
        grain = rng.normal(0, 1.6, size=(height, width, 1))
        canvas = base + 4.0 * blotch[..., None] + grain
        fibres = np.zeros((height, width))
        for _ in range(int(rng.integers(3, 12))):  # short faint fibres
            y, x = rng.uniform(0, height), rng.uniform(0, width)
            a, n = rng.uniform(0, np.pi), rng.uniform(4, 18)
            rr, cc, val = skdraw.line_aa(int(y), int(x), int(y + n * np.sin(a)), int(x + n * np.cos(a)))
            keep = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
            fibres[rr[keep], cc[keep]] = np.maximum(fibres[rr[keep], cc[keep]], val[keep])
        canvas = canvas - 9.0 * fibres[..., None] * (1 if light else -1)
    elif kind in ("ruled", "grid"):
        spacing = rng.uniform(max(5.0, min(width, height) / 14), max(7.0, min(width, height) / 6))
        shift = 28.0 if light else -24.0  # lines darker on light paper, lighter on a dark board
        tint = np.array([0.8, 0.9, 1.0]) if rng.random() < 0.6 else np.ones(3)  # faint blue ink or plain
        on_y = (yy % spacing) < 1.0
        on_x = ((xx % spacing) < 1.0) if kind == "grid" else np.zeros_like(on_y)
        line = (on_y | on_x)[..., None]
        canvas = np.where(line, canvas - shift * tint, canvas)
        if kind == "ruled" and tone == "white" and rng.random() < 0.5:  # a pale red margin line
            x = int(rng.uniform(0.06, 0.14) * width)
            canvas[:, x : x + 1] = canvas[:, x : x + 1] * np.array([1.0, 0.86, 0.86])
    elif kind != "plain":
        raise ValueError(f"unknown background {kind!r}")
    note = {"kind": kind, "tone": tone, "colours": [[int(round(c)) for c in col] for col in colours]}
    if not all(background_allowed(c) and object_colour(c) is None for c in note["colours"]):
        raise RuntimeError(f"background colours {note['colours']} break the world's rules")
    return np.clip(canvas, 0, 255), note


# ----------------------------------------------------------------------------- shapes


def _resample(poly: np.ndarray, step: float) -> np.ndarray:
    """Points along a closed polygon about ``step`` apart (corners kept)."""
    out = []
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        n = max(1, int(np.hypot(*(b - a)) / step))
        out.append(a + (b - a) * (np.arange(n) / n)[:, None])
    return np.concatenate(out)


def _wobble(poly: np.ndarray, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Push a closed outline in and out along its normals by smooth noise: a hand's unsteady line."""
    n = len(poly)
    t = np.arange(n) / n
    push = np.zeros(n)
    for k in range(2, 7):
        push += rng.normal(0, 1 / k) * np.sin(2 * np.pi * k * t + rng.uniform(0, 2 * np.pi))
    push *= amplitude / max(np.abs(push).max(), 1e-9)
    tangent = np.roll(poly, -1, axis=0) - np.roll(poly, 1, axis=0)
    normal = np.stack([tangent[:, 1], -tangent[:, 0]], axis=1)
    normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-9)
    return poly + normal * push[:, None]


def _rotate(poly: np.ndarray, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return poly @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])


def shape_outline(rng: np.random.Generator, shape: str, size: float, hand: bool) -> np.ndarray:
    """A closed outline (x, y points, y down) of one shape, its bounding box centred on 0 with longest side ``size``.

    Hand-drawn outlines are a little irregular: slightly elliptical circles, squares a little off
    square and tilted, triangles of any reasonable proportions, all with wobbly edges."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        squash = rng.uniform(0.86, 1.0) if hand else rng.uniform(0.96, 1.0)
        poly = np.stack([np.cos(t), squash * np.sin(t)], axis=1)
        poly = _rotate(poly, rng.uniform(0, 180))
    elif shape == "square":
        poly = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
        if hand:
            poly = poly * [1.0, rng.uniform(0.9, 1.08)] + rng.normal(0, 0.05, size=(4, 2))
            tilt = float(np.clip(rng.normal(0, 7), -18, 18))
        else:
            tilt = rng.uniform(-18, 18) if rng.random() < 0.3 else 0.0
        poly = _rotate(poly, tilt)
    elif shape == "triangle":
        kind = rng.random()
        if kind < 0.12:  # right-angled
            poly = np.array([[-1, -1], [1, 1], [-1, 1]], dtype=np.float64)
            if rng.random() < 0.5:
                poly[:, 0] *= -1
        else:  # mostly an upright triangle, apex a little off centre
            poly = np.array([[rng.uniform(-0.2, 0.2), -1], [1, 1], [-1, 1]], dtype=np.float64)
        poly[:, 0] *= rng.uniform(0.9, 1.25)
        if hand:
            poly = poly + rng.normal(0, 0.05, size=(3, 2))
        turn = rng.normal(0, 6) if rng.random() < 0.92 else rng.choice([90.0, 180.0, 270.0])
        poly = _rotate(poly, turn)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    if hand:
        poly = _resample(poly, step=0.06)
    extent = poly.max(axis=0) - poly.min(axis=0)
    poly = (poly - (poly.max(axis=0) + poly.min(axis=0)) / 2) * (size / extent.max())
    if hand:
        poly = _wobble(poly, amplitude=max(0.35, rng.uniform(0.01, 0.03) * size), rng=rng)
    return poly


# ----------------------------------------------------------------------------- drawing one object


@dataclass
class _Patch:
    """An object drawn into a window of the image: its opacity and its colours there."""

    y0: int
    x0: int
    alpha: np.ndarray  # float 0-1, window sized
    rgb: np.ndarray  # float 0-255, window sized, 3 channels

    def mask(self, height: int, width: int) -> np.ndarray:
        full = np.zeros((height, width), dtype=bool)
        h, w = self.alpha.shape
        full[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = self.alpha >= 0.5
        return full


def _window(poly: np.ndarray, width: int, height: int, pad: int = 2) -> tuple[int, int, int, int]:
    x0 = max(0, int(np.floor(poly[:, 0].min())) - pad)
    y0 = max(0, int(np.floor(poly[:, 1].min())) - pad)
    x1 = min(width, int(np.ceil(poly[:, 0].max())) + pad)
    y1 = min(height, int(np.ceil(poly[:, 1].max())) + pad)
    return x0, y0, x1, y1


def _supersampled(poly: np.ndarray, window, ss: int) -> np.ndarray:
    """The polygon filled on a grid ``ss`` times finer than the window's pixels (bool)."""
    x0, y0, x1, y1 = window
    inside = np.zeros(((y1 - y0) * ss, (x1 - x0) * ss), dtype=bool)
    # sample (i, j) of the fine grid sits at pixel coordinates (x0 + (j + 0.5) / ss, y0 + (i + 0.5) / ss)
    rr, cc = skdraw.polygon((poly[:, 1] - y0) * ss - 0.5, (poly[:, 0] - x0) * ss - 0.5, inside.shape)
    inside[rr, cc] = True
    return inside


def _downsample(fine: np.ndarray, ss: int) -> np.ndarray:
    h, w = fine.shape[0] // ss, fine.shape[1] // ss
    return fine.reshape(h, ss, w, ss).mean(axis=(1, 3))


def _fill_colours(rng, colour: str, style: str) -> np.ndarray:
    """A fill colour: a fixed named one for clean styles, a sampled hue for hand-drawn ones (RGB 0-255)."""
    if style == "paint":
        rgb = np.array(ImageColor.getrgb(rng.choice(PAINT_COLOURS[colour])), dtype=np.float64)
    elif style in ("imagedraw", "vector"):
        rgb = np.array(ImageColor.getrgb(rng.choice(NAMED_COLOURS[colour])), dtype=np.float64)
    else:
        lo, hi = {"red": (-9.0, 9.0), "yellow": (49.0, 60.0), "green": (100.0, 142.0), "blue": (207.0, 238.0)}[colour]
        v_floor = 0.88 if colour == "yellow" else 0.72
        rgb = _hsv_rgb(rng.uniform(lo, hi) % 360, rng.uniform(0.72, 1.0), rng.uniform(v_floor, 1.0))
    if object_colour(np.round(rgb)) != colour:
        raise RuntimeError(f"fill {rgb} is not {colour}")  # a palette entry outside the world's rules
    return rgb


def _textured(rng, base: np.ndarray, shape: tuple[int, int], style: str, scale: float) -> np.ndarray:
    """Fill colours over a window: crayon streaks and grain, or marker stroke bands.

    The hue stays; saturation and value only dim a little, so every pixel keeps its colour's name."""
    h, w = shape
    hsv = skcolor.rgb2hsv((base / 255.0).reshape(1, 1, 3))[0, 0]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    angle = rng.uniform(0, np.pi)
    along = xx * np.cos(angle) + yy * np.sin(angle)
    period = max(2.5, scale * rng.uniform(0.08, 0.16))
    if style == "crayon":
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * along / period + 1.5 * rng.normal(size=(h, w)).cumsum(axis=1) * 0.05)
        grain = rng.uniform(0, 1, size=(h, w))
        v = hsv[2] * (1 - 0.10 * wave - 0.05 * grain)
        s = hsv[1] * (1 - 0.08 * wave * grain)
    else:  # marker: overlapping strokes, each a touch different, darker where two overlap
        band = np.floor(along / period)
        shade = 1 - 0.06 * ((band * 0.618) % 1.0)
        overlap = (along / period) % 1.0 < 0.18
        v = hsv[2] * shade * np.where(overlap, 0.9, 1.0)
        s = np.full((h, w), hsv[1])
    hue = np.full((h, w), hsv[0])
    rgb = skcolor.hsv2rgb(np.stack([hue, np.clip(s, 0.6, 1), np.clip(v, 0.6, 1)], axis=-1))
    return rgb * 255.0


def _outline_colour(rng, fill: np.ndarray) -> np.ndarray:
    if rng.random() < 0.5:
        return np.full(3, rng.uniform(0, 40))  # black or near-black ink
    return fill * rng.uniform(0.45, 0.7)  # a darker shade of the fill


def draw_vector(rng, poly, colour, style, width, height) -> _Patch:
    """Supersampled polygon (anti-aliased) with a flat, crayon or marker fill and an optional stroke inside its edge."""
    ss = 4
    window = _window(poly, width, height)
    fine = _supersampled(poly, window, ss)
    fill = _fill_colours(rng, colour, style)
    h, w = fine.shape[0] // ss, fine.shape[1] // ss
    size = float(np.ptp(poly, axis=0).max())
    rgb = _textured(rng, fill, (h, w), style, size) if style in ("crayon", "marker") else np.broadcast_to(
        fill, (h, w, 3)).astype(np.float64)
    stroke = {"vector": 0.4, "marker": 0.8, "crayon": 0.25, "pen": 1.0}[style]
    if size >= 12 and rng.random() < stroke:  # below that an outline would hide the fill
        line = rng.uniform(1.0, 3.0) if style != "pen" else rng.uniform(1.0, 2.2)
        line = min(line, max(0.7, 0.07 * size))  # a small shape gets a fine line, or it is all outline
        if style != "vector":  # a hand's pressure varies along the line
            line = line * (1 + 0.3 * _smooth_field(rng, fine.shape[0], fine.shape[1], 6 * ss))
        ring = fine & (ndimage.distance_transform_edt(fine) <= line * ss)
        share = _downsample(ring, ss) / np.maximum(_downsample(fine, ss), 1e-9)
        ink = np.zeros(3) + rng.uniform(0, 35) if style == "pen" else _outline_colour(rng, fill)
        rgb = rgb * (1 - share[..., None]) + ink * share[..., None]
    return _Patch(window[1], window[0], _downsample(fine, ss), rgb)


def draw_pil(rng, shape, size, centre, colour, style, width, height) -> _Patch:
    """A clean shape with Pillow's ImageDraw primitives: aliased like MS Paint, or drawn 4x large and shrunk."""
    scale = 1 if style == "paint" else 4
    fill = _fill_colours(rng, colour, style)
    r = size / 2
    pad = 3
    x0, y0 = max(0, int(centre[0] - r) - pad), max(0, int(centre[1] - r) - pad)
    x1, y1 = min(width, int(np.ceil(centre[0] + r)) + pad), min(height, int(np.ceil(centre[1] + r)) + pad)
    cx, cy = (centre[0] - x0) * scale, (centre[1] - y0) * scale
    rs = r * scale
    canvas = Image.new("RGB", ((x1 - x0) * scale, (y1 - y0) * scale), (0, 0, 0))
    cover = Image.new("L", canvas.size, 0)
    outline = None
    line = 0
    if size >= 12 and rng.random() < 0.5:  # below that an outline would hide the fill
        outline = tuple(int(c) for c in (_outline_colour(rng, fill) if rng.random() < 0.6 else np.zeros(3)))
        line = min(int(rng.integers(1, 4)), max(1, int(0.07 * size))) * scale  # fine lines on small shapes
    ink = tuple(int(c) for c in fill)
    for target, f, o in ((canvas, ink, outline), (cover, 255, 255 if outline else None)):
        d = ImageDraw.Draw(target)
        # Pillow's boxes include their last pixel: the box of a shape ``size`` wide ends at start + size - 1
        box = [cx - rs, cy - rs, cx + rs - scale, cy + rs - scale]
        if shape == "circle":
            d.ellipse(box, fill=f, outline=o, width=line)
        elif shape == "square":
            d.rectangle(box, fill=f, outline=o, width=line)
        else:
            d.polygon([(cx, cy - rs), (cx + rs - scale, cy + rs - scale), (cx - rs, cy + rs - scale)],
                      fill=f, outline=o, width=line)
    if scale > 1:
        canvas = canvas.resize((x1 - x0, y1 - y0), Image.BOX)
        cover = cover.resize((x1 - x0, y1 - y0), Image.BOX)
    alpha = np.asarray(cover, dtype=np.float64) / 255.0
    rgb = np.asarray(canvas, dtype=np.float64) / np.maximum(alpha[..., None], 1e-9)  # undo the black behind
    return _Patch(y0, x0, alpha, np.clip(rgb, 0, 255))


# ----------------------------------------------------------------------------- scenes


def _image_size(rng: np.random.Generator, index: int) -> tuple[int, int]:
    if index < len(FIXED_SIZES):
        return FIXED_SIZES[index]
    short = int(round(np.exp(rng.uniform(np.log(48), np.log(360)))))
    if rng.random() < 0.06:
        short = int(rng.integers(400, 641))
    aspect = 1.0 if rng.random() < 0.3 else float(np.exp(rng.uniform(0, np.log(3.0))))
    long = min(int(short * aspect), 3 * short, max(short, 1024))
    return (long, short) if rng.random() < 0.55 else (short, long)


def _place(rng, style, shape, colour, n, cell, width, height, taken) -> tuple[_Patch, list] | None:
    """Try once to draw an object in its cell obeying every rule; None when this try breaks one."""
    row, col = divmod(cell, 3)
    cw, ch = width / 3, height / 3
    lo_rule, hi_rule = size_limits(width, height)
    hi = hi_rule if n == 1 else min(hi_rule, 0.92 * min(cw, ch))
    lo = min(max(lo_rule * 1.08, 7.0), 0.8 * hi)
    size = rng.uniform(lo, hi) if rng.random() < 0.7 else rng.uniform(lo, (lo + hi) / 2)
    hand = style in ("marker", "crayon", "pen")
    if style in ("paint", "imagedraw"):
        size = float(round(size))
        extent = np.array([size, size])
    else:
        poly = shape_outline(rng, shape, size, hand)
        extent = np.ptp(poly, axis=0)
    centre = []
    for start, span, limit, ext in ((col * cw, cw, width, extent[0]), (row * ch, ch, height, extent[1])):
        low, high = max(start + 0.18 * span, ext / 2), min(start + 0.82 * span, limit - ext / 2)
        if low > high:
            return None
        c = rng.uniform(low, high)
        if rng.random() < 0.1:  # sometimes right against the image border
            c = low if low == ext / 2 else (high if high == limit - ext / 2 else c)
        centre.append(c)
    if style in ("paint", "imagedraw"):
        centre = [round(c - size / 2) + size / 2 for c in centre]  # whole-pixel boxes, as a paint program has
        patch = draw_pil(rng, shape, size, centre, colour, style, width, height)
    else:
        patch = draw_vector(rng, poly + np.array(centre), colour, style, width, height)
    mask = patch.mask(height, width)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    r, c, fx, fy = cell_of(bbox, width, height)
    sides = (bbox[2] - bbox[0], bbox[3] - bbox[1])
    if (r, c) != (row, col) or not all(0.14 <= f <= 0.86 for f in (fx, fy)):
        return None
    if not all(lo_rule <= s <= hi_rule for s in sides) or (n > 1 and max(sides) > min(cw, ch)):
        return None
    gap = max(1, int(round(0.015 * min(width, height))))
    if (ndimage.binary_dilation(mask, iterations=gap) & taken).any():
        return None
    return patch, bbox


def build_scene(index: int) -> dict:
    """Draw scene ``index``: its image (uint8 RGB), label image, objects and questions. Pure in (SEED, index)."""
    rng = np.random.default_rng([SEED, index])
    style = STYLES[index % len(STYLES)]
    kind = BACKGROUNDS[index % len(BACKGROUNDS)]
    jpeg = rng.random() < 0.3
    scanned = rng.random() < 0.1
    width, height = _image_size(rng, index)
    if not jpeg and (kind in ("noise", "paper") or scanned or style == "crayon") and width * height > PNG_GRAIN_AREA:
        if index < len(FIXED_SIZES):  # a named size stays; its grain goes into a JPEG instead
            jpeg = True
        else:  # grain does not compress: keep grainy PNGs small so the set stays small
            shrink = math.sqrt(PNG_GRAIN_AREA / (width * height))
            width, height = (max(48, int(width * shrink)), max(48, int(height * shrink)))
            width, height = min(width, 3 * height), min(height, 3 * width)
    light = rng.random() < (0.8 if style in ("paint", "crayon", "pen") else 0.6)
    canvas, background = make_background(rng, kind, width, height, light)
    n = int(rng.choice([1, 2, 3], p=[0.28, 0.36, 0.36]))
    for _ in range(200):  # redraw the whole layout when one object cannot be placed
        cells = [int(c) for c in rng.choice(9, size=n, replace=False)]
        pairs = [int(p) for p in rng.choice(len(SHAPES) * len(COLOUR_NAMES), size=n, replace=False)]
        labels = np.zeros((height, width), dtype=np.uint8)
        placed = []
        for i, (cell, pair) in enumerate(zip(cells, pairs)):
            shape, colour = SHAPES[pair % len(SHAPES)], COLOUR_NAMES[pair // len(SHAPES)]
            for _ in range(60):
                got = _place(rng, style, shape, colour, n, cell, width, height, labels > 0)
                if got is not None:
                    break
            if got is None:
                break
            patch, bbox = got
            labels[patch.mask(height, width)] = i + 1
            row, col = divmod(cell, 3)
            placed.append(({"shape": shape, "colour": colour, "row": row, "col": col, "bbox": bbox}, patch))
        if len(placed) == n:
            break
    else:
        raise RuntimeError(f"scene {index}: no layout found")
    for _, p in placed:
        h, w = p.alpha.shape
        region = canvas[p.y0 : p.y0 + h, p.x0 : p.x0 + w]
        canvas[p.y0 : p.y0 + h, p.x0 : p.x0 + w] = region * (1 - p.alpha[..., None]) + p.rgb * p.alpha[..., None]
    image = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8), "RGB")
    finish = "clean"
    if scanned:  # a scan: a little soft, a little noisy
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.1)))
        noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, rng.uniform(2, 5), size=(height, width, 1))
        image = Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8), "RGB")
        finish = "scanned"
    quality = int(rng.integers(50, 96)) if jpeg else None
    objects = [o for o, _ in placed]
    questions = questions_for(objects, np.random.default_rng([SEED, index, 1]))
    stem = f"scene_{index:03d}"
    record = {
        "image": f"{stem}.jpg" if jpeg else f"{stem}.png",
        "mask": f"{stem}_mask.png",
        "width": width,
        "height": height,
        "style": style,
        "background": background,
        "finish": finish,
        "jpeg_quality": quality,
        "objects": objects,
        "questions": questions,
    }
    return {"record": record, "image": image, "labels": labels}


def build(out: Path, n: int = N_SCENES) -> list[dict]:
    """Write the set into ``out``: the images, their label PNGs and answers.json. Returns the records."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("scene_*"):  # a scene that changed format must not leave its old file behind
        stale.unlink()
    records = []
    for index in range(n):
        scene = build_scene(index)
        record = scene["record"]
        if record["jpeg_quality"] is not None:
            scene["image"].save(out / record["image"], "JPEG", quality=record["jpeg_quality"])
        else:
            scene["image"].save(out / record["image"], "PNG", optimize=True)
        Image.fromarray(scene["labels"], "L").save(out / record["mask"], "PNG", optimize=True)
        records.append(record)
    head = {
        "about": "LVLM Studio demo world drawn outside its training generator (lvlm_studio/demo/outside.py). "
                 "bbox is [x0, y0, x1, y1) in pixels; mask PNGs hold 0 for background and i + 1 for object i.",
        "seed": SEED,
    }
    lines = ",\n".join(json.dumps(r, separators=(",", ":")) for r in records)  # one scene a line: small, diffable
    (out / ANSWERS).write_text(json.dumps(head)[:-1] + ',\n"scenes":[\n' + lines + "\n]}\n", encoding="utf-8")
    return records


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class OutsideScene(Scene):
    """One scene of the outside set: a training ``Scene`` (objects, caption, masks) with its file name."""

    name: str = ""  # its image file


def load_scenes(folder: Path | None = None) -> list[tuple[OutsideScene, list[Example]]]:
    """Every scene of the set in ``folder`` (the committed one by default) with its four examples."""
    folder = Path(folder) if folder is not None else OUTSIDE_DIR
    data = json.loads((folder / ANSWERS).read_text(encoding="utf-8"))
    out = []
    for index, record in enumerate(data["scenes"]):
        with Image.open(folder / record["image"]) as im:
            image = im.convert("RGB")
        with Image.open(folder / record["mask"]) as im:
            labels = np.asarray(im)
        objects = tuple(
            SceneObject(o["shape"], o["colour"], o["row"], o["col"],
                        ((o["bbox"][0] + o["bbox"][2]) / 2, (o["bbox"][1] + o["bbox"][3]) / 2),
                        max(o["bbox"][2] - o["bbox"][0], o["bbox"][3] - o["bbox"][1]), labels == i + 1)
            for i, o in enumerate(record["objects"])
        )
        examples = [Example(q["task"], q["prompt"], q["answer"]) for q in record["questions"]]
        out.append((OutsideScene(index, image, objects, name=record["image"]), examples))
    return out


def outside_examples(task: str, folder: Path | None = None) -> list[tuple[OutsideScene, Example]]:
    """(scene, example) pairs of one task, one per scene of the set, in the set's order."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    return [(scene, next(e for e in examples if e.task == task)) for scene, examples in load_scenes(folder)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the demo model's out-of-generator test set.")
    parser.add_argument("--out", type=Path, default=Path("resources/demo-outside"))
    parser.add_argument("-n", type=int, default=N_SCENES, help=f"number of scenes (default {N_SCENES})")
    args = parser.parse_args(argv)
    records = build(args.out, args.n)
    total = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    print(f"{len(records)} scenes in {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
