"""Occlusion and RISE throughput: altered images scored per second, batched against one per pass.

Both methods score many altered copies of the image; batching puts a whole batch through one
forward pass instead of one image per pass. The demo model explains the colour word of a held-out
scene with each method, once with the methods' default batch size and once with ``batch_size=1``
(the unbatched reference); each is the best of five repeats, the two taking turns in one process,
so the ratio compares like with like. The images per second include everything the methods do per image
(blending, the processor, the forward pass).

Target: batched >= 3x the unbatched images per second, for each method.

    python benchmarks/perturbation_throughput.py                 # the CPU
    python benchmarks/perturbation_throughput.py --device cuda   # a GPU, where batching gains most
"""

from __future__ import annotations

import argparse
import sys
import time

from demo_setup import load_demo

TARGET = 3.0
REPEATS = 5
RISE_MASKS = 256
PROMPT = "describe the image."



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    args = parser.parse_args(argv)
    from lvlm_explainers.perturbation import RISE, Occlusion
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
    from lvlm_studio.demo.scenes import make_scene

    loaded = load_demo(args.device)
    trace = generate_trace(loaded, make_scene(HELDOUT_SEED_BASE).image, PROMPT)
    target = next((i for i, t in enumerate(trace.answer_tokens) if t in {"red", "green", "blue", "yellow"}), 0)

    print(f"demo model on {loaded.device}, token {trace.answer_tokens[target]!r} of {trace.answer_text!r}")
    print(f"{'method':<10} {'images':>6} {'batch':>5} {'seconds':>8} {'images/s':>9}")
    met = True
    for explainer, extra in ((Occlusion(), {}), (RISE(), {"masks": RISE_MASKS})):
        batches = (explainer.resolve_params({})["batch_size"], 1)
        best = dict.fromkeys(batches, float("inf"))
        for _ in range(REPEATS):  # batched and unbatched take turns, so a busy spell hits both alike
            for batch in batches:
                params = explainer.resolve_params({**extra, "batch_size": batch})
                started = time.perf_counter()
                explanation = run_job(explainer.explain(trace, loaded, [target], params))
                best[batch] = min(best[batch], time.perf_counter() - started)
        images = explanation.provenance.get("placements", 0) + 1 if explainer.id == "occlusion" else RISE_MASKS
        rates = {batch: images / seconds for batch, seconds in best.items()}
        for batch in batches:
            print(f"{explainer.id:<10} {images:>6} {batch:>5} {best[batch]:>8.3f} {rates[batch]:>9.1f}")
        ratio = rates[batches[0]] / rates[1]
        ok = ratio >= TARGET
        met &= ok
        print(f"{explainer.id}: batched / unbatched = {ratio:.2f}x (target >= {TARGET}x): {'met' if ok else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
