"""Masks laid onto the processor's ``pixel_values``: differentiable perturbation for every family.

Optimisation methods (iGOS++) need the gradient of the answer's score with respect to a mask over
the image. ``perturb.blend`` alters the image in pixel space and sends it through the processor,
which is not differentiable; here the blend happens on the processed values instead:

    values = keep * values(image) + (1 - keep) * values(baseline)

Both images go through the same processor, so they have the same layout, and the processor's
normalisation is affine per channel, so blending normalised values equals normalising blended
pixels (up to the resampling of the mask itself).

What a family-agnostic blend needs is, for every element of ``pixel_values``, *where in the original
image it comes from* and *which image region's tokens read it*:

* Where: the processor is run on a black, a white and two "coordinate" images whose value grows
  linearly with x (or y). Every element is affine in its source pixel's value, so
  ``(v_ramp - v_black) / (v_white - v_black)`` recovers the ramp's value at the element's source,
  i.e. its x (or y) position in the original image, whatever the family does: resizing, centre
  crops, AnyRes tiles and padding, Qwen2-VL's flattened and temporally doubled patches. Elements
  where black and white give the same value are padding: no pixel of the image reaches them (and
  since the image and the baseline are padded alike, no mask changes them). Resolution is 1/255 of
  the image side, far finer than any mask.
* Which region: one pass through the vision side with gradients, stopped where the decoder would
  start; the elements with a non-zero gradient from a region's image tokens are the ones it reads
  (a LLaVA-NeXT base view reads the base crop, the high-res grid reads the tiles).

A mask per region is then sampled bilinearly at each element's position inside the region's box
(``grid_sample``), so the masks stay on their regions' grids as every other explanation does.

An adapter method with per-family code would do the same, but every new family would need its own
copy and its own test; these probes derive the map from the processor and the model themselves
(a few processor calls and one partial forward per trace). ``tests/test_pixel_masks.py`` checks,
for every tiny family, that a mask blended here equals the processor's output for the same blend
made in pixel space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.perturbation.perturb import processed_images
from lvlm_studio.core.tracing.scores import log_probability, logit_difference

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.tracing.trace import Trace

#: Black and white must differ by more than this (in processed units) for an element to count as
#: image content rather than padding.
_PADDING_TOLERANCE = 1e-4


@dataclass
class PixelLayout:
    """Where the elements of one trace's ``pixel_values`` come from, and the two inputs to blend.

    ``image`` and ``baseline`` are flat float32 copies of the processed values; ``extras`` the other
    processor outputs of one example (``image_sizes``, ``image_grid_thw``, ...). ``owners`` is
    [regions, elements] (bool): which regions' tokens read each element; ``coords`` is
    [regions, elements, 2]: the element's (x, y) inside each region's box in ``grid_sample``
    units (-1 at the box's left/top edge, +1 at its right/bottom edge).
    """

    image: torch.Tensor
    baseline: torch.Tensor
    shape: tuple[int, ...]
    extras: dict[str, torch.Tensor]
    owners: torch.Tensor
    coords: torch.Tensor
    position: torch.Tensor  # [elements, 2]: (x, y) in original-image pixels, NaN for padding

    def keep(self, masks: list[torch.Tensor]) -> torch.Tensor:
        """Per-element keep weights [batch, elements] from one mask per region ([batch, h, w] each).

        An element read by several regions takes the mean of their masks; one read by none keeps 1
        (no token sees it, so it cannot matter).
        """
        if len(masks) != self.owners.shape[0]:
            raise InputError(f"{len(masks)} masks for {self.owners.shape[0]} image regions.", "Give one per region.")
        batch = masks[0].shape[0]
        total = torch.zeros(batch, self.image.numel(), dtype=torch.float32, device=masks[0].device)
        count = self.owners.sum(dim=0).to(total.device)
        for region, mask in enumerate(masks):
            idx = torch.nonzero(self.owners[region]).squeeze(1).to(total.device)
            if idx.numel() == 0:
                continue
            grid = self.coords[region, idx].to(total.device)[None, None].expand(batch, -1, -1, -1)
            sampled = F.grid_sample(mask[:, None].float(), grid, mode="bilinear", padding_mode="border",
                                    align_corners=False)[:, 0, 0]  # [batch, n]
            total = total.index_add(1, idx, sampled)
        return torch.where(count > 0, total / count.clamp(min=1), torch.ones_like(total))

    def blend(self, keep: torch.Tensor, insertion: torch.Tensor | None = None) -> torch.Tensor:
        """Blended values [batch, elements]: ``keep`` of the image over the baseline, or, on the
        rows where ``insertion`` is True, ``keep`` of the baseline over the image."""
        first = self.image.to(keep.device)[None]
        second = self.baseline.to(keep.device)[None]
        if insertion is not None:
            flip = insertion.to(keep.device)[:, None]
            first, second = torch.where(flip, second, first), torch.where(flip, first, second)
        return keep * first + (1 - keep) * second

    def model_inputs(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Processor-style inputs for a batch of blended rows: ``pixel_values`` and the extras,
        each concatenated along its first axis (how processors batch images of one size)."""
        batch = values.shape[0]
        rows = values.reshape(batch, *self.shape)
        out = {k: torch.cat([v] * batch, dim=0) for k, v in self.extras.items()}
        out["pixel_values"] = torch.cat(list(rows), dim=0)
        return out


def ramp_images(size: tuple[int, int]) -> list[Image.Image]:
    """Black, white, and the x and y coordinate images for an image of ``size`` (width, height):
    pixel (i, j) of the x image holds round(255 (i + 0.5) / width) in every channel."""
    width, height = size
    x = np.rint(255 * (np.arange(width) + 0.5) / width).astype(np.uint8)
    y = np.rint(255 * (np.arange(height) + 0.5) / height).astype(np.uint8)
    xs = np.repeat(np.broadcast_to(x[None, :], (height, width))[..., None], 3, axis=2)
    ys = np.repeat(np.broadcast_to(y[:, None], (height, width))[..., None], 3, axis=2)
    return [Image.new("RGB", size, (0, 0, 0)), Image.new("RGB", size, (255, 255, 255)),
            Image.fromarray(np.ascontiguousarray(xs)), Image.fromarray(np.ascontiguousarray(ys))]


def element_positions(loaded: LoadedModel, trace: Trace) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) in original-image pixels of every ``pixel_values`` element, NaN where padding; and
    the element shape of one example's ``pixel_values``."""
    width, height = trace.image.size
    black, white, ramp_x, ramp_y = (_values(loaded, trace, im) for im in ramp_images(trace.image.size))
    span = white - black
    content = span.abs() > _PADDING_TOLERANCE
    safe = torch.where(content, span, torch.ones_like(span))
    fx = ((ramp_x - black) / safe).clamp(0, 1)
    fy = ((ramp_y - black) / safe).clamp(0, 1)
    position = torch.stack([fx * width, fy * height], dim=-1)
    position[~content] = float("nan")
    shape = tuple(processed_images(loaded, trace, [trace.image])["pixel_values"].shape)
    return position, torch.Size(shape)


