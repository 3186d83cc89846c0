"""Capture internals during a teacher-forced pass, reduced while the model runs.

Attention weights for a whole model are layers x heads x T x T; on a real LVLM with thousands of
image tokens that does not fit in memory. The hooks here keep only the rows and columns a method
asks for, one layer at a time, so peak memory is one layer's weights plus the reduced result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from lvlm_studio.core.models.loading import LoadedModel


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


@torch.no_grad()
def _capture(loaded, inputs, query_positions, key_positions, key_means: bool) -> tuple[np.ndarray, np.ndarray | None]:
    queries = torch.as_tensor(list(query_positions), dtype=torch.long)
    keys = torch.as_tensor(list(key_positions), dtype=torch.long)
    modules, causal = image_attention_modules(loaded)
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
