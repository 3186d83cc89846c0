"""Synthetic shape scenes with ground-truth masks: the demo model's world and the grounded checks' truth.

A scene is a light, slightly noisy canvas with 1-3 coloured shapes, each inside its own cell of a
3x3 layout (so "where" questions and the reading order of captions are never ambiguous), with a
random size and a random offset inside its cell. Every object carries a boolean mask and the words
that name it, so a map for the token "red" or "circle" can be scored against the right pixels.

Everything is a pure function of a seed: ``make_scene(seed)`` is the same picture on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 96
SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (235, 200, 30),
}
ROWS = ("top", "middle", "bottom")
COLS = ("left", "center", "right")
TASKS = ("caption", "colour", "exist", "where")

_RADIUS_RANGE = (10, 14)  # half the bounding box of a shape, in pixels


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
    center: tuple[float, float]  # (x, y) in pixels
    radius: int
    mask: np.ndarray = field(repr=False, compare=False)  # bool, IMAGE_SIZE x IMAGE_SIZE

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
class Scene:
    seed: int
    image: Image.Image = field(repr=False, compare=False)
    objects: tuple[SceneObject, ...]

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


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: int, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.85  # equal visual weight with the circle
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {SHAPES}")


def make_scene(seed: int, n_objects: int | None = None) -> Scene:
    """Draw one scene; ``n_objects`` (1-3) is random when not given."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 4)) if n_objects is None else n_objects
    if not 1 <= n <= 3:
        raise ValueError("a scene holds 1 to 3 objects")
    cells = rng.choice(9, size=n, replace=False)
    pairs = rng.choice(len(SHAPES) * len(COLOURS), size=n, replace=False)  # no two alike

    background = rng.integers(215, 250)
    noise = rng.normal(0, 4, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    canvas = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(canvas, "RGB")
    draw = ImageDraw.Draw(image)
    cell = IMAGE_SIZE / 3
    objects = []
    for cell_index, pair in zip(cells, pairs):
        row, col = divmod(int(cell_index), 3)
        shape = SHAPES[int(pair) % len(SHAPES)]
        colour = list(COLOURS)[int(pair) // len(SHAPES)]
        r = int(rng.integers(_RADIUS_RANGE[0], _RADIUS_RANGE[1] + 1))
        slack = cell / 2 - r - 1
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        jitter = rng.integers(-15, 16, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
        _draw_shape(draw, shape, cx, cy, r, fill)
        mask_image = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
        _draw_shape(ImageDraw.Draw(mask_image), shape, cx, cy, r, 255)
        objects.append(
            SceneObject(shape, colour, row, col, (cx, cy), r, np.asarray(mask_image) > 127)
        )
    return Scene(seed, image, tuple(objects))


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


def make_example(scene: Scene, task: str, rng: np.random.Generator) -> Example:
    """A question of the given task about the scene, with its exact answer."""
    objs = scene.objects
    if task == "caption":
        return Example(task, "describe the image.", scene.caption())
    if task == "colour":
        shape_counts = {s: sum(o.shape == s for o in objs) for s in SHAPES}
        unique = [o for o in objs if shape_counts[o.shape] == 1]
        if not unique:  # every shape repeated: say which one by where it is
            o = objs[int(rng.integers(len(objs)))]
            subject = f"the {o.shape} on the {o.where}"
        else:
            o = unique[int(rng.integers(len(unique)))]
            subject = f"the {o.shape}"
        return Example(task, f"what color is {subject}?", f"{subject} is {o.colour}")
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