def region_owners(loaded: LoadedModel, trace: Trace, values: torch.Tensor, shape: tuple[int, ...],
                  extras: dict[str, torch.Tensor], position: torch.Tensor) -> torch.Tensor:
    """[regions, elements] bool: the elements each region's image tokens depend on.

    One forward with gradients through the vision side only (stopped before the decoder runs) and
    one gradient per region of a random projection of its tokens' embeddings. Where that finds
    nothing (the image reaches the decoder other than through its input embeddings, as with
    cross-attention; or a region's tokens do not depend on the pixels at all, as in a random model
    whose projector is zero), a region owns the image elements that lie inside its box.
    """
    in_box = torch.stack([_inside(position, region.box) for region in trace.regions])
    if getattr(loaded.adapter, "image_entry", "tokens") != "tokens":
        return in_box
    probed = _probe_owners(loaded, trace, values, shape, extras)
    return torch.stack([p if p.any() else b for p, b in zip(probed, in_box)])


def _inside(position: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    left, top, right, bottom = box
    x, y = position[:, 0], position[:, 1]
    return (x >= left) & (x <= right) & (y >= top) & (y <= bottom)  # False for padding (NaN)


def _probe_owners(loaded: LoadedModel, trace: Trace, values: torch.Tensor, shape: tuple[int, ...],
                  extras: dict[str, torch.Tensor]) -> torch.Tensor:
    from lvlm_studio.core.models.inputs import forward_inputs

    leaf = values.detach().clone().reshape(shape).to(loaded.device).requires_grad_(True)
    captured: list[torch.Tensor] = []

    class _Stop(Exception):
        pass

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(kwargs["inputs_embeds"])
        raise _Stop()

    ids = torch.as_tensor(trace.input_ids, device=loaded.device)[None].long()
    inputs = forward_inputs(ids, {**{k: v.to(loaded.device) for k, v in extras.items()}, "pixel_values": leaf},
                            loaded.model.dtype, loaded.adapter.generated_token_inputs)
    handle = loaded.adapter.language_model().register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.enable_grad():
            try:
                loaded.model(**inputs, use_cache=False, logits_to_keep=1)
            except _Stop:
                pass
    finally:
        handle.remove()
    if not captured:
        raise InputError("the model's decoder never received image embeddings.",
                         "This family does not feed the decoder inputs_embeds; iGOS++ cannot be used with it.")
    embeds = captured[-1][0]
    generator = torch.Generator().manual_seed(0)
    owners = []
    for region in trace.regions:
        rows = embeds[torch.as_tensor(region.positions, device=embeds.device)].float()
        weights = torch.randn(rows.shape, generator=generator).to(rows.device)
        (grad,) = torch.autograd.grad((rows * weights).sum(), leaf, retain_graph=True)
        owners.append(grad.reshape(-1).abs() > 0)
    return torch.stack(owners).cpu()


def pixel_layout(loaded: LoadedModel, trace: Trace, baseline: Image.Image) -> PixelLayout:
    """Everything needed to blend ``trace.image`` with ``baseline`` through masks on its regions.

    Checks that the processor batches by concatenating along the first axis, which
    ``PixelLayout.model_inputs`` relies on.
    """
    single = processed_images(loaded, trace, [trace.image])
    pair = processed_images(loaded, trace, [trace.image, trace.image])
    for key, value in single.items():
        if not torch.equal(pair[key], torch.cat([value, value], dim=0)):
            raise InputError(f"this processor batches {key!r} in a way LVLM Studio does not know.",
                             "Masks on processed pixels need images batched along the first axis.")
    image = single["pixel_values"].float()
    base = processed_images(loaded, trace, [baseline])["pixel_values"].float()
    extras = {k: v for k, v in single.items() if k != "pixel_values"}
    position, shape = element_positions(loaded, trace)
    owners = region_owners(loaded, trace, image, shape, extras, position.reshape(-1, 2))
    coords = torch.zeros(len(trace.regions), image.numel(), 2)
    for r, region in enumerate(trace.regions):
        left, top, right, bottom = region.box
        coords[r, :, 0] = (position[..., 0].reshape(-1) - left) / (right - left) * 2 - 1
        coords[r, :, 1] = (position[..., 1].reshape(-1) - top) / (bottom - top) * 2 - 1
    coords = torch.nan_to_num(coords, nan=0.0)
    return PixelLayout(image.reshape(-1), base.reshape(-1), tuple(shape), extras, owners, coords,
                       position.reshape(-1, 2))


def _values(loaded: LoadedModel, trace: Trace, image: Image.Image) -> torch.Tensor:
    return processed_images(loaded, trace, [image])["pixel_values"].double()


def answer_logprobs_with_grad(loaded: LoadedModel, trace: Trace, inputs: dict[str, torch.Tensor],
                              batch: int, contrast: int | None = None) -> torch.Tensor:
    """log p of every answer token [batch, n_answer] for ``batch`` processed rows, differentiable
    in them. Teacher-forced over prompt + answer; the model's own attention implementation (only
    logits are read). Exact for confident tokens too (``core.tracing.scores``). With ``contrast``
    (a token id), each token's logit minus that token's instead (``logit_difference``), the same
    number as log p(token) - log p(contrast)."""
    from lvlm_studio.core.models.inputs import forward_inputs

    n = len(trace.answer_ids)
    ids = torch.as_tensor(trace.sequence_ids, device=loaded.device).long()[None].expand(batch, -1)
    extras = {k: v.to(loaded.device) for k, v in inputs.items()}
    inputs = forward_inputs(ids, extras, loaded.model.dtype, loaded.adapter.generated_token_inputs)
    out = loaded.model(**inputs, use_cache=False, logits_to_keep=n + 1)
    logits = out.logits[:, :-1]
    answer = torch.as_tensor(trace.answer_ids, device=logits.device).long()
    if contrast is not None:
        return logit_difference(logits, answer[None].expand(batch, -1), contrast)
    return log_probability(logits, answer[None].expand(batch, -1))
