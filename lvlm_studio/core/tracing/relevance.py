"""Which answer tokens the image made likely: the log-likelihood ratio against a blurred image.

For answer token t, ``llr_t = log p(y_t | image) - log p(y_t | blurred image)``, both read from a
teacher-forced pass over prompt + answer. A token the model could have said just as well without
seeing the picture ("a", ",", a guess from the prompt) scores about zero; a colour or shape word
that only the picture justifies scores high. The token timeline, iGOS++ and the faithfulness
metrics all start from this one computation, so it is done once per Trace and cached on it
(``trace.visual_relevance``, saved and loaded with the trace).

The baseline is the *original* image blurred with a Gaussian whose standard deviation grows with
the image: ``BLUR_FRACTION`` of the longer side. The reference implementation uses a 101 px kernel
with sigma 100 for images under 500 px wide; at LLaVA-1.5's 336 px that is sigma = 0.3 x width,
which is the fraction used here at every size, so small images (the 96 px demo scenes) are blurred
as thoroughly as the reference blurs its inputs: on the demo model the log-probabilities no
longer change when the blur is made stronger. The blurred image goes through the same processor,
so it has the same size and the same image-token geometry as the original.

A token is visually relevant when its LLR exceeds ``LLR_THRESHOLD`` nats and it is neither
punctuation nor a stop word: function words can swing wildly with the image (a blurred scene looks
like one object, so "," and "and" become unlikely) without the image being what they describe.
A single-token answer ("yes", "red", "two") is the whole answer, so it is judged by probability
alone: relevant when blurring at least halves its probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.tracing.scores import log_probability

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.tracing.trace import Trace

BLUR_FRACTION = 0.3  # sigma of the blurred baseline, as a fraction of the image's longer side
LLR_THRESHOLD = 1.0  # nats
SINGLE_TOKEN_RATIO = 0.5  # a one-token answer is relevant when p(blurred) <= this x p(image)

#: A closed list of English function words (articles, pronouns, auxiliaries, conjunctions,
#: prepositions, common adverbs); no download, the same on every machine.
STOP_WORDS = frozenset(
    """
    a an the and or but nor so yet if then than that this these those there here
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
    what which who whom whose when where why how
    is am are was were be been being do does did doing have has had having
    will would shall should can could may might must
    of in on at to from by for with about as into onto over under up down out off
    through between after before above below again further once
    all any both each few more most other some such no not only own same too very just
    s t also there's it's i'm
    """.split()
)


@dataclass
class VisualRelevance:
    """Per answer token: log-probabilities with the image and with the blurred baseline, and which
    tokens count as visually relevant. Arrays have one entry per answer token."""

    logprob_image: np.ndarray
    logprob_blurred: np.ndarray
    relevant: np.ndarray  # bool
    blur_sigma: float
    threshold: float = LLR_THRESHOLD

    @property
    def llr(self) -> np.ndarray:
        """log p(y_t | image) - log p(y_t | blurred image), in nats."""
        return self.logprob_image - self.logprob_blurred

    @property
    def relevant_indices(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.relevant)]


def blur_sigma(size: tuple[int, int]) -> float:
    """Standard deviation of the baseline's Gaussian blur, in pixels, for an image of ``size``."""
    return BLUR_FRACTION * max(size)


def blurred_baseline(image: Image.Image, sigma: float | None = None) -> Image.Image:
    """The image under a strong Gaussian blur (``blur_sigma`` unless given): same size, no detail.

    Pillow's blur costs the same whatever the radius (it chains box blurs), so a sigma of hundreds
    of pixels on a large photo is still quick.
    """
    image = image.convert("RGB")
    return image.filter(ImageFilter.GaussianBlur(blur_sigma(image.size) if sigma is None else sigma))


def is_content_token(token: str) -> bool:
    """False for punctuation, symbols, whitespace and stop words; True otherwise."""
    text = token.strip().lower()
    if not any(c.isalnum() for c in text):
        return False
    return text not in STOP_WORDS


