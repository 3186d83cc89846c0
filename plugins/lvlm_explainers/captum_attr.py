"""Captum's attribution methods on the image's processed pixels: Integrated Gradients, GradientSHAP,
SmoothGrad and VarGrad (NoiseTunnel), KernelSHAP and LIME.

Each method here is Captum's own (``captum.attr``), called on one forward function; nothing of the
methods is rewritten. What this module adds is the function they explain and the way their
answers become maps on the model's image grid:

* **The function**: the teacher-forced log-probability of the chosen answer token, as a function of
  the processor's ``pixel_values`` (flattened to one row per image: ``values [batch, elements] ->
  log p [batch, targets]``, ``lvlm_studio.api.answer_logprobs_with_grad``). The inputs are
  ``pixel_layout``'s processed image and the baseline picture after the same processor, so the
  function holds for every model family, and Captum's "baseline" is the processed baseline picture.
* **The baseline**: blur, black, mean colour or uniform noise (``baseline_image``), a parameter.
* **Gradient methods** (IG, GradientSHAP, NoiseTunnel) give one value per processed element; a
  cell of a region's grid gets the *sum* of the values of the elements it reads (an element read
  by several regions is shared equally), as gradient x input sums over an image token's features.
  Summing keeps IG's completeness: the map's total is log p(image) - log p(baseline), up to the
  path integral's error.
* **Feature-mask methods** (KernelSHAP, LIME) switch groups of elements between the image and the
  baseline: the region grids' cells, SLIC superpixels of the original image (scikit-image), or
  object masks given as a label image (each distinct value one object; the rest of the image is
  one more feature). Every element carries its group's coefficient; a cell gets the *mean* over
  the elements it reads.

All arithmetic on attributions is float64: the input rows are float64 leaves (the model still runs
in its own dtype), so gradients, Captum's sums and the maps are float64. One Captum call per
target token; progress is reported before each, so a long answer can be cancelled between tokens.
Stochastic methods draw from torch's and NumPy's generators seeded with ``seed`` (``seeded``: the
caller's random states are given back): the same parameters give the same map.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lvlm_explainers.perturbation import check_targets
from lvlm_studio.api import (
    BASELINES,
    CONTRAST,
    Explainer,
    Explanation,
    InputError,
    Param,
    PixelLayout,
    Progress,
    answer_logprobs_with_grad,
    baseline_image,
    contrast_token,
    pixel_layout,
)

FEATURES = ("cells", "superpixels", "objects")


def prepared(model, trace, baseline: str, seed: int = 0) -> tuple[PixelLayout, torch.Tensor, torch.Tensor]:
    """The layout of ``trace``'s processed image against the chosen baseline picture, and both as
    float64 rows [1, elements]: Captum's input and baseline."""
    layout = pixel_layout(model, trace, baseline_image(trace.image, baseline, seed))
    image = layout.image.double()[None].to(model.device)
    base = layout.baseline.double()[None].to(model.device)
    return layout, image, base


