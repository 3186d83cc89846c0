"""The datasets a study runs over, as ``StudySample``s: demo scenes, a manifest, or a COCO file.

- **Demo scenes** (``scenes``, ``world``): held-out scenes of a demo world with their object masks,
  asked the questions of the study's ``demo_tasks`` in the demo model's grammar. With ``cue``
  ("contradict" or "agree") they are the shortcut twin's colour questions whose corner mark
  contradicts or agrees with the asked object (``demo.evaluate.cue_examples``), with the mark's
  mask as "cue".
- **A manifest** (JSON or CSV, paths relative to it; docs/studies.md): per image its questions
  (optional expected answer, the object the question is about, a pair id and ``negated`` for
  opposite questions) and its object masks (mask images or boxes).
- **A COCO file** with its image folder: one mask per category; every image is asked
  ``questions``, each about the first category its text names.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.plugin.contracts import StudyQuestion, StudySample

CUES = ("none", "contradict", "agree")
DEMO_TASKS = ("colour", "exist", "exist-pair", "where", "caption")


@dataclass
class DatasetSettings:
    """Where a study's samples come from (saved in run.json; ``n`` may grow on resumption)."""

    n: int = 20  # samples: demo scenes, or the first n images / manifest entries
    world: str = "classic"
    cue: str = "none"
    manifest: str | None = None
    images: str | None = None
    coco: str | None = None
    questions: list[str] = field(default_factory=list)  # for COCO images

    def kind(self) -> str:
        return "manifest" if self.manifest else "coco" if self.coco else "demo"

    def describe(self) -> str:
        if self.manifest:
            return f"the first {self.n} entries of {self.manifest}"
        if self.coco:
            return f"the first {self.n} images of {self.coco} in {self.images}"
        cue = {"none": "", "agree": " with a corner mark that agrees with the asked object's colour",
               "contradict": " with a corner mark that contradicts the asked object's colour"}.get(self.cue, "")
        return f"{self.n} held-out {self.world} demo scenes{cue}"

    def check(self) -> None:
        """Refuse inconsistent choices before any model loads."""
        if self.n < 1:
            raise InputError(f"--n is {self.n}; it must be at least 1.", "Example: --n 20.")
        if self.cue not in CUES:
            raise InputError(f"--cue {self.cue!r} is not one of {', '.join(CUES)}.", "Example: --cue contradict.")
        if self.manifest and self.coco:
            raise InputError("--manifest and --coco are two datasets.", "Pass one of them (or neither: demo scenes).")
        if (self.images is None) != (self.coco is None):
            raise InputError("--images and --coco go together.", "Pass both, or neither for demo scenes.")
        if self.coco and not self.questions:
            raise InputError("COCO images need a question.", "Add --question 'is there a dog?' (repeatable).")
        from lvlm_studio.demo.scenes import WORLDS

        if self.world not in WORLDS:
            raise InputError(f"--world {self.world!r} is not a demo world.", f"Choose one of {', '.join(WORLDS)}.")
        for option, value, is_right, kind in (("--manifest", self.manifest, Path.is_file, "file"),
                                              ("--images", self.images, Path.is_dir, "folder"),
                                              ("--coco", self.coco, Path.is_file, "file")):
            if value is not None and not is_right(Path(value)):
                raise InputError(f"{option} {value} is not a {kind}.", f"Check the path of the {kind}.")
        if self.manifest:  # a missing image is found now, not after the models loaded
            path = Path(self.manifest)
            for index, entry in enumerate(_read_manifest(path)[: self.n]):
                image = entry.get("image")
                if not isinstance(image, str) or not (path.parent / image).is_file():
                    raise InputError(f"entry {index + 1} of {path} names image {image!r}, which is not a file.",
                                     "Give each entry the path of its image, relative to the manifest.")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def samples(settings: DatasetSettings, tasks: tuple[str, ...] = ("colour",)) -> Iterator[StudySample]:
    """The samples of the dataset, in a fixed order; demo scenes are asked ``tasks``."""
    if settings.manifest:
        yield from manifest_samples(settings.manifest, settings.n)
    elif settings.coco:
        yield from coco_samples(settings.images or "", settings.coco, settings.questions, settings.n)
    else:
        yield from demo_samples(settings.n, tasks, settings.world, settings.cue)


