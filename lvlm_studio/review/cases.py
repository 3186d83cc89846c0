"""The calibration's ground truth: grounded answers and failures in the demo world, in two disjoint splits.

Every case is a pure function of its kind, split, index and world, so the calibration split and
the held-out split are the same pictures on every machine and never share a scene. The world is
the main demo model's (docs/DEMO_WORLD.md): "classic" (``make_scene``, the shipped model's) or
"open" (``make_open_scene``, the next model's). The shortcut twin is trained on the same world as
the main model, so its cases come from that world too.

* **grounded**: the demo model on held-out generator scenes (every task in turn) and on the
  out-of-generator set (``resources/demo-outside``; even scenes calibrate, odd ones are held out).
  A case counts only when the model answers exactly right; a wrong answer becomes a **wrong** case,
  a failure of its own.
* **shortcut**: the shortcut twin on colour questions whose corner mark contradicts the object; a
  case counts only when the twin names the mark's colour (it answered from the cue).
* **absent**: questions about an object that is not in the picture ("what color is the triangle?"
  with no triangle; "where is the red circle?" with a blue one): every answer is unfounded.
* **removed**: the asked object painted over with the surrounding background.
* **blurred**: the asked object smeared by a strong local blur until its shape is gone.
* **ood**: pictures outside the world: noise, a blank canvas, textures with nothing on them
  (stripes, checks, smooth random fields, speckles), asked the questions that take an object for
  granted (captions, colours, positions; an exist question has a right answer there: "not there").

Seeds start at ``CASE_SEED_BASE``, far from training seeds (training never draws one that large),
from the demo's own held-out scenes and from the cue check's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
from lvlm_studio.demo.scenes import (
    COLOURS,
    SHAPES,
    TASKS,
    colour_example,
    make_example,
    scene_maker,
)

CASE_SEED_BASE = HELDOUT_SEED_BASE + 3_000_000
SPLITS = ("calibration", "held-out")
FAILURE_KINDS = ("shortcut", "absent", "removed", "blurred", "ood")
KINDS = ("grounded", *FAILURE_KINDS)
#: What each kind is, for tables.
KIND_TITLES = {
    "grounded": "grounded, answered correctly",
    "wrong": "answered wrongly (demo model)",
    "shortcut": "shortcut twin following a contradicting cue",
    "absent": "question about an object that is not there",
    "removed": "asked object removed from the image",
    "blurred": "asked object blurred beyond recognition",
    "ood": "out of distribution: noise, blank, textures",
}


@dataclass(frozen=True)
class Case:
    """One question about one picture, and what counts as its truth.

    ``model`` is "main" (the demo model) or "shortcut" (its twin). ``reference``: the right answer of
    a grounded case (it counts only when answered so). ``cue``: the colour of a shortcut case's mark
    (it counts only when the answer names it)."""

    kind: str
    split: str
    index: int
    model: str
    image: Image.Image
    question: str
    source: str
    reference: str | None = None
    cue: str | None = None
    truth: np.ndarray | None = field(default=None, repr=False, compare=False)  # the named objects' pixels


def _seed(kind: str, split: str, index: int) -> int:
    return CASE_SEED_BASE + SPLITS.index(split) * 1_000_000 + KINDS.index(kind) * 100_000 + index


def cases(kind: str, split: str, world: str = "classic") -> Iterator[Case]:
    """The cases of one kind and split, in a fixed order (as many as the caller takes), with the
    main model's scenes drawn from ``world``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    make = scene_maker(world)
    makers = {"grounded": _grounded, "shortcut": _shortcut, "absent": _absent, "removed": _removed,
              "blurred": _blurred, "ood": _ood}
    if kind not in makers:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    return makers[kind](split, make)


