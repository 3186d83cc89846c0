"""Grounded checks of a vision SAE on the demo model, where every patch's content is known.

* ``concept_table``: for each colour and shape word, the feature whose activation best separates
  patches on an object of that colour/shape from patches off every such object (AUROC), chosen on
  one set of scenes and scored on held-out scenes, so the table does not grade its own choice.
  A patch is "on" when at least half its pixels are inside the object's mask; patches partly
  covered (between 0 and half) are left out of both sides, being neither.
* ``ablation_test``: on held-out scenes with a red object whose shape is unique, ask "what color
  is the {shape}?", remove chosen features (scale 0, or another factor) at the SAE's hook point,
  and count how often the answer changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy.stats import rankdata

from lvlm_studio.core.plugin.jobs import Job, Progress
from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
from lvlm_studio.demo.scenes import COLOURS, SHAPES, Scene, make_scene
from lvlm_studio.sae.activations import TRAINING_SEED_BASE, image_batch_rows
from lvlm_studio.sae.coders import SparseAutoencoder

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

WORDS = tuple(COLOURS) + SHAPES
#: Scenes that pick each word's feature: disjoint from the coder's training scenes (which start
#: at TRAINING_SEED_BASE) and from the held-out scenes that score it.
SELECTION_SEED_BASE = TRAINING_SEED_BASE + 500_000
ON_COVERAGE = 0.5


def patch_coverage(scene: Scene, word: str, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of each patch's pixels on an object that ``word`` names, [rows, cols], on the
    demo model's grid over the image padded to a square."""
    from lvlm_studio.demo.model import padded_coverage

    mask = scene.mask_for_word(word)
    rows, cols = grid
    if mask is None:
        return np.zeros(grid)
    if rows != cols:
        raise ValueError(f"the demo model's grid is square, not {rows}x{cols}")
    return padded_coverage(mask, rows)


def scene_features(loaded: LoadedModel, coder: SparseAutoencoder, scenes: Sequence[Scene], batch: int = 32
                   ) -> Job[np.ndarray]:
    """Feature activations of every patch of every scene, [scenes, rows * cols, d_sae] (a job)."""
    out = []
    for start in range(0, len(scenes), batch):
        chunk = scenes[start:start + batch]
        (rows,) = image_batch_rows(loaded, [coder.cfg.hook_name], [s.image for s in chunk], "patch")
        with torch.no_grad():
            out.append(coder.encode(rows.to(coder.W_enc.device)).cpu().numpy().reshape(len(chunk), -1, coder.cfg.d_sae))
        yield Progress(start + len(chunk), len(scenes), "feature activations")
    return np.concatenate(out)


def labels(scenes: Sequence[Scene], word: str, grid: tuple[int, int]) -> np.ndarray:
    """Per patch: 1 on an object ``word`` names, 0 off every such object, -1 partly on (ignored)."""
    coverage = np.stack([patch_coverage(s, word, grid).reshape(-1) for s in scenes]).reshape(-1)
    return np.where(coverage >= ON_COVERAGE, 1, np.where(coverage == 0, 0, -1))


