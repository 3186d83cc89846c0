"""Three views of attention that researchers expect beside the maps: per head, from patches, between texts.

- **Head gallery** (``head_gallery``): for one answer token, every (layer, head)'s map over the
  image for a chosen range of layers, on one shared colour scale, so heads can be compared at a
  glance. It reads ``HeadAttention`` (one pass that keeps only the rows predicting answer tokens).
- **Patch -> text** (``patch_text_attention``): the attention that each text token's query (the
  user's prompt and the answer) pays to chosen image patches, averaged over chosen layers and heads.
  One pass captures every text query's attention to every image key, so choosing other patches,
  layers or heads costs no further pass.
- **Question -> answer** (``question_answer_attention``): a matrix, answer tokens x the prompt's
  question tokens, of the decoder's self-attention averaged over chosen layers and heads, with
  sub-word tokens joined into words (``token_words``).

Conventions, the same as every map in the app: answer token ``t`` is read at the query that
predicted it (position ``trace.answer_position(t) - 1``); a prompt token at its own position.
Under causal attention a prompt token placed before the image cannot attend to it (its row is 0
and ``PatchTextAttention.sees_image`` says so). Attention is captured row by row
(``core/models/capture``), never as the full layers x heads x T x T tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.capture import capture_attention, capture_self_attention, split_by_region
from lvlm_studio.core.plugin.jobs import Job, Progress
from lvlm_studio.core.tracing.prompt_tokens import prompt_text_positions

if TYPE_CHECKING:
    from PIL import Image

    from lvlm_studio.core.models.loading import LoadedModel
    from lvlm_studio.core.plugin.adapter import ImageRegion
    from lvlm_studio.core.tracing.head_attention import HeadAttention
    from lvlm_studio.core.tracing.trace import Trace


# -- choosing layers and heads ----------------------------------------------------------------------
def parse_indices(text: str | Sequence[int] | None, count: int, what: str) -> list[int]:
    """Indices from "all"/None, a list, or text such as "0,2", "1-3" or "-1" (counted from the end),
    each checked against ``count`` (``what`` names them in the message: "layer", "head")."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "all")):
        return list(range(count))
    items: list[int] = []
    parts = text.split(",") if isinstance(text, str) else list(text)
    for part in parts:
        piece = str(part).strip()
        try:
            if "-" in piece[1:]:  # a range "a-b" (a leading minus is a negative index)
                first, last = piece[0] + piece[1:].split("-", 1)[0], piece[1:].split("-", 1)[1]
                items.extend(range(int(first), int(last) + 1))
            else:
                items.append(int(piece))
        except ValueError:
            raise InputError(f"{what}s {text!r} is not a list of numbers.",
                             "Write them like 0,2 or 1-3 or -1 (the last), or all.") from None
    chosen = []
    for index in items:
        resolved = index + count if index < 0 else index
        if not 0 <= resolved < count:
            raise InputError(f"{what} {index} does not exist.",
                             f"This model has {what}s 0 to {count - 1} (negative numbers count from the end).")
        if resolved not in chosen:
            chosen.append(resolved)
    if not chosen:
        raise InputError(f"no {what} chosen.", f"Choose at least one {what}, or all.")
    return chosen


def _mean_over(weights: np.ndarray, layers: Sequence[int] | str | None, heads: Sequence[int] | str | None
               ) -> np.ndarray:
    """``weights`` [layers, heads, ...] averaged over the chosen layers and heads: [...]"""
    layer_index = parse_indices(layers, weights.shape[0], "layer")
    head_index = parse_indices(heads, weights.shape[1], "head")
    return weights[np.ix_(layer_index, head_index)].astype(np.float64).mean(axis=(0, 1))


# -- words ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenWord:
    """A word and the indices of the tokens it is made of (into the list of tokens given)."""

    text: str
    tokens: tuple[int, ...]


