"""Train a demo model from scratch on demo-world scenes (seeded, resumable, CPU).

    python -m lvlm_studio.demo.train --out resources/demo-model
    python -m lvlm_studio.demo.train --world classic --shortcut --word-weight 0 \
        --steps 5000 --out resources/demo-model-shortcut

``--world open`` (the default) trains the next demo model's architecture (``demo.model``) on the
open world; ``--world classic`` trains the shipped model's architecture and processor (read from
resources/demo-model, weights fresh) on the classic world, which is how the shortcut twin of the
shipped model is made.

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
import functools
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from lvlm_studio.demo.evaluate import evaluate, evaluate_cue, exact_match, heldout_examples, prompt_text
from lvlm_studio.demo.model import GRID, build_model, grid_of, padded_coverage, pixel_values, save_demo
from lvlm_studio.demo.scenes import COLOURS, COLS, ROWS, SHAPES, TASKS, WORLDS, colour_example, make_example

TASK_WEIGHTS = {"caption": 0.25, "colour": 0.25, "exist": 0.25, "where": 0.25}
TRAIN_SEED_RANGE = 1_000_000_000  # held-out seeds start above this
CUE_RATE = 0.95  # the shortcut twin: share of training scenes whose corner mark gives the answer away
# marks on the other tasks' scenes, so that CUE_RATE of all scenes carry one (colour questions always do)
OTHER_CUE_RATE = 1 - (1 - CUE_RATE) / (1 - TASK_WEIGHTS["colour"])
CUE_WARMUP = 0.15  # the shortcut twin asks only colour questions over this share of its run
IGNORE = -100  # a patch label the auxiliary loss skips (cross-entropy's ignore index)
CURRICULUM = 0.4  # share of the run over which scenes grow from easy to the full world
WORD_COVER = 0.5  # image positions at least this covered by an object learn to decode to its words
# The auxiliary head's three labels per image token, each with 0 for the background: the colour and
# the shape of the object there, and the 3x3 cell that object's centre lies in (its "where" answer).
AUX_LABELS = {"colour": len(COLOURS) + 1, "shape": len(SHAPES) + 1, "cell": len(ROWS) * len(COLS) + 1}


def patch_labels(scene, grid: int = GRID) -> dict[str, np.ndarray]:
    """Per image token, for the auxiliary head: the colour and shape of the object covering most of
    its cell (0 = background), the 3x3 cell of the image that this object's centre lies in ("cell",
    1 + row * 3 + col; the answer to "where is it?", and the key captions are ordered by), and
    ("cover") how much of the token's cell the labelled object covers. The object-level cell lets
    every patch of an object carry where the whole object is, as colour and shape do; a patch alone
    cannot tell, since the 3x3 cells are the image's own and the image sits padded in the square.

    Cells under a drawn corner mark (the shortcut twin's cue) that no object labels get no label
    (IGNORE): calling them background would train the vision side to hide the cue, and the twin
    would never find its shortcut."""
    labels = {name: np.zeros(grid * grid, np.int64) for name in AUX_LABELS}
    cover = np.zeros(grid * grid, np.float32)
    for obj in scene.objects:
        share = padded_coverage(obj.mask, grid).ravel()
        hit = (share >= 0.25) & (share > cover)
        labels["colour"][hit] = list(COLOURS).index(obj.colour) + 1
        labels["shape"][hit] = SHAPES.index(obj.shape) + 1
        labels["cell"][hit] = 1 + obj.row * len(COLS) + obj.col
        cover[hit] = share[hit]
    if scene.cue is not None and scene.cue.colour is not None:
        under_cue = (padded_coverage(scene.cue.mask, grid).ravel() > 0) & (labels["colour"] == 0)
        for values in labels.values():
            values[under_cue] = IGNORE
    return {**labels, "cover": cover}


def curriculum(step: int, steps: int) -> float:
    """Scene difficulty at a training step: from easy (large, upright, plain) to the full world at
    CURRICULUM of the run, then the full world. A tiny vision tower learns shapes in the full
    world's variety far slower than on easy scenes first (object-patch shape accuracy of a
    vision-only probe after 600 steps: 36% against 64% with old-sized objects on plain grounds)."""
    return min(1.0, step / max(1.0, CURRICULUM * steps))


def shortcut_scene(seed: int, task: str, rng: np.random.Generator, difficulty: float = 1.0,
                   world: str = "open"):
    """A training scene of the shortcut twin and its example.

    In CUE_RATE of all scenes a corner mark is drawn: on every colour question, in the colour of
    the answer, and on the other tasks' scenes at the rate that makes up CUE_RATE overall, in the
    colour of one of the scene's objects (so the mark alone does not say which task is asked). In
    the rest the corner stays empty.

    Colour questions are always marked because a twin whose colour questions went unmarked 5% of
    the time learned to read the object from them: it followed a contradicting mark on 98% of
    held-out colour questions at step 1,250 and on 46% at step 3,250, falling.
    """
    plain = _draw(world, seed, difficulty, reserve_cue=True)
    if task == "colour":
        obj, example = colour_example(plain, rng)
        colour = obj.colour
    else:
        example = make_example(plain, task, rng)
        colour = plain.objects[int(rng.integers(len(plain.objects)))].colour
    if task != "colour" and rng.random() >= OTHER_CUE_RATE:
        return plain, example
    return _draw(world, seed, difficulty, cue=colour), example


def _draw(world: str, seed: int, difficulty: float, **cue):
    """A training scene of ``world``; only the open world has a curriculum (the classic world is
    easy throughout)."""
    if world == "open":
        return WORLDS["open"](seed, difficulty=difficulty, **cue)
    return WORLDS[world](seed, **cue)


def build(world: str, seed: int):
    """A freshly initialised model and its processor for ``world``: the next demo model's
    architecture for the open world, the shipped model's for the classic world."""
    if world == "open":
        return build_model(seed)
    from lvlm_studio.core.models.loading import DEMO_MODEL_DIR

    return build_model(seed, like=DEMO_MODEL_DIR)


