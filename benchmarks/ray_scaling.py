"""Scaling of the benchmark on Ray: the same demo scenes with 1 and with 2 model replicas.

Starts a local Ray with 2 CPUs, runs ``lvlm-studio benchmark --methods tam`` (IoU, pointing game,
deletion/insertion) over ``--n`` held-out demo scenes once in this process, then on 1 replica and
on 2 replicas (each replica one CPU, one thread; the model loaded before the clock starts), and
prints the times and the scaling efficiency t1 / (2 * t2): 1.0 is twice as fast with twice the
replicas. The single-process run (one thread, as a replica) shows what Ray itself costs.

Target: efficiency >= 0.8 where 2 cores are free for it. The load average printed beside it says
whether they were: on a shared machine the number says more about the neighbours than about Ray.

    python benchmarks/ray_scaling.py [--n 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

TARGET = 0.8


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="held-out demo scenes (default 8)")
    args = parser.parse_args()

    try:
        import ray
    except ImportError:
        print("Ray is not installed (pip install 'lvlm-studio[ray]'): nothing to measure")
        return 0
    from transformers.utils import logging as hf_logging

    from lvlm_studio.benchmark.runner import BenchmarkSettings, run_benchmark
    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.core.models.replicas import ReplicaPool
    from lvlm_studio.core.plugin.jobs import run_job

    hf_logging.set_verbosity_error()
    settings = BenchmarkSettings(methods=["tam"], n=args.n, metrics=["iou", "pointing_game", "deletion_insertion"],
                                 examples=0)  # deletion/insertion at its 50 steps
    command = ["benchmarks/ray_scaling.py"]

    def timed(loaded, replicas=None) -> float:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            run_job(run_benchmark(loaded, settings, out, command=command, replicas=replicas))
            return time.perf_counter() - started

    import torch

    torch.set_num_threads(1)  # as each CPU replica computes (Ray gives it OMP_NUM_THREADS=1)
    alone = timed(load_model(None, LoadOptions(device="cpu")))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    seconds = {}
    try:
        for count in (1, 2):
            with ReplicaPool(None, LoadOptions(device="cpu"), replicas=count) as pool:
                pool.describe()  # every replica's model loaded before the clock starts
                seconds[count] = timed(None, pool)
    finally:
        ray.shutdown()
    efficiency = seconds[1] / (2 * seconds[2])
    load = os.getloadavg()[0]
    print(f"{args.n} held-out demo scenes, TAM + IoU, pointing game, deletion/insertion (50 steps), random baseline")
    print(f"one process, one thread: {alone:.1f} s (Ray's own cost: 1 replica takes {seconds[1] / alone:.2f}x)")
    print(f"Ray, 1 replica: {seconds[1]:.1f} s; 2 replicas: {seconds[2]:.1f} s")
    print(f"scaling efficiency t1 / (2 t2): {efficiency:.2f} (target >= {TARGET}); "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    met = efficiency >= TARGET
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
