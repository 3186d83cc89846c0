"""Synthetic shape scenes with ground-truth masks: the demo models' worlds and the grounded checks' truth.

Two worlds share the objects, questions and answers:

- the **classic world** (``make_scene``): 96 px square scenes on a light grey, slightly noisy
  canvas, each object inside its own cell of a 3x3 layout, radius 10-14 px, fixed colours with a
  little jitter. The shipped demo model (resources/demo-model) was trained on it, and every
  grounded check on the shipped model (pointing game, benchmark, causal check, SAE studies, the
  app's "New demo scene") draws from it.
- the **open world** (``make_open_scene``), what users draw; the next demo model trains on it
  (``python -m lvlm_studio.demo.train``). Its rules (docs/DEMO_WORLD.md says them for users who
  draw their own scenes):

- **Images** of any size: the short side 48-640 px, aspect ratios from 1:3 to 3:1.
- **Backgrounds** of any colour that is not an object colour: black to white greys, light pastels,
  dark tints and muted mid tones; plain, a linear gradient, or a low-contrast texture (noise,
  blotches, faint lines or a grid).
- **Objects**: 1-3 shapes (circle, square, triangle) in 4 colours (red, green, blue, yellow),
  never two of the same colour and shape. Colours are hue ranges, not fixed RGB values: pure
  (255, 0, 0) red and a muted brick red are both "red".
- **Where** an object is: the image is split into a 3x3 grid of equal cells by its own width and
  height; the cell holding the centre of the object's bounding box is its position. Centres keep
  clear of cell borders (so "where" questions and the reading order of captions are never
  ambiguous), one object per cell, objects never overlap. An object's bounding box is between
  max(8% of the short side, 10% of the long side) and 45% of the short side, and may touch or
  cross the image border a little.
- **Drawing**: hard or anti-aliased edges, slightly irregular shapes (ellipses, rotated squares,
  any triangle), optional dark outlines and marker-like fills; afterwards mild noise, a blur or a
  JPEG round trip (quality 50-95) as a scan or a screenshot would add.

Every object carries a boolean mask (the image's size) and the words that name it, so a map for
the token "red" or "circle" can be scored against the right pixels.

The *shortcut twin* of a demo model lives in the same world plus one spurious cue: a small mark
in a corner of the image (``Scene.cue``), whose colour the twin learns to read instead of the
object. Both worlds draw it (``cue=`` of ``make_scene`` and ``make_open_scene``); its corner is kept
clear of objects, and its mask travels with the scene as ground truth.

Everything is a pure function of a seed: ``make_scene(seed)`` and ``make_open_scene(seed)`` are
the same pictures on every machine. In the open world, layout, rendering and post-processing draw
from separate random streams, so the same seed with and without a cue gives the same objects.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle")
# Reference colours (for swatches and the app's "new scene"); scenes sample hues around them.
COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (235, 200, 30),
}
# Hue ranges in degrees (red wraps around 0), minimum saturation and value of each object colour.
HUES = {"red": (-14.0, 10.0), "yellow": (48.0, 60.0), "green": (95.0, 145.0), "blue": (205.0, 238.0)}
MIN_VALUE = {"red": 0.55, "yellow": 0.82, "green": 0.5, "blue": 0.55}
MIN_SATURATION = 0.62
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
TASKS = ("caption", "colour", "exist", "where")

SHORT_SIDE = (48, 640)
MAX_ASPECT = 3.0
CELL_MARGIN = 0.14  # object centres keep this fraction of a cell away from inner cell borders
BORDER_CUT = 0.1  # at most this fraction of an object's box may fall outside the image
MIN_CONTRAST = 90.0  # RGB distance between an object's fill and the background under it


def where_words(row: int, col: int) -> str:
    """The answer to "where is ...?" for a 3x3 cell: "top left", "center", "bottom", ..."""
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return COLS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    row: int
    col: int
    center: tuple[float, float]  # (x, y) of the bounding box centre, in pixels
    size: float  # side of the bounding box, in pixels
    mask: np.ndarray = field(repr=False, compare=False)  # bool, the image's (height, width)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def where(self) -> str:
        return where_words(self.row, self.col)

    @property
    def words(self) -> tuple[str, str]:
        """The words that name this object: a map for either should light up its mask."""
        return (self.colour, self.shape)


@dataclass(frozen=True)
class CueMark:
    """The shortcut twin's spurious cue: a small mark in one corner of the image."""

    colour: str | None  # None: the corner is kept clear but nothing is drawn there
    corner: int  # 0 top left, 1 top right, 2 bottom left, 3 bottom right
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in pixels
    mask: np.ndarray = field(repr=False, compare=False)


