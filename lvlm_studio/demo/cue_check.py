"""Where do explanation maps point when a model answers from the shortcut twin's corner cue?

Held-out colour questions whose corner mark contradicts the object (``evaluate.cue_examples``):
the model answers, and every explanation method makes a map for the colour word of its answer.
The map's maximum (resampled to image pixels, as in the pointing game) lands on the asked object,
on the cue, or elsewhere; each within half a grid cell (the mark is smaller than a cell). A model
that looks at the object (the demo model) should point at the object; the shortcut twin, which
answers with the cue's colour, should point at the cue. This is the planted "right for the wrong
reasons" case for methods and for the clinical review's grounding checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lvlm_studio.core.errors import Cancelled
from lvlm_studio.core.plugin.jobs import Job, Progress
from lvlm_studio.demo.evaluate import cue_examples
from lvlm_studio.demo.pointing import _explain, _hit, tolerance_zone
from lvlm_studio.demo.scenes import COLOURS

CUE_TOLERANCE = 0.5  # grid cells: the mark is smaller than a cell, so a strict hit would need luck


@dataclass
class CueRow:
    method: str
    on_object: int = 0
    on_cue: int = 0
    elsewhere: int = 0

    @property
    def total(self) -> int:
        return self.on_object + self.on_cue + self.elsewhere


@dataclass
class CueCheck:
    scenes: int
    followed_cue: int  # answers naming the cue's colour
    named_object: int  # answers naming the object's colour
    rows: list[CueRow]
    failed: dict[str, str] = field(default_factory=dict)


def cue_check(loaded: Any, n: int = 50, methods: list[str] | None = None, registry: Any = None,
              world: str = "classic") -> Job[CueCheck]:
    """Explain the colour word of the answer to ``n`` contradicting cue scenes of ``world`` with each method."""
    from lvlm_studio.core.tracing.trace import generate_trace

    if registry is None:
        from lvlm_studio.core.plugin.registry import create_registry

        registry = create_registry()
    explainers = {m: registry.explainer(m) for m in methods} if methods else registry.explainers()
    failed: dict[str, str] = {m: f"does not apply: {reason}" for m, e in explainers.items()
                              if (reason := e.applies_to(loaded, e.resolve_params({}))) is not None}
    rows = {m: CueRow(m) for m in explainers}
    followed = named = 0
    pairs = cue_examples(n, agree=False, world=world)
    for i, (scene, example) in enumerate(pairs):
        yield Progress(i, n, f"scene {i + 1} of {n}")
        trace = generate_trace(loaded, scene.image, example.prompt)
        words = [t.strip().lower() for t in trace.answer_tokens]
        colour_tokens = [k for k, w in enumerate(words) if w in COLOURS]
        if not colour_tokens:
            continue
        target = colour_tokens[-1]
        said = words[target]
        followed += said == scene.cue.colour
        shape = example.prompt.removeprefix("what color is the ").split()[0].rstrip("?")
        colour = example.answer.split()[-1]
        asked = next(o for o in scene.objects if (o.colour, o.shape) == (colour, shape))
        named += said == asked.colour
        object_zone = tolerance_zone(asked.mask, trace, CUE_TOLERANCE)
        cue_zone = tolerance_zone(scene.cue.mask, trace, CUE_TOLERANCE)
        for method, explainer in explainers.items():
            if method in failed:
                continue
            try:
                maps = _explain(explainer, trace, loaded, [target]).maps[target]
            except Cancelled:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken method must not stop the check
                failed[method] = f"{type(exc).__name__}: {exc}"
                continue
            if _hit(maps, trace, object_zone):
                rows[method].on_object += 1
            elif _hit(maps, trace, cue_zone):
                rows[method].on_cue += 1
            else:
                rows[method].elsewhere += 1
    yield Progress(n, n, "done")
    return CueCheck(n, followed, named, [r for m, r in rows.items() if m not in failed], failed)


def format_cue_check(check: CueCheck) -> str:
    lines = [
        f"Cue contradicting the object, {check.scenes} held-out colour questions: the answer names the cue's "
        f"colour in {check.followed_cue}, the object's in {check.named_object}.",
        "",
        "| method | on the object | on the cue | elsewhere |",
        "|---|---:|---:|---:|",
    ]
    for row in check.rows:
        total = max(row.total, 1)
        lines.append(f"| {row.method} | {row.on_object / total:.0%} | {row.on_cue / total:.0%} | "
                     f"{row.elsewhere / total:.0%} |")
    for method, error in check.failed.items():
        lines.append(f"Skipped {method}: {error}")
    return "\n".join(lines) + "\n"
