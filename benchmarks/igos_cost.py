"""iGOS++ cost on the demo model: wall time per map and forward + backward passes per map.

iGOS++ integrates the score along N points of the path from the blurred baseline, for four mask
terms, at every iteration: 4 N rows of gradients per iteration. Batched, those rows share
forward + backward passes (``batch_size`` rows each); unbatched, each row is its own pass. The
demo model explains its caption of a held-out scene with the default settings (one map for the
visually relevant tokens), once batched and once with ``batch_size=1``; each is the best of a few
repeats, in one process.

Target: the batched map takes iterations x ceil(4 N / batch_size) passes (10 with the defaults)
and less wall time than the unbatched one.

    python benchmarks/igos_cost.py
"""

from __future__ import annotations

import math
import sys
import time

from demo_setup import load_demo

REPEATS = 2
PROMPT = "describe the image."



def main() -> int:
    from lvlm_explainers.igos import IGOSPlusPlus
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.tracing.relevance import visual_relevance
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
    from lvlm_studio.demo.scenes import make_scene

    loaded = load_demo()
    trace = generate_trace(loaded, make_scene(HELDOUT_SEED_BASE).image, PROMPT)
    visual_relevance(trace, loaded)  # cached on the trace, as the GUI and CLI have it after the first method
    explainer = IGOSPlusPlus()
    defaults = explainer.resolve_params({})
    print(f"demo model on {loaded.device}, answer {trace.answer_text!r}, "
          f"{defaults['iterations']} iterations x {defaults['steps']} integration steps x 4 terms")
    print(f"{'batch':>5} {'passes':>6} {'rows':>5} {'s / map':>8} {'ms / pass':>9}")
    seconds, passes = {}, {}
    for batch in (defaults["batch_size"], 1):
        params = explainer.resolve_params({"batch_size": batch})
        best = float("inf")
        for _ in range(REPEATS):
            started = time.perf_counter()
            explanation = run_job(explainer.explain(trace, loaded, [0], params))
            best = min(best, time.perf_counter() - started)
        seconds[batch], passes[batch] = best, explanation.provenance["forward_backward_passes"]
        rows = explanation.provenance["rows_per_map"]
        print(f"{batch:>5} {passes[batch]:>6} {rows:>5} {best:>8.2f} {1000 * best / passes[batch]:>9.1f}")
    batched = defaults["batch_size"]
    expected = defaults["iterations"] * math.ceil(4 * defaults["steps"] / batched)
    speedup = seconds[1] / seconds[batched]
    ok = passes[batched] == expected and speedup > 1.0
    print(f"batched: {passes[batched]} passes per map (expected {expected}), {seconds[batched]:.2f} s per map; "
          f"unbatched / batched time = {speedup:.2f}x: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
