"""Sanity checks (Adebayo et al. 2018): does a map depend on the model, and on the image?

* **Model randomisation, cascading.** The model's parts are re-initialised one at a time from the
  top down, each stage adding to the last: the LM head with the final norm, then the decoder
  layers from the last to the first, then the projector, then the vision encoder's layers from the
  last to the first. After each stage the same answer (teacher-forced) is explained again and
  compared with the trained model's maps by Spearman rank correlation, averaged over tokens.
  A map that explains the model loses its ranking as the model is destroyed; one that stays
  correlated to the end explains something else (the image's edges, a position prior). Checking
  only the language model misses methods that read the vision tower (vision-side relevancy): the
  cascade into the vision tower is what tests them.
* **Input independence.** The same answer explained on a different image (by default the image
  turned by 180 degrees, which moves every object): a map that correlates highly with the original
  map regardless of the image is not about the image.

Parts are re-initialised *in place* (weight matrices from N(0, initializer_range), norm scales 1,
biases 0, from a fixed seed) and restored afterwards, even when the job is cancelled, so that a
large model is never held twice. Do not use the model for anything else while a check runs.
Traces are re-derived for each stage (``retrace``): methods that read cached hidden states (TAM)
must see the randomised model too.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.metrics.agreement import flatten, rank_correlation
from lvlm_studio.core.plugin.contracts import MetricResult
from lvlm_studio.core.plugin.jobs import Job, Progress

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.plugin.contracts import Explainer
    from lvlm_studio.core.plugin.explanation import Explanation
    from lvlm_studio.core.tracing.trace import Trace

SEED = 0


def cascade_stages(loaded: LoadedModel, granularity: str = "layer") -> list[tuple[str, list[torch.nn.Module]]]:
    """(name, modules) of each randomisation stage, top layer down: LM head and final norm, decoder
    layers last to first, projector, vision encoder layers last to first. ``granularity="block"``
    takes the same path in two stages, "language_model" (head, norm, decoder) and "vision"
    (projector and vision encoder), and ``"model"`` in one: the same end point, for less."""
    adapter = loaded.adapter
    stages: list[tuple[str, list[torch.nn.Module]]] = [("lm_head", [adapter.lm_head(), adapter.final_norm()])]
    layers = list(adapter.decoder_layers())
    stages += [(f"decoder.{i}", [layers[i]]) for i in reversed(range(len(layers)))]
    stages.append(("projector", [adapter.projector()]))
    vision = _vision_layers(loaded)
    stages += [(f"vision.{i}", [vision[i]]) for i in reversed(range(len(vision)))]
    if granularity == "block":
        split = len(layers) + 1
        return [("language_model", [m for _, ms in stages[:split] for m in ms]),
                ("vision", [m for _, ms in stages[split:] for m in ms])]
    if granularity == "model":
        return [("model", [m for _, ms in stages for m in ms])]
    if granularity != "layer":
        raise InputError(f"unknown cascade granularity {granularity!r}.", "Use layer, block or model.")
    return stages


def _vision_layers(loaded: LoadedModel) -> list[torch.nn.Module]:
    """The vision encoder's layers: the modules that hold each vision attention module."""
    tower = loaded.adapter.vision_tower()
    attentions = loaded.adapter.vision_attention_modules()
    parents: dict[int, torch.nn.Module] = {}
    for module in tower.modules():
        for child in module.children():
            parents[id(child)] = module
    return [parents.get(id(a), a) for a in attentions]


@contextmanager
def randomised(loaded: LoadedModel, modules: list[torch.nn.Module], seed: int = SEED) -> Iterator[None]:
    """Re-initialise ``modules`` in place for the duration of the block, then restore them."""
    saved = [(p, p.detach().clone()) for m in modules for p in m.parameters()]
    try:
        randomise_(loaded, modules, seed)
        yield
    finally:
        with torch.no_grad():
            for param, value in saved:
                param.copy_(value)


def randomise_(loaded: LoadedModel, modules: list[torch.nn.Module], seed: int = SEED) -> None:
    """Weight matrices (and convolution kernels) from N(0, std), 1-D weights (norm scales) 1, biases 0."""
    config = loaded.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    std = float(getattr(text, "initializer_range", 0.02) or 0.02)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for name, param in module.named_parameters():
                if param.dim() >= 2:
                    param.copy_((torch.randn(param.shape, generator=generator) * std).to(param.dtype))
                elif name.endswith("weight"):
                    param.fill_(1.0)
                else:
                    param.zero_()


