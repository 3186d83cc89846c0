"""Train the embedded demo model from scratch on synthetic scenes (seeded, CPU, under an hour).

    python -m lvlm_studio.demo.train --out resources/demo-model

A tiny LLaVA first sits on a plateau where it answers from word statistics alone. To shorten it,
a throwaway linear head reads the projector's output at every image token and predicts the colour
and shape under that patch from the scene masks (dense supervision for the vision side). The head
is not part of the saved model: the language model still has to learn to read the image tokens,
and the held-out accuracy, not the loss, says whether it did.

The language loss is averaged per example, then over the batch. A plain mean over answer tokens
lets a 12-token caption outweigh a one-word "yes"/"no" twelve to one, and the short-answer tasks
then starve on a plateau (a first run sat at chance on "is there a ...?" for 4,000 steps).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lvlm_studio.demo.evaluate import evaluate, exact_match, heldout_examples, prompt_text
from lvlm_studio.demo.model import GRID, PATCH_SIZE, build_model, pixel_values, save_demo
from lvlm_studio.demo.scenes import COLOURS, SHAPES, TASKS, make_example, make_scene

TASK_WEIGHTS = {"caption": 0.25, "colour": 0.25, "exist": 0.25, "where": 0.25}
TRAIN_SEED_RANGE = 1_000_000_000  # held-out seeds start above this


def patch_labels(scene) -> tuple[np.ndarray, np.ndarray]:
    """Per image token: index of the colour and shape covering most of its patch (0 = background)."""
    colour = np.zeros((GRID, GRID), np.int64)
    shape = np.zeros((GRID, GRID), np.int64)
    for obj in scene.objects:
        cover = obj.mask.reshape(GRID, PATCH_SIZE, GRID, PATCH_SIZE).mean(axis=(1, 3))
        hit = cover >= 0.25
        colour[hit] = list(COLOURS).index(obj.colour) + 1
        shape[hit] = SHAPES.index(obj.shape) + 1
    return colour.ravel(), shape.ravel()


class Batcher:
    """Builds one seeded training batch: token ids, labels on the answer only, pixels, patch labels."""

    def __init__(self, processor, seed: int):
        self.tokenizer = processor.tokenizer
        self.processor = processor
        self.seed = seed
        self.n_image = GRID * GRID
        self._prompt_ids: dict[str, list[int]] = {}

    def prompt_ids(self, prompt: str) -> list[int]:
        if prompt not in self._prompt_ids:
            text = prompt_text(self.processor, prompt).replace("<image>", "<image>" * self.n_image)
            self._prompt_ids[prompt] = self.tokenizer(text)["input_ids"]
        return self._prompt_ids[prompt]

    def __call__(self, step: int, batch_size: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        tasks = rng.choice(TASKS, size=batch_size, p=[TASK_WEIGHTS[t] for t in TASKS])
        scenes, ids, labels = [], [], []
        for task in tasks:
            scene = make_scene(int(rng.integers(TRAIN_SEED_RANGE)))
            example = make_example(scene, str(task), rng)
            prompt = self.prompt_ids(example.prompt)
            answer = self.tokenizer(example.answer, add_special_tokens=False)["input_ids"]
            answer = answer + [self.tokenizer.eos_token_id]
            scenes.append(scene)
            ids.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        colour, shape = zip(*(patch_labels(s) for s in scenes))
        return {
            "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
            "pixel_values": pixel_values([s.image for s in scenes]),
            "patch_colour": torch.from_numpy(np.stack(colour)),
            "patch_shape": torch.from_numpy(np.stack(shape)),
        }


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, averaged over each example's answer tokens, then over examples."""
    targets = labels[:, 1:]
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets.clamp(min=0), reduction="none")
    mask = (targets != -100).float()
    return ((token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def train(out: Path, steps: int, batch_size: int, lr: float, seed: int, aux_weight: float,
          eval_every: int, eval_n: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    model, processor = build_model(seed)
    hidden = model.config.text_config.hidden_size
    aux_head = torch.nn.Linear(hidden, (len(COLOURS) + 1) + (len(SHAPES) + 1))
    projected: list[torch.Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: projected.append(o))
    params = list(model.parameters()) + list(aux_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    batcher = Batcher(processor, seed)
    log: list[dict] = []
    started = time.time()
    model.train()
    for step in range(steps):
        batch = batcher(step, batch_size)
        projected.clear()
        output = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        )
        lm_loss = per_example_loss(output.logits, batch["labels"])
        logits = aux_head(projected[0])  # [batch, image tokens, colours+1 + shapes+1]
        n_colour = len(COLOURS) + 1
        aux = F.cross_entropy(logits[..., :n_colour].flatten(0, 1), batch["patch_colour"].flatten())
        aux = aux + F.cross_entropy(logits[..., n_colour:].flatten(0, 1), batch["patch_shape"].flatten())
        loss = lm_loss + aux_weight * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0:
            print(f"step {step:6d}  lm {lm_loss.item():.3f}  aux {aux.item():.3f}  "
                  f"{time.time() - started:7.0f}s", flush=True)
        if eval_every and step and step % eval_every == 0:
            model.eval()
            acc = {t: exact_match(model, processor, heldout_examples(eval_n, t)) for t in TASKS}
            model.train()
            log.append({"step": step, "seconds": round(time.time() - started), **acc})
            print("held-out", json.dumps(log[-1]), flush=True)
            save_demo(model, processor, out)
    hook.remove()
    model.eval()
    save_demo(model, processor, out)
    record = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "aux_weight": aux_weight,
        "threads": threads, "train_seconds": round(time.time() - started), "torch": torch.__version__,
        "progress": log,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("resources/demo-model"))
    parser.add_argument("--steps", type=int, default=9000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aux-weight", type=float, default=0.5)
    parser.add_argument("--eval-every", type=int, default=1000, help="0: only at the end")
    parser.add_argument("--eval-n", type=int, default=100, help="held-out scenes per task during training")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    train(args.out, args.steps, args.batch_size, args.lr, args.seed, args.aux_weight,
          args.eval_every, args.eval_n, args.threads)
    model_acc = evaluate(*_reload(args.out))
    print("held-out exact match (500 per task):", json.dumps(model_acc))


def _reload(folder: Path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder), AutoProcessor.from_pretrained(folder)


if __name__ == "__main__":
    main()
