"""Feature inspection: what a vision SAE sees in one image, where a feature fires across a folder,
which features the answer leans on, and what the answer becomes without them.

* ``image_features``: the feature activations of every patch of an image, on its patch grid.
* ``top_features`` / ``feature_map``: a selected patch's strongest features; a feature's map.
* ``top_patches``: a feature's most activating patches over a folder (the dashboard's rows).
* ``feature_attribution``: for one answer token, activation x gradient of that token's
  log-probability with respect to each feature at each patch (the coder is spliced in with its
  reconstruction error held fixed, so the forward pass is the model's own).
* ``edited_answer``: ablate or scale features (at every patch, or some) and let the model answer again.
* ``cls_features``: the class token's features.

Which tokens the coder is applied at (``scoped``): maps, top patches and attribution read the
patches; edits the tokens the coder was trained on, or a narrower choice ("patch" or "cls" for a
coder trained on "all", which is how SAELens and ViT-Prisma coders load).
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.hooks import hooks
from lvlm_studio.core.plugin.jobs import Job, Progress
from lvlm_studio.core.tracing.scores import log_probability
from lvlm_studio.sae.activations import DEFAULT_PROMPT, image_batch_rows, image_inputs, open_images
from lvlm_studio.sae.coders import SparseAutoencoder
from lvlm_studio.sae.splice import scale_features, splice_hooks

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.tracing.trace import Trace


SCOPES = ("patch", "cls", "all")


def scoped(coder: SparseAutoencoder, tokens: str | None = None) -> SparseAutoencoder:
    """The coder applied at ``tokens`` ("patch", "cls" or "all"; None: the tokens it was trained on).

    A coder trained on every token ("all": SAELens's and ViT-Prisma's default, so every foreign
    coder that says nothing else) may be applied at the patches only or the class token only, since
    those rows are part of what it was trained on; a patch or class-token coder only at its own
    tokens. Returns ``coder`` itself, or a view sharing its weights whose ``cfg.tokens`` is the scope
    (what the splice reads to choose rows).
    """
    trained = coder.cfg.tokens
    if coder.cfg.kind == "crosscoder":
        raise InputError("patch inspection reads one hook point; this is a crosscoder.", "Use an SAE or transcoder.")
    if trained not in SCOPES:
        raise InputError(f"this coder reads {trained!r} tokens (a language hook point); inspection reads the image's "
                         "patches and class token.", "Use a coder trained at a vision hook point.")
    tokens = tokens or trained
    if tokens not in SCOPES:
        raise InputError(f"--tokens {tokens!r} is not a vision token kind.", f"Choose one of: {', '.join(SCOPES)}.")
    if trained != "all" and tokens != trained:
        raise InputError(f"this coder was trained on {trained} tokens only; applied at {tokens} tokens it would read "
                         "activations it never saw.",
                         f"Use --tokens {trained}, or a coder trained with --tokens {tokens} (or all).")
    if tokens == trained:
        return coder
    view = copy.copy(coder)  # shares the parameters; only the scope differs
    view.cfg = dataclasses.replace(coder.cfg, tokens=tokens)
    return view


def _check_vision(coder: SparseAutoencoder) -> SparseAutoencoder:
    """The coder applied at the image's patches (for maps, top patches and attribution)."""
    if coder.cfg.tokens == "cls":
        raise InputError("this coder was trained on the class token only, so it has no patch maps.",
                         "Use --tokens cls to see its features of the class token and edit them.")
    return scoped(coder, "patch")


@torch.no_grad()
def image_features(loaded: LoadedModel, coder: SparseAutoencoder, image: Image.Image, prompt: str = DEFAULT_PROMPT
                   ) -> np.ndarray:
    """Feature activations on the image's patch grid, [rows, cols, d_sae] (first image region)."""
    coder = _check_vision(coder)
    inputs = image_inputs(loaded, [image.convert("RGB")], prompt)
    grid = loaded.adapter.vision_patch_grids(inputs)[0].shape
    (rows,) = image_batch_rows(loaded, [coder.cfg.hook_name], [image.convert("RGB")], "patch", prompt)
    _check_reads(coder, rows)
    features = coder.encode(rows.to(coder.W_enc.device)).cpu().numpy()
    return features[: grid[0] * grid[1]].reshape(*grid, -1)


@torch.no_grad()
def cls_features(loaded: LoadedModel, coder: SparseAutoencoder, image: Image.Image, prompt: str = DEFAULT_PROMPT
                 ) -> np.ndarray:
    """Feature activations of the image's class token, [d_sae] (first image region); the coder must
    have been trained on the class token ("cls" or "all")."""
    coder = scoped(coder, "cls")
    (rows,) = image_batch_rows(loaded, [coder.cfg.hook_name], [image.convert("RGB")], "cls", prompt)
    _check_reads(coder, rows)
    return coder.encode(rows[:1].to(coder.W_enc.device)).cpu().numpy()[0]


def _check_reads(coder: SparseAutoencoder, rows: torch.Tensor) -> None:
    """A coder of another model (another width at its hook point) is refused with what to do."""
    if rows.shape[-1] != coder.cfg.d_in:
        raise InputError(f"the coder reads {coder.cfg.d_in} values per token at {coder.cfg.hook_name}, "
                         f"which has {rows.shape[-1]} in this model.",
                         "Use a coder trained on this model at this hook point.")


