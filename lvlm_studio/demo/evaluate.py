"""Exact-match accuracy of a model on held-out demo scenes, per task.

Held-out scenes use seeds from HELDOUT_SEED_BASE upward; training never draws a seed that large.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from lvlm_studio.demo.model import pixel_values
from lvlm_studio.demo.scenes import TASKS, Example, make_example, make_scene

HELDOUT_SEED_BASE = 2_000_000_000


def heldout_examples(n: int, task: str) -> list[tuple[object, Example]]:
    """``n`` held-out (scene, example) pairs of one task; the same on every call."""
    rng = np.random.default_rng([HELDOUT_SEED_BASE, TASKS.index(task)])
    pairs = []
    for i in range(n):
        scene = make_scene(HELDOUT_SEED_BASE + i)
        pairs.append((scene, make_example(scene, task, rng)))
    return pairs


def prompt_text(processor, prompt: str) -> str:
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


@torch.no_grad()
def exact_match(model, processor, pairs, batch_size: int = 100, max_new_tokens: int = 16,
                on_batch: Callable[[int], None] | None = None) -> float:
    """Fraction of examples whose greedy answer equals the reference token for token.

    ``on_batch`` is told how many examples each finished batch held (for a progress bar)."""
    tokenizer = processor.tokenizer
    by_length: dict[int, list] = defaultdict(list)  # equal prompt lengths batch without padding
    for scene, example in pairs:
        ids = tokenizer(prompt_text(processor, example.prompt))["input_ids"]
        by_length[len(ids)].append((scene, example))
    n_image = model.config.image_seq_length
    correct = 0
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            texts = [prompt_text(processor, ex.prompt) for _, ex in chunk]
            texts = [t.replace("<image>", "<image>" * n_image) for t in texts]
            enc = tokenizer(texts, return_tensors="pt")
            out = model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                pixel_values=pixel_values([s.image for s, _ in chunk], processor),
                max_new_tokens=max_new_tokens,
                do_sample=False,
            )
            for row, (_, ex) in zip(out[:, enc["input_ids"].shape[1] :].tolist(), chunk):
                want = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
                got = row[: row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else None
                correct += got == want
            if on_batch is not None:
                on_batch(len(chunk))
    return correct / len(pairs)


def evaluate(model, processor, n: int = 500, tasks=TASKS,
             on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    model.eval()
    return {task: exact_match(model, processor, heldout_examples(n, task), on_batch=on_batch) for task in tasks}
