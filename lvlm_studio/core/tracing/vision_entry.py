"""When does visual information enter the answer? The logit lens per layer, and attention knockout.

Two views of one teacher-forced pass over prompt + answer (a ``Trace``):

* **Logit lens**: the residual stream after each decoder layer L (``lm.blocks.L.hook_resid_post``) is
  read out through the model's own final norm and LM head, as if the model stopped at L. At the
  query that predicts answer token t (``answer_position(t) - 1``) this gives, per layer, the rank
  (0 = the top token) and probability of t: the layer from which the answer is decodable. At the
  image positions it gives, per layer, the best rank of each answer token over the image tokens:
  whether the image tokens themselves come to "say" the answer (e.g. the word "red" decoded at the
  red object). At the last layer the lens is the model's own output, exactly.
* **Attention knockout** (the cross-modal information-flow protocol): in a window of k consecutive
  layers that see the image, the attention edges from every query that predicts an answer token to
  every image token are cut (an additive -inf in the attention mask of those layers, so the softmax
  renormalises over the other keys); the drop in each answer token's log-probability,
  log p(original) - log p(knocked out), says how much of the image reached the answer through those
  layers. Windows slide over the layers one at a time. Where the image enters by cross-attention
  (Mllama), the layers are the cross-attention layers and their keys are the vision tokens.

Per answer token the two give a timeline across generation: the first layer from which the lens
keeps the token on top, and the window whose knockout costs it most.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.capture import attention_implementation, image_attention_modules
from lvlm_studio.core.models.hooks import HookPoint, hooks

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.tracing.trace import Trace


#: Image positions read out through the LM head at once (a vocabulary-wide row each).
IMAGE_CHUNK = 64


@dataclass
class LogitLens:
    """``answer_rank[l, t]``, ``answer_prob[l, t]``: rank (0 = top) and probability of answer token t
    read out after decoder layer l at the query that predicts it. ``image_best_rank[l, t]`` and
    ``image_max_prob[l, t]``: the best rank and the highest probability of answer token t over the
    image positions after layer l (empty [layers, 0] arrays where the image is not in the sequence)."""

    answer_rank: np.ndarray
    answer_prob: np.ndarray
    image_best_rank: np.ndarray
    image_max_prob: np.ndarray

    def entry_layer(self) -> np.ndarray:
        """[tokens] the first layer from which each answer token stays the top token through the
        last layer (-1 when it is not on top even at the last layer)."""
        on_top = self.answer_rank == 0  # [layers, tokens]
        layers = on_top.shape[0]
        out = np.full(on_top.shape[1], -1, dtype=np.int64)
        for t in range(on_top.shape[1]):
            stays = np.flatnonzero(~on_top[:, t])
            first = 0 if not len(stays) else int(stays[-1]) + 1
            out[t] = first if first < layers else -1
        return out


def _readout(loaded: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of the vocabulary from residual-stream states [n, d]: final norm, LM head,
    and the final logit soft-capping of the families that have one, as the model itself does."""
    norm, head = loaded.adapter.final_norm(), loaded.adapter.lm_head()
    weight = next(norm.parameters(), None)
    logits = head(norm(hidden if weight is None else hidden.to(weight.device))).float()
    cap = getattr(loaded.model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def logit_lens(loaded: LoadedModel, trace: Trace) -> LogitLens:
    """The logit lens at the answer's positions and at the image positions (module docstring)."""
    n = len(trace.answer_ids)
    if not n:
        raise InputError("the answer is empty.", "Ask again; there is no token to look at.")
    queries = [trace.answer_position(t) - 1 for t in range(n)]
    image = trace.image_positions if loaded.adapter.image_entry == "tokens" else np.zeros(0, dtype=np.int64)
    kept = _residuals(loaded, trace, np.concatenate([queries, image]).astype(np.int64), upto=max(queries) + 1)
    layers = len(kept)
    answer = torch.as_tensor(trace.answer_ids, dtype=torch.long)
    rank = np.zeros((layers, n), dtype=np.int64)
    prob = np.zeros((layers, n))
    image_rank = np.zeros((layers, n if len(image) else 0), dtype=np.int64)
    image_prob = np.zeros_like(image_rank, dtype=np.float64)
    for layer, states in enumerate(kept):
        log_probs = _readout(loaded, states[:n])
        chosen = log_probs.gather(1, answer.to(log_probs.device)[:, None])[:, 0]
        rank[layer] = (log_probs > chosen[:, None]).sum(dim=1).cpu().numpy()
        prob[layer] = chosen.exp().cpu().numpy()
        if len(image):
            image_rank[layer] = np.iinfo(np.int64).max
            for chunk in states[n:].split(IMAGE_CHUNK):  # [positions, vocab] at a time, not [image, vocab]
                image_log_probs = _readout(loaded, chunk)
                for t in range(n):
                    column = image_log_probs[:, int(answer[t])]
                    rank_here = int((image_log_probs > column[:, None]).sum(dim=1).min())
                    image_rank[layer, t] = min(image_rank[layer, t], rank_here)
                    image_prob[layer, t] = max(image_prob[layer, t], float(column.exp().max()))
    return LogitLens(rank, prob, image_rank, image_prob)


def _residuals(loaded: LoadedModel, trace: Trace, positions: np.ndarray, upto: int) -> list[torch.Tensor]:
    """The residual stream after every decoder layer at sequence ``positions`` ([layers] of
    [positions, d]), from one teacher-forced pass over the sequence up to ``upto`` (exclusive)."""
    wanted = torch.as_tensor(np.asarray(positions, dtype=np.int64))
    layers = len(loaded.adapter.decoder_layers())
    kept: list[torch.Tensor | None] = [None] * layers

    def keep(activation: torch.Tensor, point: HookPoint) -> None:
        kept[point.layer] = activation[0].index_select(0, wanted.to(activation.device)).detach()

    inputs = trace.teacher_forced_inputs(loaded, upto=upto)
    with hooks(loaded, [(f"lm.blocks.{layer}.hook_resid_post", keep) for layer in range(layers)]):
        loaded.model(**inputs, use_cache=False, logits_to_keep=1)
    for layer, states in enumerate(kept):
        if states is None:
            raise RuntimeError(f"decoder layer {layer} did not run")
    return kept  # type: ignore[return-value]


@dataclass
class LensAt:
    """The logit lens at one sequence position, per decoder layer: the ``k`` most likely tokens
    (``top_ids``, ``top_tokens``, ``top_probs`` [layers, k]) and the probability and rank (0 = top) of
    one token of interest, ``token_id`` (``token_prob``, ``token_rank`` [layers]). ``position`` is the
    query that predicts an answer token, or an image token's position."""

    position: int
    token_id: int
    top_ids: np.ndarray
    top_tokens: list[list[str]]
    top_probs: np.ndarray
    token_prob: np.ndarray
    token_rank: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, one entry per layer."""
        return {"position": self.position, "token_id": self.token_id,
                "layers": [{"layer": layer, "token_prob": float(self.token_prob[layer]),
                            "token_rank": int(self.token_rank[layer]),
                            "top": [{"token": text, "id": int(i), "prob": float(p)} for text, i, p in
                                    zip(self.top_tokens[layer], self.top_ids[layer], self.top_probs[layer])]}
                           for layer in range(len(self.token_prob))]}


@torch.no_grad()
def lens_at(loaded: LoadedModel, trace: Trace, token: int, k: int = 5, patch: int | None = None) -> LensAt:
    """The logit lens for answer token ``token``: at the query that predicts it (the default), or at
    image token ``patch`` (an index into ``trace.image_positions``: "what does this patch say"), per
    layer the top ``k`` decoded tokens and the probability of the answer token. Read out as
    ``logit_lens`` reads out (at the query, the last layer is the model's own output)."""
    if not 1 <= k <= 100:
        raise InputError(f"k = {k} tokens per layer is out of range.", "Choose k from 1 to 100.")
    query = trace.answer_position(token) - 1
    position = query
    if patch is not None:
        image = trace.image_positions
        if loaded.adapter.image_entry != "tokens" or not len(image):
            raise InputError("this model has no image tokens in its sequence to read the lens at.",
                             "Use the lens at the answer token instead.")
        if not 0 <= patch < len(image):
            raise InputError(f"image token {patch} does not exist.", f"Choose one from 0 to {len(image) - 1}.")
        position = int(image[patch])
    token_id = int(trace.answer_ids[token])
    kept = _residuals(loaded, trace, np.array([position]), upto=max(query, position) + 1)
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    layers = len(kept)
    top_ids = np.zeros((layers, k), dtype=np.int64)
    top_probs = np.zeros((layers, k))
    prob, rank = np.zeros(layers), np.zeros(layers, dtype=np.int64)
    for layer, states in enumerate(kept):
        log_probs = _readout(loaded, states)[0]
        values, ids = log_probs.topk(min(k, log_probs.shape[0]))
        top_ids[layer, : len(ids)] = ids.cpu().numpy()
        top_probs[layer, : len(ids)] = values.exp().cpu().numpy()
        prob[layer] = float(log_probs[token_id].exp())
        rank[layer] = int((log_probs > log_probs[token_id]).sum())
    texts = [[_token_text(tokenizer, int(i)) for i in row] for row in top_ids]
    return LensAt(position, token_id, top_ids, texts, top_probs, prob, rank)


def _token_text(tokenizer: Any, token_id: int) -> str:
    """A token as a reader would write it (the trace's answer tokens are written the same way)."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return text if text.strip() else str(tokenizer.convert_ids_to_tokens(token_id))


# -- knockout ---------------------------------------------------------------------------------------
def layer_windows(layers: int, k: int) -> list[tuple[int, ...]]:
    """Windows of ``k`` consecutive layers, sliding by one: (0..k-1), (1..k), ... (one window of all
    layers when k >= layers)."""
    if k < 1:
        raise InputError(f"the knockout window is {k} layers; it must be at least 1.",
                         "Try 1, or a tenth of the layers.")
    k = min(k, layers)
    return [tuple(range(start, start + k)) for start in range(layers - k + 1)]


@contextmanager
def knocked_out(loaded: LoadedModel, layers: Sequence[int], queries: Sequence[int], keys: Sequence[int]
                ) -> Iterator[None]:
    """Within the block, the attention of ``layers`` (indices into ``image_attention_modules``) from
    ``queries`` to ``keys`` is cut: -inf is added to those entries of the attention mask before the
    softmax. The attention runs eagerly meanwhile (the mask reaches the module as given)."""
    modules, causal = image_attention_modules(loaded)
    q = torch.as_tensor(list(queries), dtype=torch.long)
    k = torch.as_tensor(list(keys), dtype=torch.long)

    def block(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        mask = kwargs.get("attention_mask")
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if mask is None:
            if not causal or hidden is None:
                raise RuntimeError("the attention module received no mask to knock edges out of")
            length = hidden.shape[1]
            mask = torch.triu(torch.full((length, length), torch.finfo(hidden.dtype).min, device=hidden.device),
                              diagonal=1)[None, None]
        mask = mask.clone()
        rows, cols = q.to(mask.device), k.to(mask.device)
        grid = (slice(None), slice(None), rows[:, None], cols[None, :])
        if mask.dtype == torch.bool:
            mask[grid] = False
        else:
            mask[grid] = torch.finfo(mask.dtype).min
        return args, {**kwargs, "attention_mask": mask}

    handles = [modules[i].register_forward_pre_hook(block, with_kwargs=True) for i in layers]
    try:
        with attention_implementation(loaded.model, "eager"):
            yield
    finally:
        for handle in handles:
            handle.remove()


def _answer_log_probs(loaded: LoadedModel, trace: Trace, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    n = len(trace.answer_ids)
    logits = loaded.model(**inputs, use_cache=False, logits_to_keep=n).logits[0].float()
    log_probs = torch.log_softmax(logits, dim=-1)
    answer = torch.as_tensor(trace.answer_ids, dtype=torch.long, device=log_probs.device)
    return log_probs.gather(1, answer[:, None])[:, 0].cpu().numpy()


@dataclass
class Knockout:
    """``drop[w, t]``: log p(answer token t) without knockout minus with the edges of window
    ``windows[w]`` cut; ``drop_all[t]``: the same with every image-seeing layer knocked out at once;
    ``log_prob[t]``: the answer's log-probabilities untouched."""

    windows: list[tuple[int, ...]]
    drop: np.ndarray
    drop_all: np.ndarray
    log_prob: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"windows": [list(w) for w in self.windows], "drop": self.drop.tolist(),
                "drop_all": self.drop_all.tolist(), "log_prob": self.log_prob.tolist()}


@torch.no_grad()
def attention_knockout(loaded: LoadedModel, trace: Trace, window: int = 1) -> Knockout:
    """Knock out answer → image attention over sliding windows of ``window`` layers (module docstring);
    one teacher-forced pass per window, plus one untouched and one with every layer knocked out."""
    n = len(trace.answer_ids)
    if not n:
        raise InputError("the answer is empty.", "Ask again; there is no token to look at.")
    modules, _ = image_attention_modules(loaded)
    queries = [trace.answer_position(t) - 1 for t in range(n)]
    keys = trace.image_positions
    inputs = trace.teacher_forced_inputs(loaded, upto=max(queries) + 1)
    with attention_implementation(loaded.model, "eager"):
        original = _answer_log_probs(loaded, trace, inputs)
    windows = layer_windows(len(modules), window)
    drops = []
    for layers in windows:
        with knocked_out(loaded, layers, queries, keys):
            drops.append(original - _answer_log_probs(loaded, trace, inputs))
    with knocked_out(loaded, range(len(modules)), queries, keys):
        drop_all = original - _answer_log_probs(loaded, trace, inputs)
    return Knockout(windows, np.asarray(drops).reshape(len(windows), n), drop_all, original)