def retrace(loaded: LoadedModel, trace: Trace, image: Image.Image | None = None) -> Trace:
    """The trace as ``loaded`` sees it now: cached hidden states recomputed teacher-forced on the
    same tokens (and the image replaced by ``image``, same size, when given)."""
    from lvlm_studio.core.perturbation.perturb import processed_images

    changes: dict[str, Any] = {"visual_relevance": None}
    if image is not None:
        if image.size != trace.image.size:
            raise InputError(f"the other image is {image.size}, the trace's {trace.image.size}.",
                             "Use an image of the same size.")
        changes["image"] = image.convert("RGB")
        changes["model_inputs"] = {k: v.cpu().numpy() for k, v in processed_images(loaded, trace, [image]).items()}
    new = dataclasses.replace(trace, **changes)
    captured: list[torch.Tensor] = []
    handle = loaded.adapter.final_norm().register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        with torch.no_grad():
            loaded.model(**new.teacher_forced_inputs(loaded), use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    new.hidden = captured[-1][0].float().cpu().numpy().astype(trace.hidden.dtype)
    return new


def mean_rank_correlation(original: Explanation, other: Explanation) -> float:
    """Spearman rho of each token's maps, averaged over tokens. A token whose original map is
    constant has no ranking and is skipped; an other map that became constant lost the ranking
    entirely and counts as 0."""
    values = []
    for token in original.targets:
        before, after = flatten(original.maps[token]), flatten(other.maps[token])
        if np.ptp(before) == 0:
            continue
        rho = rank_correlation(before, after)
        values.append(0.0 if not np.isfinite(rho) else rho)
    return float(np.mean(values)) if values else float("nan")


def explain(explainer: Explainer, trace: Trace, loaded: LoadedModel, targets: list[int],
            params: dict[str, Any]) -> Job[Explanation]:
    """Run an explainer inside a job, passing its progress on."""
    result = explainer.explain(trace, loaded, targets, params)
    if inspect.isgenerator(result):
        result = yield from result
    return result


def model_randomisation(
    loaded: LoadedModel,
    trace: Trace,
    explainer: Explainer,
    params: dict[str, Any],
    targets: list[int],
    original: Explanation | None = None,
    seed: int = SEED,
    granularity: str = "layer",
) -> Job[MetricResult]:
    """The cascading check. ``values``: rank correlation after the language model is fully
    randomised (``rho_language``, not with ``granularity="model"``) and after the whole cascade
    (``rho_all``); ``curves["cascade"]``:
    stage number -> rank correlation, with the stage names in ``details``."""
    stages = cascade_stages(loaded, granularity)
    if original is None:
        original = yield from explain(explainer, trace, loaded, targets, params)
    rhos: list[float] = []
    saved = [(p, p.detach().clone()) for _, modules in stages for m in modules for p in m.parameters()]
    try:
        for index, (name, modules) in enumerate(stages):
            yield Progress(index, len(stages), f"randomised up to {name}")
            randomise_(loaded, modules, seed + index)
            after = yield from explain(explainer, retrace(loaded, trace), loaded, targets, params)
            rhos.append(mean_rank_correlation(original, after))
    finally:
        with torch.no_grad():
            for param, value in saved:
                param.copy_(value)
    yield Progress(len(stages), len(stages), "model randomisation done")
    names = [name for name, _ in stages]
    language = [i for i, name in enumerate(names) if name.startswith(("decoder", "lm_head", "language"))]
    values = {"rho_language": rhos[language[-1]]} if language else {}
    return MetricResult(
        values=values | {"rho_all": rhos[-1]},
        curves={"cascade": (np.arange(len(rhos), dtype=np.float64), np.asarray(rhos))},
        details={"stages": names, "rank_correlations": rhos},
    )


def rotated(image: Image.Image) -> Image.Image:
    """The default "other image" of the input-independence check: turned by 180 degrees."""
    return image.transpose(Image.Transpose.ROTATE_180)


def input_independence(
    loaded: LoadedModel,
    trace: Trace,
    explainer: Explainer,
    params: dict[str, Any],
    targets: list[int],
    other_images: list[Image.Image] | None = None,
    original: Explanation | None = None,
) -> Job[MetricResult]:
    """Mean rank correlation between the maps on the trace's image and on each other image, for the
    same teacher-forced answer (``values["rho_input"]``; near 1 means the map ignores the image)."""
    if original is None:
        original = yield from explain(explainer, trace, loaded, targets, params)
    others = other_images if other_images else [rotated(trace.image)]
    rhos = []
    for index, image in enumerate(others):
        yield Progress(index, len(others), f"other image {index + 1} of {len(others)}")
        after = yield from explain(explainer, retrace(loaded, trace, image), loaded, targets, params)
        rhos.append(mean_rank_correlation(original, after))
    yield Progress(len(others), len(others), "input independence done")
    return MetricResult(values={"rho_input": float(np.nanmean(rhos)) if rhos else float("nan")},
                        details={"rank_correlations": rhos})
