"""The pointing game on the demo model: does a method's map peak inside the object a word names?

The demo model captions held-out scenes ("describe the image."). Every answer token that is an
object word (a colour or a shape) is a trial: each explanation method makes a map for it, the map
is resampled to image pixels with the shared ``to_pixels``, and the trial is a hit when the
brightest pixel lies inside the mask of the object the word names, or within ``tolerance`` grid
cells of it. The original pointing game (Zhang et al. 2016) allows 15 px at 224 px (6.7% of the
side); half a cell of an 8x8 grid is 6.25%, and lets a map that peaks on a small object's cell hit
it although the object misses the cell's centre (the open world's objects can be that small). The
default is 0, the strict rule of the tables in docs/methods-overview.md. A map that is flat everywhere points
nowhere: no credit for it.

Which object a word names: captions list objects in reading order ("a red circle, a blue square
and a green triangle", objects sorted by row then column), so the k-th colour word and the k-th
shape word of the answer name the k-th object, when that object has that colour or shape. When it
does not (the model skipped, repeated or misnamed an object) the word is scored against all the
scene's objects it names; a word that names none of them (a hallucinated colour or shape) has no
ground truth and is not scored.

A "uniform random" row gives every trial a map of independent uniform values on the grid (seeded).
Its expected hit rate, printed under the table, is the mean over trials of the fraction of the grid
cells inside the image (not on the padding) whose centre pixel falls in the object's mask (grown
by the tolerance): a random map's maximum lands on a uniformly random cell. Intervals are Wilson score
intervals (95 %).

The ceiling, printed beside it, is the share of trials that any map can hit at all. A grid map
resampled bilinearly peaks next to one of its cells' centres (``peak_pixels``): an object (grown by
the tolerance) that holds none of those pixels cannot be hit, whatever the method. On a coarse grid that is
many small objects (on an 8x8 grid over the padded square, a quarter of the out-of-generator set's
objects; ``benchmarks/tam_grid.py`` shows it by object size and grid).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lvlm_studio.core.errors import Cancelled
from lvlm_studio.core.metrics.plausibility import pointing_hit
from lvlm_studio.core.plugin.explanation import to_pixels
from lvlm_studio.core.plugin.jobs import Job, Progress, run_job
from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
from lvlm_studio.demo.scenes import COLOURS, SHAPES, Scene, scene_maker

PROMPT = "describe the image."
RANDOM = "uniform random"
SET_NAMES = {"generator": "demo", "outside": "out-of-generator"}
Z_95 = 1.959964


@dataclass(frozen=True)
class MethodScore:
    method: str
    hits: int
    total: int

    @property
    def rate(self) -> float:
        return self.hits / self.total if self.total else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.hits, self.total)


@dataclass
class PointingResult:
    scenes: int
    trials: int  # object-word tokens scored
    unscored_words: int  # object words naming nothing in their scene
    scores: list[MethodScore]  # one per method that ran on every scene, then the random baseline
    expected_random: float
    failed: dict[str, str] = field(default_factory=dict)  # method id -> why it was dropped
    scene_set: str = "generator"  # or "outside": the out-of-generator set
    world: str = "classic"  # the generator's world (classic or open)
    ceiling: float = 1.0  # share of trials that any map can hit (see the module docstring)


def wilson_interval(hits: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion: sensible near 0 and 1 and for small n,
    where the normal approximation gives bounds outside [0, 1]."""
    if total == 0:
        return 0.0, 1.0
    p = hits / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def named_objects(scene: Scene, tokens: Iterable[str]) -> dict[int, np.ndarray]:
    """Answer token index -> mask of the object it names, for the colour and shape words that name
    one (see the module docstring for the pairing rule)."""
    in_order = sorted(scene.objects, key=lambda o: (o.row, o.col))
    seen = {"colour": 0, "shape": 0}
    masks: dict[int, np.ndarray] = {}
    for index, token in enumerate(tokens):
        if not _is_object_word(token):
            continue
        word = token.strip().lower()
        kind = "colour" if word in COLOURS else "shape"
        k = seen[kind]
        seen[kind] += 1
        if k < len(in_order) and word in in_order[k].words:
            masks[index] = in_order[k].mask
        elif (union := scene.mask_for_word(word)) is not None:
            masks[index] = union
    return masks


