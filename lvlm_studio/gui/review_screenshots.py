"""Screenshots of the review workspace for the docs: a case to defer and a signed, grounded one.

    python -m lvlm_studio.gui.review_screenshots OUTDIR [--illustrative]

Runs offscreen at 1280x800 on the demo model with throwaway settings and audit log, on a worklist
of three cases made here (two demo scenes and an image of nothing), and writes:

    review-defer.png   an image of nothing (a blank grey scan): the amber banner, its reasons, the methods' maps
    review-accept.png  a demo scene, accepted by the reviewer: the green banner, the critical region

With the grounding assessment installed (``lvlm_studio.review.assessment``) the verdicts are its
own. Without it, or with ``--illustrative``, a stand-in draws them: the answer, its probability,
the methods' maps and the critical region are computed on the demo model, while the consistency
score, the confidence, the decision and the reasons are fixed per case (they illustrate the
layout, not a calibrated verdict).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

METHODS = ("raw_attention", "relevancy", "tam")
SCENE_SEEDS = (21, 23)  # two-object classic scenes with exactly one circle
COLOURS = {"red", "green", "blue", "yellow"}
#: The stand-in's verdict per question: consistency, confidence, decision, reasons.
NOISE_QUESTION = "is there a red circle?"
VERDICTS = {
    NOISE_QUESTION: (0.18, "low", "defer", ["the methods disagree on where the evidence is",
                                     "the image is unlike what the model was trained on (no object found)",
                                     "the answer changes when the image is slightly blurred"]),
    "what color is the circle?": (0.83, "high", "accept", ["the methods agree on where the evidence is",
                                       "the evidence lies on the object the answer names",
                                       "the answer is stable under blur and masking"]),
}


def illustrative_assessor(loaded: Any, image: Any, question: str, settings: Any = None, registry: Any = None) -> Any:
    """Real answer, probability, maps and region on the demo model; the verdict fixed per case (see above)."""
    from dataclasses import dataclass, field

    from skimage import measure

    from lvlm_studio.core.plugin.explanation import normalise, to_pixels
    from lvlm_studio.core.plugin.jobs import Progress, run_job
    from lvlm_studio.core.tracing.trace import generate_trace

    @dataclass
    class Illustration:
        question: str
        answer: str
        probability: float
        key_tokens: list[int]
        consistency: float
        confidence: str
        decision: str
        reasons: list[str]
        signals: dict[str, float]
        maps: dict[str, np.ndarray]
        regions: list[np.ndarray]
        thresholds: dict[str, float] = field(default_factory=lambda: {"defer": 0.45, "high": 0.7})

        def to_dict(self) -> dict[str, Any]:
            return {"question": self.question, "answer": self.answer, "decision": self.decision}

    yield Progress(0, len(METHODS) + 1, "answering")
    trace = generate_trace(loaded, image, question)
    words = [token.strip() for token in trace.answer_tokens]
    key = next((i for i, word in enumerate(words) if word in COLOURS), 0)
    explainers = registry.explainers() if registry is not None else {}
    maps = {}
    for done, method in enumerate(METHODS, start=1):
        yield Progress(done, len(METHODS) + 1, f"explaining with {method}")
        if method in explainers:
            explainer = explainers[method]
            made = run_job(explainer.explain(trace, loaded, [key], explainer.resolve_params({})))
            maps[method] = to_pixels(made.maps[key], trace.regions, image.size)
    mean = np.mean([normalise(m) for m in maps.values()], axis=0)
    regions = [c for c in measure.find_contours(mean, 0.6 * mean.max()) if len(c) > 8]
    consistency, confidence, decision, reasons = VERDICTS[question]
    return Illustration(question, trace.answer_text, float(np.exp(trace.logprobs[key])), [key],
                        consistency, confidence, decision, list(reasons),
                        {"rank_agreement": consistency, "share_on_content": 0.9 if decision == "accept" else 0.2},
                        maps, regions)


def write_worklist(folder: Path) -> Path:
    """Two demo scenes with one circle each, an image of nothing, and their manifest."""
    from PIL import Image

    from lvlm_studio.demo.scenes import make_scene

    # Classic-world scenes (the shipped model's world) with exactly one circle each.
    scenes = [make_scene(seed, n_objects=2) for seed in SCENE_SEEDS]
    for number, scene in enumerate(scenes, start=1):
        scene.image.save(folder / f"scan-{number:03d}.png")
    # Nothing to see: a blank grey scan with faint grain. (Colourful blotches are not deferred by
    # the current calibration: a known miss, see docs/REVIEW.md.)
    grain = np.random.default_rng(3).normal(0, 3, (32, 32, 1))
    blank = (np.full((32, 32, 3), 118.0) + grain).clip(0, 255).astype(np.uint8)
    Image.fromarray(blank).resize((256, 256), Image.Resampling.BICUBIC).save(folder / "scan-003.png")
    manifest = folder / "worklist.csv"
    manifest.write_text("case,image,question,reference\n"
                        f"study-0417,scan-001.png,what color is the circle?,"
                        f"{next(o.colour for o in scenes[0].objects if o.shape == 'circle')}\n"
                        f"study-0418,scan-003.png,{NOISE_QUESTION},\n"
                        "study-0419,scan-002.png,what color is the circle?,\n", encoding="utf-8")
    return manifest


def take(out: Path, illustrative: bool = False) -> list[Path]:
    from lvlm_studio.gui.app import create_application
    from lvlm_studio.gui.main_window import MainWindow
    from lvlm_studio.gui.review.window import ReviewWindow, core_assessor
    from lvlm_studio.gui.screenshots import settle, wait_until
    from lvlm_studio.gui.settings import StudioSettings

    real = not illustrative and importlib.util.find_spec("lvlm_studio.review") is not None and \
        importlib.util.find_spec("lvlm_studio.review.assessment") is not None
    create_application()
    out.mkdir(parents=True, exist_ok=True)
    shots = []
    with tempfile.TemporaryDirectory() as folder:
        settings = StudioSettings(Path(folder) / "settings.ini")
        settings.set_reviewer("dr.lee")
        window = MainWindow(settings=settings, autosave_ms=0)
        wait_until(lambda: window.state.model is not None and not window.runner.busy, "the demo model")
        review = ReviewWindow(window, core_assessor if real else illustrative_assessor)
        window.review_window = review
        review.resize(1280, 800)
        review.open_worklist(write_worklist(Path(folder)))
        wait_until(lambda: review.cases["study-0417"].result is not None, "the first assessment")
        review.sign_off("accept")
        wait_until(lambda: review.cases["study-0418"].result is not None and not window.runner.busy,
                   "the second assessment")
        for name, row in (("review-defer.png", 1), ("review-accept.png", 0)):
            review.select(row)
            settle(0.5)
            path = out / name
            review.grab().save(str(path))
            shots.append(path)
        review.close()
        window.close()
    print("verdicts:", "the grounding assessment" if real else "illustrative stand-in", file=sys.stderr)
    return shots


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    illustrative = "--illustrative" in args
    args = [a for a in args if a != "--illustrative"]
    if len(args) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    for path in take(Path(args[0]), illustrative):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