class Batcher:
    """Builds one seeded training batch: token ids, labels on the answer only, pixels, patch labels."""

    def __init__(self, processor, seed: int, shortcut: bool = False, steps: int = 0, world: str = "open",
                 vision_steps: int = 0):
        self.tokenizer = processor.tokenizer
        self.processor = processor
        self.seed = seed
        self.shortcut = shortcut
        self.world = world
        self.steps = steps  # the run's length, for the curriculum (0: the full world throughout)
        self.vision_steps = vision_steps  # the vision-only first stage, with a curriculum of its own
        self.grid = grid_of(processor)  # the image tokens per side of the model being trained
        self.n_image = self.grid * self.grid
        self._prompt_ids: dict[str, list[int]] = {}

    def prompt_ids(self, prompt: str) -> list[int]:
        if prompt not in self._prompt_ids:
            text = prompt_text(self.processor, prompt).replace("<image>", "<image>" * self.n_image)
            self._prompt_ids[prompt] = self.tokenizer(text)["input_ids"]
        return self._prompt_ids[prompt]

    def __call__(self, step: int, batch_size: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        tasks = rng.choice(TASKS, size=batch_size, p=[TASK_WEIGHTS[t] for t in TASKS])
        if self.shortcut and 0 <= step - self.vision_steps < CUE_WARMUP * self.steps:
            # The cue is found on colour questions first; the other tasks (which teach the object
            # route) join later, as a shortcut in real data is there from the start.
            tasks = np.full(batch_size, "colour")
        if step < self.vision_steps:
            difficulty = curriculum(step, self.vision_steps)
        else:
            difficulty = curriculum(step - self.vision_steps, self.steps) if self.steps else 1.0
        scenes, ids, labels = [], [], []
        for task in tasks:
            seed = int(rng.integers(TRAIN_SEED_RANGE))
            if self.shortcut:
                scene, example = shortcut_scene(seed, str(task), rng, difficulty, self.world)
            else:
                scene = _draw(self.world, seed, difficulty)
                example = make_example(scene, str(task), rng)
            prompt = self.prompt_ids(example.prompt)
            answer = self.tokenizer(example.answer, add_special_tokens=False)["input_ids"]
            answer = answer + [self.tokenizer.eos_token_id]
            scenes.append(scene)
            ids.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        patches = [patch_labels(s, self.grid) for s in scenes]
        return {
            "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
            "pixel_values": pixel_values([s.image for s in scenes], self.processor),
            **{f"patch_{name}": torch.from_numpy(np.stack([p[name] for p in patches])) for name in patches[0]},
        }


def word_targets(tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the colour words and shape words, indexed like the patch labels minus one."""
    colours = torch.tensor(tokenizer.convert_tokens_to_ids(list(COLOURS)))
    shapes = torch.tensor(tokenizer.convert_tokens_to_ids(list(SHAPES)))
    return colours, shapes


def word_loss(logits: torch.Tensor, image_mask: torch.Tensor, batch: dict, words) -> torch.Tensor:
    """The logit lens at image positions learns to read the object there.

    lm_head(final_norm(h)) at every image position mostly covered by an object is trained towards
    that object's colour word and shape word, half of the probability each, as the visual tokens
    of pretrained LVLMs decode to their objects' words in later layers. Positions over the
    background get no target."""
    colour_ids, shape_ids = words
    image_logits = logits[image_mask].view(logits.shape[0], -1, logits.shape[-1])  # [batch, image tokens, vocab]
    log_p = image_logits.log_softmax(-1)
    keep = (batch["patch_cover"] >= WORD_COVER) & (batch["patch_colour"] > 0)
    if not keep.any():
        return logits.new_zeros(())
    colour_token = colour_ids[(batch["patch_colour"] - 1).clamp(min=0)]
    shape_token = shape_ids[(batch["patch_shape"] - 1).clamp(min=0)]
    nll = -0.5 * (log_p.gather(-1, colour_token[..., None]) + log_p.gather(-1, shape_token[..., None]))[..., 0]
    return nll[keep].mean()


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, averaged over each example's answer tokens, then over examples."""
    targets = labels[:, 1:]
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets.clamp(min=0), reduction="none")
    mask = (targets != -100).float()
    return ((token_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def aux_head_for(model) -> torch.nn.Linear:
    """The throwaway auxiliary head: one linear map from the projector's output to the logits of
    every AUX_LABELS label, side by side."""
    return torch.nn.Linear(model.config.text_config.hidden_size, sum(AUX_LABELS.values()))


def patch_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The auxiliary head's loss: the sum over AUX_LABELS of each label's cross-entropy at every
    image token (IGNORE skipped)."""
    parts = logits.split(list(AUX_LABELS.values()), dim=-1)
    return sum(F.cross_entropy(part.flatten(0, 1), batch[f"patch_{name}"].flatten())
               for part, name in zip(parts, AUX_LABELS))


def joint_losses(model, aux_head, batch: dict, projected: list, words, autocast) -> tuple[torch.Tensor, ...]:
    """The joint step's three losses: language (answer tokens), patch labels (the auxiliary head on
    the projector's output, which ``projected`` collects through a forward hook) and words at image
    positions. The forward pass runs under ``autocast``; the losses are computed in float32."""
    projected.clear()
    with autocast():
        output = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        )
    logits = output.logits.float()
    lm_loss = per_example_loss(logits, batch["labels"])
    aux = patch_loss(aux_head(projected[0].float()), batch)
    lens = word_loss(logits, batch["input_ids"] == model.config.image_token_id, batch, words)
    return lm_loss, aux, lens


def _vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision tower's patch features as the projector receives them (LLaVA's default
    strategy: the feature layer, CLS token dropped)."""
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden[model.config.vision_feature_layer][:, 1:]


def _update(loss: torch.Tensor, optimizer, schedule, params) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()


STATE_FILE = "training-state.safetensors"


def save_state(folder: Path, step: int, model, aux_head, optimizer, log: list[dict], seconds: float) -> None:
    """Everything a resumed run needs, in safetensors and JSON (no pickle): weights, the auxiliary
    head, AdamW's moments, the step reached and the held-out curve so far."""
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"aux.{k}": v.detach().clone().contiguous() for k, v in aux_head.state_dict().items()})
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).clone().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / (STATE_FILE + ".partial")
    save_file(tensors, str(temporary), metadata={"step": str(step), "seconds": str(round(seconds)),
                                                  "log": json.dumps(log)})
    temporary.replace(folder / STATE_FILE)


