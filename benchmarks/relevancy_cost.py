"""Cost of relevancy for a whole answer, in forward-pass equivalents, as the answer grows.

Relevancy shares one forward over prompt + answer between all answer tokens and then runs one
backward per token, so its cost should grow about linearly with the number of tokens explained:
roughly (1 eager forward with graph) + n x (1 backward + the O(L T^2) row update). This script
measures it on the demo model: answers of increasing length are teacher-forced (the demo caption's
tokens, repeated to reach the longer lengths), relevancy is run for every answer token, and its time
is divided by the time of one plain forward pass (the model's default attention, no gradients)
over the same sequence. All figures come from one run on this machine.

    python benchmarks/relevancy_cost.py [--lengths 1,2,4,8,16,32] [--repeats 5] [--threads 1]

Each timing is the fastest of several runs, and one thread is used by default, so that other work
on a shared machine disturbs the ratios as little as possible.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np
import torch

from lvlm_studio.core.models.loading import LoadOptions, load_model
from lvlm_studio.core.plugin.registry import create_registry
from lvlm_studio.core.tracing.trace import generate_trace
from lvlm_studio.demo.scenes import make_scene
from lvlm_studio.testing import HELDOUT_SCENE_SEED, run_explainer


def with_answer(trace, ids: np.ndarray):
    """The trace with ``ids`` as its answer (only what a teacher-forced method reads is refitted)."""
    n = len(ids)
    return dataclasses.replace(
        trace, answer_ids=ids, answer_tokens=[str(i) for i in ids], logprobs=np.zeros(n, np.float32),
        top_ids=np.zeros((n, 0), np.int64), top_logprobs=np.zeros((n, 0), np.float32), top_tokens=[[]] * n,
        hidden=np.zeros((len(trace.input_ids) + n, trace.hidden.shape[1]), np.float32),
    )


def best_time(run, repeats: int) -> float:
    """The fastest of ``repeats`` runs: the least disturbed by other work on the machine."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="1,2,4,8,16,32", help="answer lengths to time")
    parser.add_argument("--repeats", type=int, default=5, help="runs per relevancy timing (forward: 4x)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [int(v) for v in args.lengths.split(",")]

    model = load_model(None, LoadOptions(device="cpu"))
    relevancy = create_registry().explainer("relevancy")
    caption = generate_trace(model, make_scene(HELDOUT_SCENE_SEED).image, "describe the image.")
    print(f"demo model on {model.device}, {torch.get_num_threads()} threads; caption: {caption.answer_text!r}")
    print(f"{'tokens':>6} {'seq len':>7} {'forward ms':>10} {'relevancy ms':>12} {'ratio':>7} {'per token':>9}")

    ratios = []
    for n in lengths:
        trace = with_answer(caption, np.resize(caption.answer_ids, n))
        inputs = trace.teacher_forced_inputs(model)

        def forward(inputs=inputs):
            with torch.no_grad():
                model.model(**inputs, use_cache=False, logits_to_keep=1)

        def explain(trace=trace):
            run_explainer(relevancy, trace, model)

        forward()  # warm-up
        forward_s = best_time(forward, 4 * args.repeats)
        explain_s = best_time(explain, args.repeats)
        ratio = explain_s / forward_s
        ratios.append(ratio)
        print(f"{n:>6} {inputs['input_ids'].shape[1]:>7} {forward_s * 1e3:>10.1f} {explain_s * 1e3:>12.1f} "
              f"{ratio:>7.1f} {ratio / n:>9.2f}")

    # Linear growth: a quadratic fit's n^2 term explains little of the cost of the longest answer.
    slope, intercept = np.polyfit(lengths, ratios, 1)
    curve = np.polyfit(lengths, ratios, 2)[0] * lengths[-1] ** 2 / ratios[-1]
    print(f"linear fit: {intercept:.1f} + {slope:.2f} x tokens (forward-pass equivalents)")
    print(f"share of the longest answer's cost in a quadratic term: {curve:+.0%}")
    linear = curve < 0.25
    print("grows at most linearly: " + ("yes" if linear else "NO: the per-token cost rises with length"))
    return 0 if linear else 1


if __name__ == "__main__":
    sys.exit(main())
