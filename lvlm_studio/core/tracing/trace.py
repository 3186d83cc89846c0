"""The Trace: one generation and what it cached, so that explanation methods never regenerate.

``generate_trace`` runs the model once (greedy, or sampled with a seed) and then one teacher-forced
forward over prompt + answer to cache the last layer's normed hidden states at every position:
enough for cheap methods such as the Token Activation Map. Methods that need more (attention,
gradients) run their own teacher-forced pass from ``teacher_forced_inputs``.

A Trace saves to a single safetensors file: arrays as tensors, everything else as JSON in the
file's metadata. No pickle is involved in saving or loading.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from lvlm_studio.core.errors import Cancelled, InputError
from lvlm_studio.core.io.files import atomic_path
from lvlm_studio.core.io.images import open_image
from lvlm_studio.core.models.inputs import forward_inputs
from lvlm_studio.core.models.loading import LoadedModel
from lvlm_studio.core.plugin.adapter import ImageRegion, all_image_positions
from lvlm_studio.core.tracing.relevance import VisualRelevance

FORMAT = "lvlm-studio-trace/1"
TOP_K = 5


@dataclass
class Trace:
    """One prompt, one image, one answer, and the internals methods read.

    Positions index the full sequence ``input_ids + answer_ids`` (``sequence_ids``). Answer token
    ``i`` (0-based, an index into ``answer_ids``; the app shows it as "token i+1 of n") sits at
    position ``answer_position(i) == len(input_ids) + i`` and was predicted from the hidden state one
    position earlier: the query whose attention or logits explain it is ``answer_position(i) - 1``.

    Fields:

    - ``prompt``: the question as the user wrote it; ``prompt_text``: after the chat template.
    - ``image``: the image given to the model (RGB).
    - ``input_ids``: [T] the prompt's token ids, image placeholders expanded to the image tokens;
      ``token_strings``: the readable form of each.
    - ``answer_ids``: [n] the generated ids (the end-of-sequence token excluded);
      ``answer_tokens``: their readable form; ``answer_text`` the answer as one string.
    - ``logprobs``: [n] log p of each chosen token (``probabilities`` is exp of it); ``top_ids``,
      ``top_logprobs`` [n, TOP_K] and ``top_tokens``: the most likely alternatives at each step.
    - ``regions``: the image regions (``ImageRegion``: token positions, grid (rows, cols), box in the
      original image), in the order an ``Explanation`` holds one map per region.
      ``image_positions`` is every region's positions together.
    - ``hidden``: [T + n, d] the last layer's hidden states after the final norm.
    - ``model_inputs``: the processor's outputs other than the text (``pixel_values``, ...), which
      ``teacher_forced_inputs(model, upto=...)`` combines with the ids for a forward pass.
    - ``model_info``, ``generation``, ``timings``: the model, the generation settings and the answer
      text, and how long each step took (seconds), as plain JSON-able data.
    - ``visual_relevance``: whether each answer token depends on the image (filled on first use).
    """

    prompt: str
    image: Image.Image
    prompt_text: str  # the prompt after the chat template
    input_ids: np.ndarray  # [T] prompt ids, image tokens expanded
    answer_ids: np.ndarray  # [n] generated ids (end-of-sequence token excluded)
    answer_tokens: list[str]  # readable form of each answer id
    logprobs: np.ndarray  # [n] log p of each chosen token
    top_ids: np.ndarray  # [n, TOP_K] most likely alternatives at each step
    top_logprobs: np.ndarray  # [n, TOP_K]
    top_tokens: list[list[str]]
    regions: list[ImageRegion]
    hidden: np.ndarray  # [T + n, d] last layer's hidden states after the final norm
    model_inputs: dict[str, np.ndarray]  # processor outputs other than the text (pixel_values, ...)
    token_strings: list[str] = field(default_factory=list)  # readable form of every prompt id
    model_info: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # Filled on first use by ``lvlm_studio.core.tracing.relevance.visual_relevance`` (two forward passes),
    # then saved and loaded with the trace so that no later reader pays for it again.
    visual_relevance: VisualRelevance | None = None

    # -- reading ----------------------------------------------------------------------------
    @property
    def sequence_ids(self) -> np.ndarray:
        return np.concatenate([self.input_ids, self.answer_ids])

    @property
    def answer_start(self) -> int:
        return len(self.input_ids)

    def answer_position(self, index: int) -> int:
        """Position of answer token ``index`` in the full sequence."""
        if not 0 <= index < len(self.answer_ids):
            raise InputError(f"answer token {index} does not exist.",
                             f"This answer has tokens 0 to {len(self.answer_ids) - 1}.")
        return self.answer_start + index

    @property
    def image_positions(self) -> np.ndarray:
        return all_image_positions(self.regions)

    @property
    def answer_text(self) -> str:
        return self.generation.get("answer_text", " ".join(self.answer_tokens))

    @property
    def probabilities(self) -> np.ndarray:
        return np.exp(self.logprobs)

    def teacher_forced_inputs(self, loaded: LoadedModel, upto: int | None = None) -> dict[str, torch.Tensor]:
        """Model inputs for a forward pass over the prompt and answer (to position ``upto``,
        exclusive; the whole sequence by default), on the model's input device and dtype."""
        ids = torch.as_tensor(self.sequence_ids[: upto if upto is not None else None], device=loaded.device)
        extras = {k: torch.as_tensor(v, device=loaded.device) for k, v in self.model_inputs.items()}
        return forward_inputs(ids[None].long(), extras, loaded.model.dtype, loaded.adapter.generated_token_inputs)

    # -- saving -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from safetensors.numpy import save_file

        path = Path(path)
        tensors = {
            "image": np.asarray(self.image.convert("RGB"), dtype=np.uint8),
            "input_ids": self.input_ids.astype(np.int64),
            "answer_ids": self.answer_ids.astype(np.int64),
            "logprobs": self.logprobs.astype(np.float32),
            "top_ids": self.top_ids.astype(np.int64),
            "top_logprobs": self.top_logprobs.astype(np.float32),
            "hidden": np.ascontiguousarray(self.hidden),
        }
        tensors.update({f"model_inputs.{k}": np.ascontiguousarray(v) for k, v in self.model_inputs.items()})
        relevance = self.visual_relevance
        if relevance is not None:
            tensors.update({
                "visual_relevance.logprob_image": relevance.logprob_image.astype(np.float32),
                "visual_relevance.logprob_blurred": relevance.logprob_blurred.astype(np.float32),
                "visual_relevance.relevant": relevance.relevant.astype(np.uint8),
            })
        meta = {
            "format": FORMAT,
            "prompt": self.prompt,
            "prompt_text": self.prompt_text,
            "answer_tokens": self.answer_tokens,
            "top_tokens": self.top_tokens,
            "token_strings": self.token_strings,
            "regions": [r.to_dict() for r in self.regions],
            "model_info": self.model_info,
            "generation": self.generation,
            "timings": self.timings,
        }
        if relevance is not None:
            meta["visual_relevance"] = {"blur_sigma": relevance.blur_sigma, "threshold": relevance.threshold}
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata={"lvlm_studio": json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.exists():
            raise InputError(f"trace file {path} does not exist.", "Save one with `lvlm-studio ask --save-trace FILE`.")
        try:
            with safe_open(str(path), framework="numpy") as handle:
                meta = json.loads((handle.metadata() or {})["lvlm_studio"])
                arrays = {key: handle.get_tensor(key) for key in handle.keys()}
        except (KeyError, OSError, ValueError, SafetensorError) as exc:
            raise InputError(f"{path} is not an LVLM Studio trace ({type(exc).__name__}).",
                             "Open a .trace.safetensors file written by LVLM Studio.") from None
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} has trace format {meta.get('format')!r}.", f"This version reads {FORMAT}.")
        return cls(
            prompt=meta["prompt"],
            image=Image.fromarray(arrays["image"], "RGB"),
            prompt_text=meta["prompt_text"],
            input_ids=arrays["input_ids"],
            answer_ids=arrays["answer_ids"],
            answer_tokens=meta["answer_tokens"],
            logprobs=arrays["logprobs"],
            top_ids=arrays["top_ids"],
            top_logprobs=arrays["top_logprobs"],
            top_tokens=meta["top_tokens"],
            regions=[ImageRegion.from_dict(r) for r in meta["regions"]],
            hidden=arrays["hidden"],
            model_inputs={k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith("model_inputs.")},
            token_strings=meta["token_strings"],
            model_info=meta["model_info"],
            generation=meta["generation"],
            timings=meta["timings"],
            visual_relevance=_relevance_from(arrays, meta.get("visual_relevance")),
        )


