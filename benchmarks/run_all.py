"""Run every benchmark in this folder, each in its own process, and summarise.

    python benchmarks/run_all.py

Each benchmark prints its measurements and exits 1 when it misses its target; this script shows
their output in turn, then one line per benchmark, and exits 1 if any missed or failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = ("attention_memory.py", "rank_filter_speed.py", "tam_cost.py", "relevancy_cost.py",
              "grounded_throughput.py", "gui_startup.py", "gui_redraw.py", "gui_heartbeat.py", "progressive_maps.py",
              "sae_throughput.py",
              "igos_cost.py", "perturbation_throughput.py", "train_step.py",
              "ray_scaling.py",  # 1 vs 2 Ray replicas; says so and passes without Ray
              "gpu_smoke.py")  # gpu_smoke: every family and method on a CUDA GPU; says so and passes without one


def main() -> int:
    here = Path(__file__).resolve().parent
    outcomes = {}
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        done = subprocess.run([sys.executable, str(here / name)], text=True, capture_output=True)
        print(done.stdout, end="")
        if done.returncode not in (0, 1):
            print(done.stderr, end="")
        outcomes[name] = {0: "target met", 1: "target missed"}.get(done.returncode, f"failed (exit {done.returncode})")
        print()
    print("== summary")
    for name, outcome in outcomes.items():
        print(f"{name:<24} {outcome}")
    return 0 if all(o == "target met" for o in outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