def top_features(features: np.ndarray, row: int, col: int, k: int = 10) -> list[tuple[int, float]]:
    """The ``k`` strongest active features at patch (row, col): (feature, activation), strongest first."""
    rows, cols = features.shape[:2]
    if not (0 <= row < rows and 0 <= col < cols):
        raise InputError(f"patch ({row}, {col}) is outside the {rows}x{cols} grid.",
                         f"Rows go 0..{rows - 1}, columns 0..{cols - 1}.")
    values = features[row, col]
    order = np.argsort(-values, kind="stable")[:k]
    return [(int(i), float(values[i])) for i in order if values[i] > 0]


def feature_map(features: np.ndarray, feature: int) -> np.ndarray:
    """One feature's activation over the patch grid, [rows, cols]."""
    if not 0 <= feature < features.shape[-1]:
        raise InputError(f"feature {feature} does not exist.", f"This coder has features 0..{features.shape[-1] - 1}.")
    return features[..., feature]


@dataclass(frozen=True, order=True)
class PatchHit:
    activation: float
    image: str
    row: int
    col: int


def top_patches(loaded: LoadedModel, coder: SparseAutoencoder, images: Sequence[str | Path], feature: int,
                n: int = 16, batch: int = 16) -> Job[list[PatchHit]]:
    """The ``n`` patches across ``images`` where ``feature`` is strongest (a job, one pass per batch)."""
    coder = _check_vision(coder)
    if not 0 <= feature < coder.cfg.d_sae:
        raise InputError(f"feature {feature} does not exist.", f"This coder has features 0..{coder.cfg.d_sae - 1}.")
    best: list[PatchHit] = []
    paths = [str(p) for p in images]
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        opened = list(open_images(chunk))
        inputs = image_inputs(loaded, opened)
        grids = loaded.adapter.vision_patch_grids(inputs)
        (rows,) = image_batch_rows(loaded, [coder.cfg.hook_name], opened, "patch")
        with torch.no_grad():
            values = coder.encode(rows.to(coder.W_enc.device))[:, feature].cpu().numpy()
        offset = 0
        for path, grid in zip(chunk, grids):
            r, c = grid.shape
            for index, value in enumerate(values[offset:offset + r * c]):
                hit = PatchHit(float(value), path, index // c, index % c)
                if len(best) < n:
                    heapq.heappush(best, hit)
                elif hit > best[0]:
                    heapq.heapreplace(best, hit)
            offset += r * c
        yield Progress(start + len(chunk), len(paths), f"feature {feature}")
    return sorted(best, reverse=True)


def feature_attribution(loaded: LoadedModel, coder: SparseAutoencoder, trace: Trace, token: int) -> np.ndarray:
    """Activation x gradient of log p(answer token ``token``) for every feature at every patch of
    the first image, [rows, cols, d_sae]; summed over patches it ranks the features the token used
    (the coder is spliced in at the patches with its error held fixed; a transcoder's features act
    through its prediction of the output hook point)."""
    coder = _check_vision(coder)
    position = trace.answer_position(token)
    inputs = trace.teacher_forced_inputs(loaded, upto=position + 1)
    kept: dict[str, torch.Tensor] = {}
    with hooks(loaded, splice_hooks(loaded, coder, inputs, "attribute", record=kept)), torch.enable_grad():
        logits = loaded.model(**inputs, use_cache=False, logits_to_keep=2).logits[0, -2]
        logprob = log_probability(logits, torch.tensor(int(trace.answer_ids[token]), device=logits.device))
        logprob.backward()
    f = kept["features"]
    attribution = (f * f.grad).detach().cpu().numpy()
    grid = loaded.adapter.vision_patch_grids(inputs)[0].shape
    return attribution[: grid[0] * grid[1]].reshape(*grid, -1)


def edited_answer(loaded: LoadedModel, coder: SparseAutoencoder, image: Image.Image, prompt: str,
                  features: dict[int, float], patches: Sequence[tuple[int, int]] | None = None,
                  max_new_tokens: int = 32, tokens: str | None = None) -> str:
    """The model's answer with each feature i scaled by ``features[i]`` (0 ablates) at every token of
    ``tokens`` (``scoped``: default the coder's own), or only at ``patches`` [(row, col)]; the
    reconstruction error stays in place."""
    return edited_trace(loaded, coder, image, prompt, features, patches, max_new_tokens, tokens).answer_text


def edited_trace(loaded: LoadedModel, coder: SparseAutoencoder, image: Image.Image, prompt: str,
                 features: dict[int, float], patches: Sequence[tuple[int, int]] | None = None,
                 max_new_tokens: int = 32, tokens: str | None = None) -> Trace:
    from lvlm_studio.core.tracing.trace import generate_trace

    coder = scoped(coder, tokens)
    if patches is not None:  # an edit confined to some patches reads the patch rows only
        coder = _check_vision(coder)

    for feature in features:
        if not 0 <= feature < coder.cfg.d_sae:
            raise InputError(f"feature {feature} does not exist.", f"This coder has features 0..{coder.cfg.d_sae - 1}.")
    image = image.convert("RGB")
    inputs = image_inputs(loaded, [image], prompt)
    rows = None
    if patches is not None:
        grid = loaded.adapter.vision_patch_grids(inputs)[0]
        cols = grid.shape[1]
        rows = torch.as_tensor([r * cols + c for r, c in patches], dtype=torch.long)
    with hooks(loaded, splice_hooks(loaded, coder, inputs, "edit", scale_features(features), rows=rows)):
        return generate_trace(loaded, image, prompt, max_new_tokens=max_new_tokens)