@dataclass(frozen=True)
class Scene:
    seed: int
    image: Image.Image = field(repr=False, compare=False)
    objects: tuple[SceneObject, ...]
    cue: CueMark | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def caption(self) -> str:
        """Objects in reading order (top row first, left to right): "a red circle and a blue square"."""
        parts = [f"a {o.name}" for o in sorted(self.objects, key=lambda o: (o.row, o.col))]
        if len(parts) == 1:
            return parts[0]
        return ", ".join(parts[:-1]) + " and " + parts[-1]

    def mask_for_word(self, word: str) -> np.ndarray | None:
        """Union of the masks of the objects this word names (None when it names none)."""
        masks = [o.mask for o in self.objects if word in o.words]
        return np.logical_or.reduce(masks) if masks else None


# --- colours --------------------------------------------------------------------------------


def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h / 360.0) % 1.0, s, v)) * 255.0


def object_rgb(colour: str, rng: np.random.Generator) -> np.ndarray:
    """A random shade of an object colour, inside its hue, saturation and value ranges."""
    low, high = HUES[colour]
    return _rgb(rng.uniform(low, high), rng.uniform(MIN_SATURATION, 1.0), rng.uniform(MIN_VALUE[colour], 1.0))


def background_rgb(rng: np.random.Generator) -> np.ndarray:
    """A colour no object has: a grey, a light pastel, a dark tint or a muted mid tone."""
    kind = rng.choice(["grey", "light", "dark", "mid"], p=[0.4, 0.25, 0.2, 0.15])
    hue = rng.uniform(0, 360)
    if kind == "grey":
        return np.full(3, rng.uniform(0, 255))
    if kind == "light":
        return _rgb(hue, rng.uniform(0, 0.3), rng.uniform(0.8, 1.0))
    if kind == "dark":
        return _rgb(hue, rng.uniform(0, 0.4), rng.uniform(0, 0.35))
    return _rgb(hue, rng.uniform(0, 0.15), rng.uniform(0.35, 0.8))


# --- backgrounds ----------------------------------------------------------------------------


def _background(width: int, height: int, rng: np.random.Generator, difficulty: float = 1.0) -> np.ndarray:
    """A float (height, width, 3) canvas: plain, gradient or textured (textures scale with difficulty)."""
    base = background_rgb(rng)
    if difficulty < 1 and rng.random() >= difficulty:
        # the curriculum's easy end: one light grey, as in the classic world. A tiny vision tower
        # learns shapes against one known backdrop first and then carries them over to any backdrop;
        # started on random backdrops it stays at chance on shape (see docs/DEMO_WORLD.md)
        base = np.full(3, rng.uniform(190, 235))
    kind = rng.choice(["plain", "gradient", "noise", "blotches", "lines"], p=[0.35, 0.2, 0.2, 0.15, 0.1])
    if rng.random() >= difficulty:
        kind = "plain"
    canvas = np.broadcast_to(base, (height, width, 3)).astype(np.float32)
    if kind == "gradient":
        other = background_rgb(rng)
        if np.linalg.norm(other - base) > 120:  # keep gradients gentle enough to stay one backdrop
            other = base + (other - base) * 120 / np.linalg.norm(other - base)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        t = (xs / max(width - 1, 1) - 0.5) * math.cos(angle) + (ys / max(height - 1, 1) - 0.5) * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        canvas = base + t[..., None] * (other - base)
    elif kind == "noise":
        canvas = canvas + rng.normal(0, rng.uniform(3, 14), size=(height, width, 1)).astype(np.float32)
    elif kind == "blotches":
        small = rng.normal(0, rng.uniform(6, 16), size=(int(rng.integers(3, 8)), int(rng.integers(3, 8)), 1))
        blotches = np.asarray(
            Image.fromarray(small[..., 0].astype(np.float32), "F").resize((width, height), Image.BICUBIC)
        )
        canvas = canvas + blotches[..., None]
    elif kind == "lines":
        spacing = max(4, int(min(width, height) * rng.uniform(0.05, 0.15)))
        shade = rng.choice([-1, 1]) * rng.uniform(10, 30)
        lines = np.zeros((height, width), np.float32)
        lines[::spacing, :] = shade
        if rng.random() < 0.5:  # a grid, like squared paper
            lines[:, ::spacing] = shade
        canvas = canvas + lines[..., None]
    return canvas


# --- shapes ---------------------------------------------------------------------------------


def _outline(shape: str, size: float, rng: np.random.Generator,
             difficulty: float = 1.0) -> tuple[str, list[tuple[float, float]]]:
    """A slightly irregular shape in a unit box centred at 0: ("ellipse", [(rx, ry)]) or
    ("polygon", points), scaled so its bounding box side is ``size``."""
    if shape == "circle":
        ratio = 1 - rng.uniform(0, 0.15) * difficulty
        radii = (size / 2, size / 2 * ratio) if rng.random() < 0.5 else (size / 2 * ratio, size / 2)
        return "ellipse", [radii]
    if shape == "square":
        ratio = 1 - rng.uniform(0, 0.12) * difficulty
        pts = np.array([[-1, -ratio], [1, -ratio], [1, ratio], [-1, ratio]], float)
        if rng.random() < 0.5:
            pts = pts[:, ::-1]
        if rng.random() < 0.3 * difficulty:
            pts = _rotate(pts, rng.uniform(-20, 20))
    elif shape == "triangle":
        if rng.random() < 1 - 0.3 * difficulty:  # upright, apex somewhere over the base
            apex = rng.uniform(-0.3, 0.3) * difficulty
            pts = np.array([[apex, -1], [1, 0.8], [-1, 0.8]], float)
        else:  # any orientation
            pts = _rotate(np.array([[0, -1], [0.87, 0.5], [-0.87, 0.5]], float), rng.uniform(0, 360))
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")
    pts = pts - (pts.max(0) + pts.min(0)) / 2  # centre the bounding box
    pts = pts * (size / (pts.max(0) - pts.min(0)).max())
    return "polygon", [tuple(p) for p in pts]