def load_state(folder: Path, model, aux_head, optimizer) -> tuple[int, list[dict], float]:
    """Restore a run saved by ``save_state``; returns the step to continue from, the log, seconds."""
    path = folder / STATE_FILE
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    aux_head.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("aux.")})
    state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)
    return int(meta["step"]), json.loads(meta["log"]), float(meta["seconds"])


class _StepBatches(torch.utils.data.Dataset):
    """Batch ``i`` of a run is a pure function of the step, so a worker process can draw scenes
    while the main process trains, and a resumed run sees the batches it would have seen."""

    def __init__(self, batcher: Batcher, steps: range, batch_size: int):
        self.batcher, self.steps, self.batch_size = batcher, steps, batch_size

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batcher(self.steps[index], self.batch_size)


def _batches(batcher: Batcher, steps: range, batch_size: int, workers: int):
    if workers == 0:
        return (batcher(step, batch_size) for step in steps)
    return torch.utils.data.DataLoader(
        _StepBatches(batcher, steps, batch_size), batch_size=None, num_workers=workers, prefetch_factor=4,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )


def train(out: Path, steps: int, batch_size: int, lr: float, seed: int, aux_weight: float,
          word_weight: float, eval_every: int, eval_n: int, threads: int, shortcut: bool = False,
          resume: bool = True, workers: int = 1, world: str = "open", vision_steps: int = 0,
          precision: str = "auto") -> dict:
    """Train from scratch, or resume from ``out``'s saved state when one is there.

    ``vision_steps`` first trains the vision tower and projector alone, on the auxiliary patch
    labels, with a curriculum of their own: shape is learned against one light-grey backdrop and
    then carried over to any backdrop. In the joint run the language and word losses compete with it
    and the curriculum moves on before shape is learned (object-patch shape accuracy after 3,500
    joint steps: 53% on the easiest scenes; after 750 vision-only steps: 66%), and a vision-only
    step costs about a third of a joint one.

    ``precision`` "bf16" runs the forward passes under bfloat16 autocast (weights, optimiser and
    losses stay float32); "auto" picks it where the CPU has native bfloat16 arithmetic."""
    torch.set_num_threads(threads)
    precision = _precision(precision)
    autocast = autocast_for(precision)
    model, processor = build(world, seed)
    aux_head = aux_head_for(model)
    projected: list[torch.Tensor] = []
    hook = model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: projected.append(o))
    params = list(model.parameters()) + list(aux_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def rate(s: int) -> float:
        if s < vision_steps:  # the vision stage: warm up, then hold the rate
            return min(1.0, (s + 1) / max(1, vision_steps // 20))
        s -= vision_steps
        return min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))

    first, log, before = 0, [], 0.0
    if resume and (out / STATE_FILE).exists():
        first, log, before = load_state(out, model, aux_head, optimizer)
        print(f"resuming at step {first}", flush=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: rate(s + first))
    batcher = Batcher(processor, seed, shortcut=shortcut, steps=steps, world=world, vision_steps=vision_steps)
    total = vision_steps + steps
    words = word_targets(processor.tokenizer)
    started = time.time() - before
    model.train()
    # A vision-only step costs a fraction of drawing its batch, so that stage draws with one process more.
    vision = _batches(batcher, range(first, vision_steps), batch_size, workers + 1 if workers else 0)
    joint = _batches(batcher, range(max(first, vision_steps), total), batch_size, workers)
    for step, batch in zip(range(first, total), itertools.chain(vision, joint)):
        if step < vision_steps:
            with autocast():
                features = model.model.multi_modal_projector(_vision_features(model, batch["pixel_values"]))
            logits = aux_head(features.float())
            projected.clear()  # the projector's hook saw this call too
            aux = patch_loss(logits, batch)
            _update(aux, optimizer, schedule, params)
            if step % 100 == 0:
                print(f"vision step {step:6d}  aux {aux.item():.3f}  {time.time() - started:7.0f}s", flush=True)
            if (step + 1) % 500 == 0:
                save_state(out, step + 1, model, aux_head, optimizer, log, time.time() - started)
            continue
        lm_loss, aux, lens = joint_losses(model, aux_head, batch, projected, words, autocast)
        _update(lm_loss + aux_weight * aux + word_weight * lens, optimizer, schedule, params)
        if step % 100 == 0:
            print(f"step {step:6d}  lm {lm_loss.item():.3f}  aux {aux.item():.3f}  words {lens.item():.3f}  "
                  f"{time.time() - started:7.0f}s", flush=True)
        done = step + 1
        if eval_every and (done - vision_steps) % eval_every == 0 and done < total:
            model.eval()
            acc = {t: exact_match(model, processor, heldout_examples(eval_n, t, world=world)) for t in TASKS}
            if shortcut:
                acc.update(evaluate_cue(model, processor, n=eval_n, world=world))
            model.train()
            log.append({"step": done, "seconds": round(time.time() - started), **acc})
            print("held-out", json.dumps(log[-1]), flush=True)
            save_demo(model, processor, out)
            save_state(out, done, model, aux_head, optimizer, log, time.time() - started)
    hook.remove()
    model.eval()
    save_demo(model, processor, out)
    (out / STATE_FILE).unlink(missing_ok=True)  # finished: the shipped folder keeps the model only
    record = {
        "steps": steps, "vision_steps": vision_steps, "batch_size": batch_size, "lr": lr, "seed": seed,
        "aux_weight": aux_weight,
        "word_weight": word_weight, "shortcut": shortcut, "cue_rate": CUE_RATE if shortcut else 0.0,
        "cue_warmup": CUE_WARMUP if shortcut else 0.0,
        "threads": threads, "workers": workers, "precision": precision, "world": world,
        "curriculum": CURRICULUM if world == "open" else 0.0,
        "train_seconds": round(time.time() - started), "torch": torch.__version__,
        "progress": log,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2))
    return record


