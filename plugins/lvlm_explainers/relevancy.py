"""Relevancy (Chefer et al. 2021): attention weighted by its gradient, propagated through the layers.

For a target token at position p, backpropagate its logit at p-1 (teacher-forced forward over
prompt + answer, eager attention). Per layer, A_bar_l = mean over heads of relu(dA_l * A_l): the
attention that, according to the gradient, pushed the logit up. Starting from R = I, each layer
adds what it moves: R <- R + A_bar_l R for l = 1..L, so R = (I + A_bar_L) ... (I + A_bar_1).
The map is R[p-1, image]. The rest of the row (the prompt text, the template, earlier answer
tokens) goes into the provenance (``TEXT_RELEVANCE``), for the image's share of the relevance
(``modality_influence``).

How it is computed here:

* One forward serves every target; each target then has its own backward (the graph is kept
  between them), and progress is reported after each, so a long answer can be cancelled. Each
  backward is exact for its token: unlike LVLM-Interpret, nothing comes from a KV-cached
  generation step, where gradients of earlier steps leak into the rows.
* Only the row we read is built: e_q^T R = e_q^T (I + A_bar_L) ... (I + A_bar_1) is a row vector
  updated as v <- v + v A_bar_l from l = L down to 1, which is exactly the order in which a
  backward pass produces dA_l. A tensor hook on each layer's weights folds A_bar_l into v as soon
  as its gradient exists and drops it: O(T^2) time and memory per layer, never all layers'
  gradients at once and no T x T x T products. The result equals the full-matrix recursion.
  A_bar_l is built only over the rows where v is non-zero (one row in the last layer, where v is
  still e_q), and each backward stops at the first layer's attention weights: below them (that
  layer's queries and keys, the embeddings) there is nothing left to fold in.
* Where the model's attention allows it (``rows_with_gradients_applies``), the first layer's
  weights carry no graph: its attention output is a leaf (``attention_output_leaf``), the backward
  stops there with dO, and A_bar_1 is built from dA_1 = dO V^T a block of ``FIRST_LAYER_BLOCK``
  rows at a time, so the heads x T x T gradient is never written out in one piece (at LLaVA-1.5's
  shape writing it and multiplying it by A_1 was two thirds of each token's backward).
* Gradients go through ``torch.autograd.grad``; the parameters' ``.grad`` are never touched.

``side="vision"`` applies the same rule to the vision encoder's self-attention, over the layers
up to the one whose output the projector reads (``vision_feature_layer``), with the gradient of
the same target logit, read at the CLS row (as Chefer et al. and LVLM-Interpret do for ViTs). Each
patch's value is drawn at the image positions its projected feature fills. Towers without a CLS
token (Qwen2-VL's ViT, SigLIP) have no row to read, and are refused with an InputError. Where the
projector drops the CLS token (LLaVA's "default" feature selection), the CLS row of the last layer
read never reaches the answer, gets no gradient and adds nothing: the map is what the CLS token
gathered through the earlier layers.

Where the image enters through cross-attention layers (Mllama), the same backward runs over the
decoder's self- and cross-attention layers in order: self-attention layers fold into the row as
above, and each cross-attention layer l adds ``v A_bar_l`` (the row as it stands when l's gradient
arrives, times its gradient-weighted attention over the vision tokens) to the map, which is read at
the vision tokens the regions index. This is the paper's rule for a decoder reading an encoder
(R^ti += R^tt A_bar^ti R^ii), with R^ii = I because the decoder never updates the vision tokens,
and the gradient taken from the pixels.

Contrast (``contrast``, a token id): the gradient is that of the target's logit minus the
alternative's, so the map shows the attention that favoured the target over the alternative.

Display normalisation: the paper also defines R_bar = rownorm(R - I) + I. At the image columns
of a text row (and at the patch columns of the CLS row) the identity is zero, so R_bar there is R
divided by one number per row; the overlay's min-max scaling cancels it. It is not applied.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from lvlm_explainers.gradients import differentiable_decoder_inputs, query_positions, target_scores
from lvlm_studio.api import (
    CONTRAST,
    TEXT_RELEVANCE,
    Explainer,
    Explanation,
    InputError,
    Param,
    Progress,
    attention_implementation,
    attention_output_leaf,
    contrast_token,
    rows_with_gradients,
    rows_with_gradients_applies,
    split_by_region,
    text_relevance_record,
)

#: Rows of the first layer's A_bar built at a time from its output's gradient (heads x rows x T of
#: dA in flight: 2.5 MB at LLaVA-1.5's 32 heads and ~600 tokens).
FIRST_LAYER_BLOCK = 32


class RowRelevancy:
    """Rows of R = (I + A_bar_L) ... (I + A_bar_1), folded in layer by layer during backward.

    ``hook(layer)`` is a forward hook for layer ``layer``'s attention module: it keeps the weights
    and registers a gradient hook on them. ``backward(score, rows)`` then runs one backward from
    ``score`` down to the first layer's weights and returns ``rows`` [batch, k, T] multiplied
    through every layer whose gradient it met.

    Layers listed in ``cross`` are cross-attention layers (queries: the sequence, keys: the image's
    vision tokens; Mllama). They do not mix the sequence's rows; each adds what it reads from the
    image, ``rows @ A_bar_l`` [batch, k, K], to ``image`` (Chefer et al. 2021's rule for a decoder
    attending to an encoder, R^ti += R^tt A_bar^ti, with the relevance of the vision tokens to
    themselves the identity, since the decoder never updates them, and the rows R^tt those of the
    layers after it, which are the ones a backward pass has folded in when layer l's gradient
    arrives).
    """

    def __init__(self, cross: frozenset[int] = frozenset(), positions: dict[int, torch.Tensor] | None = None) -> None:
        self.weights: dict[int, torch.Tensor] = {}  # layer -> A_l, detached (the graph keeps it anyway)
        # the first layer's record from attention_output_leaf (weights, values, output leaf), when
        # the pass runs under it (set once the context is entered)
        self.first_output: dict[str, torch.Tensor] | None = None
        # layer -> the query positions its weights' rows are, where a layer keeps only some rows
        self.positions = positions or {}
        self.rows = torch.zeros(0)  # set by each backward
        self.image: torch.Tensor | None = None  # relevance to the vision tokens (cross layers only)
        self.cross = cross
        self.previous_layer: int | None = None
        self.first: torch.Tensor | None = None  # the weights of the first layer hooked, with their graph
        self.scratch = torch.zeros(0)  # room for one layer's grad * A, kept between backwards

    def hook(self, layer: int) -> Callable:
        def keep(module: torch.nn.Module, args: tuple, output: tuple) -> None:
            weights = output[1]
            if weights is None:
                raise RuntimeError("the attention module returned no weights; is the implementation eager?")
            self.weights[layer] = weights.detach()
            if not weights.requires_grad:  # the first layer, folded from its output's gradient
                return
            if layer == min(self.weights):
                self.first = weights
            weights.register_hook(lambda grad: self._fold(layer, grad))

        return keep

    def _fold(self, layer: int, grad: torch.Tensor) -> None:
        if self.previous_layer is not None and layer >= self.previous_layer:
            raise RuntimeError(f"the gradient of layer {layer} arrived after layer {self.previous_layer}'s")
        self.previous_layer = layer
        rows = self.rows.to(grad.device)  # layers may sit on different devices
        positions = self.positions.get(layer)
        if positions is not None:  # the weights hold only these query rows (the last layer's)
            a_bar = self._a_bar(grad, self.weights[layer])
            self.rows = rows + rows[..., positions.to(rows.device)] @ a_bar
            return
        # Only the rows of A_bar_l where the row vector is non-zero add anything: one row for the
        # last layer (v = e_q), none after q in the others (causal). Build A_bar over that span only.
        span = live_span(rows)
        if span is None:
            return
        a_bar = self._a_bar(grad[..., span, :], self.weights[layer][..., span, :])
        read = rows[..., span] @ a_bar  # [batch, k, T or K]
        if layer in self.cross:
            self.image = read if self.image is None else self.image.to(read.device) + read
        else:
            self.rows = rows + read

    def _a_bar(self, grad: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """mean over heads of relu(grad * weights), [batch, rows, T]. The product is written into
        memory kept between backwards: a fresh heads x rows x T tensor for every layer of every
        token cost more than the arithmetic (the allocator hands large blocks back to the system)."""
        size, device = grad.numel(), grad.device
        if self.scratch.numel() < size or self.scratch.device != device:
            self.scratch = torch.empty(size, dtype=torch.float32, device=device)
        product = torch.mul(grad.float(), weights.float(), out=self.scratch[:size].view(grad.shape))
        return product.clamp_(min=0).mean(dim=1)

    def backward(self, score: torch.Tensor, rows: torch.Tensor, keep_graph: bool) -> torch.Tensor:
        """Backpropagate ``score`` down to the first layer's attention weights and no further: every
        layer's weights lie on that path, and what lies below (that layer's queries and keys, the
        embeddings) has no attention to fold in."""
        self.rows, self.previous_layer, self.image = rows, None, None
        if self.first_output is None:
            torch.autograd.grad(score, self.first, retain_graph=keep_graph, allow_unused=True)
            return self.rows
        (output_grad,) = torch.autograd.grad(score, self.first_output["output"], retain_graph=keep_graph)
        self._fold_first(output_grad)
        return self.rows

    def _fold_first(self, output_grad: torch.Tensor) -> None:
        """Fold the first layer in from its output's gradient dO: over the rows where the row vector
        is non-zero, A_bar_1 = mean over heads of relu((dO V^T) * A_1), ``FIRST_LAYER_BLOCK`` rows at
        a time, each block multiplied into the row vector as it is made."""
        layer = min(self.weights)
        rows = self.rows.to(output_grad.device)
        span = live_span(rows)
        if span is None:
            return
        weights, values = self.weights[layer], self.first_output["values"].transpose(-1, -2)
        grad = output_grad.float()
        read = torch.zeros_like(rows)
        for start in range(span.start, span.stop, FIRST_LAYER_BLOCK):
            block = slice(start, min(start + FIRST_LAYER_BLOCK, span.stop))
            a_bar = torch.matmul(grad[..., block, :], values).mul_(weights[..., block, :]).clamp_(min=0).mean(dim=1)
            read += rows[..., block] @ a_bar
        self.rows = rows + read


def live_span(rows: torch.Tensor) -> slice | None:
    """The columns from the first to the last where any of ``rows`` [batch, k, T] is non-zero
    (None when all are zero): the only rows of the next A_bar that add anything."""
    live = rows.ne(0).flatten(0, 1).any(dim=0).nonzero()
    return slice(int(live[0]), int(live[-1]) + 1) if len(live) else None


def one_hot_rows(batch: int, length: int, index: int, device: torch.device) -> torch.Tensor:
    rows = torch.zeros(batch, 1, length, device=device)
    rows[:, 0, index] = 1.0
    return rows


class Relevancy(Explainer):
    id = "relevancy"
    title = "Relevancy (gradient-weighted attention)"
    needs = frozenset({"model", "eager_attention", "gradients"})
    params = (
        Param("side", "language", "propagate through the language model's layers, or the vision encoder's "
                                  "(read at its CLS token)", choices=("language", "vision")),
        CONTRAST,
    )

    def applies_to(self, model, params: dict[str, Any]) -> str | None:
        if params["side"] == "vision":
            return vision_side_reason(model)
        return None  # image tokens: self-attention; cross-attention families: through their cross-attention

    def per_target(self, params: dict[str, Any]) -> bool:
        return True  # one backward pass per token: the selected token's map comes first in the app

    def explain(self, trace, model, targets, params: dict[str, Any]):
        if model is None:
            raise InputError("relevancy needs the model, not only a saved trace.", "Load the model first.")
        queries = query_positions(trace, targets)
        vision = params["side"] == "vision"
        crossing = not vision and model.adapter.image_entry == "cross_attention"
        modules, cross = (vision_layers_read(model), frozenset()) if vision else decoder_attention(model)
        inputs = trace.teacher_forced_inputs(model, upto=max(queries) + 1)
        yield Progress(0, len(targets) + 1, "forward pass")

        # In the last layer only the rows whose logits are kept reach a score: attention (and its
        # backward) for those rows alone, where the model's attention allows it.
        last = len(modules) - 1
        rows_only = not vision and last not in cross and rows_with_gradients_applies(model)
        positions = {last: torch.as_tensor(queries, dtype=torch.long)} if rows_only else {}
        # The first layer's weights need no graph: its backward starts from its output's gradient.
        first_leaf = rows_only and not crossing and last > 0
        first_output = attention_output_leaf(modules[0]) if first_leaf else nullcontext()
        if vision or crossing:  # differentiate from the pixels: the image reaches the answer through them
            inputs["pixel_values"] = inputs["pixel_values"].detach().requires_grad_(True)
            leaves = nullcontext([inputs["pixel_values"]])
        else:
            leaves = differentiable_decoder_inputs(model)
        relevancy = RowRelevancy(cross, positions)
        handles = [m.register_forward_hook(relevancy.hook(i)) for i, m in enumerate(modules)]
        try:
            last_rows = rows_with_gradients(modules[last], queries) if rows_only else nullcontext()
            with (torch.enable_grad(), attention_implementation(model.model, "eager"), last_rows,
                  first_output as first_record, leaves as leaf_holder):
                relevancy.first_output = first_record
                logits = model.model(**inputs, use_cache=False, logits_to_keep=torch.tensor(queries)).logits[0]
        finally:
            for handle in handles:
                handle.remove()
        leaf = leaf_holder[-1]
        first_self = min(set(range(len(modules))) - cross)
        batch, length = relevancy.weights[first_self].shape[0], relevancy.weights[first_self].shape[-1]
        # Where each image position reads R: (batch entry, column). The decoder has one sequence;
        # the vision encoder one per tile, read at the patch that fills the position.
        if vision:
            tiles, columns = vision_token_sources(model, inputs, trace.image_positions, length)
        else:
            columns = torch.as_tensor(trace.image_positions, dtype=torch.long)
            tiles = torch.zeros_like(columns)
        alternative = contrast_token(params)
        scores = target_scores(logits, [int(trace.answer_ids[t]) for t in targets], "logit", alternative)

        maps: dict[int, list[np.ndarray]] = {}
        # The row outside the image (prompt text, template, earlier answer tokens), for the share of
        # relevance on the image versus the text (modality_influence); the decoder side only.
        # (Under cross-attention the image positions index the vision tokens: every position is text.)
        outside = None if vision else np.arange(length) if crossing else np.setdiff1d(np.arange(length),
                                                                                      trace.image_positions)
        text_rows: dict[int, np.ndarray] = {}
        for i, (target, query) in enumerate(zip(targets, queries)):
            yield Progress(i + 1, len(targets) + 1, f"backward pass for token {target}")
            start = one_hot_rows(batch, length, 0 if vision else query, leaf.device)
            rows = relevancy.backward(scores[i], start, keep_graph=i + 1 < len(targets))
            if outside is not None:
                text_rows[target] = rows[0, 0, torch.as_tensor(outside)].detach().double().cpu().numpy()
            if crossing:  # the region positions index the vision tokens, the cross-attention's keys
                rows = relevancy.image if relevancy.image is not None else rows.new_zeros(batch, 1, 0)
            values = rows[tiles, 0, columns]
            maps[target] = split_by_region(values.detach().double().cpu().numpy(), trace.regions)
        provenance = {
            "method": self.id,
            "side": params["side"],
            "score": "logit of the target token at the position that predicts it" if alternative is None else
                     f"logit of the target token minus that of token {alternative}, at the position that predicts it",
            "layers": f"{len(modules)} {'vision encoder' if vision else 'decoder'} layers"
                      + (f", {len(cross)} of them cross-attention (the image enters there)" if cross else ""),
            "attention": "eager for this pass (the model's default is restored afterwards)",
            "model": model.describe(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if outside is not None:
            provenance[TEXT_RELEVANCE] = text_relevance_record(outside, text_rows, image_in_sequence=not crossing)
        return Explanation(self.id, maps, params, provenance)


def decoder_attention(model) -> tuple[list[torch.nn.Module], frozenset[int]]:
    """The decoder's attention modules in the order they run, and which of them are cross-attention."""
    self_attention = model.adapter.attention_modules()
    cross_attention = model.adapter.cross_attention_modules()
    if not cross_attention:
        return self_attention, frozenset()
    order = {id(m): i for i, m in enumerate(model.adapter.language_model().modules())}
    modules = sorted([*self_attention, *cross_attention], key=lambda m: order[id(m)])
    crossing = {id(m) for m in cross_attention}
    return modules, frozenset(i for i, m in enumerate(modules) if id(m) in crossing)