def _relevance_from(arrays: dict[str, np.ndarray], settings: dict[str, float] | None) -> VisualRelevance | None:
    """The cached visual relevance of a saved trace (traces saved before it was computed have none)."""
    if settings is None:
        return None
    return VisualRelevance(
        logprob_image=arrays["visual_relevance.logprob_image"],
        logprob_blurred=arrays["visual_relevance.logprob_blurred"],
        relevant=arrays["visual_relevance.relevant"].astype(bool),
        blur_sigma=float(settings["blur_sigma"]),
        threshold=float(settings["threshold"]),
    )


# -- inputs -------------------------------------------------------------------------------------
def prompt_with_template(processor: Any, prompt: str) -> str:
    """The model's chat template around one image and the prompt, or a plain fallback."""
    if getattr(processor, "chat_template", None):
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    image_token = getattr(processor, "image_token", "<image>")
    return f"{image_token}\n{prompt}"


class _CancelCheck:
    """A stopping criterion that aborts generation when the cancel event is set."""

    def __init__(self, cancel: threading.Event):
        self.cancel = cancel

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if self.cancel.is_set():
            raise Cancelled()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


# -- generation ---------------------------------------------------------------------------------
@torch.no_grad()
def generate_trace(
    loaded: LoadedModel,
    image: str | Path | Image.Image,
    prompt: str,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    seed: int = 0,
    temperature: float = 1.0,
    cancel: threading.Event | None = None,
) -> Trace:
    """Answer ``prompt`` about ``image`` and keep what explanation methods need."""
    prompt = prompt.strip()
    if not prompt:
        raise InputError("the prompt is empty.", "Type a question or instruction about the image.")
    if max_new_tokens < 1:
        raise InputError("max_new_tokens must be at least 1.", "Try 32.")
    if do_sample and not (math.isfinite(temperature) and temperature > 0):
        raise InputError(f"the sampling temperature is {temperature}; it must be a positive number.",
                         "Try 0.7, or decode greedily.")
    image = open_image(image)
    model, processor, adapter = loaded.model, loaded.processor, loaded.adapter
    tokenizer = processor.tokenizer
    _refuse_placeholder(processor, model.config, prompt)
    started = time.perf_counter()

    prompt_text = prompt_with_template(processor, prompt)
    encoded = processor(images=[image], text=[prompt_text], return_tensors="pt")
    regions = adapter.image_regions(encoded, [image.size])
    _refuse_over_context(model.config, encoded["input_ids"].shape[1], len(all_image_positions(regions)),
                         max_new_tokens)
    extras = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
    inputs = {k: v.to(loaded.device) for k, v in encoded.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    processed = time.perf_counter()

    torch.manual_seed(seed)
    from transformers import StoppingCriteriaList

    output = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=None,
        top_k=None,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        suppress_tokens=_placeholder_ids(model.config) or None,
        stopping_criteria=StoppingCriteriaList([_CancelCheck(cancel)]) if cancel is not None else None,
    )
    generated = time.perf_counter()

    prompt_len = inputs["input_ids"].shape[1]
    new_ids = output.sequences[0, prompt_len:].tolist()
    stop_ids = set(_as_list(model.generation_config.eos_token_id)) | {tokenizer.eos_token_id}
    stopped = "length"
    for i, token in enumerate(new_ids):
        if token in stop_ids:
            new_ids, stopped = new_ids[:i], "end of sequence"
            break
    logits = torch.stack(output.logits[: len(new_ids)], dim=1)[0].float() if new_ids else torch.zeros(0, 1)
    logprobs_all = torch.log_softmax(logits, dim=-1)
    answer = torch.tensor(new_ids, dtype=torch.long)
    chosen = logprobs_all.gather(1, answer.to(logprobs_all.device)[:, None])[:, 0] if new_ids else torch.zeros(0)
    k = min(TOP_K, logprobs_all.shape[-1])
    top = logprobs_all.topk(k, dim=-1) if new_ids else None

    hidden = _final_hidden_states(loaded, inputs, answer)
    finished = time.perf_counter()

    input_ids = inputs["input_ids"][0].cpu().numpy()
    return Trace(
        prompt=prompt,
        image=image,
        prompt_text=prompt_text,
        input_ids=input_ids,
        answer_ids=answer.numpy(),
        answer_tokens=[_token_text(tokenizer, t) for t in new_ids],
        logprobs=chosen.cpu().numpy(),
        top_ids=top.indices.cpu().numpy() if top is not None else np.zeros((0, k), np.int64),
        top_logprobs=top.values.cpu().numpy() if top is not None else np.zeros((0, k), np.float32),
        top_tokens=[[_token_text(tokenizer, t) for t in row] for row in (top.indices.tolist() if top else [])],
        regions=regions,
        hidden=hidden,
        model_inputs={k: v.cpu().numpy() for k, v in extras.items()},
        token_strings=[_token_text(tokenizer, t) for t in input_ids.tolist()],
        model_info=loaded.describe(),
        generation={
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "seed": seed,
            "temperature": temperature,
            "stopped": stopped,
            "answer_text": tokenizer.decode(new_ids, skip_special_tokens=True).strip(),
        },
        timings={
            "process_s": processed - started,
            "generate_s": generated - processed,
            "hidden_states_s": finished - generated,
        },
    )