def auroc_per_feature(activations: np.ndarray, label: np.ndarray) -> np.ndarray:
    """AUROC of every feature at once (Mann-Whitney U with tied ranks averaged), [d_sae]."""
    keep = label >= 0
    values, positive = activations[keep], label[keep] == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(activations.shape[1], np.nan)
    ranks = rankdata(values, axis=0)
    return (ranks[positive].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


@dataclass
class ConceptRow:
    word: str
    feature: int
    selection_auroc: float
    heldout_auroc: float
    positives: int
    negatives: int
    runner_up: int = -1  # the second-best feature on the selection scenes, and its held-out AUROC
    runner_up_heldout_auroc: float = float("nan")


def concept_table(loaded: LoadedModel, coder: SparseAutoencoder, n_select: int = 300, n_heldout: int = 300
                  ) -> Job[list[ConceptRow]]:
    """The best feature per colour and shape word, chosen and scored on disjoint scene sets."""
    from sklearn.metrics import roc_auc_score

    grid = _grid(loaded)
    selection = [make_scene(SELECTION_SEED_BASE + i) for i in range(n_select)]
    heldout = [make_scene(HELDOUT_SEED_BASE + i) for i in range(n_heldout)]
    chosen_acts = (yield from scene_features(loaded, coder, selection)).reshape(-1, coder.cfg.d_sae)
    heldout_acts = (yield from scene_features(loaded, coder, heldout)).reshape(-1, coder.cfg.d_sae)
    rows = []
    for word in WORDS:
        scores = auroc_per_feature(chosen_acts, labels(selection, word, grid))
        feature, runner_up = (int(i) for i in np.argsort(-np.nan_to_num(scores, nan=-1.0), kind="stable")[:2])
        label = labels(heldout, word, grid)
        keep = label >= 0
        heldout_auroc = float(roc_auc_score(label[keep], heldout_acts[keep, feature]))
        second = float(roc_auc_score(label[keep], heldout_acts[keep, runner_up]))
        rows.append(ConceptRow(word, feature, float(scores[feature]), heldout_auroc, int((label == 1).sum()),
                               int((label == 0).sum()), runner_up, second))
    return rows


def format_concept_table(rows: Sequence[ConceptRow], coder: SparseAutoencoder) -> str:
    lines = [f"Best single feature per word, {coder.cfg.hook_name} ({coder.cfg.architecture}, d_sae {coder.cfg.d_sae});"
             " chosen on selection scenes, AUROC on held-out scenes (patch on the object vs off every such object)."
             " The runner-up is the second-best feature on the selection scenes: a concept held by one feature"
             " has none close behind.",
             "", "| word | feature | AUROC (selection) | AUROC (held-out) | runner-up (held-out AUROC) | "
                 "patches on / off |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.word} | {r.feature} | {r.selection_auroc:.3f} | {r.heldout_auroc:.3f} | "
              f"{r.runner_up} ({r.runner_up_heldout_auroc:.3f}) | {r.positives} / {r.negatives} |" for r in rows]
    return "\n".join(lines) + "\n"


def _grid(loaded: LoadedModel) -> tuple[int, int]:
    vision = loaded.model.config.vision_config
    side = int(vision.image_size) // int(vision.patch_size)
    return side, side


# -- ablation ----------------------------------------------------------------------------------------
@dataclass
class AblationResult:
    features: dict[int, float]
    scenes: int
    changed: int
    examples: list[tuple[int, str, str, str]] = field(default_factory=list)  # seed, prompt, before, after
    p_before: float = 0.0  # mean probability of the answer's colour word, as is
    p_after: float = 0.0  # the same (teacher forced) with the features edited

    @property
    def fraction(self) -> float:
        return self.changed / self.scenes if self.scenes else 0.0


def colour_questions(colour: str, n: int, start: int = HELDOUT_SEED_BASE) -> list[tuple[Scene, str]]:
    """Held-out scenes with an object of ``colour`` whose shape no other object has, and the
    question about that object's colour."""
    found, seed = [], start
    while len(found) < n:
        scene = make_scene(seed)
        seed += 1
        shapes = [o.shape for o in scene.objects]
        for obj in scene.objects:
            if obj.colour == colour and shapes.count(obj.shape) == 1:
                found.append((scene, f"what color is the {obj.shape}?"))
                break
    return found


def ablation_test(loaded: LoadedModel, coder: SparseAutoencoder, features: dict[int, float], colour: str = "red",
                  n: int = 100) -> Job[AblationResult]:
    """How often editing ``features`` (feature -> factor) changes the answer about a ``colour``
    object, and how the original answer's probability moves (teacher forced, with the edit)."""
    from lvlm_studio.core.models.hooks import hooks
    from lvlm_studio.core.perturbation.perturb import score_images
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.sae.activations import image_inputs
    from lvlm_studio.sae.inspect import edited_answer
    from lvlm_studio.sae.splice import scale_features, splice_hooks

    questions = colour_questions(colour, n)
    result = AblationResult(dict(features), len(questions), 0)
    p_before, p_after = [], []
    for index, (scene, prompt) in enumerate(questions):
        trace = generate_trace(loaded, scene.image, prompt)
        after = edited_answer(loaded, coder, scene.image, prompt, features)
        inputs = image_inputs(loaded, [scene.image], prompt)
        splice = splice_hooks(loaded, coder, inputs, "edit", scale_features(features))
        with hooks(loaded, splice):
            edited = yield from score_images(loaded, trace, [scene.image], what="scoring the edited answer")
        word = next((i for i, t in enumerate(trace.answer_tokens) if t.strip() in COLOURS),
                    int(trace.logprobs.argmin()))  # the colour word of "the circle is red"
        p_before.append(float(np.exp(trace.logprobs[word])))
        p_after.append(float(np.exp(edited[0][word])))
        if after != trace.answer_text:
            result.changed += 1
            if len(result.examples) < 5:
                result.examples.append((scene.seed, prompt, trace.answer_text, after))
        yield Progress(index + 1, len(questions), f"{result.changed} changed")
    result.p_before, result.p_after = float(np.mean(p_before)), float(np.mean(p_after))
    return result