# -- vision side ---------------------------------------------------------------------------------


def vision_layers_read(model) -> list[torch.nn.Module]:
    """The vision encoder's attention modules up to the layer whose output the projector reads.

    ``vision_feature_layer`` indexes the tower's hidden states (the embeddings, then each layer's
    output), so index k (negative from the end) means layers 0..k-1 made the features; later layers
    do not reach the language model. A list of indices (features concatenated) reads up to the
    deepest. Refuses towers without a CLS token: relevancy is read at the CLS row.
    """
    reason = vision_side_reason(model)
    if reason is not None:
        raise InputError(f"{reason}.", "Use side=language, which explains the answer through the language model's "
                                       "attention.")
    modules = model.adapter.vision_attention_modules()
    chosen = getattr(model.model.config, "vision_feature_layer", -1)
    indices = list(chosen) if isinstance(chosen, (list, tuple)) else [chosen]
    used = max(int(i) % (len(modules) + 1) for i in indices)
    if used == 0:
        raise InputError("this model's projector reads the vision embeddings before any encoder layer, so no "
                         "vision attention reaches the answer.", "Use side=language.")
    return modules[:used]


def vision_side_reason(model) -> str | None:
    """Why vision-side relevancy cannot run on ``model`` (None when it can): it reads the encoder's CLS
    row, and draws each patch's value at the one image position its feature fills."""
    if model.adapter.image_entry != "tokens":
        return f"vision-side relevancy follows vision tokens into the sequence, and {model.adapter.family} has none"
    tower = model.adapter.vision_tower()
    if getattr(getattr(tower, "embeddings", None), "class_embedding", None) is None:
        return (f"vision-side relevancy reads the vision encoder's CLS token, and this model's vision encoder "
                f"({type(tower).__name__}) has none")
    if model.adapter.merges_vision_tokens:
        return ("vision-side relevancy draws each encoder patch at the image token it fills, and this model's "
                "projector folds several patches into each image token")
    return None


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once it has seen what it needed."""


@torch.no_grad()
def vision_token_sources(model, inputs: dict[str, torch.Tensor], image_positions: np.ndarray, length: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image position, the (tile, token) of the vision encoder whose feature fills it.

    ``length`` is the encoder's sequence length (CLS included). Families pack the projector's
    output into the sequence in their own way (LLaVA-1.5 in order after dropping CLS; LLaVA-NeXT
    as a base view plus stitched, unpadded tiles with newlines). Rather than restate each packing,
    one probe pass replaces the projector's output with its own row numbers (two small integers per
    row, exact even in bfloat16), lets the model place them, and reads them back from the decoder's
    input at the image positions; the decoder never runs. Tokens the projector did not see (CLS
    under "default" feature selection) come first in the encoder's sequence, so projector row r
    is encoder token r + (length - rows).
    """
    seen: dict[str, Any] = {}

    def number_rows(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        tiles, rows = output.shape[:2]
        index = torch.arange(tiles * rows, device=output.device).reshape(tiles, rows)
        coded = torch.zeros_like(output)
        coded[..., 0], coded[..., 1] = index // 256, index % 256
        seen["rows"] = rows
        return coded

    def read_placed(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["placed"] = kwargs["inputs_embeds"][0]
        raise _StopForward

    handles = [model.adapter.projector().register_forward_hook(number_rows),
               model.adapter.language_model().register_forward_pre_hook(read_placed, with_kwargs=True)]
    try:
        model.model(**inputs, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    positions = torch.as_tensor(image_positions, dtype=torch.long, device=seen["placed"].device)
    codes = seen["placed"][positions][:, :2].round().long()
    index = codes[:, 0] * 256 + codes[:, 1]
    if len(set(index.tolist())) != len(index):
        raise RuntimeError("could not trace which vision token fills each image position")
    rows = seen["rows"]
    return (index // rows).cpu(), (index % rows + (length - rows)).cpu()
