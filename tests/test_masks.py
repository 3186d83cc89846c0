"""Ground-truth masks: demo scenes, COCO files (pycocotools), mask images; resizing and clear errors."""

import json

import numpy as np
import pytest
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.metrics.masks import coco_masks, fit_mask, load_coco, mask_from_image, token_masks
from lvlm_studio.demo.pointing import scene_masks
from lvlm_studio.demo.scenes import make_scene


def test_fit_mask_keeps_a_matching_mask():
    mask = np.zeros((6, 8), bool)
    mask[1:3, 2:5] = True
    assert np.array_equal(fit_mask(mask, (8, 6)), mask)
    assert np.array_equal(fit_mask(mask.astype(np.uint8) * 255, (8, 6)), mask)  # 0/255
    assert np.array_equal(fit_mask(mask.astype(float), (8, 6)), mask)  # 0/1


def test_fit_mask_resizes_with_a_warning():
    small = np.zeros((3, 4), bool)
    small[0, 0] = True
    with pytest.warns(UserWarning, match="resized"):
        big = fit_mask(small, (8, 6))
    assert big.shape == (6, 8)
    assert big[:2, :2].all() and big.sum() == 4  # nearest neighbour: one cell becomes 2x2 pixels


def test_empty_and_malformed_masks_are_errors():
    with pytest.raises(InputError, match="empty"):
        fit_mask(np.zeros((4, 4), bool), (4, 4))
    with pytest.raises(InputError, match="shape"):
        fit_mask(np.zeros(5), (4, 4))


def test_mask_from_image(tmp_path):
    pixels = np.zeros((10, 12), np.uint8)
    pixels[2:5, 3:9] = 255
    Image.fromarray(pixels).save(tmp_path / "mask.png")
    assert mask_from_image(tmp_path / "mask.png", (12, 10)).sum() == 18
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="could not be read"):
        mask_from_image(tmp_path / "broken.png", (12, 10))
    with pytest.raises(InputError, match="does not exist"):
        mask_from_image(tmp_path / "missing.png", (12, 10))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "black.png")
    with pytest.raises(InputError, match="empty"):
        mask_from_image(tmp_path / "black.png", (12, 10))


def write_coco(path, segmentation_boxes, width=20, height=10, name="img.png"):
    """A COCO file with one image and a polygon annotation per (category, box)."""
    categories = sorted({c for c, _ in segmentation_boxes})
    annotations = []
    for i, (category, (x0, y0, x1, y1)) in enumerate(segmentation_boxes):
        annotations.append({"id": i + 1, "image_id": 1, "category_id": categories.index(category) + 1,
                            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]], "iscrowd": 0,
                            "area": float((x1 - x0) * (y1 - y0)), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": f"train/{name}", "width": width, "height": height}],
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(categories)],
    }))
    return path


def test_coco_masks(tmp_path):
    path = write_coco(tmp_path / "ann.json", [("dog", (2, 2, 6, 6)), ("dog", (10, 2, 14, 6)),
                                              ("traffic light", (16, 0, 18, 8))])
    masks = coco_masks(path, "img.png", (20, 10))
    assert set(masks) == {"dog", "traffic light", "light"}
    # pycocotools rasterises a polygon over x in [x0, x1), y in [y0, y1): 4 x 4 pixels per dog box
    assert masks["dog"].sum() == 32 and masks["dog"][3, 3] and masks["dog"][3, 11] and not masks["dog"][3, 8]
    assert np.array_equal(masks["light"], masks["traffic light"])
    with pytest.warns(UserWarning, match="resized"):
        assert coco_masks(path, "img.png", (40, 20))["dog"].shape == (20, 40)
    with pytest.raises(InputError, match="no image named"):
        coco_masks(path, "other.png", (20, 10))


def test_coco_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_coco(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"images": "nope"}))
    with pytest.raises(InputError, match="COCO"):
        load_coco(tmp_path / "bad.json")
    empty = write_coco(tmp_path / "empty.json", [])
    with pytest.raises(InputError, match="no non-empty object mask"):
        coco_masks(empty, "img.png", (20, 10))


def test_scene_masks_and_token_lookup():
    scene = make_scene(2_000_000_007)
    tokens = scene.caption().replace(",", " ,").split()
    masks = scene_masks(scene, tokens)
    first = sorted(scene.objects, key=lambda o: (o.row, o.col))[0]
    assert np.array_equal(masks[first.colour], scene.mask_for_word(first.colour))
    found = token_masks(masks, tokens)
    assert np.array_equal(found[1], first.mask)  # "a <colour> ...": token 1 names the first object
    assert 0 not in found  # "a" names nothing
    assert set(token_masks({"dog": first.mask}, ["\u0120Dogs", "dog."])) == {0, 1}  # plural, markers, punctuation
