"""Feature dashboards: one pass over a set of images caches, for every feature of a vision coder,
what a dashboard shows, so that looking at any feature afterwards costs nothing.

For every feature the pass keeps

* its ``top_k`` most activating patches (image, patch, activation), each with a crop of the image
  around the patch (three patches wide) and the activations of the 3x3 patches of that crop;
* a histogram of its nonzero activations (exact counts in equal bins from 0 to a power of two that
  grows, by merging pairs of bins, whenever a larger activation arrives: one pass, no second
  look at the data) and its density (the fraction of patches where it fires);
* its logit attribution: the feature's decoder direction pushed through the rest of the model's
  path to the vocabulary and read by the LM head (``logit_attribution``), as the tokens it
  promotes and suppresses most.

``inspect.top_patches`` answers the same question for one feature with a full pass per feature;
here the running top-k of every feature is merged with each batch's features at once (a ``topk``
over [features, kept + batch rows]).

The cache is a folder: ``dashboard.safetensors`` (the arrays) and ``dashboard.json`` (what it was
built from: the coder file's SHA-256, the image set, the model; image ids; token strings), both
written atomically. ``load_cache(folder, key)`` returns it only when the key matches.
``neuronpedia_batches`` turns it into the sae-dashboard / Neuronpedia JSON layout (an image is a
"prompt" whose "tokens" are its patches).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.hooks import hook_points, hooks, run_with_cache
from lvlm_studio.core.plugin.jobs import Job, Progress
from lvlm_studio.sae.activations import DEFAULT_PROMPT, folder_images, image_batch_rows, image_inputs, open_images
from lvlm_studio.sae.coders import SparseAutoencoder
from lvlm_studio.sae.inspect import _check_vision
from lvlm_studio.sae.splice import row_index

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

CACHE_VERSION = 1
ARRAYS = "dashboard.safetensors"
RECORD = "dashboard.json"
BINS = 32  # activation-histogram bins
LOGIT_TOKENS = 10  # tokens listed per side of the logit attribution
CROP = 48  # pixels per side of a cached crop


# -- what to read ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageSet:
    """The images a dashboard is built over: ids (shown and exported), a key that names the set
    (for the cache), and a way to open image ``i``."""

    ids: tuple[str, ...]
    key: str
    opener: Callable[[int], Image.Image] = field(compare=False, repr=False)

    def open(self, index: int) -> Image.Image:
        return self.opener(index).convert("RGB")


def demo_image_set(count: int) -> ImageSet:
    """The first ``count`` held-out demo scenes: the scenes the grounded benchmark's demo run reads."""
    from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
    from lvlm_studio.demo.scenes import make_scene

    if count < 1:
        raise InputError(f"--demo {count} asks for no scenes.", "Give a positive number, e.g. --demo 200.")
    seeds = [HELDOUT_SEED_BASE + i for i in range(count)]
    return ImageSet(tuple(f"scene-{s}" for s in seeds), f"demo:{HELDOUT_SEED_BASE}:{count}",
                    lambda i: make_scene(seeds[i]).image)


def folder_image_set(folder: str | Path, limit: int | None = None) -> ImageSet:
    """The images of a folder (sorted by name; the first ``limit``); the key covers names, sizes and times."""
    files = folder_images(folder)[:limit]
    stamp = hashlib.sha256()
    for path in files:
        stat = path.stat()
        stamp.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return ImageSet(tuple(p.name for p in files), f"folder:{Path(folder).resolve()}:{stamp.hexdigest()[:16]}",
                    lambda i: next(open_images([files[i]])))


def coder_hash(folder: str | Path) -> str:
    """SHA-256 over a coder folder's files (names and bytes), so a retrained coder is never mistaken
    for the one a cache was built from."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
    for path in files:
        digest.update(path.relative_to(folder if folder.is_dir() else folder.parent).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# -- the cache --------------------------------------------------------------------------------------
@dataclass
class FeatureDashboard:
    """Everything a dashboard shows, for every feature (arrays indexed by feature first).

    ``top_*`` are [d_sae, k], strongest first; an empty slot has ``top_image`` −1 and activation 0.
    ``top_crop`` indexes ``crops`` [n, CROP, CROP, 3] (crops are shared between features);
    ``top_window`` [d_sae, k, 9] holds the activations of the 3x3 patches of the crop (NaN where
    the window leaves the image), row-major, the patch itself in the middle. ``hist_counts``
    [d_sae, BINS] counts nonzero activations in equal bins over [0, 2**hist_exponent).
    ``logit_pos_ids`` / ``_values`` (and ``neg``) [d_sae, LOGIT_TOKENS]; ``logit_hist_counts`` /
    ``_edges`` [d_sae, BINS(+1)] the distribution of the feature's logits over the whole vocabulary.
    """

    key: dict[str, Any]
    image_ids: list[str]
    grid: tuple[int, int]
    n_patches: int
    top_values: np.ndarray
    top_image: np.ndarray
    top_patch: np.ndarray
    top_crop: np.ndarray
    top_window: np.ndarray
    crops: np.ndarray
    hist_counts: np.ndarray
    hist_exponent: np.ndarray
    nonzero: np.ndarray
    logit_pos_ids: np.ndarray
    logit_pos_values: np.ndarray
    logit_neg_ids: np.ndarray
    logit_neg_values: np.ndarray
    logit_hist_counts: np.ndarray
    logit_hist_edges: np.ndarray
    token_strings: dict[int, str]

    @property
    def d_sae(self) -> int:
        return int(self.top_values.shape[0])

    @property
    def density(self) -> np.ndarray:
        """Fraction of patches where each feature fires, [d_sae]."""
        return self.nonzero / max(self.n_patches, 1)

    def check_feature(self, feature: int) -> int:
        if not 0 <= feature < self.d_sae:
            raise InputError(f"feature {feature} does not exist.", f"This coder has features 0..{self.d_sae - 1}.")
        return int(feature)

    def examples(self, feature: int) -> list[dict[str, Any]]:
        """The feature's top examples, strongest first: image id, row, column, activation, crop."""
        feature = self.check_feature(feature)
        cols = self.grid[1]
        out = []
        for slot in range(self.top_values.shape[1]):
            image = int(self.top_image[feature, slot])
            if image < 0:
                break
            patch = int(self.top_patch[feature, slot])
            out.append({"image": self.image_ids[image], "image_index": image, "patch": patch,
                        "row": patch // cols, "col": patch % cols,
                        "activation": float(self.top_values[feature, slot]),
                        "crop": self.crops[int(self.top_crop[feature, slot])],
                        "window": self.top_window[feature, slot]})
        return out

    def histogram(self, feature: int) -> tuple[np.ndarray, np.ndarray]:
        """(bin edges [BINS+1], counts [BINS]) of the feature's nonzero activations."""
        feature = self.check_feature(feature)
        top = 2.0 ** float(self.hist_exponent[feature]) if self.nonzero[feature] else 1.0
        return np.linspace(0.0, top, BINS + 1), self.hist_counts[feature]

    def logits(self, feature: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """(promoted, suppressed) tokens with their logit per unit of activation, strongest first."""
        feature = self.check_feature(feature)
        pos = [(self.token_strings[int(i)], float(v))
               for i, v in zip(self.logit_pos_ids[feature], self.logit_pos_values[feature])]
        neg = [(self.token_strings[int(i)], float(v))
               for i, v in zip(self.logit_neg_ids[feature], self.logit_neg_values[feature])]
        return pos, neg

    def search(self, text: str) -> list[int]:
        """Features whose promoted tokens include ``text`` (case-insensitive), best logit first."""
        text = text.strip().lower()
        if not text:
            return []
        ids = [i for i, s in self.token_strings.items() if text in s.lower()]
        if not ids:
            return []
        hits = np.isin(self.logit_pos_ids, ids)
        score = np.where(hits, self.logit_pos_values, -np.inf).max(axis=1)
        order = np.argsort(-score, kind="stable")
        return [int(f) for f in order if np.isfinite(score[f])]


_ARRAY_FIELDS = ("top_values", "top_image", "top_patch", "top_crop", "top_window", "crops", "hist_counts",
                 "hist_exponent", "nonzero", "logit_pos_ids", "logit_pos_values", "logit_neg_ids",
                 "logit_neg_values", "logit_hist_counts", "logit_hist_edges")


def save_cache(dashboard: FeatureDashboard, folder: str | Path) -> Path:
    """Write the cache into ``folder`` (safetensors + JSON, each replaced atomically; the JSON last,
    so a cache whose arrays were not written does not match its key)."""
    from safetensors.numpy import save_file

    from lvlm_studio.core.io.files import atomic_path, write_text

    folder = Path(folder)
    arrays = {name: np.ascontiguousarray(getattr(dashboard, name)) for name in _ARRAY_FIELDS}
    (folder / RECORD).unlink(missing_ok=True)
    with atomic_path(folder / ARRAYS) as temporary:
        save_file(arrays, str(temporary))
    record = {"version": CACHE_VERSION, "key": dashboard.key, "image_ids": dashboard.image_ids,
              "grid": list(dashboard.grid), "n_patches": dashboard.n_patches,
              "token_strings": {str(i): s for i, s in sorted(dashboard.token_strings.items())}}
    write_text(folder / RECORD, json.dumps(record, indent=1, allow_nan=False))
    return folder


def load_cache(folder: str | Path, key: dict[str, Any] | None = None) -> FeatureDashboard | None:
    """The cache in ``folder``; None when there is none, or when ``key`` is given and differs (a
    different coder file, image set, model or setting)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    if not (folder / RECORD).is_file() or not (folder / ARRAYS).is_file():
        return None
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder / RECORD} cannot be read ({exc}).", "Build the dashboard again.") from None
    if record.get("version") != CACHE_VERSION or (key is not None and record.get("key") != key):
        return None
    arrays = load_file(str(folder / ARRAYS))
    return FeatureDashboard(key=record["key"], image_ids=list(record["image_ids"]),
                            grid=(int(record["grid"][0]), int(record["grid"][1])), n_patches=int(record["n_patches"]),
                            token_strings={int(i): s for i, s in record["token_strings"].items()},
                            **{name: arrays[name] for name in _ARRAY_FIELDS})


def cache_key(coder: SparseAutoencoder, sae_hash: str, images: ImageSet, model: str, top_k: int,
              prompt: str = DEFAULT_PROMPT) -> dict[str, Any]:
    """What a cache was built from; a cache is reused only when all of it matches."""
    return {"sae_sha256": sae_hash, "hook_name": coder.cfg.hook_name, "d_sae": coder.cfg.d_sae,
            "images": images.key, "n_images": len(images.ids), "model": model, "top_k": int(top_k),
            "prompt": prompt}


def model_identity(source: str | Path) -> str:
    """The model part of a cache key: its folder, resolved."""
    return str(Path(source).expanduser().resolve())


def cached_dashboard(loaded: LoadedModel, coder: SparseAutoencoder, key: dict[str, Any], images: ImageSet,
                     folder: str | Path, batch: int = 16) -> Job[FeatureDashboard]:
    """The dashboard cached in ``folder`` under ``key``, or (a job) one built now and saved there."""
    found = load_cache(folder, key)
    if found is not None:
        return found
    dashboard = yield from build_dashboard(loaded, coder, images, key, top_k=key["top_k"], batch=batch,
                                           prompt=key["prompt"])
    Path(folder).mkdir(parents=True, exist_ok=True)
    save_cache(dashboard, folder)
    return dashboard


def find_dashboard(sae_path: str | Path, images: ImageSet, model_source: str | Path, folder: str | Path,
                   top_k: int = 16, prompt: str = DEFAULT_PROMPT) -> FeatureDashboard | None:
    """The dashboard cached in ``folder`` for this coder file, image set, model and settings, or None."""
    from lvlm_studio.sae.formats import load_coder

    coder = load_coder(sae_path)
    return load_cache(folder, cache_key(coder, coder_hash(sae_path), images, model_identity(model_source), top_k,
                                        prompt))


def dashboard_job(loaded: LoadedModel, sae_path: str | Path, images: ImageSet, folder: str | Path, top_k: int = 16,
                  prompt: str = DEFAULT_PROMPT, batch: int = 16) -> Job[FeatureDashboard]:
    """The dashboard of the coder at ``sae_path`` over ``images``: from the cache in ``folder`` when
    it matches, else built now (one pass, a job) and cached there."""
    from lvlm_studio.sae.formats import load_coder

    coder = load_coder(sae_path)
    key = cache_key(coder, coder_hash(sae_path), images, model_identity(loaded.source), top_k, prompt)
    return (yield from cached_dashboard(loaded, coder, key, images, folder, batch))


# -- the pass ----------------------------------------------------------------------------------------
class _TopK:
    """The running ``k`` largest activations of every feature over the rows seen so far."""

    def __init__(self, d_sae: int, k: int) -> None:
        self.values = torch.zeros(d_sae, k)
        self.rows = torch.full((d_sae, k), -1, dtype=torch.long)

    def add(self, features: torch.Tensor, first_row: int) -> None:
        """Merge a batch's features [n, d_sae] (rows ``first_row``.. onward) into the kept ones: the
        batch's own top-k per feature first, so the merge is [d_sae, 2k] whatever the batch size."""
        k = self.values.shape[1]
        batch = features.T.float().topk(min(k, features.shape[0]), dim=1)
        values = torch.cat([self.values, batch.values], dim=1)
        rows = torch.cat([self.rows, batch.indices + first_row], dim=1)
        kept = values.topk(k, dim=1)  # ties: any order
        self.values = kept.values
        self.rows = rows.gather(1, kept.indices)
        self.rows[self.values <= 0] = -1  # only patches where the feature fires are examples
        self.values = self.values.clamp(min=0)


class _Histograms:
    """Exact per-feature histograms of positive values in BINS equal bins over [0, 2**e_f); e_f
    grows with the largest value seen, merging 2**d neighbouring bins when it grows by d."""

    UNSET = -(1 << 20)

    def __init__(self, d_sae: int) -> None:
        self.counts = np.zeros((d_sae, BINS), dtype=np.int64)
        self.exponent = np.full(d_sae, self.UNSET, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        """Count a batch's activations [n, d_sae] (zeros are not counted)."""
        peak = values.max(axis=0)
        firing = peak > 0
        need = np.full_like(self.exponent, self.UNSET)
        need[firing] = np.floor(np.log2(peak[firing])).astype(np.int64) + 1  # 2**need > peak
        fresh = firing & (self.exponent == self.UNSET)
        self.exponent[fresh] = need[fresh]
        grow = firing & (need > self.exponent)
        for step in np.unique(need[grow] - self.exponent[grow]):
            chosen = np.flatnonzero(grow & (need - self.exponent == step))
            merged = np.zeros((len(chosen), BINS), dtype=np.int64)
            target = np.arange(BINS) >> min(int(step), 62)
            np.add.at(merged, (slice(None), target), self.counts[chosen])
            self.counts[chosen] = merged
            self.exponent[chosen] += step
        rows, columns = np.nonzero(values > 0)
        scaled = values[rows, columns] / np.exp2(self.exponent[columns].astype(np.float64))
        bins = np.minimum((scaled * BINS).astype(np.int64), BINS - 1)
        self.counts += np.bincount(columns * BINS + bins, minlength=self.counts.size).reshape(self.counts.shape)


def _windows(values: np.ndarray, rows: np.ndarray, features: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The activations of ``features[i]`` on the 3x3 patches around batch row ``rows[i]``, [n, 9]
    row-major (NaN where the window leaves the image's grid)."""
    grid_rows, grid_cols = grid
    per_image = grid_rows * grid_cols
    image, patch = np.divmod(rows, per_image)
    out = np.full((len(rows), 9), np.nan, dtype=np.float32)
    for i, (dr, dc) in enumerate((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)):
        r, c = patch // grid_cols + dr, patch % grid_cols + dc
        inside = (r >= 0) & (r < grid_rows) & (c >= 0) & (c < grid_cols)
        source = image[inside] * per_image + r[inside] * grid_cols + c[inside]
        out[inside, i] = values[source, features[inside]]
    return out


def crop_box(size: tuple[int, int], grid: tuple[int, int], row: int, col: int) -> tuple[int, int, int, int]:
    """The pixel box (left, top, right, bottom) of the 3x3 patches around (row, col); it reaches
    past the image at its edges (``crop`` pads there), so the patch is always the middle one."""
    width, height = size
    rows, cols = grid
    cell_w, cell_h = width / cols, height / rows
    box = ((col - 1) * cell_w, (row - 1) * cell_h, (col + 2) * cell_w, (row + 2) * cell_h)
    return tuple(int(round(v)) for v in box)  # type: ignore[return-value]


PAD = (160, 160, 160)  # what a crop shows beyond the image's edge


def crop(image: Image.Image, grid: tuple[int, int], row: int, col: int, size: int = CROP) -> np.ndarray:
    """The 3x3 patches around (row, col) as a ``size`` x ``size`` RGB array, grey beyond the image."""
    left, top, right, bottom = crop_box(image.size, grid, row, col)
    canvas = Image.new("RGB", (right - left, bottom - top), PAD)
    inside = (max(left, 0), max(top, 0), min(right, image.width), min(bottom, image.height))
    canvas.paste(image.crop(inside), (inside[0] - left, inside[1] - top))
    return np.asarray(canvas.resize((size, size), Image.NEAREST))


#: Where an example's patch lies in its crop (left, top, right, bottom in units of the crop).
PATCH_BOX = (1 / 3, 1 / 3, 2 / 3, 2 / 3)


def build_dashboard(loaded: LoadedModel, coder: SparseAutoencoder, images: ImageSet, key: dict[str, Any],
                    top_k: int = 16, batch: int = 16, prompt: str = DEFAULT_PROMPT,
                    attribution: bool = True) -> Job[FeatureDashboard]:
    """One pass over ``images`` (a job): top-k patches, histograms and densities of every feature,
    then (``attribution``) the logit attribution of every feature."""
    coder = _check_vision(coder)
    if top_k < 1:
        raise InputError(f"--top-k {top_k} keeps no examples.", "Give a positive number, e.g. --top-k 16.")
    d_sae = coder.cfg.d_sae
    top = _TopK(d_sae, top_k)
    histograms = _Histograms(d_sae)
    nonzero = np.zeros(d_sae, dtype=np.int64)
    grid: tuple[int, int] | None = None
    windows = np.full((d_sae, top_k, 9), np.nan, dtype=np.float32)
    total = len(images.ids)
    for start in range(0, total, batch):
        indices = list(range(start, min(total, start + batch)))
        opened = [images.open(i) for i in indices]
        inputs = image_inputs(loaded, opened, prompt)
        grids = loaded.adapter.vision_patch_grids(inputs)
        shape = tuple(int(v) for v in grids[0].shape)
        if grid is None:
            grid = shape  # type: ignore[assignment]
        elif shape != grid:
            raise InputError(f"image {images.ids[start]} gives a {shape[0]}x{shape[1]} patch grid, the first one "
                             f"{grid[0]}x{grid[1]}.", "Build a dashboard over images the model sees at one size.")
        per_image = shape[0] * shape[1]
        (rows,) = image_batch_rows(loaded, [coder.cfg.hook_name], opened, "patch", prompt)
        with torch.no_grad():
            features = coder.encode(rows.to(coder.W_enc.device)).float().cpu()
        first_row = start * per_image
        previous = top.rows.numpy().copy()
        top.add(features, first_row)
        values = features.numpy()
        histograms.add(values)
        nonzero += (values > 0).sum(axis=0)
        now = top.rows.numpy()
        windows = _carry_windows(previous, now, windows)
        entered = np.nonzero(now >= first_row)  # new examples: their maps are at hand only now
        windows[entered] = _windows(values, now[entered] - first_row, entered[0], shape)
        yield Progress(indices[-1] + 1, total, "one pass over the images")
    assert grid is not None
    per_image = grid[0] * grid[1]
    top_rows = top.rows.numpy()
    top_image = np.where(top_rows >= 0, top_rows // per_image, -1)
    top_patch = np.where(top_rows >= 0, top_rows % per_image, -1)
    crops, top_crop = _crops(images, grid, top_image, top_patch)
    dashboard = FeatureDashboard(
        key=key, image_ids=list(images.ids), grid=grid, n_patches=total * per_image,
        top_values=top.values.numpy().astype(np.float32), top_image=top_image, top_patch=top_patch,
        top_crop=top_crop, top_window=windows, crops=crops, hist_counts=histograms.counts,
        hist_exponent=np.where(histograms.exponent == _Histograms.UNSET, 0, histograms.exponent),
        nonzero=nonzero, **_empty_logits(d_sae))
    if attribution:
        steps = np.where(dashboard.top_values[:, 0] > 0,
                         dashboard.top_values.sum(1) / np.maximum((dashboard.top_values > 0).sum(1), 1), 1.0)
        result = yield from logit_attribution(loaded, coder, images.open(0), steps, prompt)
        _set_logits(dashboard, loaded, result)
    return dashboard


def _carry_windows(before: np.ndarray, after: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """The windows of the examples that stayed in the top-k, moved to their new slots (NaN elsewhere)."""
    same = (after[:, :, None] == before[:, None, :]) & (after[:, :, None] >= 0)  # [d_sae, k, k]
    source = same.argmax(axis=2)
    moved = np.take_along_axis(windows, source[:, :, None], axis=1)
    return np.where(same.any(axis=2)[:, :, None], moved, np.nan).astype(np.float32)


def _crops(images: ImageSet, grid: tuple[int, int], top_image: np.ndarray, top_patch: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """One CROP x CROP crop per distinct (image, patch) among the examples, and each example's index."""
    pairs = sorted({(int(i), int(p)) for i, p in zip(top_image.ravel(), top_patch.ravel()) if i >= 0})
    index = {pair: n for n, pair in enumerate(pairs)}
    crops = np.zeros((len(pairs), CROP, CROP, 3), dtype=np.uint8)
    current: tuple[int, Image.Image] | None = None
    for n, (image_index, patch) in enumerate(pairs):
        if current is None or current[0] != image_index:
            current = (image_index, images.open(image_index))
        crops[n] = crop(current[1], grid, patch // grid[1], patch % grid[1])
    top_crop = np.full(top_image.shape, -1, dtype=np.int64)
    for (f, slot), image_index in np.ndenumerate(top_image):
        if image_index >= 0:
            top_crop[f, slot] = index[(int(image_index), int(top_patch[f, slot]))]
    return crops, top_crop


# -- logit attribution -------------------------------------------------------------------------------
@dataclass
class LogitAttribution:
    """Per feature: the vocabulary's logits per unit of activation, reduced to the strongest tokens
    and a histogram (the full [d_sae, vocab] matrix is not kept)."""

    pos_ids: np.ndarray
    pos_values: np.ndarray
    neg_ids: np.ndarray
    neg_values: np.ndarray
    hist_counts: np.ndarray
    hist_edges: np.ndarray


def _lens(loaded: LoadedModel, delta: torch.Tensor) -> torch.Tensor:
    """Logits [n, vocab] of residual directions [n, hidden], read as a logit lens reads them: through
    the final norm (its per-channel scale, with the direction's own size kept) and the LM head."""
    adapter = loaded.adapter
    weight = adapter.lm_head_weight().float()
    delta = delta.to(weight.device).float()
    try:
        norm = adapter.final_norm()
    except (AttributeError, NotImplementedError):
        norm = None
    if norm is not None:
        dtype = next(norm.parameters(), weight).dtype
        with torch.no_grad():
            normed = norm(delta.to(dtype)).float() - norm(torch.zeros_like(delta).to(dtype)).float()
        rms = delta.pow(2).mean(dim=-1, keepdim=True).sqrt()
        delta = normed * rms
    return delta @ weight.T


def logit_attribution(loaded: LoadedModel, coder: SparseAutoencoder, image: Image.Image, steps: np.ndarray,
                      prompt: str = DEFAULT_PROMPT, batch: int = 32, n_tokens: int = LOGIT_TOKENS
                      ) -> Job[LogitAttribution]:
    """Each feature's decoder direction pushed through the rest of the model to the vocabulary.

    At a vision hook point the direction is added, ``steps[i]`` times (a typical strong activation
    of the feature), at every patch of ``image``; the rest of the vision tower and the projector
    run, and the change of the projector's output, averaged over the image tokens and divided by
    the step, is the feature's effect on what the language model receives (nonlinear parts are
    followed at that step, not linearised). At the projector's output, or in the language model,
    the direction is that effect itself.

    The effect is then read by the final norm and the LM head (``_lens``): logits per unit of
    activation, the direct path that sae-dashboard and Neuronpedia list (W_dec W_U for a language
    model). An image reaches the answer mostly through attention in later layers, which this path
    leaves out: on the demo model the promoted lists of most features start with the same prompt
    words, while the suppressed lists name colours and shapes.
    """
    target = coder.cfg.hook_name_out if coder.cfg.kind == "transcoder" and coder.cfg.hook_name_out else \
        coder.cfg.hook_name  # where the decoder writes
    point = hook_points(loaded)[target]
    d_sae = coder.cfg.d_sae
    directions = coder.W_dec.detach().float()
    if point.part == "language" or target == "hook_projector_out":
        effects = directions
    else:
        base_inputs = image_inputs(loaded, [image], prompt)
        _, cache = run_with_cache(loaded, base_inputs, ["hook_projector_out"])
        base = cache["hook_projector_out"].float().reshape(-1, cache["hook_projector_out"].shape[-1])
        parts = []
        for start in range(0, d_sae, batch):
            chunk = list(range(start, min(d_sae, start + batch)))
            parts.append(_pushed(loaded, coder, target, image, prompt, directions[chunk],
                                 torch.as_tensor(steps[chunk]), base).cpu())
            yield Progress(chunk[-1] + 1, d_sae, "logit attribution: pushing each direction through the model")
        effects = torch.cat(parts)
    pos_ids, pos_values, neg_ids, neg_values, counts, edges = [], [], [], [], [], []
    for start in range(0, d_sae, batch):
        logits = _lens(loaded, effects[start:start + batch]).cpu()
        pos = logits.topk(n_tokens, dim=1)
        neg = (-logits).topk(n_tokens, dim=1)
        pos_ids.append(pos.indices)
        pos_values.append(pos.values)
        neg_ids.append(neg.indices)
        neg_values.append(-neg.values)
        for row in logits:
            low, high = float(row.min()), float(row.max())
            high = high if high > low else low + 1e-6
            counts.append(torch.histc(row, BINS, low, high).long())
            edges.append(torch.linspace(low, high, BINS + 1))
    return LogitAttribution(torch.cat(pos_ids).numpy(), torch.cat(pos_values).numpy().astype(np.float32),
                            torch.cat(neg_ids).numpy(), torch.cat(neg_values).numpy().astype(np.float32),
                            torch.stack(counts).numpy(), torch.stack(edges).numpy().astype(np.float32))


@torch.no_grad()
def _pushed(loaded: LoadedModel, coder: SparseAutoencoder, target: str, image: Image.Image, prompt: str,
            directions: torch.Tensor, steps: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """The mean change of the projector's output per unit step when copy i of ``image`` gets
    ``steps[i] * directions[i]`` added at every patch of hook point ``target``, [n, hidden]."""
    n = directions.shape[0]
    inputs = image_inputs(loaded, [image] * n, prompt)

    def add(activation: torch.Tensor, point) -> torch.Tensor:
        flat = activation.reshape(-1, activation.shape[-1]).clone()
        index = row_index(loaded, coder, inputs, activation).to(flat.device).reshape(n, -1)
        push = (steps[:, None].float() * directions.float()).to(flat)  # [n, d]
        flat[index] += push[:, None, :]
        return flat.reshape(activation.shape)

    with hooks(loaded, [(target, add)]):
        _, cache = run_with_cache(loaded, inputs, ["hook_projector_out"])
    out = cache["hook_projector_out"].float().reshape(n, -1, base.shape[-1])
    return (out - base.to(out.device)[None]).mean(dim=1) / steps.to(out.device)[:, None]


def _empty_logits(d_sae: int) -> dict[str, Any]:
    zeros = np.zeros((d_sae, 0))
    return {"logit_pos_ids": zeros.astype(np.int64), "logit_pos_values": zeros.astype(np.float32),
            "logit_neg_ids": zeros.astype(np.int64), "logit_neg_values": zeros.astype(np.float32),
            "logit_hist_counts": zeros.astype(np.int64), "logit_hist_edges": zeros.astype(np.float32),
            "token_strings": {}}


def _set_logits(dashboard: FeatureDashboard, loaded: LoadedModel, result: LogitAttribution) -> None:
    dashboard.logit_pos_ids, dashboard.logit_pos_values = result.pos_ids, result.pos_values
    dashboard.logit_neg_ids, dashboard.logit_neg_values = result.neg_ids, result.neg_values
    dashboard.logit_hist_counts, dashboard.logit_hist_edges = result.hist_counts, result.hist_edges
    used = sorted({int(i) for i in np.concatenate([result.pos_ids.ravel(), result.neg_ids.ravel()])})
    tokenizer = loaded.processor.tokenizer
    dashboard.token_strings = {i: tokenizer.decode([i]) for i in used}


# -- exports ----------------------------------------------------------------------------------------
def contact_sheet(dashboard: FeatureDashboard, feature: int, columns: int = 4, tile: int = 96) -> Image.Image:
    """The feature's top examples as tiles (crop enlarged, patch outlined, activation and image id)."""
    from PIL import ImageDraw

    examples = dashboard.examples(feature)
    rows = max(1, -(-len(examples) // columns))
    sheet = Image.new("RGB", (columns * tile, rows * (tile + 14) + 16), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    density = float(dashboard.density[feature])
    draw.text((4, 2), f"feature {feature}: density {density:.4f}", fill=(0, 0, 0))
    for index, example in enumerate(examples):
        enlarged = Image.fromarray(example["crop"]).resize((tile, tile), Image.NEAREST)
        x0, y0, x1, y1 = PATCH_BOX
        ImageDraw.Draw(enlarged).rectangle([x0 * tile, y0 * tile, x1 * tile - 1, y1 * tile - 1],
                                           outline=(255, 0, 255), width=2)
        x, y = (index % columns) * tile, 16 + (index // columns) * (tile + 14)
        sheet.paste(enlarged, (x, y))
        draw.text((x + 2, y + tile), f"{example['activation']:.2f} {example['image'][-10:]}", fill=(0, 0, 0))
    return sheet


def _layer(hook_name: str) -> int:
    found = re.search(r"\.(\d+)\.", hook_name)
    return int(found.group(1)) if found else 0


def neuronpedia_batches(dashboard: FeatureDashboard, coder: SparseAutoencoder, model_id: str, sae_set: str,
                        dataset: str, per_batch: int = 128) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file name, content) of the sae-dashboard / Neuronpedia export: ``batch-N.json`` files of
    features, and ``skipped_indexes.json`` naming the features that never fired (exported as dead).

    An image plays the part of a prompt: an example's "tokens" are the 3x3 patches around its top
    patch (labelled ``<image:rRcC>``), its "values" their activations, and the qualifying token the
    patch itself. Neuron alignment is read from the decoder row; the correlation fields, which
    need a second pass, are written empty.
    """
    decoder = coder.W_dec.detach().float().cpu().numpy().reshape(coder.cfg.d_sae, -1)
    live = [f for f in range(dashboard.d_sae) if dashboard.nonzero[f] > 0]
    dead = [f for f in range(dashboard.d_sae) if dashboard.nonzero[f] == 0]
    layer = _layer(coder.cfg.hook_name)
    for number, start in enumerate(range(0, len(live), per_batch)):
        features = [_neuronpedia_feature(dashboard, decoder, f, dataset) for f in live[start:start + per_batch]]
        yield f"batch-{number}.json", {"model_id": model_id, "layer": layer, "sae_set": sae_set, "features": features}
    yield "skipped_indexes.json", {"model_id": model_id, "layer": str(layer), "sae_set": sae_set,
                                   "log_sparsity": None, "skipped_indexes": dead}


def _neuronpedia_feature(dashboard: FeatureDashboard, decoder: np.ndarray, feature: int, dataset: str
                         ) -> dict[str, Any]:
    row = decoder[feature]
    order = np.argsort(-np.abs(row), kind="stable")[:3]
    l1 = float(np.abs(row).sum()) or 1.0
    edges, counts = dashboard.histogram(feature)
    centres = (edges[:-1] + edges[1:]) / 2
    pos, neg = dashboard.logits(feature) if dashboard.logit_pos_ids.shape[1] else ([], [])
    if dashboard.logit_hist_counts.shape[1]:
        logit_edges = dashboard.logit_hist_edges[feature]
        logit_centres = ((logit_edges[:-1] + logit_edges[1:]) / 2).tolist()
        logit_heights = dashboard.logit_hist_counts[feature].tolist()
    else:
        logit_centres, logit_heights = [], []
    activations = []
    for example in dashboard.examples(feature):
        tokens, values, qualifying = [], [], 0
        for i in range(9):
            r, c = example["row"] + i // 3 - 1, example["col"] + i % 3 - 1
            if np.isnan(example["window"][i]):
                continue
            if (r, c) == (example["row"], example["col"]):
                qualifying = len(tokens)
            tokens.append(f"<{example['image']}:r{r}c{c}>")
            values.append(round(float(example["window"][i]), 4))
        activations.append({"bin_min": -1, "bin_max": round(example["activation"], 4), "bin_contains": -1,
                            "tokens": tokens, "values": values, "qualifying_token_index": qualifying})
    return {
        "feature_index": feature,
        "neuron_alignment_indices": [int(i) for i in order],
        "neuron_alignment_values": [round(float(row[i]), 4) for i in order],
        "neuron_alignment_l1": [round(float(abs(row[i]) / l1), 4) for i in order],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [s for s, _ in neg], "neg_values": [round(v, 4) for _, v in neg],
        "pos_str": [s for s, _ in pos], "pos_values": [round(v, 4) for _, v in pos],
        "frac_nonzero": float(dashboard.density[feature]),
        "freq_hist_data_bar_values": [round(float(v), 4) for v in centres],
        "freq_hist_data_bar_heights": [int(v) for v in counts],
        "logits_hist_data_bar_heights": [int(v) for v in logit_heights],
        "logits_hist_data_bar_values": [round(float(v), 4) for v in logit_centres],
        "n_prompts_total": len(dashboard.image_ids),
        "n_tokens_in_prompt": dashboard.grid[0] * dashboard.grid[1],
        "dataset": dataset,
        "decoder_weights_dist": [],
        "activations": activations,
    }


def write_neuronpedia(dashboard: FeatureDashboard, coder: SparseAutoencoder, folder: str | Path, model_id: str,
                      sae_set: str, dataset: str) -> list[Path]:
    """Write the Neuronpedia export into ``folder`` (each file atomically); returns the files."""
    from lvlm_studio.core.io.files import write_text

    folder = Path(folder)
    return [write_text(folder / name, json.dumps(content, allow_nan=False))
            for name, content in neuronpedia_batches(dashboard, coder, model_id, sae_set, dataset)]


def feature_list(text: str, d_sae: int) -> list[int]:
    """"3,17,40-43" -> [3, 17, 40, 41, 42, 43], each checked against the coder's size."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            low, _, high = part.partition("-")
            out += list(range(int(low), int(high or low) + 1))
        except ValueError:
            raise InputError(f"--features {text!r} is not a list of feature numbers.",
                             "Example: --features 3,17,40-43.") from None
    bad = [f for f in out if not 0 <= f < d_sae]
    if bad:
        raise InputError(f"feature {bad[0]} does not exist.", f"This coder has features 0..{d_sae - 1}.")
    return out


def strongest_features(dashboard: FeatureDashboard, n: int) -> list[int]:
    """The ``n`` features with the largest top activation (the default contact sheets)."""
    order = np.argsort(-dashboard.top_values[:, 0], kind="stable")
    return [int(f) for f in order[:n] if dashboard.top_values[f, 0] > 0]

