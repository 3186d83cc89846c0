"""How far TAM's rank filter lets an ideal map point at an object, by grid and object size.

TAM denoises each token's image map with a rank Gaussian filter over every cell's 3x3 window
(reflect padding), as the reference does on the vision-token grid. On a coarse grid a small object
fills one cell or less, and the filter flattens such a peak across its window: a lone hot cell
gives all nine cells of its window about the same value, and a peak in the second row or column is
moved onto the border, whose reflected window holds it twice.

This script measures that ceiling without any model. A disc of a given diameter (a share of the
image side, the open demo world's range is 8-45%) is placed at seeded random positions on a square
image; its ideal map is the share of each grid cell it covers (a logit lens that scores each
position by how much of the object it sees). The pointing game's rule (brightest pixel of the map
resampled bilinearly to the image, inside the disc) is played on that map as is and after the
rank filter. Any model's TAM pointing on objects of that size and grid stays near or below the
filtered figure.

A second table plays the same game on the objects of real scene sets at each grid (after the
processor's pad to a square; the demo model's grid is 8x8): the out-of-generator set and held-out open-world scenes.
It is the ceiling of the pointing targets there: "any map" counts the objects that hold a pixel
where a resampled grid map can peak (next to a cell centre; ``lvlm_studio.demo.pointing.peak_pixels``),
which no method can beat, then the ideal map as is (raw attention, the plain logit lens) and after
the rank filter (TAM).

``--tolerance`` plays the game with the objects grown by that many grid cells, as ``lvlm-studio
demo pointing --tolerance`` does (0.5 is about the original pointing game's 15 px at 224 px).

A measurement, not a target (it always exits 0):

    python benchmarks/tam_grid.py [--positions 200] [--grids 8,12,16,24] [--scenes 300] [--tolerance 0]
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np

from lvlm_explainers.tam import rank_gaussian_filter
from lvlm_studio.core.metrics.plausibility import pointing_hit
from lvlm_studio.core.plugin.adapter import ImageRegion
from lvlm_studio.core.plugin.explanation import to_pixels
from lvlm_studio.demo.model import padded_coverage
from lvlm_studio.demo.pointing import reachable, tolerance_zone

DIAMETERS = (0.08, 0.15, 0.25, 0.45)  # shares of the image side
CELL_PX = 16  # pixels per grid cell (only the ratios matter)


def disc(side: int, centre: tuple[float, float], diameter: float) -> np.ndarray:
    ys, xs = np.mgrid[0:side, 0:side] + 0.5
    return (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= (diameter / 2) ** 2


def square_view(grid: int, left: float, top: float, side: float) -> SimpleNamespace:
    """What the pointing game reads of a trace: one grid over a square of ``side`` px at (left, top)."""
    box = (float(left), float(top), float(left + side), float(top + side))
    return SimpleNamespace(regions=[ImageRegion("base", 0, np.arange(grid * grid), (grid, grid), box)])


def ideal_hits(mask: np.ndarray, view: SimpleNamespace, grid: int, tolerance: float) -> tuple[bool, bool]:
    """Whether the object's ideal map (each cell scored by the share of it the object covers) hits,
    as is and after TAM's rank filter, by the pointing game's rule with ``tolerance`` cells."""
    height, width = mask.shape
    target = tolerance_zone(mask, view, tolerance)
    ideal = padded_coverage(mask, grid).astype(np.float64)
    return tuple(pointing_hit(to_pixels([m], view.regions, (width, height)), target)
                 for m in (ideal, rank_gaussian_filter(ideal)))


def hit_rates(grid: int, diameter: float, positions: int, tolerance: float = 0.0,
              seed: int = 0) -> tuple[float, float]:
    """Pointing hit rates of the ideal coverage map, raw and rank-filtered, over seeded positions."""
    side = grid * CELL_PX
    size = diameter * side
    view = square_view(grid, 0, 0, side)
    rng = np.random.default_rng([seed, grid, int(diameter * 1000)])
    hits = np.zeros(2)
    for _ in range(positions):
        centre = tuple(rng.uniform(size / 2, side - size / 2, size=2))
        hits += ideal_hits(disc(side, centre, size), view, grid, tolerance)
    raw, filtered = hits / positions
    return raw, filtered


def scene_set_ceiling(scenes, grid: int, tolerance: float = 0.0) -> tuple[int, float, float, float, float]:
    """Over every object of ``scenes`` (each named by a colour and a shape word): the share that
    cover less than one cell, the share that some map can hit, and the pointing hit rates of their
    ideal maps, raw and filtered."""
    objects = small = can_hit = 0
    hits = np.zeros(2)
    for scene in scenes:
        width, height = scene.image.size
        side = max(width, height)
        view = square_view(grid, -((side - width) // 2), -((side - height) // 2), side)  # the pad, centred
        for obj in scene.objects:
            objects += 1
            small += padded_coverage(obj.mask, grid).astype(np.float64).sum() < 1
            can_hit += reachable(view.regions, tolerance_zone(obj.mask, view, tolerance))
            hits += ideal_hits(obj.mask, view, grid, tolerance)
    raw, filtered = hits / objects
    return objects, small / objects, can_hit / objects, raw, filtered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=200, help="random object positions per cell of the table")
    parser.add_argument("--grids", default="8,12,16,24", help="grid sides (image tokens per side)")
    parser.add_argument("--scenes", type=int, default=300, help="held-out open-world scenes for the second table")
    parser.add_argument("--tolerance", type=float, default=0.0, help="grid cells a hit may miss the object by")
    args = parser.parse_args()
    grids = [int(g) for g in args.grids.split(",")]
    rule = f"within {args.tolerance:g} cells of the object" if args.tolerance > 0 else "strict rule"
    print(f"Pointing hit rate of an ideal map (cell coverage), raw -> after TAM's rank filter, "
          f"{args.positions} random positions each, {rule}.\n")
    print("| object diameter | " + " | ".join(f"{g}x{g} grid" for g in grids) + " |")
    print("|---|" + "---:|" * len(grids))
    for diameter in DIAMETERS:
        cells = []
        for grid in grids:
            raw, filtered = hit_rates(grid, diameter, args.positions, args.tolerance)
            cells.append(f"{raw:.0%} -> {filtered:.0%} ({diameter * grid:.1f} cells)")
        print(f"| {diameter:.0%} of the side | " + " | ".join(cells) + " |")

    from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
    from lvlm_studio.demo.outside import load_scenes
    from lvlm_studio.demo.scenes import make_open_scene

    sets = {
        "out-of-generator set": [scene for scene, _ in load_scenes()],
        f"{args.scenes} held-out open-world scenes": [make_open_scene(HELDOUT_SEED_BASE + i)
                                                     for i in range(args.scenes)],
    }
    print(f"\nThe same on real scene sets, after the pad to a square, {rule}:\n")
    print("| scene set | grid | objects | under one cell | any map | ideal map | ideal map, rank-filtered |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, scenes in sets.items():
        for grid in grids:
            objects, small, reachable, raw, filtered = scene_set_ceiling(scenes, grid, args.tolerance)
            print(f"| {name} | {grid}x{grid} | {objects} | {small:.0%} | {reachable:.0%} | {raw:.0%} "
                  f"| {filtered:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
