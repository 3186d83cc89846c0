"""The out-of-generator test set (resources/demo-outside): every scene obeys the demo world's rules,
every answer is the one right answer, and the committed files are what the code builds.

The rules are restated here from the world's description, not imported from the builder, so a
builder bug cannot pass its own check."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from lvlm_studio.demo.outside import OUTSIDE_DIR, build, outside_examples
from lvlm_studio.demo.scenes import TASKS, Example

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
HUES = {"red": (345, 15), "yellow": (45, 65), "green": (90, 150), "blue": (200, 245)}
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")


def hsv(rgb) -> np.ndarray:
    """Hue (degrees), saturation, value of RGB rows (0-255)."""
    rgb = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0
    hi, lo = rgb.max(axis=1), rgb.min(axis=1)
    span = np.where(hi > lo, hi - lo, 1.0)
    r, g, b = rgb.T
    hue = np.select([hi == lo, hi == r, hi == g], [0.0, ((g - b) / span) % 6, (b - r) / span + 2], (r - g) / span + 4)
    return np.stack([hue * 60.0, np.where(hi > 0, (hi - lo) / np.where(hi > 0, hi, 1), 0.0), hi], axis=1)


def colour_name(h, s, v, s_floor=0.55, v_floor=0.5) -> str | None:
    if s < s_floor or v < v_floor:
        return None
    for name, (lo, hi) in HUES.items():
        if (lo <= h <= hi) if lo < hi else (h >= lo or h <= hi):
            return name
    return None


def object_coloured(pixels) -> np.ndarray:
    """Per pixel: would it pass for an object colour?"""
    return np.array([colour_name(*p) is not None for p in hsv(pixels)], dtype=bool)


def allowed_background(h, s, v, slack=0.0) -> bool:
    """Grey, pale, or dark and muted; near black (value under 0.1) is black whatever its hue says."""
    return v < 0.1 or s <= 0.3 + slack or (v <= 0.35 + slack and s <= 0.4 + slack)


def where(row, col) -> str:
    if (row, col) == (1, 1):
        return "center"
    if row == 1:
        return COLS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


def in_words(objects) -> str:
    parts = [f"a {o['colour']} {o['shape']}" for o in sorted(objects, key=lambda o: (o["row"], o["col"]))]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


@pytest.fixture(scope="module")
def scenes():
    """(record, image array, label array) for every committed scene."""
    data = json.loads((OUTSIDE_DIR / "answers.json").read_text(encoding="utf-8"))
    out = []
    for record in data["scenes"]:
        with Image.open(OUTSIDE_DIR / record["image"]) as im:
            assert im.format == ("JPEG" if record["image"].endswith(".jpg") else "PNG")
            image = np.asarray(im.convert("RGB"))
        with Image.open(OUTSIDE_DIR / record["mask"]) as im:
            assert im.mode == "L"
            labels = np.asarray(im)
        out.append((record, image, labels))
    return out


def test_the_set_is_large_and_varied(scenes):
    records = [r for r, _, _ in scenes]
    assert len(records) >= 120
    jpeg = sum(r["image"].endswith(".jpg") for r in records)
    assert 0.2 <= jpeg / len(records) <= 0.45 and jpeg < len(records)
    assert 0.05 <= sum(r["finish"] == "scanned" for r in records) / len(records) <= 0.2
    assert {r["style"] for r in records} == {"paint", "imagedraw", "vector", "marker", "crayon", "pen"}
    assert {r["background"]["kind"] for r in records} == {"plain", "gradient", "noise", "paper", "ruled", "grid"}
    assert {r["background"]["tone"] for r in records} >= {"white", "black", "light grey", "dark grey", "pastel"}
    sizes = {(r["width"], r["height"]) for r in records}
    assert {(48, 48), (64, 192), (640, 480), (320, 128), (200, 600), (512, 512)} <= sizes
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)
    counts = [len(r["objects"]) for r in records]
    assert {1, 2, 3} == set(counts) and min(counts.count(k) for k in (1, 2, 3)) >= 25
    assert {(o["colour"], o["shape"]) for r in records for o in r["objects"]} == {
        (c, s) for c in COLOURS for s in SHAPES}
    assert sum(f.stat().st_size for f in OUTSIDE_DIR.iterdir()) < 1.5e6


def test_image_sizes_obey_the_rules(scenes):
    for record, image, labels in scenes:
        h, w = image.shape[:2]
        assert (w, h) == (record["width"], record["height"]) and labels.shape == (h, w)
        assert 48 <= min(w, h) <= 640, record["image"]
        assert max(w, h) <= 3 * min(w, h), record["image"]


def test_masks_agree_with_the_objects_and_the_objects_with_the_rules(scenes):
    for record, _, labels in scenes:
        name, objects = record["image"], record["objects"]
        h, w = labels.shape
        short, long = min(w, h), max(w, h)
        assert 1 <= len(objects) <= 3, name
        assert set(np.unique(labels)) == set(range(len(objects) + 1)), name
        assert len({(o["colour"], o["shape"]) for o in objects}) == len(objects), name
        assert len({(o["row"], o["col"]) for o in objects}) == len(objects), name  # one object a cell
        for i, o in enumerate(objects):
            mask = labels == i + 1
            ys, xs = np.nonzero(mask)
            assert o["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], name
            x0, y0, x1, y1 = o["bbox"]
            fx, fy = 3 * (x0 + x1) / 2 / w, 3 * (y0 + y1) / 2 / h
            assert (o["row"], o["col"]) == (int(fy), int(fx)), name
            assert 0.12 <= fx - int(fx) <= 0.88 and 0.12 <= fy - int(fy) <= 0.88, name  # clearly inside its cell
            for side in (x1 - x0, y1 - y0):
                assert max(0.08 * short, 0.1 * long) <= side <= 0.45 * short, name
                if len(objects) > 1:
                    assert side <= min(w, h) / 3 + 1, name
            others = (labels > 0) & ~mask
            assert not (ndimage.binary_dilation(mask) & others).any(), f"{name}: objects touch"


def test_objects_are_drawn_in_their_colour_and_roughly_their_shape(scenes):
    fill_ratio = {"circle": (0.66, 0.9), "square": (0.55, 1.0), "triangle": (0.35, 0.66)}
    for record, image, labels in scenes:
        for i, o in enumerate(record["objects"]):
            mask = labels == i + 1
            inner = ndimage.binary_erosion(mask, iterations=1)
            inner = inner if inner.sum() >= 6 else mask
            h, s, v = hsv(np.median(image[inner], axis=0))[0]
            assert colour_name(h, s, v, s_floor=0.5, v_floor=0.45) == o["colour"], (record["image"], o, (h, s, v))
            x0, y0, x1, y1 = o["bbox"]
            lo, hi = fill_ratio[o["shape"]]
            assert lo <= mask.sum() / ((x1 - x0) * (y1 - y0)) <= hi, (record["image"], o)


def test_backgrounds_obey_the_rules(scenes):
    for record, image, labels in scenes:
        name = record["image"]
        for colour in record["background"]["colours"]:
            assert allowed_background(*hsv(colour)[0]), (name, colour)
            assert not object_coloured([colour]).any(), (name, colour)
        far = ~ndimage.binary_dilation(labels > 0, iterations=max(3, min(labels.shape) // 40))
        pixels = image[far]
        assert object_coloured(pixels).mean() < 0.005, name
        h, w = labels.shape
        for ys in np.array_split(np.arange(h), 4):  # the background's colour, block by block
            for xs in np.array_split(np.arange(w), 4):
                block = far[np.ix_(ys, xs)]
                if block.mean() > 0.5:
                    mean = image[np.ix_(ys, xs)][block].mean(axis=0)
                    assert allowed_background(*hsv(mean)[0], slack=0.03), (name, mean)


def test_answers_follow_the_rules(scenes):
    negatives = near = located = 0
    for record, _, _ in scenes:
        objects = record["objects"]
        qa = {q["task"]: q for q in record["questions"]}
        assert sorted(qa) == sorted(TASKS) and len(record["questions"]) == 4
        assert qa["caption"] == {"task": "caption", "prompt": "describe the image.", "answer": in_words(objects)}

        shapes = [o["shape"] for o in objects]
        prompt = qa["colour"]["prompt"]
        subject = prompt.removeprefix("what color is ").removesuffix("?")
        if all(shapes.count(s) >= 2 for s in shapes):
            located += 1
            hits = [o for o in objects if subject == f"the {o['shape']} on the {where(o['row'], o['col'])}"]
        else:
            hits = [o for o in objects if subject == f"the {o['shape']}" and shapes.count(o["shape"]) == 1]
        assert len(hits) == 1, prompt
        assert qa["colour"]["answer"] == f"{subject} is {hits[0]['colour']}"

        colour, shape = qa["exist"]["prompt"].removeprefix("is there a ").removesuffix("?").split()
        there = any((o["colour"], o["shape"]) == (colour, shape) for o in objects)
        assert qa["exist"]["answer"] == f"the {colour} {shape} is {'there' if there else 'not there'}"
        if not there:
            negatives += 1
            near += any(o["colour"] == colour or o["shape"] == shape for o in objects)

        named = qa["where"]["prompt"].removeprefix("where is the ").removesuffix("?")
        (o,) = [o for o in objects if f"{o['colour']} {o['shape']}" == named]
        assert qa["where"]["answer"] == f"the {named} is at the {where(o['row'], o['col'])}"
    assert 0.35 <= negatives / len(scenes) <= 0.65
    assert near >= 0.6 * negatives
    assert located >= 5  # the "on the top left" form of colour questions is exercised


def test_loader_gives_scenes_shaped_like_the_training_ones(scenes):
    from lvlm_studio.demo.pointing import scene_masks

    for task in TASKS:
        pairs = outside_examples(task)
        assert len(pairs) == len(scenes)
        for (scene, example), (record, image, labels) in zip(pairs, scenes):
            assert isinstance(example, Example) and example.task == task
            assert (example.prompt, example.answer) in [(q["prompt"], q["answer"]) for q in record["questions"]]
            assert scene.image.mode == "RGB" and scene.image.size == (record["width"], record["height"])
            if task == "caption":
                np.testing.assert_array_equal(np.asarray(scene.image), image)
                for i, obj in enumerate(scene.objects):
                    np.testing.assert_array_equal(obj.mask, labels == i + 1)
    scene, example = outside_examples("caption")[7]
    assert scene.caption() == example.answer
    for obj in scene.objects:
        assert obj.mask.dtype == bool and obj.mask.shape == scene.image.size[::-1]
        assert (scene.mask_for_word(obj.colour) >= obj.mask).all() and obj.mask.any()
        assert obj.where == where(obj.row, obj.col) and obj.name == f"{obj.colour} {obj.shape}"
    assert scene.mask_for_word("purple") is None
    masks = scene_masks(scene, example.answer.split())
    assert set(masks) >= {w for o in scene.objects for w in o.words}
    with pytest.raises(ValueError):
        outside_examples("count")


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im)


def test_the_committed_set_is_what_the_code_builds(tmp_path):
    build(tmp_path / "a")
    assert (tmp_path / "a" / "answers.json").read_bytes() == (OUTSIDE_DIR / "answers.json").read_bytes()
    committed = sorted(p.name for p in OUTSIDE_DIR.iterdir() if p.suffix in (".png", ".jpg"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix in (".png", ".jpg")) == committed
    for name in committed:  # pixels, not bytes: another zlib or libjpeg build may pack them differently
        new, old = _pixels(tmp_path / "a" / name).astype(int), _pixels(OUTSIDE_DIR / name).astype(int)
        if name.endswith(".png"):
            np.testing.assert_array_equal(new, old, err_msg=name)
        else:
            assert np.abs(new - old).mean() < 1.0, name
    build(tmp_path / "b", n=12)  # and building twice gives the same bytes
    for p in sorted((tmp_path / "b").iterdir()):
        if p.suffix in (".png", ".jpg"):
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            assert digest == hashlib.sha256((tmp_path / "a" / p.name).read_bytes()).hexdigest(), p.name