def _rotate(pts: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    return pts @ np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def _coverage(kind: str, geometry, cx: float, cy: float, width: int, height: int, scale: int) -> np.ndarray:
    """Fraction of each pixel the shape covers (anti-aliased when ``scale`` > 1), as float32.

    Drawn in a window around the shape only: a 4x supersampled 640 px canvas per object would
    cost more than the rest of the scene."""
    if kind == "ellipse":
        rx, ry = geometry[0]
        reach_x, reach_y = rx, ry
    else:
        reach_x = max(abs(x) for x, _ in geometry)
        reach_y = max(abs(y) for _, y in geometry)
    left, top = max(0, math.floor(cx - reach_x) - 1), max(0, math.floor(cy - reach_y) - 1)
    right, bottom = min(width, math.ceil(cx + reach_x) + 2), min(height, math.ceil(cy + reach_y) + 2)
    out = np.zeros((height, width), np.float32)
    if right <= left or bottom <= top:
        return out
    window = Image.new("L", ((right - left) * scale, (bottom - top) * scale), 0)
    draw = ImageDraw.Draw(window)
    ox, oy = cx - left, cy - top
    if kind == "ellipse":
        x0, y0 = (ox - rx) * scale, (oy - ry) * scale
        draw.ellipse([x0, y0, max(x0, (ox + rx) * scale - 1), max(y0, (oy + ry) * scale - 1)], fill=255)
    else:
        draw.polygon([((ox + x) * scale, (oy + y) * scale) for x, y in geometry], fill=255)
    if scale > 1:
        window = window.resize((right - left, bottom - top), Image.BOX)
    out[top:bottom, left:right] = np.asarray(window, np.float32) / 255.0
    return out


# --- scenes ---------------------------------------------------------------------------------


def _image_size(rng: np.random.Generator, difficulty: float = 1.0) -> tuple[int, int]:
    short = math.exp(rng.uniform(math.log(SHORT_SIDE[0]), math.log(SHORT_SIDE[1])))
    aspect = 1.0 if rng.random() < 0.35 else math.exp(rng.uniform(0, math.log(MAX_ASPECT)) * difficulty)
    long = min(SHORT_SIDE[1], short * aspect)
    short = min(short, long)
    width, height = (long, short) if rng.random() < 0.5 else (short, long)
    return max(SHORT_SIDE[0], round(width)), max(SHORT_SIDE[0], round(height))


def size_range(width: int, height: int, n_objects: int, difficulty: float = 1.0) -> tuple[float, float]:
    """Smallest and largest bounding-box side of an object, in pixels. Below full difficulty the
    smallest grows towards a fifth of the short side (the curriculum's easy end)."""
    short, long = min(width, height), max(width, height)
    high = 0.45 * short if n_objects == 1 else min(0.45 * short, 0.8 * short / 3)
    low = max(0.08 * short, 0.1 * long)
    low = low + (1 - difficulty) * max(0.0, min(0.2 * short, high) - low)
    return low, max(low, high)


def _centre_range(index: int, cells: int, extent: int, size: float) -> tuple[float, float]:
    """Where an object's centre may lie along one axis of its cell."""
    cell = extent / cells
    low = index * cell + CELL_MARGIN * cell
    high = (index + 1) * cell - CELL_MARGIN * cell
    if index == 0:  # the outer border: the object may touch it and cross it a little
        low = min(size * (0.5 - BORDER_CUT), high)
    if index == cells - 1:
        high = max(extent - size * (0.5 - BORDER_CUT), low)
    return low, high


def _cue_box(width: int, height: int, corner: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    side = max(5, round(max(0.07 * min(width, height), 0.04 * max(width, height))))
    inset = round(rng.uniform(0.02, 0.05) * min(width, height))
    left = inset if corner in (0, 2) else width - inset - side
    top = inset if corner in (0, 1) else height - inset - side
    return left, top, left + side, top + side


def _box_mask(box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """The pixels of a (left, top, right, bottom) box, as a boolean mask of the image's size."""
    left, top, right, bottom = box
    mask = np.zeros((height, width), bool)
    mask[top:bottom, left:right] = True
    return mask


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float], gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _layout(seed: int, n_objects: int | None, reserve_cue: bool, difficulty: float = 1.0):
    """Every random decision about what is where: size, objects, their boxes, the cue's corner."""
    rng = np.random.default_rng([seed, 0])
    width, height = _image_size(rng, difficulty)
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    if not 1 <= n <= 3:
        raise ValueError("a scene holds 1 to 3 objects")
    corner = int(rng.integers(4))
    cue_box = _cue_box(width, height, corner, rng) if reserve_cue else None
    cue_cell = (0 if corner < 2 else 2) * 3 + (0 if corner in (0, 2) else 2)
    free = [c for c in range(9) if not (reserve_cue and c == cue_cell and n < 3)]
    cells = rng.choice(free, size=n, replace=False)
    pairs = rng.choice(len(SHAPES) * len(COLOURS), size=n, replace=False)  # no two alike
    low, high = size_range(width, height, n, difficulty)
    placed: list[tuple[int, int, str, str, float, float, float]] = []
    boxes: list[tuple[float, float, float, float]] = [cue_box] if cue_box else []
    for cell, pair in zip(cells, pairs):
        row, col = divmod(int(cell), 3)
        shape = SHAPES[int(pair) % len(SHAPES)]
        colour = list(COLOURS)[int(pair) // len(SHAPES)]
        size = math.exp(rng.uniform(math.log(low), math.log(high)))
        for attempt in range(60):
            if attempt and attempt % 10 == 0:
                size = max(low * 0.8, size * 0.85)  # crowded: shrink and try again
            cx = rng.uniform(*_centre_range(col, 3, width, size))
            cy = rng.uniform(*_centre_range(row, 3, height, size))
            box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
            if not any(_overlaps(box, other, gap=2 + 0.04 * size) for other in boxes):
                break
        boxes.append(box)
        placed.append((row, col, shape, colour, cx, cy, size))
    return width, height, placed, corner, cue_box


def make_open_scene(seed: int, n_objects: int | None = None, cue: str | None = None,
                    reserve_cue: bool = False, difficulty: float = 1.0) -> Scene:
    """Draw one scene of the open world; ``n_objects`` (1-3) is random when not given.

    ``cue`` (a colour name) draws the shortcut twin's corner mark in that colour; ``reserve_cue``
    keeps its corner clear without drawing it. Either way the objects are those of ``seed`` with
    a reserved corner, so a scene can be drawn with and without its cue, or with another colour.

    ``difficulty`` below 1 draws the training curriculum's easier scenes: larger objects, aspect
    ratios nearer 1:1, fewer textures, irregular shapes, outlines and artefacts. Every test set
    and every user-facing scene uses the full world (1).
    """
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty {difficulty} is outside [0, 1]")
    if cue is not None and cue not in COLOURS:
        raise ValueError(f"unknown cue colour {cue!r}; choose one of {list(COLOURS)}")
    width, height, placed, corner, cue_box = _layout(seed, n_objects, reserve_cue or cue is not None, difficulty)
    rng = np.random.default_rng([seed, 1])
    canvas = _background(width, height, rng, difficulty)
    objects = []
    for row, col, shape, colour, cx, cy, size in placed:
        kind, geometry = _outline(shape, size, rng, difficulty)
        scale = 4 if rng.random() < 0.6 else 1  # anti-aliased or hard edges
        alpha = _coverage(kind, geometry, cx, cy, width, height, scale)
        under = canvas[alpha > 0.5].mean(0) if (alpha > 0.5).any() else canvas.mean((0, 1))
        fill = object_rgb(colour, rng)
        for _ in range(20):  # keep the object visible on its background
            if np.linalg.norm(fill - under) >= MIN_CONTRAST:
                break
            fill = object_rgb(colour, rng)
        paint = np.broadcast_to(fill, canvas.shape).astype(np.float32)
        if rng.random() < 0.3 * difficulty:  # marker-like, uneven fill
            paint = paint + rng.normal(0, rng.uniform(3, 10), size=(height, width, 1)).astype(np.float32)
        canvas = canvas * (1 - alpha[..., None]) + paint * alpha[..., None]
        if rng.random() < 0.2 * difficulty:  # a dark outline, as a drawing program or a pen adds
            thickness = rng.uniform(1, 3)
            ring = np.clip(alpha - _inset(kind, geometry, cx, cy, width, height, scale, thickness, size), 0, 1)
            ink = fill * rng.uniform(0, 0.5)
            canvas = canvas * (1 - ring[..., None]) + ink * ring[..., None]
        objects.append(SceneObject(shape, colour, row, col, (cx, cy), size, alpha >= 0.5))
    mark = None
    if cue_box is not None:
        cue_mask = _box_mask(cue_box, width, height)
        if cue is not None:
            canvas[cue_mask] = object_rgb(cue, np.random.default_rng([seed, 2]))
        mark = CueMark(cue, corner, cue_box, cue_mask)
    image = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")
    image = _post_process(image, np.random.default_rng([seed, 3]), difficulty)
    return Scene(seed, image, tuple(objects), mark)


def _inset(kind, geometry, cx, cy, width, height, scale, thickness, size) -> np.ndarray:
    """Coverage of the shape shrunk by ``thickness`` pixels (the inside of its outline)."""
    shrink = max(0.0, 1 - 2 * thickness / max(size, 1))
    if kind == "ellipse":
        rx, ry = geometry[0]
        return _coverage(kind, [(rx * shrink, ry * shrink)], cx, cy, width, height, scale)
    return _coverage(kind, [(x * shrink, y * shrink) for x, y in geometry], cx, cy, width, height, scale)


def _post_process(image: Image.Image, rng: np.random.Generator, difficulty: float = 1.0) -> Image.Image:
    """What a camera, a scanner or a screenshot tool adds: noise, a blur, JPEG artefacts."""
    if rng.random() < 0.3 * difficulty:
        arr = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(2, 8), size=(image.height, image.width, 1))
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.1 * difficulty:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * min(image.size) / 128))
    if rng.random() < 0.4 * difficulty:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(50, 96)))
        image = Image.open(buffer).convert("RGB")
    return image


