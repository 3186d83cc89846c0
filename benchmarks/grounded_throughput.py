"""Throughput of the grounded benchmark: scenes per minute for TAM and every metric, on the demo model.

``lvlm-studio benchmark --methods tam`` over a few held-out demo scenes, with every registered
metric at its defaults (deletion/insertion with 50 steps, Obj/Func/F1-IoU, pointing game, the
layer-by-layer model-randomisation cascade, input independence, agreement) and the uniform random
baseline row the benchmark always adds. Prints scenes per minute and where the time goes, as
shares of the total measured in the same run.

Target: at least 3 scenes per minute on 2 CPU cores (100 scenes within about half an hour).

    python benchmarks/grounded_throughput.py [--n 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict

TARGET_PER_MINUTE = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="held-out demo scenes (default 10)")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    from lvlm_studio.benchmark.runner import BenchmarkSettings, run_benchmark
    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.core.plugin.jobs import run_job

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    loaded = load_model(None, LoadOptions(device="cpu"))
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        records = run_job(run_benchmark(loaded, BenchmarkSettings(methods=["tam"], n=args.n), out,
                                        command=["benchmarks/grounded_throughput.py"]))
        elapsed = time.perf_counter() - started

    per_minute = len(records) / elapsed * 60
    shares: dict[str, float] = defaultdict(float)
    for record in records:
        for method in record["methods"].values():
            for part, seconds in method.get("seconds", {}).items():
                shares[part] += seconds
    tokens = sum(len(r["tokens"]) for r in records)
    print(f"{len(records)} held-out scenes ({tokens} answer tokens), TAM + every metric + the random baseline: "
          f"{elapsed:.1f} s")
    print(f"throughput: {per_minute:.2f} scenes per minute (target >= {TARGET_PER_MINUTE})")
    print("share of the time: " + ", ".join(f"{part} {seconds / elapsed:.0%}"
                                            for part, seconds in sorted(shares.items(), key=lambda kv: -kv[1])))
    met = per_minute >= TARGET_PER_MINUTE
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
