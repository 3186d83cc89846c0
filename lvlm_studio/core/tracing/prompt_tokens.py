"""Which positions of a Trace hold the user's prompt text, as opposed to the chat template's
BOS, role words ("user", "assistant"), separators and image tokens.

The Trace keeps the user's ``prompt`` and the templated ``prompt_text`` but not where one sits in
the other's tokens, so it is found again here: the templated text is tokenised with character
offsets, the tokens that overlap the prompt's characters (its last occurrence: the template comes
first) are the prompt's, and they are mapped onto ``trace.input_ids`` through the part both
tokenisations share. The processor expands each image marker into many tokens, so the shared
part is the common prefix (text before the image) and the common suffix (text after it).

Tokenizers without offsets (slow ones), or templates that rewrite the prompt, fall back to
finding the prompt's own tokenisation in the input ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def prompt_text_positions(trace: Any, tokenizer: Any, image_in_sequence: bool = True) -> np.ndarray:
    """Sorted positions in ``trace.input_ids`` of the prompt's own tokens (never an image
    position); empty when the prompt cannot be located. Where the image enters by cross-attention
    (``image_in_sequence`` False), ``trace.image_positions`` index the vision tokens, not the
    sequence, and exclude nothing."""
    found = _by_offsets(trace, tokenizer)
    if found is None:
        found = _by_search(trace, tokenizer)
    image = set(int(p) for p in trace.image_positions) if image_in_sequence else set()
    return np.array(sorted(p for p in found if p not in image), dtype=np.int64)


def _by_offsets(trace: Any, tokenizer: Any) -> list[int] | None:
    start = trace.prompt_text.rfind(trace.prompt)
    if start < 0 or not trace.prompt:
        return None
    end = start + len(trace.prompt)
    try:
        encoded = tokenizer(trace.prompt_text, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):  # slow tokenizers have no offsets
        return None
    ids, offsets = list(encoded["input_ids"]), encoded["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    full = [int(t) for t in trace.input_ids]
    prefix = _common_length(ids, full)
    suffix = _common_length(ids[::-1], full[::-1])
    shift = len(full) - len(ids)
    positions = [i if i < prefix else i + shift for i in inside if i < prefix or i >= len(ids) - suffix]
    return positions if positions and len(positions) == len(inside) else None


def _by_search(trace: Any, tokenizer: Any) -> list[int]:
    """The last place where the prompt's own tokens appear in the input ids."""
    ids = list(tokenizer(trace.prompt, add_special_tokens=False)["input_ids"])
    full = [int(t) for t in trace.input_ids]
    for begin in range(len(full) - len(ids), -1, -1):
        if ids and full[begin : begin + len(ids)] == ids:
            return list(range(begin, begin + len(ids)))
    return []


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