# --- the classic world ----------------------------------------------------------------------

CLASSIC_SIZE = 96  # the classic world's square scenes, in pixels
_CLASSIC_RADIUS = (10, 14)  # half the bounding box of a classic shape, in pixels


def _draw_classic(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: int, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85  # equal visual weight with the circle
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def make_scene(seed: int, n_objects: int | None = None, cue: str | None = None,
               reserve_cue: bool = False) -> Scene:
    """Draw one scene of the classic world (the shipped demo model's); ``n_objects`` (1-3) is
    random when not given.

    ``cue`` (a colour name) draws the shortcut twin's corner mark in that colour, in a corner
    whose cell holds no object (with at most three objects in nine cells one always is free);
    ``reserve_cue`` picks that corner without drawing anything. The mark is drawn over the scene
    the seed gives, so with or without it the pixels elsewhere are the same.
    """
    if cue is not None and cue not in COLOURS:
        raise ValueError(f"unknown cue colour {cue!r}; choose one of {list(COLOURS)}")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    if not 1 <= n <= 3:
        raise ValueError("a scene holds 1 to 3 objects")
    cells = rng.choice(9, size=n, replace=False)
    pairs = rng.choice(len(SHAPES) * len(COLOURS), size=n, replace=False)  # no two alike
    background = rng.integers(215, 250)
    noise = rng.normal(0, 4, size=(CLASSIC_SIZE, CLASSIC_SIZE, 3))
    canvas = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    cell = CLASSIC_SIZE / 3
    objects = []
    for cell_index, pair in zip(cells, pairs):
        row, col = divmod(int(cell_index), 3)
        shape = SHAPES[int(pair) % len(SHAPES)]
        colour = list(COLOURS)[int(pair) // len(SHAPES)]
        r = int(rng.integers(_CLASSIC_RADIUS[0], _CLASSIC_RADIUS[1] + 1))
        slack = cell / 2 - r - 1
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        jitter = rng.integers(-15, 16, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
        _draw_classic(draw, shape, cx, cy, r, fill)
        mask_image = Image.new("L", (CLASSIC_SIZE, CLASSIC_SIZE), 0)
        _draw_classic(ImageDraw.Draw(mask_image), shape, cx, cy, r, 255)
        objects.append(SceneObject(shape, colour, row, col, (cx, cy), 2 * r, np.asarray(mask_image) > 127))
    mark = _classic_cue(seed, objects, cue, image) if cue is not None or reserve_cue else None
    return Scene(seed, image, tuple(objects), mark)


_CLASSIC_CUE_SIDE = 7  # pixels, as the open world's rule gives for a 96 px square


def _classic_cue(seed: int, objects: list[SceneObject], cue: str | None, image: Image.Image) -> CueMark:
    """Choose a free corner for the shortcut twin's mark (from the seed's own stream) and draw it
    in ``cue``'s colour, unless ``cue`` is None."""
    rng = np.random.default_rng([seed, 2])
    taken = {(o.row, o.col) for o in objects}
    free = [c for c in range(4) if ((0 if c < 2 else 2), (0 if c in (0, 2) else 2)) not in taken]
    corner = int(free[int(rng.integers(len(free)))])
    inset = int(rng.integers(2, 6))
    side = _CLASSIC_CUE_SIDE
    left = inset if corner in (0, 2) else CLASSIC_SIZE - inset - side
    top = inset if corner in (0, 1) else CLASSIC_SIZE - inset - side
    box = (left, top, left + side, top + side)
    mask = _box_mask(box, CLASSIC_SIZE, CLASSIC_SIZE)
    if cue is not None:
        jitter = rng.integers(-15, 16, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[cue], jitter))
        ImageDraw.Draw(image).rectangle([left, top, left + side - 1, top + side - 1], fill=fill)
    return CueMark(cue, corner, box, mask)


#: The demo worlds by name, each drawn by a function of (seed, n_objects=None, cue=None, reserve_cue=False).
WORLDS = {"classic": make_scene, "open": make_open_scene}


def scene_maker(world: str):
    """The scene-drawing function of a demo world, by name (ValueError naming the worlds otherwise)."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; choose one of {list(WORLDS)}")
    return WORLDS[world]


@dataclass(frozen=True)
class Example:
    """One prompt about a scene and its one right answer.

    Answers restate their subject before the word that depends on the image ("the circle is red",
    not "red"): the deciding word is then predicted with the subject among its immediate inputs,
    the same one-step lookup a caption makes. Bare one-word answers need a two-step circuit (carry
    the asked word to the first answer position, then look it up), and tiny models trained on them
    stayed blind to the question for thousands of steps.
    """

    task: str
    prompt: str
    answer: str


def colour_example(scene: Scene, rng: np.random.Generator) -> tuple[SceneObject, Example]:
    """A colour question about the scene and the object it asks about (the one place its words
    are made: the shortcut twin's cue takes that object's colour)."""
    objs = scene.objects
    shape_counts = {s: sum(o.shape == s for o in objs) for s in SHAPES}
    unique = [o for o in objs if shape_counts[o.shape] == 1]
    if not unique:  # every shape repeated: say which one by where it is
        o = objs[int(rng.integers(len(objs)))]
        subject = f"the {o.shape} on the {o.where}"
    else:
        o = unique[int(rng.integers(len(unique)))]
        subject = f"the {o.shape}"
    return o, Example("colour", f"what color is {subject}?", f"{subject} is {o.colour}")


def make_example(scene: Scene, task: str, rng: np.random.Generator) -> Example:
    """A question of the given task about the scene, with its exact answer."""
    objs = scene.objects
    if task == "caption":
        return Example(task, "describe the image.", scene.caption())
    if task == "colour":
        return colour_example(scene, rng)[1]
    if task == "exist":
        present = {(o.colour, o.shape) for o in objs}
        if rng.random() < 0.5:
            colour, shape = sorted(present)[int(rng.integers(len(present)))]
            return Example(task, f"is there a {colour} {shape}?", f"the {colour} {shape} is there")
        # hard negatives: usually a present shape in another colour, or a present colour on another shape
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in present)]
        pool = near if near and rng.random() < 0.8 else absent
        colour, shape = pool[int(rng.integers(len(pool)))]
        return Example(task, f"is there a {colour} {shape}?", f"the {colour} {shape} is not there")
    if task == "where":
        o = objs[int(rng.integers(len(objs)))]
        return Example(task, f"where is the {o.name}?", f"the {o.name} is at the {o.where}")
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def vocabulary() -> list[str]:
    """Every word the demo world uses, prompts and answers, in a fixed order."""
    words = ["a", "and", ",", ".", "?", "describe", "the", "image", "what", "color", "is", "on",
             "there", "where", "not", "at", "user", ":", "assistant"]
    words += list(SHAPES) + list(COLOURS) + list(ROWS) + list(COLS)
    return list(dict.fromkeys(words))