def token_words(tokenizer: Any, ids: Sequence[int], breaks: Sequence[int] = ()) -> list[TokenWord]:
    """Join sub-word tokens into words where the tokenizer's own decoding puts no space between them.

    Each token's text is what it adds to the decoded text of the tokens before it, so the
    tokenizer's word-piece markers ("##", "\u2581", byte-level spaces) decide, never a guess. A token
    starts a new word when its text begins with whitespace, when it or the token before it is
    punctuation only, and at every index in ``breaks`` (where the tokens are not contiguous).
    """
    words: list[tuple[str, list[int]]] = []
    before = ""
    previous_punct = True
    breaks = set(int(b) for b in breaks)
    for index in range(len(ids)):
        decoded = tokenizer.decode([int(i) for i in ids[: index + 1]], skip_special_tokens=False)
        piece = decoded[len(before):] if decoded.startswith(before) else tokenizer.decode([int(ids[index])])
        before = decoded
        text = piece.strip()
        punct = bool(text) and not any(c.isalnum() for c in text)
        if not words or index in breaks or piece[:1].isspace() or punct or previous_punct:
            words.append((text, [index]))
        else:
            words[-1] = (words[-1][0] + text, [*words[-1][1], index])
        previous_punct = punct
    return [TokenWord(text, tuple(tokens)) for text, tokens in words]


def _contiguity_breaks(positions: Sequence[int]) -> list[int]:
    return [i for i in range(1, len(positions)) if positions[i] != positions[i - 1] + 1]


# -- 1. head gallery -----------------------------------------------------------------------------
@dataclass
class HeadGallery:
    """One answer token's map for each (layer, head) of a layer range, on one colour scale.

    ``maps[r]`` is region ``r``'s grids, [len(layers), heads, rows, cols]; ``levels`` (0, the
    largest value of any map) is the shared scale: a weak head looks weak next to a strong one.
    """

    token: int
    layers: list[int]
    maps: list[np.ndarray]
    levels: tuple[float, float]

    @property
    def heads(self) -> int:
        return int(self.maps[0].shape[1])

    def cell(self, row: int, head: int) -> list[np.ndarray]:
        """The region grids of the ``row``-th layer of the range and head ``head``."""
        return [m[row, head] for m in self.maps]


def head_gallery(heads: HeadAttention, trace: Trace, token: int, layers: str | Sequence[int] | None = None
                 ) -> HeadGallery:
    """The gallery of answer token ``token`` over ``layers`` (see ``parse_indices``; all by default)."""
    heads._check_token(token)
    chosen = parse_indices(layers, heads.shape[0], "layer")
    values = heads.weights[chosen][:, :, token].astype(np.float64)  # [layers, heads, image tokens]
    high = float(values.max()) if values.size else 0.0
    return HeadGallery(token, chosen, split_by_region(values, trace.regions), (0.0, high if high > 0 else 1.0))


#: Room for the labels at the gallery picture's left and top, and the space between cells (pixels).
GALLERY_MARGIN, GALLERY_GAP = 28, 2


def scaled_regions(regions: Sequence[ImageRegion], scale: float) -> list[ImageRegion]:
    """The regions with their boxes scaled, to draw maps on a resized copy of the image."""
    return [dataclasses.replace(r, box=tuple(v * scale for v in r.box)) for r in regions]


