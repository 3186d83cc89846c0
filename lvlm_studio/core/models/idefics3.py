"""Idefics3 (``idefics3``) and SmolVLM (``smolvlm``): a grid of tiles plus a global view, pixel-shuffled.

The processor shrinks the image so its longer side is at most ``size["longest_edge"]``, then
stretches it so both sides are whole multiples of the tile size (``max_image_size``), and cuts it
into ``rows x cols`` tiles, row-major; a global view (the whole image squeezed to one tile) comes
last. An image that fits in one tile is not split: it has the global view only. Each tile goes
through the SigLIP-style encoder, and the connector's pixel shuffle folds each ``scale x scale``
block of patches into one token, so a tile becomes ``s x s`` tokens (``s = patches / scale``),
row-major. The prompt spells the layout out:
``<fake_token_around_image><row_1_col_1><image>*s*s <fake_token_around_image><row_1_col_2>...``,
a newline after each row of tiles, then ``<fake_token_around_image><global-img><image>*s*s
<fake_token_around_image>``.

Regions per image: ``"tiles"``, the tiles' tokens stitched into one ``(rows*s) x (cols*s)`` grid over
the whole image (tiles are exact cuts of the stretched image, so the stitched grid is the image),
and ``"global"`` (``s x s``, the whole image). Stitched positions are row-major over the grid, so
they are not increasing in the sequence. The tile layout is read from the ``<row_r_col_c>`` markers
in the prompt, the only place the processor leaves it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from lvlm_studio.core.models.image_only import load_image_only
from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter, image_token_positions

MARKER = re.compile(r"<row_(\d+)_col_(\d+)>")


def token_runs(positions: np.ndarray) -> list[np.ndarray]:
    """Split sorted positions into runs of consecutive positions."""
    if len(positions) == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    return np.split(positions, breaks)


def stitch_tiles(tiles: list[np.ndarray], rows: int, cols: int, side: int) -> np.ndarray:
    """Positions of ``rows x cols`` tiles (each ``side x side``, row-major, tiles row-major) laid out
    as one ``(rows*side) x (cols*side)`` grid, read row-major."""
    blocks = np.stack(tiles).reshape(rows, cols, side, side)
    return blocks.transpose(0, 2, 1, 3).reshape(-1)


class Idefics3Adapter(ModelAdapter):
    model_types = ("idefics3",)
    family = "Idefics3"
    merges_vision_tokens = True

    def image_regions(self, inputs: dict[str, Any], image_sizes: list[tuple[int, int]]) -> list[ImageRegion]:
        config = self.model.config
        ids = np.asarray(inputs["input_ids"].cpu() if hasattr(inputs["input_ids"], "cpu") else inputs["input_ids"])
        ids = ids.reshape(-1)
        positions = image_token_positions(ids, config.image_token_id)
        if not image_sizes:
            return []
        markers = self._marker_ids()
        runs = token_runs(positions)
        regions: list[ImageRegion] = []
        tiles: list[tuple[int, int, np.ndarray]] = []
        index = 0
        for run in runs:
            side = math.isqrt(len(run))
            if side * side != len(run):
                raise ValueError(f"an image view of {len(run)} tokens is not a square grid")
            before = int(ids[run[0] - 1]) if run[0] > 0 else -1
            if before in markers:  # a tile; the image's global view follows its last tile
                tiles.append((*markers[before], run))
                continue
            if index >= len(image_sizes):
                raise ValueError(f"more image views than the {len(image_sizes)} images given")
            width, height = image_sizes[index]
            box = (0.0, 0.0, float(width), float(height))
            if tiles:
                rows, cols = max(t[0] for t in tiles), max(t[1] for t in tiles)
                if len(tiles) != rows * cols:
                    raise ValueError(f"image {index}: {len(tiles)} tiles do not fill a {rows}x{cols} grid")
                ordered = [t[2] for t in sorted(tiles, key=lambda t: (t[0], t[1]))]
                regions.append(ImageRegion("tiles", index, stitch_tiles(ordered, rows, cols, side),
                                           (rows * side, cols * side), box))
            regions.append(ImageRegion("global", index, run, (side, side), box))
            tiles, index = [], index + 1
        if tiles or index != len(image_sizes):
            raise ValueError(f"the image tokens describe {index} images, but got {len(image_sizes)} sizes")
        return regions

    def _marker_ids(self) -> dict[int, tuple[int, int]]:
        """Token id of each ``<row_r_col_c>`` marker -> (r, c), 1-based."""
        tokenizer = self.processor.tokenizer
        found = {}
        for token, token_id in tokenizer.get_vocab().items():
            match = MARKER.fullmatch(token)
            if match:
                found[int(token_id)] = (int(match[1]), int(match[2]))
        return found

    # -- parts: the decoder is ``text_model``, the encoder ``vision_model``, the projector ``connector``
    def language_model(self) -> nn.Module:
        return self.model.model.text_model

    def vision_tower(self) -> nn.Module:
        return self.model.model.vision_model

    def projector(self) -> nn.Module:
        return self.model.model.connector


class SmolVLMAdapter(Idefics3Adapter):
    model_types = ("smolvlm",)
    family = "SmolVLM"

    @classmethod
    def load_processor(cls, folder: Path, **kwargs: Any) -> Any:
        try:
            return super().load_processor(folder, **kwargs)
        except ImportError as exc:  # the video processor needs torchvision; images do not
            if "num2words" in str(exc):
                raise
            return load_image_only("SmolVLMProcessor", folder, **kwargs)
