"""Cost of the Token Activation Map for every token of an answer, against the generation itself.

TAM reads the hidden states the Trace already cached, so explaining a whole answer should cost a
fraction of producing it. The demo model captions held-out scenes ("describe the image."); the
scene with the longest answer among the first few is used (three objects: about 11 tokens, the
longest answer the demo world has). Generation time is ``trace.timings["generate_s"]`` (the
``model.generate`` call alone), TAM time is one ``explain`` over all answer tokens; each is the
best of a few repeats.

Target: TAM / generation <= 0.3.

    python benchmarks/tam_cost.py
"""

from __future__ import annotations

import sys
import time

from demo_setup import load_demo

TARGET = 0.3
SCENES_SCANNED = 12
REPEATS = 3
PROMPT = "describe the image."



def main() -> int:
    from lvlm_explainers.tam import TokenActivationMap
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.demo.evaluate import HELDOUT_SEED_BASE
    from lvlm_studio.demo.scenes import make_scene

    loaded = load_demo()
    scenes = [make_scene(HELDOUT_SEED_BASE + i) for i in range(SCENES_SCANNED)]
    traces = [generate_trace(loaded, scene.image, PROMPT) for scene in scenes]
    best = max(range(len(traces)), key=lambda i: len(traces[i].answer_ids))
    scene = scenes[best]

    generate_s, total_s = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        trace = generate_trace(loaded, scene.image, PROMPT)
        total_s.append(time.perf_counter() - started)
        generate_s.append(trace.timings["generate_s"])

    tam = TokenActivationMap()
    params = tam.resolve_params({})
    targets = list(range(len(trace.answer_ids)))
    tam_s = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run_job(tam.explain(trace, loaded, targets, params))
        tam_s.append(time.perf_counter() - started)

    ratio = min(tam_s) / min(generate_s)
    print(f"scene seed {scene.seed}: {len(targets)}-token answer {trace.answer_text!r}")
    print(f"generation (model.generate): {min(generate_s) * 1e3:8.1f} ms   "
          f"whole generate_trace: {min(total_s) * 1e3:8.1f} ms")
    print(f"TAM, all {len(targets)} tokens:         {min(tam_s) * 1e3:8.1f} ms "
          f"({min(tam_s) / len(targets) * 1e3:.2f} ms per token)")
    print(f"ratio TAM / generation: {ratio:.3f} (target <= {TARGET})   "
          f"TAM / whole generate_trace: {min(tam_s) / min(total_s):.3f}")
    met = ratio <= TARGET
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
