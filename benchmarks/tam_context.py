"""What TAM's context subtraction does to a noun whose attribute names the same object.

TAM removes from each token's map the maps of its context (the prompt text and the earlier answer
tokens), weighted by how strongly each scores for the token's class. In "a red circle" the colour
word and the shape word name one object, so the colour's map, subtracted from the shape's, can
take the object itself out of the shape word's map. This script measures how much, on the demo
model: held-out scenes captioned with "describe the image.", every colour word directly followed
by a shape word of the same object (both naming it by the pointing game's pairing rule).

For each pair, the shape word's TAM map with and without context subtraction (rank filter on,
as by default) is compared with the colour word's TAM map and with the object's mask:

* corr: Pearson correlation of the shape's map with the colour's, over the grid cells;
* in mask: the share of the shape map's mass (image pixels) inside the object's mask;
* hit: the pointing game (the shape map's brightest pixel inside the mask);
* peak: the shape map's maximum, on TAM's joint scale (1 = the largest image or context score);
* colour weight: the colour word's share of the context weight in the shape word's subtraction
  (its score for the shape class, read at the position that predicted the colour);
* removed: the share of the shape's raw in-mask evidence that the subtraction takes away.

A measurement, not a target (it always exits 0): re-run it when the demo model changes.

    python benchmarks/tam_context.py [--scenes 20]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from demo_setup import load_demo

PROMPT = "describe the image."


def main() -> int:
    from lvlm_explainers.tam import TokenActivationMap
    from lvlm_studio.core.plugin.explanation import to_pixels
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.tracing.prompt_tokens import prompt_text_positions
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
    from lvlm_studio.demo.pointing import named_objects
    from lvlm_studio.demo.scenes import COLOURS, SHAPES, make_scene

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20)
    args = parser.parse_args()

    loaded = load_demo()
    head = loaded.adapter.lm_head_weight().float().cpu().numpy().astype(np.float64)
    tam = TokenActivationMap()
    with_subtraction = tam.resolve_params({})
    without = tam.resolve_params({"context_subtraction": False})
    rows: list[dict[str, float]] = []
    for i in range(args.scenes):
        scene = make_scene(HELDOUT_SEED_BASE + i)
        trace = generate_trace(loaded, scene.image, PROMPT)
        words = [t.strip().lower() for t in trace.answer_tokens]
        masks = named_objects(scene, trace.answer_tokens)
        pairs = [(a, a + 1) for a in range(len(words) - 1)
                 if words[a] in COLOURS and words[a + 1] in SHAPES and a in masks and a + 1 in masks
                 and np.array_equal(masks[a], masks[a + 1])]
        if not pairs:
            continue
        targets = sorted({t for pair in pairs for t in pair})
        after = run_job(tam.explain(trace, loaded, targets, with_subtraction))
        before = run_job(tam.explain(trace, loaded, targets, without))
        prompt = prompt_text_positions(trace, loaded.processor.tokenizer)
        for colour, shape in pairs:
            mask = masks[shape]
            colour_map = after.maps[colour][0].ravel()
            colour_pixels = np.nan_to_num(to_pixels(after.maps[colour], trace.regions, trace.image.size))
            row = {"colour in mask": colour_pixels[mask].sum() / colour_pixels.sum() if colour_pixels.sum() > 0
                   else np.nan, "colour hit": float(mask.flat[np.argmax(colour_pixels)])}
            for name, explanation in (("before", before), ("after", after)):
                grid = explanation.maps[shape][0].ravel()
                pixels = np.nan_to_num(to_pixels(explanation.maps[shape], trace.regions, trace.image.size))
                row[f"corr {name}"] = _corr(grid, colour_map)
                row[f"in mask {name}"] = pixels[mask].sum() / pixels.sum() if pixels.sum() > 0 else np.nan
                row[f"hit {name}"] = float(mask.flat[np.argmax(pixels)])
                row[f"peak {name}"] = float(grid.max())
            row.update(_subtraction(trace, head, prompt, trace.answer_position(shape), trace.answer_position(colour),
                                    _cells_in(mask, trace)))
            rows.append(row)

    print(f"demo model, {args.scenes} held-out scenes, prompt {PROMPT!r}: {len(rows)} colour-shape pairs "
          "naming one object")
    if not rows:
        return 0
    print(f"{'shape word map':<34}{'no subtraction':>16}{'subtraction':>14}")
    for label, key in (("corr with the colour's map", "corr"), ("mass inside the object's mask", "in mask"),
                       ("pointing hit rate", "hit"), ("peak on the joint scale", "peak")):
        print(f"{label:<34}{_mean(rows, key + ' before'):>16.3f}{_mean(rows, key + ' after'):>14.3f}")
    print(f"colour word's share of the context weight: mean {_mean(rows, 'colour weight'):.3f}, "
          f"median {np.nanmedian([r['colour weight'] for r in rows]):.3f}")
    print(f"shape's raw in-mask evidence removed by the subtraction: mean {_mean(rows, 'removed'):.3f}, "
          f"median {np.nanmedian([r['removed'] for r in rows]):.3f}; by the colour word's part of it: "
          f"mean {_mean(rows, 'removed by colour'):.3f}")
    print(f"colour word's own map: mass inside the mask {_mean(rows, 'colour in mask'):.3f}, "
          f"pointing hit rate {_mean(rows, 'colour hit'):.3f}")
    weights = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for r in rows for k in r if k.startswith("weight of")}
    largest = sorted(weights.items(), key=lambda kv: -kv[1])[:5]
    print("largest mean shares of the shape word's context weight: "
          + ", ".join(f"{k[len('weight of '):]!r} {v:.3f}" for k, v in largest))
    return 0


def _subtraction(trace, head: np.ndarray, prompt: np.ndarray, p: int, colour_position: int,
                 inside: np.ndarray) -> dict[str, float]:
    """The colour word's share of the shape word's context weight, and the share of the shape's
    raw in-mask evidence that the subtraction removes (restated from METHODS.md)."""
    hidden = trace.hidden.astype(np.float64)
    ids = trace.sequence_ids
    image = trace.image_positions
    k = ids[p]
    earlier = np.arange(trace.answer_start, p)
    context = np.concatenate([prompt, earlier])
    scores = np.maximum(hidden[np.concatenate([prompt, earlier - 1])] @ head[k], 0)
    keep = ids[context] != k
    raw = np.maximum(hidden[image] @ head[k], 0)
    maps = np.maximum(hidden[image] @ head[ids[context[keep]]].T, 0)
    interference = maps @ scores[keep]
    norm = interference @ interference
    alpha = raw @ interference / norm if norm > 0 else 0.0
    subtracted = np.maximum(raw - alpha * interference, 0)
    total = scores[keep].sum()
    is_colour = context[keep] == colour_position
    share = scores[keep][is_colour].sum() / total if total > 0 else np.nan
    evidence = raw[inside].sum()
    removed = 1 - subtracted[inside].sum() / evidence if evidence > 0 else np.nan
    colour_term = alpha * (maps[inside][:, is_colour] @ scores[keep][is_colour]).sum()
    by_colour = colour_term / evidence if evidence > 0 else np.nan
    row = {"colour weight": float(share), "removed": float(removed), "removed by colour": float(by_colour)}
    for t, score in zip(context[keep], scores[keep]):  # each context word's share of the weight
        word = f"weight of {trace.token_strings[t] if t < trace.answer_start else 'answer ' + _token(trace, t)}"
        row[word] = row.get(word, 0.0) + (score / total if total > 0 else 0.0)
    return row


def _token(trace, position: int) -> str:
    return trace.answer_tokens[position - trace.answer_start].strip()


def _cells_in(mask: np.ndarray, trace) -> np.ndarray:
    """Which image positions (in the trace's order) have their cell centre inside ``mask``."""
    inside = []
    height, width = mask.shape
    for region in trace.regions:
        left, top, right, bottom = region.box
        rows, cols = region.grid
        for r in range(rows):
            for c in range(cols):
                y = min(int(top + (r + 0.5) * (bottom - top) / rows), height - 1)
                x = min(int(left + (c + 0.5) * (right - left) / cols), width - 1)
                inside.append(bool(mask[y, x]))
    return np.array(inside)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else np.nan


def _mean(rows: list[dict[str, float]], key: str) -> float:
    return float(np.nanmean([r[key] for r in rows]))


if __name__ == "__main__":
    sys.exit(main())
