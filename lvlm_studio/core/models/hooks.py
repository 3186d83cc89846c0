"""Named hook points inside a model's vision tower, projector and language model, TransformerLens style.

Mechanistic tools (sparse autoencoders, activation patching, feature ablation) talk about places in
the network by name, the way TransformerLens and ViT-Prisma do, so that an SAE trained at
``blocks.1.hook_resid_post`` of one model can be found again, saved and shared. The names derive
from the family adapter (``vision_blocks()``, ``projector()``, ``decoder_layers()``), so a new family
gets hook points with no code here:

========================================  ==========================================================
``hook_embed``                            output of the tower's patch embeddings
``blocks.{L}.hook_resid_pre``             input of vision block L (the residual stream)
``blocks.{L}.attn.hook_pattern``          attention weights [batch, heads, query, key]
``blocks.{L}.hook_attn_out``              output of block L's attention (added to the stream)
``blocks.{L}.hook_resid_mid``             stream between attention and MLP (input of the 2nd norm)
``blocks.{L}.ln2.hook_normalized``        the MLP's input (the normalised stream; a transcoder's usual input)
``blocks.{L}.hook_mlp_out``               output of block L's MLP
``blocks.{L}.hook_resid_post``            output of vision block L
``hook_projector_in`` / ``_out``          the projector's input and output (image features)
``lm.blocks.{L}.hook_resid_pre/post``     the same for the language model's decoder layers
``lm.blocks.{L}.hook_attn_out/mlp_out``
========================================  ==========================================================

``hook_attn_out`` and ``hook_mlp_out`` are the sublayers' outputs; in blocks that scale them
before adding them to the stream (InternViT's layer scale), the stream gets the scaled value.
Activations keep the module's own layout: CLIP-style towers give [images (x tiles), tokens, d] with
the class token first, Qwen-style towers [patches, d]; ``ModelAdapter.vision_patch_grids`` says
where each image patch sits. Attention patterns are produced by an eager attention function that
this module registers with transformers and switches the vision tower to only while a pattern is
hooked, so ``hook_pattern`` works whatever attention implementation the model was loaded with (and
for towers such as Qwen2-VL's whose attention module never returns its weights). A tower that
attends image by image (Qwen2-VL) calls a pattern hook once per image.

A hook function is ``fn(activation, hook) -> new activation or None`` (None leaves it unchanged);
``hooks(loaded, [(name, fn)])`` keeps hooks in place for any call (a forward pass, a generation), so
activations can be patched or ablated while the full model answers.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lvlm_studio.core.errors import InputError

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

HookFn = Callable[[torch.Tensor, "HookPoint"], "torch.Tensor | None"]
NamesFilter = str | Sequence[str] | Callable[[str], bool] | None

ATTENTION_FUNCTION = "lvlm_studio_hooked_eager"
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
# The norm in front of the MLP, whose input is the stream between the two sublayers. Gemma-2/3 blocks norm the
# attention's output too ("sandwich" norms): there ``post_attention_layernorm`` reads the attention's output, not the
# stream, and ``pre_feedforward_layernorm`` is the one in front of the MLP, so it is looked for first.
_SECOND_NORM_NAMES = ("pre_feedforward_layernorm", "layer_norm2", "norm2", "post_attention_layernorm", "ln_2",
                      "layernorm_after")


@dataclass(frozen=True)
class HookPoint:
    """One named place: the module it hooks and whether it reads the module's input, output or
    attention pattern. ``part`` is "vision", "projector" or "language"; ``layer`` the block index."""

    name: str
    module: nn.Module
    where: str  # "input", "output" or "pattern"
    part: str
    layer: int | None = None


def hook_points(loaded: LoadedModel) -> dict[str, HookPoint]:
    """Every hook point of the model, in forward order, by name."""
    adapter = loaded.adapter
    points: dict[str, HookPoint] = {}

    def add(name: str, module: nn.Module | None, where: str, part: str, layer: int | None = None) -> None:
        if module is not None:
            points[name] = HookPoint(name, module, where, part, layer)

    tower = adapter.vision_tower()
    embed = next((m for m in (getattr(tower, n, None) for n in ("embeddings", "patch_embed", "patch_embedding"))
                  if isinstance(m, nn.Module)), None)
    add("hook_embed", embed, "output", "vision")
    for index, block in enumerate(adapter.vision_blocks()):
        _add_block(add, f"blocks.{index}", block, "vision", index, with_pattern=True)
    projector = adapter.projector()
    add("hook_projector_in", projector, "input", "projector")
    add("hook_projector_out", projector, "output", "projector")
    for index, layer in enumerate(adapter.decoder_layers()):
        _add_block(add, f"lm.blocks.{index}", layer, "language", index, with_pattern=False)
    return points


def _add_block(add, prefix: str, block: nn.Module, part: str, index: int, with_pattern: bool) -> None:
    attention, mlp, norm2 = (_child(block, names) for names in (_ATTENTION_NAMES, _MLP_NAMES, _SECOND_NORM_NAMES))
    add(f"{prefix}.hook_resid_pre", block, "input", part, index)
    if with_pattern:
        add(f"{prefix}.attn.hook_pattern", attention, "pattern", part, index)
    add(f"{prefix}.hook_attn_out", attention, "output", part, index)
    add(f"{prefix}.hook_resid_mid", norm2, "input", part, index)
    add(f"{prefix}.ln2.hook_normalized", mlp, "input", part, index)  # what the MLP reads, whichever norm made it
    add(f"{prefix}.hook_mlp_out", mlp, "output", part, index)
    add(f"{prefix}.hook_resid_post", block, "output", part, index)


def _child(block: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        child = getattr(block, name, None)
        if isinstance(child, nn.Module):
            return child
    return None


def select(points: dict[str, HookPoint], names_filter: NamesFilter) -> list[str]:
    """The names a filter picks, in forward order: None (all), a name, a list of names, a
    predicate, or a regular expression written ``re:PATTERN``. Unknown names raise ``InputError``."""
    if names_filter is None:
        return list(points)
    if callable(names_filter):
        return [n for n in points if names_filter(n)]
    if isinstance(names_filter, str):
        if names_filter.startswith("re:"):
            pattern = re.compile(names_filter[3:])
            chosen = [n for n in points if pattern.fullmatch(n)]
            if not chosen:
                raise InputError(f"no hook point matches {names_filter!r}.", _names_hint(points))
            return chosen
        names_filter = [names_filter]
    unknown = [n for n in names_filter if n not in points]
    if unknown:
        raise InputError(f"this model has no hook point {unknown[0]!r}.", _names_hint(points))
    wanted = set(names_filter)
    return [n for n in points if n in wanted]


def _names_hint(points: dict[str, HookPoint]) -> str:
    vision = sum(p.part == "vision" and p.name.endswith("hook_resid_post") for p in points.values())
    language = sum(p.part == "language" and p.name.endswith("hook_resid_post") for p in points.values())
    return (f"It has {vision} vision blocks (blocks.0 .. blocks.{vision - 1}) and {language} language blocks "
            f"(lm.blocks.0 ..); e.g. blocks.{vision // 2}.hook_resid_post, blocks.0.attn.hook_pattern, "
            "hook_projector_out, lm.blocks.0.hook_resid_post. `lvlm-studio sae hooks` lists them all.")


# -- hooks ----------------------------------------------------------------------------------------
@contextmanager
def hooks(loaded: LoadedModel, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[None]:
    """Keep ``fwd_hooks`` (name, fn) in place for the duration of the block, for every call made in it."""
    points = hook_points(loaded)
    select(points, [name for name, _ in fwd_hooks])  # unknown names fail before anything is attached
    with ExitStack() as stack:
        for name, fn in fwd_hooks:
            stack.enter_context(_attach(loaded, points[name], fn))
        yield


def run_with_hooks(loaded: LoadedModel, inputs: dict[str, torch.Tensor], fwd_hooks: Sequence[tuple[str, HookFn]],
                   **forward_kwargs: Any) -> Any:
    """One forward pass with the hooks in place; returns the model's output."""
    with hooks(loaded, fwd_hooks):
        return loaded.model(**inputs, use_cache=False, **forward_kwargs)


