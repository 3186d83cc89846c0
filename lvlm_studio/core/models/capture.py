"""Capture internals during a teacher-forced pass, reduced while the model runs.

Attention weights for a whole model are layers x heads x T x T; on a real LVLM with thousands of
image tokens that does not fit in memory (``full_attention_bytes``: 36 GB in float32 for
LLaVA-NeXT-7B at 2,950 tokens). Capture never builds them: the model runs its memory-efficient
attention (SDPA) through an attention function registered here, which, in the layers that see the
image, recomputes softmax(q k^T) for the requested query rows only (and, for key means, for blocks
of ``KEY_MEAN_BLOCK`` query rows at a time), so peak memory is heads x rows x T per layer plus the
reduced result. Models whose attention cannot go through that function (logit soft-capping, or no
attention interface) fall back to eager attention, sliced in a forward hook one layer at a time.
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.loading import LoadedModel

#: The attention implementation capture registers with transformers (SDPA plus the captured rows).
ROWS_IMPLEMENTATION = "lvlm_studio_rows"
#: The one ``rows_with_gradients`` gives a single module (eager weights, with their graph, of some rows).
GRADIENT_ROWS_IMPLEMENTATION = "lvlm_studio_gradient_rows"
#: The one ``attention_output_leaf`` gives a single module (eager weights without a graph, output a leaf).
OUTPUT_LEAF_IMPLEMENTATION = "lvlm_studio_output_leaf"
#: Query rows per block when every query's attention is summed for key means.
KEY_MEAN_BLOCK = 128
_plans = threading.local()  # the capture in progress in this thread: {id(module): _Plan}
_gradient_rows = threading.local()  # rows_with_gradients in force in this thread: {id(module): rows}
_output_leaves = threading.local()  # attention_output_leaf in force in this thread: {id(module): record}


@contextmanager
def attention_implementation(model: torch.nn.Module, name: str) -> Iterator[str]:
    """Switch the model's attention implementation for the duration of a block, then restore it.

    Yields the implementation that was in place before (for run records). SDPA and flash
    attention never materialise weights; methods that read weights need "eager".
    """
    previous = model.config._attn_implementation
    if previous != name:
        model.set_attn_implementation(name)
    try:
        yield previous
    finally:
        if previous != name:
            model.set_attn_implementation(previous)


def image_attention_modules(loaded: LoadedModel) -> tuple[list[torch.nn.Module], bool]:
    """The attention modules whose keys include the image, and whether they are causal.

    Where the image is tokens of the sequence, the decoder's self-attention (causal). Where it
    enters by cross-attention (Mllama), the cross-attention modules: their keys are the vision
    tokens (region positions index them), and every query sees every key.
    """
    if loaded.adapter.image_entry == "cross_attention":
        return loaded.adapter.cross_attention_modules(), False
    return loaded.adapter.attention_modules(), True


def capture_attention(
    loaded: LoadedModel,
    inputs: dict[str, torch.Tensor],
    query_positions: Sequence[int],
    key_positions: Sequence[int],
) -> np.ndarray:
    """Attention of every decoder layer that sees the image, per head, from the given queries to
    the given keys (``image_attention_modules``: self-attention, or Mllama's cross-attention).

    Returns a float32 array [layers, heads, queries, keys]. Runs one eager forward over
    ``inputs``; each layer's weights are sliced in a forward hook, on the device that holds the
    layer, and only the slice moves to the CPU.
    """
    rows, _ = _capture(loaded, inputs, query_positions, key_positions, key_means=False)
    return rows


def capture_self_attention(
    loaded: LoadedModel,
    inputs: dict[str, torch.Tensor],
    query_positions: Sequence[int],
    key_positions: Sequence[int],
) -> np.ndarray:
    """Like ``capture_attention``, but over the decoder's self-attention (``adapter.attention_modules``)
    whatever way the image enters: attention between positions of the sequence, for views of how
    text tokens attend to text (on Mllama, where ``capture_attention`` reads the cross-attention).

    Returns a float32 array [layers, heads, queries, keys]."""
    modules = (loaded.adapter.attention_modules(), True)
    rows, _ = _capture(loaded, inputs, query_positions, key_positions, key_means=False, chosen=modules)
    return rows


def capture_attention_and_key_means(
    loaded: LoadedModel,
    inputs: dict[str, torch.Tensor],
    query_positions: Sequence[int],
    key_positions: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """``capture_attention`` plus, per layer and head, the mean attention each key receives.

    The second array is float32 [layers, heads, keys]: for key k, the mean of A[q, k] over every
    query q of the pass that can see it (q >= k under causal attention; every query under
    cross-attention). It finds attention sinks,
    keys that draw attention from everywhere; the sum over query rows is taken inside the hook, so
    no T x T tensor outlives its layer.
    """
    rows, means = _capture(loaded, inputs, query_positions, key_positions, key_means=True)
    assert means is not None
    return rows, means


def _heads(loaded: LoadedModel, modules: list[torch.nn.Module]) -> int:
    """Query heads of the attention modules that see the image."""
    config = loaded.model.config
    text = getattr(config, "text_config", config)
    return getattr(text, "num_attention_heads", None) or getattr(modules[0], "num_heads", 1)


def full_attention_bytes(loaded: LoadedModel, length: int, bytes_per_value: int = 4) -> int:
    """What ``output_attentions=True`` keeps for one sequence of ``length`` tokens: every layer that
    sees the image, every head, length x length weights (x ``bytes_per_value``; eager attention
    returns them in the model's dtype)."""
    modules, _ = image_attention_modules(loaded)
    return len(modules) * _heads(loaded, modules) * length * length * bytes_per_value


def require_full_attention_fits(loaded: LoadedModel, length: int, available: int, bytes_per_value: int = 4) -> int:
    """Refuse, with what to do instead, a pass that would return the full attention tensor when it
    cannot fit in ``available`` bytes. Returns the estimate when it fits."""
    needed = full_attention_bytes(loaded, length, bytes_per_value)
    if needed > available:
        raise InputError(
            f"output_attentions for {length} tokens would hold {needed / 2**30:.1f} GiB of attention weights "
            f"(layers x heads x {length}^2 x {bytes_per_value} bytes), more than the {available / 2**30:.1f} GiB "
            "available; capture the rows you need with capture_attention instead, or shorten the input"
        )
    return needed


class _Plan:
    """What one attention module must keep: the rows of ``queries`` at ``keys`` (written into
    ``rows[index]``, so no per-layer copies are stacked afterwards), and optionally the mean
    attention each key receives (``received[index]``)."""

    def __init__(self, index: int, queries: torch.Tensor, keys: torch.Tensor, causal: bool, key_means: bool,
                 rows: np.ndarray, received: list, done: list) -> None:
        self.index, self.queries, self.keys, self.causal, self.key_means = index, queries, keys, causal, key_means
        self.rows, self.received, self.done = rows, received, done


def _probabilities(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor,
                   scaling: float, causal: bool) -> torch.Tensor:
    """softmax(q k^T * scaling + mask) for query ``rows`` of the first sequence: [heads, rows, keys]
    in float32, as eager attention computes it (key/value heads shared by groups of query heads)."""
    groups = query.shape[1] // key.shape[1]
    k = key[0].repeat_interleave(groups, dim=0) if groups > 1 else key[0]
    scores = torch.matmul(query[0].index_select(1, rows).float(), k.float().transpose(-1, -2)) * scaling
    length = k.shape[1]
    lowest = torch.finfo(scores.dtype).min
    if mask is not None:
        part = mask[0].index_select(-2, rows)[..., :length]
        scores = scores.masked_fill(~part, lowest) if part.dtype == torch.bool else scores + part.float()
    elif causal and query.shape[2] > 1:
        offset = length - query.shape[2]
        allowed = torch.arange(length, device=rows.device)[None, :] <= rows[:, None] + offset
        scores = scores.masked_fill(~allowed, lowest)
    return torch.softmax(scores, dim=-1)


def _rows_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    attention_mask: torch.Tensor | None, scaling: float | None = None, **kwargs: Any) -> Any:
    """SDPA's output; in the modules of the capture in progress, also the requested rows (and key means)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    plan = getattr(_plans, "current", {}).get(id(module))
    if plan is not None:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        device = query.device
        rows = _probabilities(query, key, attention_mask, plan.queries.to(device), scale, plan.causal)
        plan.rows[plan.index] = rows.index_select(2, plan.keys.to(device)).cpu().numpy()
        plan.done[plan.index] = True
        if plan.key_means:
            length, key_index = key.shape[2], plan.keys.to(device)
            totals = torch.zeros(query.shape[1], len(key_index), device=device)
            for start in range(0, query.shape[2], KEY_MEAN_BLOCK):
                block = torch.arange(start, min(start + KEY_MEAN_BLOCK, query.shape[2]), device=device)
                weights = _probabilities(query, key, attention_mask, block, scale, plan.causal)
                totals += weights.index_select(2, key_index).sum(dim=1)
            seen_by = (length - key_index).clamp(min=1) if plan.causal else torch.full_like(key_index, query.shape[2])
            plan.received[plan.index] = (totals / seen_by).cpu()
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)


@contextmanager
def rows_with_gradients(module: torch.nn.Module, rows: Sequence[int]) -> Iterator[None]:
    """Within the block, the attention ``module`` computes eager attention weights, with their
    autograd graph, for the query ``rows`` of its (single) sequence only, and returns them as its
    weights, [1, heads, len(rows), keys]; its output at those rows is built from them, and at every
    other row comes from SDPA without a graph.

    For the last decoder layer of a pass whose logits are kept at ``rows`` only: there no other
    row reaches a logit, so the gradients of everything before the layer are those of the full
    eager pass, while the layer's attention and its backward cost rows x keys per head, not keys^2.
    Only this module changes (it gets a copy of its configuration naming the implementation);
    models with logit soft-capping or without an attention interface are refused with a
    RuntimeError (``rows_with_gradients_applies`` says beforehand).
    """
    with _module_implementation(module, _gradient_rows_implementation(), _gradient_rows,
                                torch.as_tensor(list(rows), dtype=torch.long)):
        yield


@contextmanager
def _module_implementation(module: torch.nn.Module, name: str | None, table: threading.local,
                           entry: Any) -> Iterator[None]:
    """Within the block, ``module`` alone runs the registered attention ``name`` (it gets a copy of
    its configuration naming it), and this thread's ``table`` holds ``entry`` for it."""
    if name is None:
        raise RuntimeError("this transformers cannot take a registered attention function")
    shared = module.config
    own = copy.copy(shared)
    own._attn_implementation_internal = name
    before = getattr(table, "current", {})
    table.current = {**before, id(module): entry}
    module.config = own
    try:
        yield
    finally:
        module.config = shared
        table.current = before


@contextmanager
def attention_output_leaf(module: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the attention ``module`` computes its eager weights without a graph and
    returns as its output (per head, before the output projection) a fresh leaf that requires a
    gradient. Yields a record the module fills when it runs: ``weights`` [1, heads, T, keys] and
    ``values`` [1, heads, keys, head size] (key/value heads repeated for their query heads), both
    detached, and ``output`` [1, heads, T, head size], the leaf.

    For the first attention layer a backward has to reach: ``torch.autograd.grad(score,
    record["output"])`` gives dO, and the gradient of the weights is dO V^T, which the caller can
    build a block of rows at a time instead of autograd writing all heads x T x keys of it at once.
    Nothing below the leaf (the layer's projections, the embeddings) gets a gradient. Same
    conditions as ``rows_with_gradients`` (``rows_with_gradients_applies``)."""
    record: dict[str, torch.Tensor] = {}
    with _module_implementation(module, _output_leaf_implementation(), _output_leaves, record):
        yield record


def _output_leaf_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention_output_leaf``'s attention: eager weights of every row, no graph, the output a leaf."""
    if query.shape[0] != 1 or kwargs.get("softcap") is not None:
        raise RuntimeError("attention with an output leaf takes one sequence without soft-capping")
    record = _output_leaves.current[id(module)]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.no_grad():
        rows = torch.arange(query.shape[2], device=query.device)
        weights = _probabilities(query, key, attention_mask, rows, scale, causal=True)[None]
        groups = query.shape[1] // value.shape[1]
        values = (value.repeat_interleave(groups, dim=1) if groups > 1 else value).float()
        output = torch.matmul(weights, values).to(query.dtype)
    record.update(weights=weights, values=values, output=output.requires_grad_(True))
    return output.transpose(1, 2), weights.to(query.dtype)


def rows_with_gradients_applies(loaded: LoadedModel) -> bool:
    """Whether ``rows_with_gradients`` can serve this model's decoder (no soft-capping, an attention
    interface)."""
    return _row_capture_applies(loaded) and _gradient_rows_implementation() is not None


def _gradient_rows_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows_with_gradients``' attention: eager weights of the chosen rows, SDPA for the others."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.shape[0] != 1 or kwargs.get("softcap") is not None:
        raise RuntimeError("attention of chosen rows with gradients takes one sequence without soft-capping")
    rows = _gradient_rows.current[id(module)].to(query.device)
    with torch.no_grad():
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    # [1, heads, rows, keys]: the tensor returned is the one the output is built from, so that a
    # gradient hook on it sees the gradient
    weights = _probabilities(query, key, attention_mask, rows, scale, causal=True).to(query.dtype)[None]
    groups = query.shape[1] // value.shape[1]
    values = value.repeat_interleave(groups, dim=1) if groups > 1 else value
    picked = torch.matmul(weights, values).transpose(1, 2)  # [1, rows, heads, head size]
    return output.index_copy(1, rows, picked.to(output.dtype)), weights


def _register(name: str, attention: Callable, masks: str) -> str | None:
    """Register ``attention`` under ``name`` (with the masks of the built-in ``masks``
    implementation); None if this transformers cannot take a registered attention function."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:
        return None
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[masks])
    return name


@functools.cache
def _gradient_rows_implementation() -> str | None:
    """``rows_with_gradients``' attention, with eager's masks."""
    return _register(GRADIENT_ROWS_IMPLEMENTATION, _gradient_rows_attention, "eager")


@functools.cache
def _output_leaf_implementation() -> str | None:
    """``attention_output_leaf``'s attention, with eager's masks."""
    return _register(OUTPUT_LEAF_IMPLEMENTATION, _output_leaf_attention, "eager")


@functools.cache
def _rows_implementation() -> str | None:
    """The row-capturing attention, with SDPA's masks."""
    return _register(ROWS_IMPLEMENTATION, _rows_attention, "sdpa")


def _row_capture_applies(loaded: LoadedModel) -> bool:
    config = loaded.model.config
    text = getattr(config, "text_config", config)
    if getattr(text, "attn_logit_softcapping", None) or getattr(loaded.model, "_supports_attention_backend",
                                                                True) is False:
        return False
    return _rows_implementation() is not None


@torch.no_grad()
def _capture(loaded, inputs, query_positions, key_positions, key_means: bool,
             chosen: tuple[list[torch.nn.Module], bool] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of ``chosen`` (modules, causal), by default ``image_attention_modules``."""
    queries = torch.as_tensor(list(query_positions), dtype=torch.long)
    keys = torch.as_tensor(list(key_positions), dtype=torch.long)
    modules, causal = chosen if chosen is not None else image_attention_modules(loaded)
    if _row_capture_applies(loaded):
        heads = _heads(loaded, modules)
        rows = np.zeros((len(modules), heads, len(queries), len(keys)), dtype=np.float32)
        received: list = [None] * len(modules)
        done = [False] * len(modules)
        plans = {id(m): _Plan(i, queries, keys, causal, key_means, rows, received, done)
                 for i, m in enumerate(modules)}
        outer = getattr(_plans, "current", {})
        _plans.current = {**outer, **plans}
        try:
            with attention_implementation(loaded.model, ROWS_IMPLEMENTATION):
                loaded.model(**inputs, use_cache=False, logits_to_keep=1)
        finally:
            _plans.current = outer
        if all(done):
            return rows, (torch.stack(received).numpy() if key_means else None)
    return _eager_capture(loaded, inputs, queries, keys, modules, causal, key_means)


@torch.no_grad()
def _eager_capture(loaded, inputs, queries, keys, modules, causal, key_means):
    """The fallback: eager attention, each layer's full weights sliced in a forward hook."""
    kept: list[torch.Tensor | None] = [None] * len(modules)
    received: list[torch.Tensor | None] = [None] * len(modules)

    def keep(index: int):
        def hook(module: torch.nn.Module, args: tuple, output: tuple) -> None:
            weights = output[1]
            if weights is None:
                raise RuntimeError("the attention module returned no weights; is the implementation eager?")
            key_index = keys.to(weights.device)
            rows = weights[0].index_select(1, queries.to(weights.device))
            kept[index] = rows.index_select(2, key_index).float().cpu()
            if key_means:
                length = weights.shape[-2]
                totals = weights[0].sum(dim=1, dtype=torch.float32).index_select(1, key_index)  # [heads, keys]
                seen_by = (length - key_index).clamp(min=1) if causal else torch.full_like(key_index, length)
                received[index] = (totals / seen_by).cpu()

        return hook

    handles = [m.register_forward_hook(keep(i)) for i, m in enumerate(modules)]
    try:
        with attention_implementation(loaded.model, "eager"):
            loaded.model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    rows = torch.stack([k for k in kept if k is not None]).numpy()
    means = torch.stack([r for r in received if r is not None]).numpy() if key_means else None
    return rows, means


def split_by_region(values: np.ndarray, regions: Sequence) -> list[np.ndarray]:
    """Cut the last axis (all image positions, in region order) into one grid per region."""
    out, start = [], 0
    for region in regions:
        rows, cols = region.grid
        out.append(values[..., start : start + rows * cols].reshape(*values.shape[:-1], rows, cols))
        start += rows * cols
    return out