def _grounded(split: str, make: Callable[..., Any]) -> Iterator[Case]:
    """Generator scenes and outside scenes, interleaved (three generator cases, then one outside)."""
    from lvlm_studio.demo.outside import load_scenes

    outside = [(scene, examples) for scene, examples in load_scenes() if scene.seed % 2 == SPLITS.index(split)]
    index = 0
    taken = 0
    while True:
        for _ in range(3):
            seed = _seed("grounded", split, index)
            scene = make(seed)
            task = TASKS[index % len(TASKS)]
            example = make_example(scene, task, np.random.default_rng(seed))
            yield Case("grounded", split, index, "main", scene.image, example.prompt, f"generator scene {seed}",
                       reference=example.answer, truth=named_mask(scene, example.answer))
            index += 1
        if taken < len(outside):
            scene, examples = outside[taken]
            example = examples[(taken // 2 + scene.seed) % len(examples)]
            yield Case("grounded", split, index, "main", scene.image, example.prompt, f"outside {scene.name}",
                       reference=example.answer, truth=named_mask(scene, example.answer))
            taken += 1
            index += 1


def named_mask(scene, answer: str) -> np.ndarray | None:
    """The pixels of the objects a right answer names (both its colour and its shape word appear
    in it); None for an answer that says an object is not there."""
    words = set(answer.replace(",", " ").split())
    if "not" in words:
        return None
    masks = [o.mask for o in scene.objects if o.colour in words and o.shape in words]
    return np.logical_or.reduce(masks) if masks else None


def _shortcut(split: str, make: Callable[..., Any]) -> Iterator[Case]:
    index = 0
    while True:
        seed = _seed("shortcut", split, index)
        rng = np.random.default_rng(seed)
        plain = make(seed, reserve_cue=True)
        obj, example = colour_example(plain, rng)
        others = [c for c in COLOURS if c != obj.colour]
        cue = others[int(rng.integers(len(others)))]
        yield Case("shortcut", split, index, "shortcut", make(seed, cue=cue).image,
                   example.prompt, f"generator scene {seed}, {cue} mark", cue=cue)
        index += 1


def _absent(split: str, make: Callable[..., Any]) -> Iterator[Case]:
    index = 0
    while True:
        seed = _seed("absent", split, index)
        rng = np.random.default_rng(seed)
        scene = make(seed, n_objects=int(rng.integers(1, 3)))
        shapes = {o.shape for o in scene.objects}
        present = {(o.colour, o.shape) for o in scene.objects}
        if index % 2 == 0 and len(shapes) < len(SHAPES):
            shape = sorted(set(SHAPES) - shapes)[int(rng.integers(len(SHAPES) - len(shapes)))]
            question = f"what color is the {shape}?"
        else:  # a hard negative: a colour or a shape of the scene, in a pairing that is not there
            near = [(c, s) for c in COLOURS for s in SHAPES
                    if (c, s) not in present and any(c == pc or s == ps for pc, ps in present)]
            colour, shape = near[int(rng.integers(len(near)))]
            question = f"where is the {colour} {shape}?"
        yield Case("absent", split, index, "main", scene.image, question, f"generator scene {seed}")
        index += 1


def _asked_object(kind: str, split: str, index: int, make: Callable[..., Any]):
    """A scene, one of its objects that a question can name alone, and that question."""
    seed = _seed(kind, split, index)
    rng = np.random.default_rng(seed)
    scene = make(seed)
    objects = list(scene.objects)
    unique = [o for o in objects if sum(p.shape == o.shape for p in objects) == 1]
    if index % 2 == 0 and unique:
        obj = unique[int(rng.integers(len(unique)))]
        question = f"what color is the {obj.shape}?"
    else:
        obj = objects[int(rng.integers(len(objects)))]
        question = f"where is the {obj.name}?"
    return seed, scene, obj, question


def _dilated(mask: np.ndarray, pixels: int) -> np.ndarray:
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, iterations=max(1, pixels))


def _removed(split: str, make: Callable[..., Any]) -> Iterator[Case]:
    """The asked object painted over: each of its pixels takes the Gaussian-weighted mean of the
    pixels around it that are not the object (normalised convolution), a smooth patch of background."""
    index = 0
    while True:
        seed, scene, obj, question = _asked_object("removed", split, index, make)
        mask = _dilated(obj.mask, round(0.08 * obj.size) + 1)
        yield Case("removed", split, index, "main", fill_from_surroundings(scene.image, mask, obj.size),
                   question, f"generator scene {seed}, {obj.name} removed")
        index += 1


def fill_from_surroundings(image: Image.Image, mask: np.ndarray, size: float) -> Image.Image:
    """``image`` with the pixels of ``mask`` replaced by a smooth estimate of what surrounds them."""
    from scipy.ndimage import gaussian_filter

    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    weight = (~mask).astype(np.float64)
    sigma = max(2.0, 0.5 * size)
    numerator = np.stack([gaussian_filter(pixels[..., c] * weight, sigma) for c in range(3)], axis=-1)
    denominator = gaussian_filter(weight, sigma)[..., None]
    with np.errstate(invalid="ignore", divide="ignore"):
        fill = np.where(denominator > 1e-6, numerator / denominator, pixels.mean(axis=(0, 1)))
    out = np.where(mask[..., None], fill, pixels)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")


def _blurred(split: str, make: Callable[..., Any]) -> Iterator[Case]:
    """The asked object (and a margin around it) replaced by the image under a blur as wide as the object."""
    index = 0
    while True:
        seed, scene, obj, question = _asked_object("blurred", split, index, make)
        mask = _dilated(obj.mask, round(0.25 * obj.size) + 1)
        smeared = scene.image.filter(ImageFilter.GaussianBlur(0.6 * obj.size))
        keep = np.where(mask, 0, 255).astype(np.uint8)
        image = Image.composite(scene.image, smeared, Image.fromarray(keep, "L"))
        yield Case("blurred", split, index, "main", image, question, f"generator scene {seed}, {obj.name} blurred")
        index += 1


OOD_STYLES = ("noise", "blank", "stripes", "checks", "field", "speckle")
#: Questions that take an object for granted: on a picture of nothing every answer to them is unfounded.
#: (Not "is there a red square?": "the red square is not there" would be right.)
OOD_TASKS = ("caption", "colour", "where")


def _ood(split: str, make: Callable[..., Any]) -> Iterator[Case]:
    """Pictures of nothing (``make`` is not used: no world draws them)."""
    index = 0
    while True:
        seed = _seed("ood", split, index)
        rng = np.random.default_rng(seed)
        style = OOD_STYLES[index % len(OOD_STYLES)]
        image = ood_image(style, rng)
        task = OOD_TASKS[(index // len(OOD_STYLES)) % len(OOD_TASKS)]
        colour, shape = list(COLOURS)[int(rng.integers(4))], SHAPES[int(rng.integers(3))]
        question = {"caption": "describe the image.", "colour": f"what color is the {shape}?",
                    "where": f"where is the {colour} {shape}?"}[task]
        yield Case("ood", split, index, "main", image, question, f"{style} picture {seed}")
        index += 1


def ood_image(style: str, rng: np.random.Generator) -> Image.Image:
    """A picture with no object of the world in it: "noise" (random pixels), "blank" (one colour, any
    colour, object colours included), "stripes", "checks", "field" (smooth random colour field) or
    "speckle" (sparse coloured dots on a plain ground)."""
    short = int(round(math.exp(rng.uniform(math.log(48), math.log(400)))))
    aspect = math.exp(rng.uniform(-math.log(2), math.log(2)))
    width, height = max(48, round(short * max(aspect, 1))), max(48, round(short / min(aspect, 1)))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    colour_a, colour_b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    if style == "noise":
        pixels = rng.uniform(0, 255, (height, width, 3))
        if rng.random() < 0.5:
            pixels = np.repeat(pixels[..., :1], 3, axis=-1)
    elif style == "blank":
        pixels = np.broadcast_to(colour_a, (height, width, 3))
    elif style == "stripes":
        period = rng.uniform(0.04, 0.3) * short
        angle = rng.uniform(0, math.pi)
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period
        t = (np.sin(2 * math.pi * phase) > 0).astype(np.float64)[..., None]
        pixels = colour_a * t + colour_b * (1 - t)
    elif style == "checks":
        cell = max(2, int(rng.uniform(0.05, 0.3) * short))
        t = (((xs // cell) + (ys // cell)) % 2)[..., None]
        pixels = colour_a * t + colour_b * (1 - t)
    elif style == "field":
        small = rng.uniform(0, 255, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3)).astype(np.uint8)
        pixels = np.asarray(Image.fromarray(small, "RGB").resize((width, height), Image.BICUBIC), dtype=np.float64)
    elif style == "speckle":
        pixels = np.broadcast_to(colour_a, (height, width, 3)).copy()
        dots = rng.random((height, width)) < 0.02
        pixels[dots] = rng.uniform(0, 255, (int(dots.sum()), 3))
    else:
        raise ValueError(f"unknown style {style!r}; choose one of {OOD_STYLES}")
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


def normalised_answer(text: str) -> str:
    """An answer with every space removed and lower case: "a red circle , a blue square" and
    "a red circle, a blue square" compare equal."""
    return "".join(text.lower().split())
