"""Activations to train and evaluate sparse coders on, streamed a forward pass at a time.

Vision hook points give one row per image patch (``tokens="patch"``), per class token ("cls") or
both ("all"); language hook points give one row per text position of a teacher-forced prompt +
answer ("text"), image positions left out so that vision and language sparsity can be compared on
their own tokens. Nothing is held beyond one pass: the trainer keeps its own shuffle buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.hooks import hook_points, run_with_cache, select

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

VISION_TOKENS = ("patch", "cls", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_PROMPT = "describe the image."
#: Demo scenes for coder training start here: far below the held-out seeds (2e9) and above the
#: demo model's own training draws.
TRAINING_SEED_BASE = 1_000_000_000


def folder_images(folder: str | Path) -> list[Path]:
    """The image files of a folder (not recursive), sorted, so runs and resumes see one order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder.", "Give a folder of PNG or JPEG images.")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{folder} holds no images.", f"Put images ({', '.join(IMAGE_SUFFIXES)}) in it.")
    return files


def demo_images(count: int, start: int = TRAINING_SEED_BASE) -> Iterator[Image.Image]:
    """``count`` generated demo scenes from seed ``start`` upward."""
    from lvlm_studio.demo.scenes import make_scene

    for seed in range(start, start + count):
        yield make_scene(seed).image


def open_images(paths: Iterable[str | Path | Image.Image]) -> Iterator[Image.Image]:
    from lvlm_studio.core.io.images import open_image

    for path in paths:
        yield open_image(path).convert("RGB")


def image_inputs(loaded: LoadedModel, images: Sequence[Image.Image], prompt: str = DEFAULT_PROMPT
                 ) -> dict[str, torch.Tensor]:
    """Processor outputs for ``images`` (one prompt each), on the model's device and dtype."""
    from lvlm_studio.core.tracing.trace import prompt_with_template

    text = prompt_with_template(loaded.processor, prompt)
    encoded = loaded.processor(images=[[im] for im in images], text=[text] * len(images), return_tensors="pt",
                               padding=True)
    inputs = {k: v.to(loaded.device) for k, v in encoded.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(loaded.model.dtype)
    return inputs


def vision_rows(activation: torch.Tensor, grids: Sequence[np.ndarray], tokens: str) -> torch.Tensor:
    """The rows of a vision activation that ``tokens`` asks for, image by image, patches row-major.

    A class token is recognised as the row just before each image's first patch in a [tiles,
    tokens, d] activation with one token more than patches per tile.
    """
    if tokens not in VISION_TOKENS:
        raise InputError(f"tokens={tokens!r} is not a vision token kind.",
                         f"Choose one of: {', '.join(VISION_TOKENS)}.")
    flat = activation.reshape(-1, activation.shape[-1])
    patch_index = [torch.as_tensor(g.reshape(-1)) for g in grids]
    has_cls = activation.dim() == 3 and activation.shape[1] == grids[0].size + 1
    if tokens == "cls" and not has_cls:
        raise InputError("this vision tower has no class token.", "Use tokens=patch.")
    cls_index = [torch.as_tensor([int(g.min()) - 1]) for g in grids] if has_cls else []
    if tokens == "patch":
        rows = patch_index
    elif tokens == "cls":
        rows = cls_index
    else:
        rows = [torch.cat([c, p]) for c, p in zip(cls_index, patch_index)] if has_cls else patch_index
    return flat.index_select(0, torch.cat(rows).to(flat.device))


def check_hook(loaded: LoadedModel, hook_name: str, tokens: str) -> str:
    """Refuse hook points a sparse coder cannot read with these tokens; return the point's part."""
    points = hook_points(loaded)
    select(points, [hook_name])
    point = points[hook_name]
    if point.where == "pattern":
        raise InputError("attention patterns are not a vector per token; a sparse coder cannot read them.",
                         "Choose a residual-stream, attention-output or MLP hook point.")
    if point.part == "language" and tokens != "text":
        raise InputError(f"{hook_name} is in the language model, which is read at text positions.",
                         "Use tokens=text.")
    if point.part != "language" and tokens == "text":
        raise InputError(f"{hook_name} is not in the language model.", "Use tokens=patch, cls or all.")
    return point.part


@torch.no_grad()
def image_batch_rows(loaded: LoadedModel, hook_names: Sequence[str], images: Sequence[Image.Image], tokens: str,
                     prompt: str = DEFAULT_PROMPT) -> list[torch.Tensor]:
    """Rows [n, d] per hook point for a batch of images at vision or projector hook points (one
    forward pass, stopped once the last of them has been read)."""
    inputs = image_inputs(loaded, images, prompt)
    _, cache = run_with_cache(loaded, inputs, list(hook_names))
    points = hook_points(loaded)
    grids = loaded.adapter.vision_patch_grids(inputs)
    out = []
    for name in hook_names:
        activation = cache[name]
        if points[name].part == "projector":
            out.append(activation.reshape(-1, activation.shape[-1]).float())
        else:
            out.append(vision_rows(activation, grids, tokens).float())
    return out


@torch.no_grad()
def text_rows(loaded: LoadedModel, hook_names: Sequence[str], image: Image.Image, prompt: str, answer: str
              ) -> list[torch.Tensor]:
    """Rows [text positions, d] per language hook point over prompt + answer (teacher forced)."""
    from lvlm_studio.core.models.inputs import forward_inputs
    from lvlm_studio.core.tracing.trace import prompt_with_template

    text = prompt_with_template(loaded.processor, prompt)
    encoded = loaded.processor(images=[image], text=[text], return_tensors="pt")
    answer_ids = loaded.processor.tokenizer(answer, add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([encoded["input_ids"], answer_ids], dim=1).to(loaded.device)
    extras = {k: v.to(loaded.device) for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
    inputs = forward_inputs(ids, extras, loaded.model.dtype, loaded.adapter.generated_token_inputs)
    _, cache = run_with_cache(loaded, inputs, list(hook_names))
    keep = (ids[0] != _image_token_id(loaded)).nonzero()[:, 0]
    return [cache[name][0].index_select(0, keep.to(cache[name].device)).float() for name in hook_names]


def _image_token_id(loaded: LoadedModel) -> int:
    config = loaded.model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return -1


def demo_text_examples(count: int, start: int = TRAINING_SEED_BASE) -> Iterator[tuple[Image.Image, str, str]]:
    """(image, prompt, reference answer) of every demo task in turn, from seed ``start`` upward."""
    from lvlm_studio.demo.scenes import TASKS, make_example, make_scene

    rng = np.random.default_rng(start)
    for i in range(count):
        scene = make_scene(start + i)
        example = make_example(scene, TASKS[i % len(TASKS)], rng)
        yield scene.image, example.prompt, example.answer
