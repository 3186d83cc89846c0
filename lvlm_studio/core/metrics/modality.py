"""How much of an answer token's relevance lies on the image, and how much on the prompt's words.

An explainer that propagates relevance over the whole sequence (relevancy) keeps, beside its image
maps, the relevance of the token at the other positions of the sequence in its provenance, under
``TEXT_RELEVANCE`` (``text_relevance_record`` writes it). From that, ``modality_influence`` sums
the relevance on the image (every region's map) and on the user's prompt text (its positions:
``prompt_text_positions``; the chat template's role words, separators and earlier answer tokens
count for neither), the image's share of the two, and the relevance of each prompt word (sub-word
tokens summed into words). Relevance values are taken as they are: the share is meaningful for
non-negative relevance, which relevancy gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.metrics.plausibility import group_words
from lvlm_studio.core.tracing.prompt_tokens import prompt_text_positions

#: The provenance key of an explanation's relevance at the sequence's positions outside the image.
TEXT_RELEVANCE = "text_relevance"


@dataclass
class ModalityInfluence:
    """One answer token's relevance on the image and on the prompt text, and per prompt word."""

    image: float
    text: float
    words: list[tuple[str, float]] = field(default_factory=list)

    @property
    def image_share(self) -> float:
        """image / (image + text); NaN when both are zero."""
        total = self.image + self.text
        return self.image / total if total > 0 else float("nan")


def text_relevance_record(positions: np.ndarray, rows: dict[int, np.ndarray], image_in_sequence: bool = True
                          ) -> dict[str, Any]:
    """The provenance entry (JSON) of relevance at sequence ``positions``: ``rows[target]`` holds
    one value per position. ``image_in_sequence`` is False where the image enters by cross-attention
    (its positions then index the vision tokens, not the sequence)."""
    return {"positions": [int(p) for p in positions], "image_in_sequence": bool(image_in_sequence),
            "values": {str(t): [round(float(v), 8) for v in values] for t, values in rows.items()}}


def modality_influence(trace: Any, explanation: Any, tokenizer: Any, target: int) -> ModalityInfluence:
    """Relevance of answer token ``target`` on the image and on the prompt text (see the module)."""
    record = explanation.provenance.get(TEXT_RELEVANCE)
    if not isinstance(record, dict) or str(target) not in record.get("values", {}):
        raise InputError(f"the {explanation.method} explanation carries no relevance on the prompt text.",
                         "Use a method that records it (relevancy).")
    image = float(sum(np.nansum(m) for m in explanation.maps[target]))
    by_position = dict(zip(record["positions"], record["values"][str(target)]))
    words = []
    for word, positions in prompt_words(trace, tokenizer, bool(record.get("image_in_sequence", True))):
        words.append((word, float(sum(by_position.get(p, 0.0) for p in positions))))
    return ModalityInfluence(image, float(sum(value for _, value in words)), words)


def prompt_words(trace: Any, tokenizer: Any, image_in_sequence: bool = True) -> list[tuple[str, list[int]]]:
    """The user's prompt as words, each with its positions in ``trace.input_ids`` (sub-word tokens
    joined as ``group_words`` joins answer tokens); ``image_in_sequence`` as for
    ``prompt_text_positions``."""
    positions = [int(p) for p in prompt_text_positions(trace, tokenizer, image_in_sequence)]
    if not positions:
        return []
    tokens = tokenizer.convert_ids_to_tokens([int(trace.input_ids[p]) for p in positions])
    return [(word.text, [positions[i] for i in word.tokens]) for word in group_words(list(tokens), trace.prompt)]


@dataclass
class InfluenceShares:
    """Per answer token (or answer word), the image's share of its relevance and each prompt word's
    share, out of image + prompt text: ``image[i] + word_shares[i].sum() == 1`` wherever the token has
    any relevance (NaN rows where it has none). ``labels[i]`` names row i (the answer token, or the
    answer word), ``tokens[i]`` the answer tokens it covers."""

    labels: list[str]
    tokens: list[list[int]]
    image: np.ndarray  # [rows]
    words: list[str]  # prompt words, in prompt order
    word_shares: np.ndarray  # [rows, words]

    @property
    def text(self) -> np.ndarray:
        """[rows] the prompt text's share: the sum of the word shares (1 - image)."""
        return self.word_shares.sum(axis=1)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (NaN as None)."""
        def number(value: float) -> float | None:
            return round(float(value), 8) if np.isfinite(value) else None

        return {"prompt_words": list(self.words),
                "rows": [{"label": label, "tokens": tokens, "image_share": number(self.image[i]),
                          "text_share": number(self.text[i]),
                          "word_shares": [number(v) for v in self.word_shares[i]]}
                         for i, (label, tokens) in enumerate(zip(self.labels, self.tokens))]}


def influence_shares(trace: Any, explanation: Any, tokenizer: Any, targets: list[int] | None = None,
                     answer_words: bool = False) -> InfluenceShares:
    """The image's and each prompt word's share of the relevance of every answer token in ``targets``
    (default: every token the explanation holds), from ``modality_influence``. With ``answer_words``,
    sub-word answer tokens are joined into words (``group_words``) and a word's relevance on the image
    and on each prompt word is the sum over its tokens before the shares are taken."""
    targets = sorted(explanation.maps) if targets is None else list(targets)
    found = {t: modality_influence(trace, explanation, tokenizer, t) for t in targets}
    words = [w for w, _ in found[targets[0]].words] if targets else []
    if answer_words:
        groups = [(word.text, [targets[i] for i in word.tokens])
                  for word in group_words([trace.answer_tokens[t] for t in targets], trace.answer_text)]
    else:
        groups = [(trace.answer_tokens[t].strip(), [t]) for t in targets]
    image = np.full(len(groups), np.nan)
    shares = np.full((len(groups), len(words)), np.nan)
    for row, (_, members) in enumerate(groups):
        on_image = sum(found[t].image for t in members)
        on_words = np.sum([[v for _, v in found[t].words] for t in members], axis=0) if words else np.zeros(0)
        total = on_image + float(np.sum(on_words))
        if total > 0:
            image[row] = on_image / total
            shares[row] = on_words / total
    return InfluenceShares([label for label, _ in groups], [members for _, members in groups], image, words, shares)