# Processor outputs with one entry per prompt token (axis 1); a longer or shorter pass needs them refitted.
def _placeholder_ids(config: Any) -> list[int]:
    """Image and video placeholder ids: never a valid answer token (a random test model might
    otherwise emit one, and a placeholder in the answer breaks every later pass over the image)."""
    names = ("image_token_id", "image_token_index", "video_token_id")
    return sorted({int(v) for n in names if isinstance(v := getattr(config, n, None), int)})


def _refuse_placeholder(processor: Any, config: Any, prompt: str) -> None:
    """A placeholder typed into the prompt would be taken for a second image that is not there: the
    processor fails, or the model reads garbage at that position."""
    markers = [t for t in (getattr(processor, "image_token", None), getattr(processor, "video_token", None))
               if isinstance(t, str) and t]
    found = next((m for m in markers if m in prompt), None)
    if found is None:
        ids = set(processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]) & set(_placeholder_ids(config))
        found = processor.tokenizer.convert_ids_to_tokens(min(ids)) if ids else None
    if found is not None:
        raise InputError(f"the prompt contains {found!r}, the model's image placeholder.",
                         "Remove it from the prompt: the image is placed for you.")


def _context_length(config: Any) -> int | None:
    """The language model's context in tokens (``max_position_embeddings`` or its older names), or None."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _refuse_over_context(config: Any, prompt_tokens: int, image_tokens: int, max_new_tokens: int) -> None:
    """Past its context a model answers garbage without complaint; refuse with the numbers instead."""
    context = _context_length(config)
    if context is not None and prompt_tokens + max_new_tokens > context:
        raise InputError(
            f"the prompt takes {prompt_tokens} tokens ({image_tokens} of them the image) and up to {max_new_tokens} "
            f"new tokens would follow: {prompt_tokens + max_new_tokens}, more than the model's context of "
            f"{context} tokens.", "Use a shorter prompt or ask for fewer new tokens.")


def _final_hidden_states(loaded: LoadedModel, inputs: dict[str, torch.Tensor], answer: torch.Tensor) -> np.ndarray:
    """One teacher-forced forward over prompt + answer; the final norm's output at every position."""
    captured: list[torch.Tensor] = []
    handle = loaded.adapter.final_norm().register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    try:
        ids = torch.cat([inputs["input_ids"], answer.to(inputs["input_ids"].device)[None]], dim=1)
        extras = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        inputs = forward_inputs(ids, extras, loaded.model.dtype, loaded.adapter.generated_token_inputs)
        loaded.model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[-1][0].float().cpu().numpy()


def _token_text(tokenizer: Any, token_id: int) -> str:
    """A token as a reader would write it (word-piece markers and byte-level spaces removed)."""
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return text if text.strip() else tokenizer.convert_ids_to_tokens(token_id)


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [int(value)]