def scene_masks(scene: Scene, answer_tokens: Iterable[str]) -> dict[Any, np.ndarray]:
    """The demo scene's masks: each object word's union mask, and each answer token's own object."""
    masks: dict[Any, np.ndarray] = {}
    for obj in scene.objects:
        for word in obj.words:
            masks[word] = masks[word] | obj.mask if word in masks else obj.mask.copy()
    masks.update(named_objects(scene, list(answer_tokens)))
    return masks


def _is_object_word(token: str) -> bool:
    return token.strip().lower() in COLOURS or token.strip().lower() in SHAPES


def pointing_game(
    loaded: Any,
    n: int = 200,
    methods: list[str] | None = None,
    registry: Any = None,
    seed: int = 0,
    scene_set: str = "generator",
    tolerance: float = 0.0,
    world: str = "classic",
) -> Job[PointingResult]:
    """Play the game over ``n`` held-out scenes of ``world`` (classic or open) with the given
    explainers (all in the registry by default). ``scene_set`` "outside" plays on the
    out-of-generator set instead (its first ``n`` scenes). A job: yields progress once per scene.
    A method that raises is reported in ``failed`` and not run again; the others go on."""
    if registry is None:
        from lvlm_studio.core.plugin.registry import create_registry

        registry = create_registry()
    explainers = {m: registry.explainer(m) for m in methods} if methods else registry.explainers()
    from lvlm_studio.core.tracing.trace import generate_trace

    rng = np.random.default_rng(seed)
    hits = dict.fromkeys([*explainers, RANDOM], 0)
    # Methods that declare they cannot explain this model are reported with their reason, not run.
    failed: dict[str, str] = {m: f"does not apply: {reason}" for m, e in explainers.items()
                              if (reason := e.applies_to(loaded, e.resolve_params({}))) is not None}
    trials = unscored = can_hit = 0
    expected = 0.0
    if scene_set == "outside":
        from lvlm_studio.demo.outside import load_scenes

        outside = [scene for scene, _ in load_scenes()]
        n = min(n, len(outside))
    elif scene_set != "generator":
        raise ValueError(f"unknown scene set {scene_set!r}; choose generator or outside")
    make = scene_maker(world)
    for i in range(n):
        yield Progress(i, n, f"scene {i + 1} of {n}")
        scene = outside[i] if scene_set == "outside" else make(HELDOUT_SEED_BASE + i)
        trace = generate_trace(loaded, scene.image, PROMPT)
        masks = named_objects(scene, trace.answer_tokens)
        unscored += sum(map(_is_object_word, trace.answer_tokens)) - len(masks)
        if not masks:
            continue
        targets = sorted(masks)
        trials += len(targets)
        masks = {t: tolerance_zone(masks[t], trace, tolerance) for t in targets}
        for method, explainer in explainers.items():
            if method in failed:
                continue
            try:
                explanation = _explain(explainer, trace, loaded, targets)
                scored = sum(_hit(explanation.maps[t], trace, masks[t]) for t in targets)
            except Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken method must not stop the game
                failed[method] = f"{type(exc).__name__}: {exc}"
                continue
            hits[method] += scored
        for t in targets:
            random_maps = [rng.random(region.grid) for region in trace.regions]
            hits[RANDOM] += _hit(random_maps, trace, masks[t])
            expected += _cells_inside(trace, masks[t])
            can_hit += reachable(trace.regions, masks[t])
    yield Progress(n, n, "done")
    scores = [MethodScore(m, hits[m], trials) for m in [*explainers, RANDOM] if m not in failed]
    return PointingResult(n, trials, unscored, scores, expected / trials if trials else float("nan"), failed,
                          scene_set, world, can_hit / trials if trials else float("nan"))


def _explain(explainer: Any, trace: Any, loaded: Any, targets: list[int]) -> Any:
    """Run an explainer with its defaults, as the CLI does (each switches on eager attention and
    autograd itself for the passes that need them)."""
    return run_job(explainer.explain(trace, loaded, targets, explainer.resolve_params({})))


def tolerance_zone(mask: np.ndarray, trace: Any, cells: float) -> np.ndarray:
    """The object's mask grown by ``cells`` grid cells (in the image's pixels): where a map's
    maximum counts as pointing at the object."""
    if cells <= 0:
        return mask
    from scipy.ndimage import distance_transform_edt

    left, top, right, bottom = trace.regions[0].box
    rows, cols = trace.regions[0].grid
    radius = cells * min((right - left) / cols, (bottom - top) / rows)
    return distance_transform_edt(~mask) <= radius


