"""Put a sparse coder inside the running model: replace activations by the coder's output, by
zeros, or edit single features, at the rows the coder reads (patches, class tokens or text).

Where it reads and where it writes (``splice_points``):

* an SAE reads x at ``hook_name`` and writes its reconstruction x̂ back there;
* a transcoder stands in for a computation (an MLP, say): it reads the computation's input x at
  ``hook_name`` and writes its prediction ŷ(x) in place of the computation's output y at
  ``hook_name_out``, in the same forward pass. Its features, and any edit of them, act on that
  output, and its quality is ŷ against the true y (SAELens's transcoders: f = act(x W_enc + b_enc),
  ŷ = f W_dec + b_dec, plus x W_skipᵀ for a skip-transcoder, all in ``coders.Transcoder``).

Both use the same two hook functions (``splice_hooks``): one keeps the coder's rows of x where the
coder reads, the other replaces the rows of y where it writes (for an SAE the same point, y = x).

Kinds of splice, for different questions:

* ``reconstruct`` replaces y by ŷ (and ``zero`` by 0): how much of what the model needs does the
  coder keep? (the substitution test, CE recovered, KL).
* ``edit`` changes chosen features and adds only the change, y + (ŷ(f′) − ŷ(f)), so the coder's
  error stays in place and the edit is the only difference: what does this feature do?
  (ablation, scaling, steering).
* ``attribute`` leaves the values as they are, y = ŷ(f) + (y − ŷ(f)) with the error held fixed,
  so gradients reach the features f (recorded in ``record``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.hooks import HookFn, HookPoint, hook_points, select
from lvlm_studio.sae.activations import vision_rows
from lvlm_studio.sae.coders import SparseAutoencoder

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

FeatureEdit = Callable[[torch.Tensor], torch.Tensor]
MODES = ("reconstruct", "zero", "edit", "attribute")
_HOOKS_HINT = "`lvlm-studio sae hooks` lists this model's hook points."


def splice_points(loaded: LoadedModel, coder: SparseAutoencoder) -> tuple[str, str]:
    """(where the coder reads, where it writes): ``hook_name`` twice for an SAE; ``hook_name`` and
    ``hook_name_out`` for a transcoder, which must name a later hook point of this model that gives
    one row per token, as its input does (an MLP's input and output, say)."""
    cfg = coder.cfg
    if cfg.kind == "crosscoder":
        raise InputError("a crosscoder reads several hook points at once and cannot be spliced in at one.",
                         "Use an SAE or a transcoder.")
    points = hook_points(loaded)
    select(points, [cfg.hook_name])  # an unknown name is refused with the list of names
    if cfg.kind != "transcoder":
        return cfg.hook_name, cfg.hook_name
    out = cfg.hook_name_out
    if not out:
        raise InputError(f"this transcoder reads {cfg.hook_name} but its config names no output hook point "
                         "(hook_name_out), so it is unknown which activation it stands in for.",
                         "Set hook_name_out (SAELens: in cfg.json or its metadata) to the hook point it predicts, "
                         f"e.g. blocks.0.hook_mlp_out. {_HOOKS_HINT}")
    if out not in points:
        raise InputError(f"this transcoder predicts {out!r} (hook_name_out), which is not one of this model's hook "
                         "points, so its output has nowhere to go.",
                         f"Set hook_name_out to the hook point it was trained to predict. {_HOOKS_HINT}")
    source, target = points[cfg.hook_name], points[out]
    if target.where == "pattern":
        raise InputError(f"this transcoder predicts {out}, an attention pattern, not a vector per token.",
                         f"Set hook_name_out to a residual-stream, attention-output or MLP hook point. {_HOOKS_HINT}")
    if target.part != source.part:
        raise InputError(f"this transcoder reads {cfg.hook_name} ({source.part}) but predicts {out} ({target.part}); "
                         "the two must be in the same part of the model, token for token.",
                         f"Use a transcoder whose input and output are in one part. {_HOOKS_HINT}")
    order = list(points)
    if order.index(out) < order.index(cfg.hook_name):
        raise InputError(f"this transcoder predicts {out} from {cfg.hook_name}, which comes later in the forward "
                         "pass; its prediction would be needed before its input exists.",
                         f"Check hook_name and hook_name_out. {_HOOKS_HINT}")
    return cfg.hook_name, out


def row_index(loaded: LoadedModel, coder: SparseAutoencoder, inputs: dict[str, torch.Tensor],
              activation: torch.Tensor) -> torch.Tensor:
    """Indices into ``activation`` flattened to [rows, d] of the rows the coder reads (or, at a
    transcoder's output hook point, whose layout is its input's, the rows it writes)."""
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


def spliced_rows(coder: SparseAutoencoder, x: torch.Tensor, y: torch.Tensor, mode: str,
                 edit: FeatureEdit | None = None, rows: torch.Tensor | None = None,
                 record: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """What replaces the rows ``y`` [n, d_out] where the coder writes, given the rows ``x`` [n, d_in]
    where it reads (y is x for an SAE), on the coder's device; ``mode`` as in the module docstring.
    ``rows`` confines an edit to some of the n rows; ``record`` receives the features."""
    if mode not in MODES:
        raise ValueError(f"unknown splice mode {mode!r}")
    device = coder.W_enc.device
    x, y = x.to(device), y.to(device)
    f = coder.encode(x)
    if mode == "attribute":
        f = f.detach().requires_grad_(True)
    if record is not None:
        record["features"] = f if mode == "attribute" else f.detach()
    if mode == "reconstruct":
        return coder.decode(f, x)
    if mode == "zero":
        return torch.zeros_like(y)
    if mode == "attribute":
        prediction = coder.decode(f, x)
        return prediction + (y - prediction).detach()  # the model's own values; gradients reach f
    if edit is None:
        raise ValueError("an edit splice needs an edit function")
    edited = edit(f)
    if rows is not None:  # confine the edit to some of the rows
        keep = torch.ones(len(f), dtype=torch.bool, device=f.device)
        keep[rows] = False
        edited = torch.where(keep[:, None], f, edited)
    return y + coder.decode(edited, x) - coder.decode(f, x)


def splice_hooks(loaded: LoadedModel, coder: SparseAutoencoder, inputs: dict[str, torch.Tensor], mode: str,
                 edit: FeatureEdit | None = None, rows: torch.Tensor | None = None,
                 record: dict[str, torch.Tensor] | None = None) -> list[tuple[str, HookFn]]:
    """The (hook point, function) pairs that splice ``coder`` in with ``mode`` ("reconstruct",
    "zero", "edit", "attribute") at the coder's rows (or at ``rows`` of those, for an edit confined
    to some patches): pass them to ``hooks``. The first keeps x where the coder reads, the second
    replaces y where it writes (``splice_points``; one point for an SAE, read before written).

    Vision and projector hook points are spliced on every call (a generation may run the tower
    more than once on the same image); a language hook point only on calls over exactly the
    prompt in ``inputs`` (a generation's later steps add positions the coder did not select).
    ``record`` receives the features of the rows and their ``index``, when given.
    """
    if mode not in MODES:
        raise ValueError(f"unknown splice mode {mode!r}")
    source, target = splice_points(loaded, coder)
    language = hook_points(loaded)[source].part == "language"
    cfg = coder.cfg
    kept: dict[str, torch.Tensor] = {}

    def index_of(activation: torch.Tensor) -> torch.Tensor | None:
        if language and activation.reshape(-1, activation.shape[-1]).shape[0] != inputs["input_ids"].numel():
            return None
        return row_index(loaded, coder, inputs, activation).to(activation.device)

    def read(activation: torch.Tensor, point: HookPoint) -> None:
        kept.clear()
        index = index_of(activation)
        if index is not None:
            _check_width(activation, cfg.d_in, point.name, "reads")
            kept["x"] = activation.reshape(-1, activation.shape[-1]).index_select(0, index).float()
        return None

    def write(activation: torch.Tensor, point: HookPoint) -> torch.Tensor | None:
        x = kept.pop("x", None)
        index = index_of(activation)
        if x is None or index is None:
            return None
        _check_width(activation, cfg.d_out, point.name, "writes")
        flat = activation.reshape(-1, activation.shape[-1])
        if len(index) != len(x):
            raise InputError(f"this transcoder read {len(x)} rows at {source} but {target} has {len(index)}; "
                             "its output is not token for token its input.", f"Check hook_name_out. {_HOOKS_HINT}")
        y = flat.index_select(0, index).float()
        new = spliced_rows(coder, x, y, mode, edit, rows, record)
        if record is not None:
            record["index"] = index
        out = flat.clone()
        out[index] = new.to(flat.dtype).to(flat.device)
        return out.reshape(activation.shape)

    return [(source, read), (target, write)]


def _check_width(activation: torch.Tensor, width: int, name: str, verb: str) -> None:
    if activation.shape[-1] != width:
        raise InputError(f"the coder {verb} {width} values per token at {name}, which has {activation.shape[-1]}.",
                         "Use a coder trained on this model at this hook point.")


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
