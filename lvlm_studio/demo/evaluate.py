"""Exact-match accuracy of a model on held-out demo scenes, per task.

Two test sets: the generator's held-out scenes (seeds from HELDOUT_SEED_BASE upward; training
never draws a seed that large) and the out-of-generator set in resources/demo-outside, drawn by
other code in the styles users draw in (``lvlm_studio.demo.outside``). For the shortcut twin,
``cue_examples`` draws colour questions whose corner mark agrees with the answer or contradicts it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from lvlm_studio.demo.model import pixel_values
from lvlm_studio.demo.scenes import COLOURS, TASKS, Example, colour_example, make_example, scene_maker

HELDOUT_SEED_BASE = 2_000_000_000


def heldout_examples(n: int, task: str, world: str = "classic") -> list[tuple[object, Example]]:
    """``n`` held-out (scene, example) pairs of one task in one world; the same on every call."""
    make = scene_maker(world)
    rng = np.random.default_rng([HELDOUT_SEED_BASE, TASKS.index(task)])
    pairs = []
    for i in range(n):
        scene = make(HELDOUT_SEED_BASE + i)
        pairs.append((scene, make_example(scene, task, rng)))
    return pairs


def prompt_text(processor, prompt: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def cue_examples(n: int, agree: bool, world: str = "classic") -> list[tuple[object, Example]]:
    """``n`` held-out colour questions for a shortcut twin of ``world``, each scene with its corner
    mark in the answer's colour (``agree``) or in another colour (contradicting the object)."""
    make = scene_maker(world)
    rng = np.random.default_rng([HELDOUT_SEED_BASE, 99, int(agree)])
    pairs = []
    for i in range(n):
        seed = HELDOUT_SEED_BASE + 500_000 + i
        plain = make(seed, reserve_cue=True)
        obj, example = colour_example(plain, rng)
        others = [c for c in COLOURS if c != obj.colour]
        cue = obj.colour if agree else others[int(rng.integers(len(others)))]
        pairs.append((make(seed, cue=cue), example))
    return pairs


def exact_match(model, processor, pairs, batch_size: int = 100, max_new_tokens: int = 16,
                on_batch: Callable[[int], None] | None = None) -> float:
    """Fraction of examples whose greedy answer equals the reference token for token.

    ``on_batch`` is told how many examples each finished batch held (for a progress bar)."""
    got = greedy_answers(model, processor, pairs, batch_size, max_new_tokens, on_batch)
    return sum(g == as_words(processor, ex.answer) for g, (_, ex) in zip(got, pairs)) / len(pairs)


def as_words(processor, text: str) -> str:
    """``text`` as the tokenizer splits it, joined by single spaces (how answers are compared)."""
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return " ".join(processor.tokenizer.convert_ids_to_tokens(ids))


@torch.no_grad()
def greedy_answers(model, processor, pairs, batch_size: int = 100, max_new_tokens: int = 16,
                   on_batch: Callable[[int], None] | None = None) -> list[str | None]:
    """The model's greedy answer to every (scene, example) pair, in order, as normalised text
    (words joined by single spaces); None where it never ended its answer."""
    tokenizer = processor.tokenizer
    by_length: dict[int, list] = defaultdict(list)  # equal prompt lengths batch without padding
    for index, (scene, example) in enumerate(pairs):
        ids = tokenizer(prompt_text(processor, example.prompt))["input_ids"]
        by_length[len(ids)].append((index, scene, example))
    n_image = model.config.image_seq_length
    answers: list[str | None] = [None] * len(pairs)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            texts = [prompt_text(processor, ex.prompt) for _, _, ex in chunk]
            texts = [t.replace("<image>", "<image>" * n_image) for t in texts]
            enc = tokenizer(texts, return_tensors="pt")
            out = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                pixel_values=pixel_values([s.image for _, s, _ in chunk], processor),
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
            for row, (index, _, _) in zip(out[:, enc["input_ids"].shape[1] :].tolist(), chunk):
                if tokenizer.eos_token_id in row:
                    words = tokenizer.convert_ids_to_tokens(row[: row.index(tokenizer.eos_token_id)])
                    answers[index] = " ".join(words)
            if on_batch is not None:
                on_batch(len(chunk))
    return answers


def evaluate(model, processor, n: int = 500, tasks=TASKS,
             on_batch: Callable[[int], None] | None = None, world: str = "classic") -> dict[str, float]:
    """Exact match per task on ``n`` held-out generator scenes of one world."""
    model.eval()
    return {task: exact_match(model, processor, heldout_examples(n, task, world), on_batch=on_batch)
            for task in tasks}


def evaluate_outside(model, processor, tasks=TASKS,
                     on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """Exact match per task on the out-of-generator set (every scene, one question per task)."""
    from lvlm_studio.demo.outside import outside_examples

    model.eval()
    return {task: exact_match(model, processor, outside_examples(task), on_batch=on_batch) for task in tasks}


SIZE_BIN = 8  # pixels of the model's square per row of ``objects_by_size``


def objects_by_size(model, processor, n: int = 300, world: str = "classic",
                    on_batch: Callable[[int], None] | None = None) -> dict[str, dict]:
    """Where captions go wrong, on ``n`` held-out caption scenes of one world.

    ``objects``: for objects binned by their size in the model's square (the bounding box's longer
    side after the pad to a square and the resize, in bins of SIZE_BIN px), how many the caption
    names right (its colour and shape, in that order) out of how many; ``captions``: exact match by
    the scene's number of objects, right out of asked. A scene never holds two objects of the same
    colour and shape, so "named right" is unambiguous."""
    side = model.config.vision_config.image_size
    pairs = heldout_examples(n, "caption", world)
    answers = greedy_answers(model, processor, pairs, on_batch=on_batch)
    objects: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    captions: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for answer, (scene, example) in zip(answers, pairs):
        words = (answer or "").replace(",", " ").split()
        named = set(zip(words, words[1:]))
        tally = captions[len(scene.objects)]
        tally[0] += answer == as_words(processor, example.answer)
        tally[1] += 1
        for obj in scene.objects:
            rows, cols = np.nonzero(obj.mask)
            extent = max(np.ptp(rows), np.ptp(cols)) + 1
            low = int(extent * side / max(obj.mask.shape) // SIZE_BIN * SIZE_BIN)
            objects[low][0] += (obj.colour, obj.shape) in named
            objects[low][1] += 1
    return {"objects": {f"{low}-{low + SIZE_BIN} px": tuple(v) for low, v in sorted(objects.items())},
            "captions": {f"{k} object{'s' if k > 1 else ''}": tuple(v) for k, v in sorted(captions.items())}}


def evaluate_cue(model, processor, n: int = 200, on_batch: Callable[[int], None] | None = None,
                 world: str = "classic") -> dict[str, float]:
    """How a model answers colour questions when the corner mark agrees with the object and when it
    contradicts it: exact match in both, and how often a contradicted answer names the mark's colour."""
    model.eval()
    agree = exact_match(model, processor, cue_examples(n, True, world), on_batch=on_batch)
    contradicting = cue_examples(n, False, world)
    answers = greedy_answers(model, processor, contradicting, on_batch=on_batch)
    right = sum(a == as_words(processor, ex.answer) for a, (_, ex) in zip(answers, contradicting)) / n
    follows = sum(a is not None and a.split()[-1] == scene.cue.colour
                  for a, (scene, _) in zip(answers, contradicting)) / n
    return {"cue agrees": agree, "cue contradicts": right, "follows the cue": follows}