class ActivationCache(dict):
    """Activations by hook-point name (detached tensors), from ``run_with_cache`` or ``caching``.

    ``cache[name]`` is the first call's activation; a module called once per generated token (the
    language model under ``generate``) keeps every call in ``cache.calls[name]``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, list[torch.Tensor]] = {}

    def _add(self, name: str, value: torch.Tensor) -> None:
        self.calls.setdefault(name, []).append(value)
        self.setdefault(name, value)


class _StopForward(Exception):
    """Raised inside a hook once everything asked for is cached, to skip the rest of the model."""


@contextmanager
def caching(loaded: LoadedModel, names_filter: NamesFilter, to_cpu: bool = False,
            stop_when_complete: bool = False) -> Iterator[ActivationCache]:
    """Cache the chosen hook points during every call in the block (a forward, a generation)."""
    points = hook_points(loaded)
    names = select(points, names_filter)
    cache = ActivationCache()

    def keeper(name: str) -> HookFn:
        def keep(activation: torch.Tensor, hook: HookPoint) -> None:
            value = activation.detach()
            cache._add(name, value.cpu() if to_cpu else value)
            if stop_when_complete and len(cache) == len(names):
                raise _StopForward()

        return keep

    with ExitStack() as stack:
        for name in names:
            stack.enter_context(_attach(loaded, points[name], keeper(name)))
        yield cache


def run_with_cache(loaded: LoadedModel, inputs: dict[str, torch.Tensor], names_filter: NamesFilter,
                   stop_early: bool = True, to_cpu: bool = False,
                   **forward_kwargs: Any) -> tuple[Any, ActivationCache]:
    """One forward pass caching only the chosen hook points.

    With ``stop_early`` the pass stops as soon as the last chosen activation is cached (caching a
    vision layer then never runs the language model) and the output is None.
    """
    forward_kwargs.setdefault("logits_to_keep", 1)
    output = None
    with caching(loaded, names_filter, to_cpu=to_cpu, stop_when_complete=stop_early) as cache:
        try:
            output = loaded.model(**inputs, use_cache=False, **forward_kwargs)
        except _StopForward:
            pass
    return output, cache


# -- attaching one hook -----------------------------------------------------------------------------
@contextmanager
def _attach(loaded: LoadedModel, point: HookPoint, fn: HookFn) -> Iterator[None]:
    if point.where == "pattern":
        with _pattern_hook(loaded, point, fn):
            yield
        return
    dispatcher = _Dispatcher.on(point.module, point.where)
    entry = (point, fn)
    dispatcher.entries.append(entry)
    try:
        yield
    finally:
        dispatcher.entries.remove(entry)
        if not dispatcher.entries:
            dispatcher.close()


class _Dispatcher:
    """One torch hook per (module, input/output) that runs our hook functions in the order added.

    It is registered with ``prepend=True`` so that it runs before hooks transformers keeps on the
    same modules (the ones that collect ``hidden_states``): a patched block output is then what the
    model reads from its hidden states too, not only what the next block receives.
    """

    _live: dict[tuple[int, str], _Dispatcher] = {}

    def __init__(self, module: nn.Module, where: str):
        self.key = (id(module), where)
        self.entries: list[tuple[HookPoint, HookFn]] = []
        if where == "output":
            self.handle = module.register_forward_hook(self._on_output, prepend=True)
        else:
            self.handle = module.register_forward_pre_hook(self._on_input, with_kwargs=True, prepend=True)

    @classmethod
    def on(cls, module: nn.Module, where: str) -> _Dispatcher:
        key = (id(module), where)
        if key not in cls._live:
            cls._live[key] = cls(module, where)
        return cls._live[key]

    def close(self) -> None:
        self.handle.remove()
        self._live.pop(self.key, None)

    def _run(self, activation: torch.Tensor) -> torch.Tensor | None:
        changed = None
        for point, fn in list(self.entries):
            new = fn(activation, point)
            if new is not None:
                activation = changed = new
        return changed

    def _on_output(self, module: nn.Module, args: tuple, output: Any) -> Any:
        new = self._run(_first(output))
        return None if new is None else _replace_first(output, new)

    def _on_input(self, module: nn.Module, args: tuple, kwargs: dict) -> Any:
        if args:
            new = self._run(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = next(k for k in ("hidden_states", "x", "input") if k in kwargs)
        new = self._run(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})


def _first(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output[0]  # a transformers ModelOutput


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    key = next(iter(output.keys()))
    output[key] = new
    return output


# -- attention patterns -------------------------------------------------------------------------------
_pattern_lock = threading.Lock()
_pattern_hooks: dict[int, list[Callable[[torch.Tensor], torch.Tensor | None]]] = {}
_switched: dict[int, tuple[Any, str, int]] = {}  # config id -> (config, implementation before, hooks on it)


@contextmanager
def _pattern_hook(loaded: LoadedModel, point: HookPoint, fn: HookFn) -> Iterator[None]:
    """Route the vision tower's attention through ``_hooked_attention`` while ``fn`` watches ``point``;
    the tower's own implementation comes back when the last pattern hook on it is removed."""
    _register_attention_function()
    config = loaded.adapter.vision_tower().config

    def on_weights(weights: torch.Tensor) -> torch.Tensor | None:
        return fn(weights, point)

    key = id(point.module)
    with _pattern_lock:
        _pattern_hooks.setdefault(key, []).append(on_weights)
        _, previous, count = _switched.get(id(config), (config, config._attn_implementation, 0))
        _switched[id(config)] = (config, previous, count + 1)
        config._attn_implementation = ATTENTION_FUNCTION
    try:
        yield
    finally:
        with _pattern_lock:
            _pattern_hooks[key].remove(on_weights)
            if not _pattern_hooks[key]:
                del _pattern_hooks[key]
            _, previous, count = _switched.pop(id(config))
            if count > 1:
                _switched[id(config)] = (config, previous, count - 1)
            else:
                config._attn_implementation = previous


def _register_attention_function() -> None:
    from transformers import AttentionInterface

    if ATTENTION_FUNCTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_FUNCTION, _hooked_attention)


def _hooked_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention (softmax(q kᵀ · scale + mask) v) whose weights pass through the pattern hooks.

    Same contract as transformers' attention functions: q [batch, heads, q_len, d], k and v
    [batch, kv_heads, k_len, d]; returns the output as [batch, q_len, heads, d] and the weights.
    """
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    for hook in list(_pattern_hooks.get(id(module), ())):
        new = hook(weights)
        if new is not None:
            weights = new
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights
