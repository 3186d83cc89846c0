"""Put a sparse coder inside the running model: replace activations by their reconstruction, by
zeros, or edit single features, at the rows the coder reads (patches, class tokens or text).

Two kinds of splice, for two questions:

* ``reconstruct`` replaces x by x̂ (and ``zero`` by 0): how much of what the model needs does the
  coder keep? (the substitution test, CE recovered).
* ``edit`` changes chosen features and adds only the change, x + (x̂(f′) − x̂(f)), so the coder's
  reconstruction error stays in place and the edit is the only difference: what does this feature
  do? (ablation, scaling, steering).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from lvlm_studio.core.models.hooks import HookFn, HookPoint, hook_points
from lvlm_studio.sae.activations import vision_rows
from lvlm_studio.sae.coders import SparseAutoencoder

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

FeatureEdit = Callable[[torch.Tensor], torch.Tensor]


def row_index(loaded: LoadedModel, coder: SparseAutoencoder, inputs: dict[str, torch.Tensor],
              activation: torch.Tensor) -> torch.Tensor:
    """Indices into ``activation`` flattened to [rows, d] of the rows the coder reads."""
    point = hook_points(loaded)[coder.cfg.hook_name]
    flat_rows = activation.reshape(-1, activation.shape[-1]).shape[0]
    if point.part == "projector" or coder.cfg.tokens == "all" and point.part != "vision":
        return torch.arange(flat_rows)
    if point.part == "language":
        ids = inputs["input_ids"].reshape(-1)
        image_id = _image_token_id(loaded)
        keep = (ids != image_id).nonzero()[:, 0]
        return keep[keep < flat_rows].cpu()
    index = torch.arange(flat_rows, dtype=torch.float32).reshape(*activation.shape[:-1], 1)
    grids = loaded.adapter.vision_patch_grids(inputs)
    return vision_rows(index, grids, coder.cfg.tokens)[:, 0].long()


def _image_token_id(loaded: LoadedModel) -> int:
    from lvlm_studio.sae.activations import _image_token_id as find

    return find(loaded)


def splice_hook(loaded: LoadedModel, coder: SparseAutoencoder, inputs: dict[str, torch.Tensor], mode: str,
                edit: FeatureEdit | None = None, rows: torch.Tensor | None = None,
                record: dict[str, torch.Tensor] | None = None) -> HookFn:
    """A hook function for ``coder.cfg.hook_name`` that applies ``mode`` ("reconstruct", "zero",
    "edit") at the coder's rows (or at ``rows`` of those, for an edit confined to some patches).

    Vision and projector hook points are spliced on every call (a generation may run the tower
    more than once on the same image); a language hook point only on calls over exactly the
    prompt in ``inputs`` (a generation's later steps add positions the coder did not select).
    ``record`` receives the features of the rows, when given.
    """
    language = hook_points(loaded)[coder.cfg.hook_name].part == "language"

    def hook(activation: torch.Tensor, point: HookPoint) -> torch.Tensor | None:
        if language and activation.reshape(-1, activation.shape[-1]).shape[0] != inputs["input_ids"].numel():
            return None
        index = row_index(loaded, coder, inputs, activation).to(activation.device)
        flat = activation.reshape(-1, activation.shape[-1])
        x = flat.index_select(0, index).float()
        coder_device = coder.W_enc.device
        f = coder.encode(x.to(coder_device))
        if record is not None:
            record["features"], record["index"] = f.detach(), index
        if mode == "reconstruct":
            new = coder.decode(f, x.to(coder_device))
        elif mode == "zero":
            new = torch.zeros_like(x)
        elif mode == "edit":
            if edit is None:
                raise ValueError("an edit splice needs an edit function")
            edited = edit(f)
            if rows is not None:  # confine the edit to some of the rows
                keep = torch.ones(len(f), dtype=torch.bool, device=f.device)
                keep[rows] = False
                edited = torch.where(keep[:, None], f, edited)
            new = x.to(coder_device) + coder.decode(edited, x) - coder.decode(f, x)
        else:
            raise ValueError(f"unknown splice mode {mode!r}")
        out = flat.clone()
        out[index] = new.to(flat.dtype).to(flat.device)
        return out.reshape(activation.shape)

    return hook


def scale_features(features: dict[int, float]) -> FeatureEdit:
    """An edit that multiplies feature i by ``features[i]`` (0 ablates; 2 doubles; −1 negates)."""

    def edit(f: torch.Tensor) -> torch.Tensor:
        f = f.clone()
        for feature, factor in features.items():
            f[:, feature] = f[:, feature] * factor
        return f

    return edit


def set_features(features: dict[int, float]) -> FeatureEdit:
    """An edit that clamps feature i to ``features[i]`` on every row (steering)."""

    def edit(f: torch.Tensor) -> torch.Tensor:
        f = f.clone()
        for feature, value in features.items():
            f[:, feature] = value
        return f

    return edit