def _hit(maps: list[np.ndarray], trace: Any, mask: np.ndarray) -> bool:
    """The shared hit rule (``plausibility.pointing_hit``) on the map resampled to image pixels;
    a map with one value everywhere points nowhere."""
    pixels = to_pixels(maps, trace.regions, trace.image.size)
    finite = pixels[np.isfinite(pixels)]
    if finite.size == 0 or finite.max() == finite.min():
        return False
    return pointing_hit(pixels, mask)


def _cells_inside(trace: Any, mask: np.ndarray) -> float:
    """Fraction of the grid cells whose centre lies in the image (not on padding) that have their
    centre pixel inside ``mask``."""
    height, width = mask.shape
    inside = total = 0
    for region in trace.regions:
        left, top, right, bottom = region.box
        rows, cols = region.grid
        ys = np.floor(top + (np.arange(rows) + 0.5) * (bottom - top) / rows).astype(int)
        xs = np.floor(left + (np.arange(cols) + 0.5) * (right - left) / cols).astype(int)
        ys, xs = ys[(ys >= 0) & (ys < height)], xs[(xs >= 0) & (xs < width)]
        inside += int(mask[np.ix_(ys, xs)].sum())
        total += len(ys) * len(xs)
    return inside / total if total else 0.0


def peak_pixels(regions: list[Any], image_size: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per region: the pixel rows and columns where a grid map resampled by ``to_pixels`` can peak.

    Between four cell centres the resampling is bilinear, so over the pixels there its maximum lies
    at an extreme row and an extreme column: the pixels nearest a cell centre, on either side. At an
    edge band, where values are clamped, the band's first pixel wins the tie. Any map's brightest
    pixel is therefore at one of these rows and one of these columns (of one region)."""
    width, height = image_size
    out = []
    for region in regions:
        left, top, right, bottom = region.box
        rows, cols = region.grid
        out.append((_peaks_along(rows, top, bottom, height), _peaks_along(cols, left, right, width)))
    return out


def _peaks_along(cells: int, start: float, end: float, size: int) -> np.ndarray:
    """Along one axis, the pixels nearest each cell centre from below and from above (first on ties)."""
    centres = np.arange(size) + 0.5
    pixels = np.flatnonzero((centres >= start) & (centres < end))
    position = np.clip((centres[pixels] - start) / (end - start) * cells - 0.5, 0, cells - 1)
    found = set()
    for cell in range(cells):
        below = position[(position > cell - 1) & (position <= cell)]
        above = position[(position >= cell) & (position < cell + 1)]
        for nearest in ([below.max()] if below.size else []) + ([above.min()] if above.size else []):
            found.add(int(pixels[np.flatnonzero(position == nearest)[0]]))  # the first on a clamped band
    return np.array(sorted(found), dtype=int)


def reachable(regions: list[Any], mask: np.ndarray) -> bool:
    """Whether some map over ``regions`` can hit ``mask``: it holds a pixel where a resampled map can peak."""
    height, width = mask.shape
    return any(bool(mask[np.ix_(ys, xs)].any()) for ys, xs in peak_pixels(regions, (width, height)))


def format_table(result: PointingResult) -> str:
    """The result as a Markdown table with a short header and footer."""
    kind = SET_NAMES.get(result.scene_set, result.scene_set)
    if result.scene_set == "generator" and result.world != "classic":
        kind = f"{result.world}-world"
    lines = [
        f"Pointing game: {result.scenes} held-out {kind} scenes, "
        f"prompt {PROMPT!r}, "
        f"{result.trials} object-word tokens ({result.unscored_words} naming no object in the scene, not scored).",
        "",
        "| method | hits / total | hit rate | 95% CI (Wilson) |",
        "|---|---:|---:|---:|",
    ]
    for score in result.scores:
        low, high = score.interval
        lines.append(f"| {score.method} | {score.hits}/{score.total} | {score.rate:.3f} | {low:.3f}-{high:.3f} |")
    lines += ["", f"Expected hit rate of the uniform random baseline: {result.expected_random:.3f}.",
              f"Ceiling: any map can hit at most {result.ceiling:.3f} of these trials (the other objects hold "
              f"no pixel where a map resampled from the grid can peak)."]
    for method, error in result.failed.items():
        lines.append(f"Skipped {method}: {error}")
    return "\n".join(lines) + "\n"