# -- demo scenes --------------------------------------------------------------------------------
def demo_samples(n: int, tasks: tuple[str, ...] = ("colour",), world: str = "classic",
                 cue: str = "none") -> Iterator[StudySample]:
    """``n`` held-out scenes of ``world`` asked ``tasks``; with ``cue``, the shortcut twin's colour
    questions with a contradicting or agreeing corner mark (then every scene's colour question is
    the one the mark was drawn for)."""
    from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE, cue_examples
    from lvlm_studio.demo.scenes import scene_maker

    unknown = [t for t in tasks if t not in DEMO_TASKS]
    if unknown:
        raise ValueError(f"unknown demo task {unknown[0]!r}; choose from {DEMO_TASKS}")
    if cue == "none":
        make = scene_maker(world)
        pairs = [(make(HELDOUT_SEED_BASE + i), None) for i in range(n)]
    else:
        pairs = cue_examples(n, agree=cue == "agree", world=world)
    for i, (scene, example) in enumerate(pairs):
        rng = np.random.default_rng([HELDOUT_SEED_BASE, 17, i])
        questions = [q for task in tasks for q in demo_questions(scene, task, rng, example)]
        masks = {o.name: o.mask for o in scene.objects}
        if scene.cue is not None and scene.cue.colour is not None:
            masks["cue"] = scene.cue.mask
        info = {"seed": scene.seed, "caption": scene.caption(), "world": world}
        if scene.cue is not None and scene.cue.colour is not None:
            info["cue_colour"] = scene.cue.colour
        yield StudySample(f"scene-{scene.seed}", scene.image, questions, masks, info)


def demo_questions(scene: Any, task: str, rng: np.random.Generator, example: Any = None) -> list[StudyQuestion]:
    """The questions of one task about a demo scene, in the demo model's grammar, with answers.

    "exist-pair" asks "is there a X?" and its negation "is there not a X?" for one object that is
    there and one that is not (pair ids "present" and "absent"); the demo model answers in
    statements ("the red circle is there"), which ``yes_no`` reads against the question.
    """
    from lvlm_studio.demo.scenes import COLOURS, SHAPES, colour_example, where_words

    if task == "colour":
        if example is None:
            obj, example = colour_example(scene, rng)
        else:  # a cue scene: the question its mark was drawn for
            colour = example.answer.split()[-1]
            obj = next(o for o in scene.objects if o.colour == colour and f" {o.shape}" in example.prompt)
        return [StudyQuestion(example.prompt, example.answer, obj.name, "colour")]
    if task == "caption":
        return [StudyQuestion("describe the image.", scene.caption(), None, "caption")]
    present = sorted(scene.objects, key=lambda o: (o.row, o.col))
    chosen = present[int(rng.integers(len(present)))]
    if task == "where":
        return [StudyQuestion(f"where is the {chosen.name}?", f"the {chosen.name} is at the "
                              f"{where_words(chosen.row, chosen.col)}", chosen.name, "where")]
    taken = {(o.colour, o.shape) for o in scene.objects}
    absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if (c, s) not in taken]
    missing = absent[int(rng.integers(len(absent)))]
    if task == "exist":
        return [StudyQuestion(f"is there a {chosen.name}?", f"the {chosen.name} is there", chosen.name, "exist"),
                StudyQuestion(f"is there a {missing}?", f"the {missing} is not there", None, "exist")]
    if task == "exist-pair":
        questions = []
        for pair, name, there in (("present", chosen.name, True), ("absent", missing, False)):
            truth = f"the {name} is {'' if there else 'not '}there"
            questions += [StudyQuestion(f"is there a {name}?", truth, name if there else None, "exist-pair", pair),
                          StudyQuestion(f"is there not a {name}?", truth, name if there else None, "exist-pair",
                                        pair, negated=True)]
        return questions
    raise ValueError(f"unknown demo task {task!r}; choose from {DEMO_TASKS}")


# -- a manifest ---------------------------------------------------------------------------------
def manifest_samples(path: str | Path, n: int) -> Iterator[StudySample]:
    """The first ``n`` entries of a JSON or CSV manifest (docs/studies.md has the format)."""
    path = Path(path)
    entries = _read_manifest(path)
    if not entries:
        raise InputError(f"{path} lists no image.", "Add at least one entry with an image and a question.")
    for index, entry in enumerate(entries[:n]):
        yield _manifest_sample(path, index, entry)