def log_prob_function(model, trace, layout: PixelLayout, targets: list[int],
                      contrast: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function every method here explains: processed rows [batch, elements] -> the
    teacher-forced log p of each target token [batch, len(targets)], or with ``contrast`` (a token
    id) each target's logit minus the alternative's; Captum's ``target=i`` picks ``targets[i]``."""
    columns = torch.as_tensor(targets, dtype=torch.long)

    def forward(values: torch.Tensor) -> torch.Tensor:
        rows = values.shape[0]
        logp = answer_logprobs_with_grad(model, trace, layout.model_inputs(values), rows, contrast)
        return logp[:, columns.to(logp.device)].double()

    return forward


def _element_cells(layout: PixelLayout, regions) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each region: the elements it reads (not padding), the flat cell of its grid each lies in,
    and each element's share (1 / the number of regions reading it)."""
    owners = layout.owners.cpu().numpy()
    content = ~np.isnan(layout.position.cpu().numpy()).any(axis=1)
    readers = np.maximum(owners.sum(axis=0), 1)
    coords = layout.coords.cpu().numpy()
    out = []
    for r, region in enumerate(regions):
        rows, cols = region.grid
        idx = np.nonzero(owners[r] & content)[0]
        x, y = coords[r, idx, 0], coords[r, idx, 1]
        col = np.clip(np.floor((x + 1) / 2 * cols), 0, cols - 1).astype(np.int64)
        row = np.clip(np.floor((y + 1) / 2 * rows), 0, rows - 1).astype(np.int64)
        out.append((idx, row * cols + col, 1.0 / readers[idx]))
    return out


def cells_from_elements(values: np.ndarray, layout: PixelLayout, regions, how: str) -> list[np.ndarray]:
    """One float64 map per region from one value per processed element: each cell's ``sum`` (shared
    elements split equally between their regions) or ``mean`` over the elements it reads; a cell
    that reads none is 0."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    maps = []
    for region, (idx, cell, share) in zip(regions, _element_cells(layout, regions)):
        size = region.grid[0] * region.grid[1]
        if how == "sum":
            grid = np.bincount(cell, weights=values[idx] * share, minlength=size)
        else:
            total = np.bincount(cell, weights=values[idx], minlength=size)
            grid = total / np.maximum(np.bincount(cell, minlength=size), 1)
        maps.append(grid.reshape(region.grid))
    return maps


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed the generators Captum draws from (torch's, and NumPy's global one, which GradientShap
    uses for its points on the path) for one block, and give the caller's states back after it."""
    state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


# -- feature masks -----------------------------------------------------------------------------

def superpixel_labels(image, segments: int, compactness: float) -> np.ndarray:
    """SLIC superpixels of the image (scikit-image): an int label per pixel [height, width], 0..k-1."""
    from skimage.segmentation import slic

    labels = slic(np.asarray(image.convert("RGB")), n_segments=segments, compactness=compactness, start_label=0)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def object_labels(path: str, size: tuple[int, int]) -> np.ndarray:
    """Object masks from a label image: each distinct pixel value one feature (0..k-1, in order of
    value), resized (nearest neighbour) to the image if needed."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise InputError("features=objects needs the object masks.",
                         "Give masks=PATH: an image whose pixels hold one value per object (0 for the rest).")
    try:
        with Image.open(Path(path)) as opened:
            labels = opened.convert("L") if opened.mode not in ("L", "I", "I;16", "P") else opened.copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"cannot read the object masks {path!r}: {exc}.",
                         "Give a PNG whose pixels hold one value per object (0 for the rest).") from None
    if labels.size != size:
        labels = labels.resize(size, Image.Resampling.NEAREST)
    array = np.asarray(labels)
    values, inverse = np.unique(array, return_inverse=True)
    if len(values) < 2:
        raise InputError(f"the object masks {path!r} hold a single value: they mark no object.",
                         "Give one distinct value per object and another for the background.")
    return inverse.reshape(array.shape)


def feature_mask(layout: PixelLayout, regions, features: str, labels: np.ndarray | None) -> tuple[torch.Tensor, int]:
    """Captum's ``feature_mask`` [1, elements] (int64) and the number of features.

    ``cells``: one feature per cell of every region (an element read by several regions goes to the
    first); ``superpixels``/``objects``: the label of the pixel each element comes from (``labels``).
    Elements that no region reads, or padding, go to feature 0: they are equal in the image and the
    baseline, or no token reads them, so they cannot change the score.
    """
    count = layout.image.numel()
    mask = np.zeros(count, dtype=np.int64)
    if features == "cells":
        offset = 0
        assigned = np.zeros(count, dtype=bool)
        for region, (idx, cell, _) in zip(regions, _element_cells(layout, regions)):
            free = ~assigned[idx]
            mask[idx[free]] = offset + cell[free]
            assigned[idx[free]] = True
            offset += region.grid[0] * region.grid[1]
        return torch.as_tensor(mask)[None], offset
    position = layout.position.cpu().numpy()
    content = ~np.isnan(position).any(axis=1)
    height, width = labels.shape
    x = np.clip(np.floor(np.nan_to_num(position[:, 0])), 0, width - 1).astype(np.int64)
    y = np.clip(np.floor(np.nan_to_num(position[:, 1])), 0, height - 1).astype(np.int64)
    mask[content] = labels[y[content], x[content]]
    return torch.as_tensor(mask)[None], int(labels.max()) + 1


def feature_labels(trace, params: dict[str, Any]) -> np.ndarray | None:
    """The pixel labels the chosen ``features`` need (None for cells)."""
    if params["features"] == "superpixels":
        return superpixel_labels(trace.image, params["segments"], params["compactness"])
    if params["features"] == "objects":
        return object_labels(params["masks"], trace.image.size)
    return None


# -- the explainers ------------------------------------------------------------------------------

def _common_params(batch: int) -> tuple[Param, ...]:
    return (
        Param("baseline", "blur", "what stands for the image's absence: blur, black, mean colour or noise",
              choices=BASELINES),
        Param("seed", 0, "seed of the noise baseline and of the method's random draws", minimum=0,
              maximum=2**32 - 1),
        Param("batch_size", batch, "images per forward pass", minimum=1, maximum=1024),
        CONTRAST,
    )


class _CaptumExplainer(Explainer):
    """One Captum call per target on ``log_prob_function``; subclasses say which, and how to reduce."""

    needs = frozenset({"model", "gradients"})
    reduce = "sum"  # how a cell combines its elements' values: "sum" or "mean"
    captum_name = ""  # the Captum class, for the provenance

    def explain(self, trace, model, targets, params: dict[str, Any]):
        check_targets(trace, model, targets, self.title)
        import captum

        yield Progress(0, len(targets) + 1, "preparing the image and the baseline")
        layout, image, base = prepared(model, trace, params["baseline"], params["seed"])
        alternative = contrast_token(params)
        forward = log_prob_function(model, trace, layout, targets, alternative)
        setup = self.setup(trace, layout, params)
        maps = {}
        for i, target in enumerate(targets):
            yield Progress(i + 1, len(targets) + 1, f"{self.title} for token {target}")
            with seeded(params["seed"]):
                attributions = self.attribute(forward, image, base, i, params, setup)
            values = attributions.detach().double().cpu().numpy()
            maps[target] = cells_from_elements(values, layout, trace.regions, self.reduce)
        provenance = {
            "method": self.id,
            "score": "teacher-forced log-probability of the target token" if alternative is None else
                     f"teacher-forced logit of the target token minus that of token {alternative}",
            "inputs": "the processor's pixel values (every element), float64",
            "baseline": params["baseline"],
            "library": f"captum {captum.__version__} ({self.captum_name})",
            "cells": f"{self.reduce} of the pixel-value attributions each cell reads",
            **self.extra_provenance(params, setup),
            "model": model.describe(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return Explanation(self.id, maps, params, provenance)

    def setup(self, trace, layout: PixelLayout, params: dict[str, Any]) -> Any:
        """Anything computed once per explanation (the feature mask); None by default."""
        return None

    def attribute(self, forward, image, base, target: int, params: dict[str, Any], setup: Any) -> torch.Tensor:
        raise NotImplementedError

    def extra_provenance(self, params: dict[str, Any], setup: Any) -> dict[str, Any]:
        return {}


class IntegratedGradients(_CaptumExplainer):
    """Integrated Gradients (Sundararajan et al. 2017): the path integral of the gradient from the
    baseline to the image, times (image - baseline); Captum's Gauss-Legendre rule by default. The
    cells' values add up to log p(image) - log p(baseline), up to the rule's error (which is large
    where log p changes as a near-step along the path, as on the demo model: raise ``steps``)."""

    id = "integrated_gradients"
    title = "Integrated Gradients (Captum)"
    captum_name = "IntegratedGradients"
    params = (
        Param("steps", 32, "points on the path from the baseline to the image", minimum=2, maximum=1024),
        *_common_params(16),
    )

    def attribute(self, forward, image, base, target, params, setup):
        from captum.attr import IntegratedGradients as CaptumIG

        return CaptumIG(forward).attribute(image, baselines=base, target=target, n_steps=params["steps"],
                                           internal_batch_size=params["batch_size"])

    def extra_provenance(self, params, setup):
        return {"forward_passes_per_token": math.ceil(params["steps"] / params["batch_size"])}


class GradientSHAP(_CaptumExplainer):
    """GradientSHAP (Lundberg and Lee 2017; expected gradients): the gradient at random points
    between the baseline and the image (optionally with Gaussian noise), times (image - baseline),
    averaged over ``samples``."""

    id = "gradient_shap"
    title = "GradientSHAP (Captum)"
    captum_name = "GradientShap"
    params = (
        Param("samples", 32, "random points between the baseline and the image", minimum=1, maximum=4096),
        Param("noise", 0.0, "standard deviation of the noise added to each point, as a fraction of the "
              "processed values' range", minimum=0.0, maximum=10.0),
        *_common_params(16),
    )

    def attribute(self, forward, image, base, target, params, setup):
        from captum.attr import GradientShap

        # Captum's GradientShap runs all samples in one batch: split it by calling per chunk.
        total, chunk = params["samples"], params["batch_size"]
        stdevs = params["noise"] * _range(image)
        out = torch.zeros_like(image)
        for start in range(0, total, chunk):
            size = min(chunk, total - start)
            part = GradientShap(forward).attribute(image, baselines=base, target=target, n_samples=size,
                                                   stdevs=stdevs)
            out = out + part * size
        return out / total


def _range(image: torch.Tensor) -> float:
    """The spread of the processed values (max - min): noise levels are fractions of it."""
    spread = float(image.max() - image.min())
    return spread if spread > 0 else 1.0


class _NoiseTunnel(_CaptumExplainer):
    """Captum's NoiseTunnel around Integrated Gradients (default) or the plain gradient: the inner
    method on ``samples`` noisy copies of the image, combined as ``nt_type`` says."""

    nt_type = "smoothgrad"
    captum_name = "NoiseTunnel"
    params = (
        Param("samples", 8, "noisy copies of the image", minimum=1, maximum=1024),
        Param("noise", 0.15, "standard deviation of the noise, as a fraction of the processed values' range",
              minimum=0.0, maximum=10.0),
        Param("inner", "integrated_gradients", "the method run on each noisy copy (the gradient ignores the "
              "baseline)", choices=("integrated_gradients", "gradient")),
        Param("steps", 8, "Integrated Gradients: points on the path", minimum=2, maximum=1024),
        *_common_params(16),
    )

    def attribute(self, forward, image, base, target, params, setup):
        from captum.attr import IntegratedGradients as CaptumIG
        from captum.attr import NoiseTunnel, Saliency

        stdevs = params["noise"] * _range(image)
        common = {"nt_type": self.nt_type, "nt_samples": params["samples"], "stdevs": stdevs, "target": target}
        if params["inner"] == "gradient":
            return NoiseTunnel(Saliency(forward)).attribute(image, abs=False,
                                                            nt_samples_batch_size=params["batch_size"], **common)
        return NoiseTunnel(CaptumIG(forward)).attribute(image, baselines=base, n_steps=params["steps"],
                                                        internal_batch_size=params["batch_size"],
                                                        nt_samples_batch_size=1, **common)

    def extra_provenance(self, params, setup):
        return {"noise_tunnel": f"{self.nt_type} over {params['inner']}, {params['samples']} samples"}


class SmoothGrad(_NoiseTunnel):
    """SmoothGrad (Smilkov et al. 2017): the mean of the inner attribution over noisy copies."""

    id = "smoothgrad"
    title = "SmoothGrad (Captum NoiseTunnel)"
    nt_type = "smoothgrad"


class VarGrad(_NoiseTunnel):
    """VarGrad (Adebayo et al. 2018): the variance of the inner attribution over noisy copies
    (never negative: it says where the attribution is unstable or strong, not its sign)."""

    id = "vargrad"
    title = "VarGrad (Captum NoiseTunnel)"
    nt_type = "vargrad"


def _feature_params(samples: int) -> tuple[Param, ...]:
    return (
        Param("features", "cells", "what is switched on and off: the grid's cells, SLIC superpixels or "
              "object masks (masks=PATH)", choices=FEATURES),
        Param("samples", samples, "perturbed images the surrogate is fitted to", minimum=2, maximum=100_000),
        Param("segments", 50, "superpixels: about how many (SLIC n_segments)", minimum=2, maximum=10_000),
        Param("compactness", 10.0, "superpixels: SLIC compactness (higher: squarer)", minimum=0.001,
              maximum=1000.0),
        Param("masks", "", "objects: a label image, one pixel value per object (0 for the rest)"),
        *_common_params(16),
    )


class _FeatureMaskExplainer(_CaptumExplainer):
    """Features switched between the image and the baseline: forward passes only, no gradients."""

    needs = frozenset({"model"})
    reduce = "mean"

    def setup(self, trace, layout, params):
        return feature_mask(layout, trace.regions, params["features"], feature_labels(trace, params))

    def extra_provenance(self, params, setup):
        return {"features": f"{setup[1]} {params['features']}",
                "forward_passes_per_token": math.ceil(params["samples"] / params["batch_size"])}


class KernelSHAP(_FeatureMaskExplainer):
    """KernelSHAP (Lundberg and Lee 2017): Shapley values of the features, from a weighted linear
    regression on random coalitions (Captum's sampling and Shapley kernel)."""

    id = "kernel_shap"
    title = "KernelSHAP (Captum)"
    captum_name = "KernelShap"
    params = _feature_params(200)

    def attribute(self, forward, image, base, target, params, setup):
        from captum.attr import KernelShap

        mask, _ = setup
        return KernelShap(forward).attribute(image, baselines=base, target=target, feature_mask=mask.to(image.device),
                                             n_samples=params["samples"],
                                             perturbations_per_eval=params["batch_size"])


class LIME(_FeatureMaskExplainer):
    """LIME (Ribeiro et al. 2016): a linear surrogate fitted to random feature subsets weighted by
    their similarity to the image (Captum's default kernel). The surrogate is ridge regression with
    ``alpha`` 1, as the authors' lime package fits it. Captum's own default, a Lasso with ``alpha``
    0.01, zeroes every feature when the token's log p moves by less than the penalty (on the demo
    model every token of "the circle is red" but the colour word came out blank); ``surrogate=lasso``
    gives it back for sparse maps."""

    id = "lime"
    title = "LIME (Captum)"
    captum_name = "Lime"
    params = (
        Param("surrogate", "ridge", "linear model fitted to the samples: ridge (L2, never zeroes a feature) "
              "or lasso (L1, sparse)", choices=("ridge", "lasso")),
        Param("alpha", 1.0, "weight of the surrogate's penalty (ridge 1.0 as the lime package; Captum's "
              "Lasso uses 0.01)", minimum=0.0, maximum=1e6),
        *_feature_params(200),
    )

    def attribute(self, forward, image, base, target, params, setup):
        from captum.attr import Lime

        mask, _ = setup
        lime = Lime(forward, interpretable_model=lime_surrogate(params["surrogate"], params["alpha"]))
        return lime.attribute(image, baselines=base, target=target, feature_mask=mask.to(image.device),
                              n_samples=params["samples"], perturbations_per_eval=params["batch_size"])


def lime_surrogate(kind: str, alpha: float):
    """Captum's wrapper of the scikit-learn linear model LIME fits: ridge or lasso."""
    from captum._utils.models.linear_model import SkLearnLasso, SkLearnRidge

    return SkLearnRidge(alpha=alpha) if kind == "ridge" else SkLearnLasso(alpha=alpha)