def render_gallery(gallery: HeadGallery, trace: Trace, colormap: str = "inferno", cell: int = 96,
                   opacity: float = 0.6) -> Image.Image:
    """The gallery as one picture: a row per layer, a column per head, each cell the image with that
    head's map on the shared scale, labelled "L<layer>" at the left and "H<head>" on top, and under
    them a colour bar of the shared scale."""
    from PIL import Image, ImageDraw

    from lvlm_studio.core.plugin.explanation import overlay, to_pixels

    size, scale = _cell_size(trace, cell)
    small = trace.image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    regions = scaled_regions(trace.regions, scale)
    margin, gap = GALLERY_MARGIN, GALLERY_GAP
    rows, cols = len(gallery.layers), gallery.heads
    footer = 34
    sheet_width = max(margin + cols * (size[0] + gap), 260)
    sheet = Image.new("RGB", (sheet_width, margin + rows * (size[1] + gap) + footer), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    _colour_bar(sheet, draw, (margin, sheet.size[1] - footer + 6), sheet_width - margin - 8, colormap,
                gallery.levels)
    for head in range(cols):
        draw.text((margin + head * (size[0] + gap) + 2, 8), f"H{head}", fill=(230, 230, 230))
    for row, layer in enumerate(gallery.layers):
        top = margin + row * (size[1] + gap)
        draw.text((2, top + size[1] // 2 - 5), f"L{layer}", fill=(230, 230, 230))
        for head in range(cols):
            pixels = to_pixels(gallery.cell(row, head), regions, size)
            tile = overlay(small, pixels, colormap, opacity, levels=gallery.levels)
            sheet.paste(tile, (margin + head * (size[0] + gap), top))
    return sheet


def gallery_cell_at(gallery: HeadGallery, trace: Trace, cell: int, x: float, y: float) -> tuple[int, int] | None:
    """(layer, head) of the cell under pixel (x, y) of ``render_gallery``'s picture, or None."""
    (width, height), _ = _cell_size(trace, cell)
    column = (x - GALLERY_MARGIN) // (width + GALLERY_GAP)
    row = (y - GALLERY_MARGIN) // (height + GALLERY_GAP)
    if x < GALLERY_MARGIN or y < GALLERY_MARGIN or not (0 <= row < len(gallery.layers) and 0 <= column < gallery.heads):
        return None
    return gallery.layers[int(row)], int(column)


def _cell_size(trace: Trace, cell: int) -> tuple[tuple[int, int], float]:
    """The size of one gallery cell (the image's aspect, the longer side ``cell``) and its scale."""
    width, height = trace.image.size
    scale = cell / max(width, height)
    return (max(1, round(width * scale)), max(1, round(height * scale))), scale


def _colour_bar(sheet: Image.Image, draw: Any, corner: tuple[int, int], width: int, colormap: str,
                levels: tuple[float, float]) -> None:
    """A horizontal colour bar with its two ends written under it: the attention weight scale."""
    from matplotlib import colormaps
    from PIL import Image

    ramp = (np.asarray(colormaps[colormap](np.linspace(0, 1, max(width, 2)))[:, :3]) * 255).astype(np.uint8)
    sheet.paste(Image.fromarray(np.repeat(ramp[None], 10, axis=0), "RGB"), corner)
    x, y = corner
    draw.text((x, y + 12), f"{levels[0]:.2g}", fill=(230, 230, 230))
    draw.text((x + width // 2 - 40, y + 12), "attention weight", fill=(230, 230, 230))
    draw.text((x + width - 30, y + 12), f"{levels[1]:.2g}", fill=(230, 230, 230))


# -- 2. patch -> text ----------------------------------------------------------------------------
@dataclass
class PatchTextAttention:
    """``weights[l, h, i, k]``: attention of text token ``i``'s query to image token ``k``
    (``trace.image_positions`` order) in layer ``l``, head ``h``.

    Text tokens are the user's prompt tokens, then the answer tokens (``kinds`` says which,
    ``labels`` their text, ``queries`` the query positions read); ``sees_image[i]`` is False for a
    prompt token that comes before the image under causal attention (it cannot attend to it).
    """

    weights: np.ndarray
    labels: list[str]
    kinds: list[str]
    queries: list[int]
    sees_image: np.ndarray

    def scores(self, patches: Sequence[int], layers: str | Sequence[int] | None = None,
               heads: str | Sequence[int] | None = None) -> np.ndarray:
        """Per text token, the share of its attention that lands on the chosen image tokens
        (``patches``: indices into ``trace.image_positions``), summed over them and averaged over
        the chosen layers and heads: [text tokens], each in [0, 1]."""
        patches = sorted({int(p) for p in patches})
        if not patches:
            raise InputError("no image patch is selected.", "Click or drag on the image to select patches.")
        if patches[0] < 0 or patches[-1] >= self.weights.shape[3]:
            raise InputError(f"image patch {patches[-1] if patches[0] >= 0 else patches[0]} does not exist.",
                             f"This image has patches 0 to {self.weights.shape[3] - 1}.")
        return _mean_over(self.weights[..., patches].sum(axis=-1), layers, heads)


def patch_text_attention(trace: Trace, loaded: LoadedModel | None) -> Job[PatchTextAttention]:
    """One pass keeping each text token's attention to every image token (cancellable job)."""
    _require(trace, loaded)
    assert loaded is not None
    tokenizer = loaded.processor.tokenizer
    in_sequence = loaded.adapter.image_entry != "cross_attention"
    prompt = [int(p) for p in prompt_text_positions(trace, tokenizer, in_sequence)]
    answers = list(range(len(trace.answer_ids)))
    queries = prompt + [trace.answer_position(t) - 1 for t in answers]
    first_image = int(np.min(trace.image_positions)) if len(trace.image_positions) else 0
    sees = np.array([(not in_sequence) or q >= first_image for q in queries], dtype=bool)
    yield Progress(0, 1, "attention pass")
    inputs = trace.teacher_forced_inputs(loaded, upto=max(queries) + 1)
    weights = capture_attention(loaded, inputs, queries, trace.image_positions)
    yield Progress(1, 1, "attention pass")
    labels = [trace.token_strings[p] if p < len(trace.token_strings) else str(int(trace.input_ids[p])) for p in prompt]
    labels += list(trace.answer_tokens)
    return PatchTextAttention(weights, labels, ["prompt"] * len(prompt) + ["answer"] * len(answers), queries, sees)


def patches_in_box(regions: Sequence[ImageRegion], box: tuple[float, float, float, float]) -> list[int]:
    """Indices into ``trace.image_positions`` (every region's cells, in order) of the cells that a
    box (left, top, right, bottom, in pixels of the original image) touches; a box of zero size
    is a click and picks the cells under that point (one per region that covers it)."""
    left, top, right, bottom = min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])
    chosen, start = [], 0
    for region in regions:
        rows, cols = region.grid
        x0, y0, x1, y1 = region.box
        cw, ch = (x1 - x0) / cols, (y1 - y0) / rows
        for r in range(rows):
            for c in range(cols):
                cl, ct = x0 + c * cw, y0 + r * ch
                if _touches(left, right, cl, cl + cw) and _touches(top, bottom, ct, ct + ch):
                    chosen.append(start + r * cols + c)
        start += rows * cols
    return chosen


def _touches(low: float, high: float, cell_low: float, cell_high: float) -> bool:
    """Whether the span [low, high] overlaps a cell's span; a span of zero size is a point."""
    if high > low:
        return low < cell_high and high > cell_low
    return cell_low <= low < cell_high


# -- 3. question -> answer -------------------------------------------------------------------------
@dataclass
class QuestionAnswerAttention:
    """``weights[l, h, t, j]``: attention of the query that predicted answer token ``t`` to the
    ``j``-th token of the user's question (at ``prompt_positions[j]``), in the decoder's
    self-attention; ``prompt_words`` and ``answer_words`` group the tokens into words."""

    weights: np.ndarray
    prompt_positions: list[int]
    prompt_tokens: list[str]
    answer_tokens: list[str]
    prompt_words: list[TokenWord]
    answer_words: list[TokenWord]

    def matrix(self, layers: str | Sequence[int] | None = None, heads: str | Sequence[int] | None = None,
               words: bool = False) -> tuple[np.ndarray, list[str], list[str]]:
        """(matrix [answer rows, question columns], row labels, column labels), averaged over the
        chosen layers and heads. With ``words``, a question word's column is the sum of its tokens'
        columns (the attention the word receives) and an answer word's row the mean of its tokens'
        rows (each token is one query)."""
        tokens = _mean_over(self.weights, layers, heads)  # [answer tokens, prompt tokens]
        if not words:
            return tokens, list(self.answer_tokens), list(self.prompt_tokens)
        columns = np.stack([tokens[:, list(w.tokens)].sum(axis=1) for w in self.prompt_words], axis=1)
        rows = np.stack([columns[list(w.tokens)].mean(axis=0) for w in self.answer_words], axis=0)
        return rows, [w.text for w in self.answer_words], [w.text for w in self.prompt_words]


def question_answer_attention(trace: Trace, loaded: LoadedModel | None) -> Job[QuestionAnswerAttention]:
    """One pass keeping the answer queries' self-attention to the question's tokens (cancellable)."""
    _require(trace, loaded)
    assert loaded is not None
    tokenizer = loaded.processor.tokenizer
    prompt = [int(p) for p in prompt_text_positions(trace, tokenizer, loaded.adapter.image_entry != "cross_attention")]
    if not prompt:
        raise InputError("the question's tokens could not be found in the model's input.",
                         "This happens when the chat template rewrites the prompt; try another prompt.")
    queries = [trace.answer_position(t) - 1 for t in range(len(trace.answer_ids))]
    yield Progress(0, 1, "attention pass")
    inputs = trace.teacher_forced_inputs(loaded, upto=max(queries) + 1)
    weights = capture_self_attention(loaded, inputs, queries, prompt)
    yield Progress(1, 1, "attention pass")
    prompt_ids = [int(trace.input_ids[p]) for p in prompt]
    return QuestionAnswerAttention(
        weights, prompt, [trace.token_strings[p] for p in prompt], list(trace.answer_tokens),
        token_words(tokenizer, prompt_ids, _contiguity_breaks(prompt)),
        token_words(tokenizer, [int(i) for i in trace.answer_ids]))


def _require(trace: Trace, loaded: LoadedModel | None) -> None:
    if loaded is None:
        raise InputError("this attention view needs the model, not only a saved trace.", "Load the model first.")
    if not len(trace.answer_ids):
        raise InputError("the answer is empty.", "Ask again; there is no token to look at.")