def relevant_mask(
    tokens: list[str], logprob_image: np.ndarray, logprob_blurred: np.ndarray, threshold: float = LLR_THRESHOLD
) -> np.ndarray:
    """The visually relevant tokens (see the module docstring for the rule)."""
    llr = np.asarray(logprob_image) - np.asarray(logprob_blurred)
    if len(tokens) == 1:
        # p_blur <= ratio * p_image  <=>  llr >= -log(ratio)
        return np.array([llr[0] >= -np.log(SINGLE_TOKEN_RATIO)])
    return np.array([value > threshold and is_content_token(tok) for tok, value in zip(tokens, llr)], dtype=bool)


def visual_relevance(
    trace: Trace, loaded: LoadedModel | None = None, threshold: float = LLR_THRESHOLD
) -> VisualRelevance:
    """The trace's visual relevance, computed on first use (two forward passes) and cached on it.

    Later calls, and calls on a trace saved and loaded again, return the cached result without
    touching the model; a different ``threshold`` only re-derives the mask. The model's own
    attention implementation (SDPA, flash) is used: only logits are read.
    """
    cached = trace.visual_relevance
    sigma = blur_sigma(trace.image.size)
    if cached is None or cached.blur_sigma != sigma:
        if loaded is None:
            raise InputError("visual relevance needs the model once per trace; this trace has none cached.",
                             "Load the model that produced the trace.")
        blurred_inputs = _processed_extras(loaded, trace, blurred_baseline(trace.image, sigma))
        image_inputs = {k: torch.as_tensor(v) for k, v in trace.model_inputs.items()}
        with_image = answer_logprobs(loaded, trace, image_inputs)
        with_blur = answer_logprobs(loaded, trace, blurred_inputs)
        cached = VisualRelevance(with_image, with_blur, np.zeros(len(with_image), bool), sigma, threshold)
        cached.relevant = relevant_mask(trace.answer_tokens, with_image, with_blur, threshold)
    elif cached.threshold != threshold:
        mask = relevant_mask(trace.answer_tokens, cached.logprob_image, cached.logprob_blurred, threshold)
        cached = VisualRelevance(cached.logprob_image, cached.logprob_blurred, mask, sigma, threshold)
    trace.visual_relevance = cached
    return cached


@torch.no_grad()
def answer_logprobs(loaded: LoadedModel, trace: Trace, extras: dict[str, torch.Tensor]) -> np.ndarray:
    """log p of each answer token, teacher-forced over prompt + answer with the given image inputs
    (exact for confident tokens too: ``core.tracing.scores``)."""
    from lvlm_studio.core.models.inputs import forward_inputs

    n = len(trace.answer_ids)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    ids = torch.as_tensor(trace.sequence_ids, device=loaded.device)[None].long()
    extras = {k: v.to(loaded.device) for k, v in extras.items()}
    # Token p is predicted at p - 1: the last n + 1 positions hold every answer token's logits
    # (and one more, after the last token, which is dropped).
    inputs = forward_inputs(ids, extras, loaded.model.dtype, loaded.adapter.generated_token_inputs)
    out = loaded.model(**inputs, use_cache=False, logits_to_keep=n + 1)
    logits = out.logits[0, :-1]
    answer = torch.as_tensor(trace.answer_ids, device=logits.device).long()
    return log_probability(logits, answer).float().cpu().numpy()


def _processed_extras(loaded: LoadedModel, trace: Trace, image: Image.Image) -> dict[str, Any]:
    """The processor's image inputs for ``image`` with the trace's prompt; the prompt's token ids
    must come out the same, or the two passes would not be comparable."""
    encoded = loaded.processor(images=[image], text=[trace.prompt_text], return_tensors="pt")
    if not np.array_equal(encoded["input_ids"][0].cpu().numpy(), trace.input_ids):
        raise InputError("the blurred image was laid out differently from the original by the processor.",
                         "This model family's processor depends on image content; visual relevance "
                         "cannot be computed for it.")
    return {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
