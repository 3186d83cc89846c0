"""Each method's CPU time at real image shape, in forward-pass equivalents, for a 20-token answer.

The skeletons of released checkpoints (``lvlm_studio.testing.skeletons``) keep every image setting,
so a 640 x 480 photo gives the real number of image tokens (LLaVA-1.5: 576, Qwen2-VL: 391, ...).
Each skeleton answers with a teacher-forced 20-token answer (``attention_memory.answered``), and every
method that applies explains all 20 tokens; its time is divided by one plain forward pass (the
model's default attention, no gradients) over the same prompt + answer, as in
``relevancy_cost.py``. Occlusion and RISE are timed on the first token as well: their cost is the
perturbed forwards, shared by every token, so 20 tokens should cost what one does. TAM is divided
by the time of generating the 20 tokens (``model.generate``, greedy, 20 new tokens).

Targets: exact relevancy <= N + 1 forward-pass equivalents for N tokens; occlusion and RISE with 20
tokens within 1.25x of one token; TAM <= 0.05 of a generation.

    python benchmarks/skeleton_cost.py [--skeletons a,b|all] [--layers 2] [--methods a,b] [--repeats 2]

Depth multiplies the forward pass and every method alike, so ratios hold at any depth; by default the
skeletons are capped at 2 layers (``--layers``; ``--layers 0`` keeps the real depth) to fit a shared CPU,
and the sample counts of the sampling methods are small (``SMALL``). All figures come from one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ANSWER = 20
PHOTO = (640, 480)
DEFAULT_SKELETONS = ("llava-1.5-7b-hf", "Qwen2-VL-7B-Instruct", "gemma-3-4b-it", "paligemma-3b-pt-448")
SMALL = {"rise": {"masks": 64}, "igos++": {"iterations": 2, "steps": 4}, "causal": {"samples": 32}}
ONE_TOKEN_TOO = ("occlusion", "rise")


def main() -> int:
    import numpy as np
    import torch
    from attention_memory import answered
    from demo_setup import quiet_transformers
    from PIL import Image
    from relevancy_cost import best_time

    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.plugin.registry import create_registry
    from lvlm_studio.core.tracing.trace import generate_trace, prompt_with_template
    from lvlm_studio.testing.skeletons import SKELETONS, build_skeleton

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skeletons", default=",".join(DEFAULT_SKELETONS), help="names, or 'all'")
    parser.add_argument("--layers", type=int, default=2, help="depth cap (0: the real depth)")
    parser.add_argument("--methods", default="", help="explainer ids (default: every registered one)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per timing (the fastest counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    names = list(SKELETONS) if args.skeletons == "all" else args.skeletons.split(",")
    registry = create_registry()
    explainers = ([registry.explainer(m) for m in args.methods.split(",") if m]
                  or list(registry.explainers().values()))
    image = Image.fromarray(np.random.default_rng(0).integers(160, 256, (PHOTO[1], PHOTO[0], 3), dtype=np.uint8))
    layers = args.layers or None
    print(f"{ANSWER}-token answers on a {PHOTO[0]}x{PHOTO[1]} photo, {torch.get_num_threads()} thread(s), "
          f"depth {'real' if layers is None else f'capped at {layers}'}; sample counts {SMALL}")
    print()
    print("| skeleton | tokens | forward (s) | method | time (s) | forward-pass equivalents | target | met |")
    print("|---|---:|---:|---|---:|---:|---|---|")
    missed = 0
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            loaded = load_model(build_skeleton(name, Path(scratch) / name, layers=layers), LoadOptions(device="cpu"))
            trace = answered(loaded, generate_trace(loaded, image, "describe the image.", max_new_tokens=1), ANSWER)
            inputs = trace.teacher_forced_inputs(loaded)

            def forward(inputs=inputs, loaded=loaded):
                with torch.no_grad():
                    loaded.model(**inputs, use_cache=False, logits_to_keep=1)

            forward()
            forward_s = best_time(forward, 2 * args.repeats)
            generate_s = best_time(lambda loaded=loaded: _generate(loaded, image, prompt_with_template), 1)
            length = inputs["input_ids"].shape[1]
            lead = f"| {name} | {length} | {forward_s:.2f} "
            print(f"{lead}| generation of {ANSWER} tokens | {generate_s:.2f} | {generate_s / forward_s:.1f} | | |",
                  flush=True)
            for explainer in explainers:
                params = explainer.resolve_params(SMALL.get(explainer.id, {}))
                if explainer.applies_to(loaded, params) is not None:
                    continue

                def explain(targets, explainer=explainer, params=params, trace=trace, loaded=loaded):
                    run_job(explainer.explain(trace, loaded, targets, params))

                seconds = best_time(lambda: explain(list(range(ANSWER))), args.repeats)
                ratio = seconds / forward_s
                target, met = "", ""
                if explainer.id == "relevancy":
                    target, met = f"<= {ANSWER + 1}", ratio <= ANSWER + 1
                elif explainer.id == "tam":
                    target, met = "<= 0.05 of a generation", seconds / generate_s <= 0.05
                    ratio_text = f"{ratio:.2f} ({seconds / generate_s:.3f} of a generation)"
                if explainer.id in ONE_TOKEN_TOO:
                    one = best_time(lambda: explain([0]), args.repeats)
                    target, met = "20 tokens <= 1.25 x one token", seconds <= 1.25 * one
                    ratio_text = f"{ratio:.1f} (one token: {one / forward_s:.1f})"
                elif explainer.id != "tam":
                    ratio_text = f"{ratio:.1f}"
                missed += met is False
                shown = "" if met == "" else ("yes" if met else "NO")
                print(f"{lead}| {explainer.id} | {seconds:.2f} | {ratio_text} | {target} | {shown} |", flush=True)
            del loaded
    print()
    print("targets met" if not missed else f"{missed} TARGET(S) MISSED")
    return 0 if not missed else 1


def _generate(loaded, image, prompt_with_template) -> None:
    """Greedy generation of exactly ``ANSWER`` tokens from the prompt, as the app's generation does."""
    import torch

    encoded = loaded.processor(images=[image], text=[prompt_with_template(loaded.processor, "describe the image.")],
                               return_tensors="pt")
    with torch.no_grad():
        loaded.model.generate(**encoded, max_new_tokens=ANSWER, min_new_tokens=ANSWER, do_sample=False)


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    sys.exit(code)