def _read_manifest(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"manifest {path} could not be read ({exc}).", "Check the path; it must be UTF-8 text.") \
            from None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if rows and not {"image", "question"} <= set(rows[0]):
            raise InputError(f"manifest {path} has no 'image' and 'question' columns.",
                             "Its first line must name the columns: image,question[,answer,object,pair,negated].")
        grouped: dict[str, dict[str, Any]] = {}
        for row in rows:
            entry = grouped.setdefault(row["image"], {"image": row["image"], "questions": []})
            entry["questions"].append({key: value for key, value in row.items() if key != "image" and value})
        return list(grouped.values())
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise InputError(f"manifest {path} is not JSON ({exc}).", "Write it as JSON, or as CSV with a .csv name.") \
            from None
    entries = data.get("samples") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(f"manifest {path} holds no list of samples.",
                         'Write {"samples": [{"image": "a.png", "questions": ["..."]}, ...]}.')
    return entries


def _manifest_sample(path: Path, index: int, entry: dict[str, Any]) -> StudySample:
    from lvlm_studio.core.io.images import open_image
    from lvlm_studio.core.metrics.masks import fit_mask, mask_from_image

    where = f"entry {index + 1} of {path}"
    if not isinstance(entry.get("image"), str):
        raise InputError(f"{where} has no 'image'.", "Give each entry the path of its image, relative to the manifest.")
    image = open_image(path.parent / entry["image"])
    questions = [_question(q, where) for q in entry.get("questions", [])]
    if not questions:
        raise InputError(f"{where} has no question.", 'Add "questions": ["is there a dog?"].')
    masks: dict[str, np.ndarray] = {}
    for name, file in (entry.get("masks") or {}).items():
        masks[str(name)] = mask_from_image(path.parent / str(file), image.size)
    for name, box in (entry.get("boxes") or {}).items():
        masks[str(name)] = fit_mask(_box_mask(box, image.size, where), image.size, f"box of {name!r} in {where}")
    for question in questions:
        if question.object is not None and masks and question.object not in masks:
            raise InputError(f"{where}: question {question.text!r} is about {question.object!r}, which has no mask.",
                             f"Its masks: {', '.join(masks)}.")
    return StudySample(f"{index:05d}-{Path(entry['image']).name}", image, questions, masks,
                       {"image": entry["image"]})


def _question(item: Any, where: str) -> StudyQuestion:
    if isinstance(item, str):
        return StudyQuestion(item)
    if not isinstance(item, dict) or not isinstance(item.get("text", item.get("question")), str):
        raise InputError(f"{where} has a question that is neither text nor an object with 'text'.",
                         'Write "questions": ["..."] or [{"text": "...", "answer": "yes"}].')
    negated = str(item.get("negated", "")).strip().lower() in {"1", "true", "yes"}
    optional = {key: (str(item[key]) if item.get(key) not in (None, "") else None)
                for key in ("answer", "object", "pair")}
    return StudyQuestion(item.get("text", item.get("question")), optional["answer"], optional["object"], "",
                         optional["pair"], negated)


def _box_mask(box: Any, size: tuple[int, int], where: str) -> np.ndarray:
    try:
        left, top, right, bottom = (int(round(float(v))) for v in box)
    except (TypeError, ValueError):
        raise InputError(f"{where}: box {box!r} is not [left, top, right, bottom].",
                         "Give boxes in pixels, e.g. [10, 20, 60, 80].") from None
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    mask[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = True
    return mask


# -- a COCO file --------------------------------------------------------------------------------
def coco_samples(images: str | Path, annotation_file: str | Path, questions: list[str], n: int
                 ) -> Iterator[StudySample]:
    """The first ``n`` images of the COCO file found in the folder, each asked ``questions``."""
    from lvlm_studio.core.io.images import open_image
    from lvlm_studio.core.metrics.masks import coco_masks, load_coco

    folder = Path(images)
    coco = load_coco(annotation_file)
    names = sorted(Path(info["file_name"]).name for info in coco.imgs.values())
    present = [name for name in names if (folder / name).exists()]
    if not present:
        raise InputError(f"none of the {len(names)} images of {annotation_file} is in {folder}.",
                         "Use the folder and annotation file of the same dataset.")
    for name in present[:n]:
        image = open_image(folder / name)
        masks = dict(coco_masks(annotation_file, name, image.size, coco))
        asked = [StudyQuestion(text, None, next((w for w in masks if w in text.lower().split()), None))
                 for text in questions]
        yield StudySample(name, image, asked, masks, {"file": name})