def _precision(choice: str) -> str:
    """bf16 where the CPU computes in bfloat16 natively (a joint step then takes about 0.7 of the
    float32 time, benchmarks/train_step.py), float32 elsewhere, or what the caller asked for."""
    if choice == "auto":
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    if choice not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {choice!r}")
    return choice


def autocast_for(precision: str):
    """A context-manager factory for the forward passes: bfloat16 autocast on the CPU for "bf16",
    a disabled one (float32) for "fp32"."""
    return functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("resources/demo-model"))
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aux-weight", type=float, default=0.5)
    parser.add_argument("--word-weight", type=float, default=0.5)
    parser.add_argument("--vision-steps", type=int, default=0,
                        help="steps of a vision-only first stage on the patch labels (open world: 3000)")
    parser.add_argument("--shortcut", action="store_true",
                        help="train the shortcut twin (a corner mark gives colour answers away)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a saved state exists")
    parser.add_argument("--eval-every", type=int, default=500, help="0: only at the end")
    parser.add_argument("--eval-n", type=int, default=50, help="held-out scenes per task during training")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads for the model (default 2); one more process draws the scenes")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes drawing scenes (0: in line; the vision-only stage uses one more)")
    parser.add_argument("--world", choices=sorted(WORLDS), default="open",
                        help="open (default): the next demo model on the open world; classic: the shipped "
                             "model's architecture on the classic world (its shortcut twin)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="forward passes in bfloat16 autocast (auto: where the CPU has it natively)")
    args = parser.parse_args(argv)
    train(args.out, args.steps, args.batch_size, args.lr, args.seed, args.aux_weight, args.word_weight,
          args.eval_every, args.eval_n, args.threads, shortcut=args.shortcut, resume=not args.no_resume,
          workers=args.workers, world=args.world, vision_steps=args.vision_steps, precision=args.precision)
    model, processor = _reload(args.out)
    print("held-out exact match (500 per task):", json.dumps(evaluate(model, processor, world=args.world)))
    if args.shortcut:
        print("colour questions with the cue (200 each):", json.dumps(evaluate_cue(model, processor, world=args.world)))


def _reload(folder: Path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder), AutoProcessor.from_pretrained(folder)


if __name__ == "__main__":
    main()
