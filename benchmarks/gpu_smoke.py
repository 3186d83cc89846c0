"""GPU smoke test: every family's tiny model on the GPU, every method that applies, in half precision.

    python benchmarks/gpu_smoke.py [--dtype bfloat16|float16] [--families a,b] [--methods a,b]
    python benchmarks/gpu_smoke.py --device cpu       # the same loop on the CPU, in float32
    python benchmarks/gpu_smoke.py --skeletons all    # the skeletons of released checkpoints too

For each family of ``lvlm_studio.testing.tiny_models`` a tiny random model is built, loaded through
``load_model`` onto the device in the chosen dtype, and asked about a wide noise image; then every
registered explainer that applies to the family (``Explainer.applies_to``) explains the first two
answer tokens. Printed as a Markdown table: time per method (wall clock, device synchronised) and
peak device memory above what the loaded model and its trace already held, and whether the maps
came back finite and of each region's grid shape. The tiny models check plumbing on a real
accelerator (dtype casts, devices of hooks and reductions, eager-attention switching, autograd in
half precision), not speed at scale.

``--skeletons`` (names or ``all``) adds the skeletons of released checkpoints
(``lvlm_studio.testing.skeletons``: real depth, heads and image geometry, tiny width) on a 640 x 480
photo, so every method also runs at the real number of image tokens and the real depth in half
precision; the sampling methods use small sample counts there (``SKELETON_PARAMS``).

Without a GPU (and without ``--device cpu``) the script prints one line saying so and exits 0.
It exits 1 if any applicable method failed or returned bad maps.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SKELETON_PARAMS = {"rise": {"masks": 64}, "igos++": {"iterations": 2, "steps": 4}, "causal": {"samples": 32}}
SKELETON_PHOTO = (640, 480)


def main(argv: list[str] | None = None) -> int:
    from lvlm_studio.testing.tiny_models import TINY_FAMILIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"],
                        help="half precision on the GPU (the CPU run is always float32)")
    parser.add_argument("--families", default=",".join(TINY_FAMILIES))
    parser.add_argument("--methods", default="", help="explainer ids (default: every registered one)")
    parser.add_argument("--skeletons", default="", help="skeletons of released checkpoints too: names, or 'all'")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU visible to PyTorch; nothing to do (use --device cpu for the CPU loop).")
        return 0
    dtype = "float32" if args.device == "cpu" else args.dtype
    rows, failures = run(args.device, dtype, [f for f in args.families.split(",") if f],
                         [m for m in args.methods.split(",") if m], skeletons=skeleton_names(args.skeletons))
    print(header(args.device, dtype))
    print()
    print(table(rows))
    return 1 if failures else 0


def header(device: str, dtype: str) -> str:
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return f"GPU smoke test, {date}, {name}, {dtype}, torch {torch.__version__}"


def skeleton_names(spec: str) -> list[str]:
    from lvlm_studio.testing.skeletons import SKELETONS

    return list(SKELETONS) if spec == "all" else [s for s in spec.split(",") if s]


def run(device: str, dtype: str, families: list[str], methods: list[str],
        skeletons: list[str] = ()) -> tuple[list[dict], int]:
    """One row per (model, method): every tiny family on a 150 x 100 image, then every skeleton
    named on a 640 x 480 photo."""
    from lvlm_studio.testing.skeletons import SKELETONS, build_skeleton
    from lvlm_studio.testing.tiny_models import build_tiny_model

    tiny = Image.fromarray(np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8))
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, SKELETON_PHOTO[::-1] + (3,), dtype=np.uint8))
    cases = [(family, lambda folder, f=family: build_tiny_model(f, folder), tiny, {}) for family in families]
    cases += [(f"{name} ({SKELETONS[name]})", lambda folder, n=name: build_skeleton(n, folder), photo, SKELETON_PARAMS)
              for name in skeletons]
    return run_cases(device, dtype, cases, methods)


def run_cases(device: str, dtype: str, cases: list, methods: list[str]) -> tuple[list[dict], int]:
    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.plugin.registry import create_registry
    from lvlm_studio.core.tracing.trace import generate_trace

    registry = create_registry()
    explainers = [registry.explainer(m) for m in methods] if methods else list(registry.explainers().values())
    rows, failures = [], 0
    with tempfile.TemporaryDirectory() as scratch:
        for index, (family, build, image, small) in enumerate(cases):
            loaded = load_model(build(Path(scratch) / str(index)), LoadOptions(device=device, dtype=dtype))
            trace = generate_trace(loaded, image, "describe the image.", max_new_tokens=3)
            if len(trace.answer_ids) == 0:  # a random model may stop at once; another prompt will do
                trace = generate_trace(loaded, image, "what color is the circle?", max_new_tokens=3)
            targets = list(range(min(2, len(trace.answer_ids))))
            for explainer in explainers:
                params = explainer.resolve_params(small.get(explainer.id, {}))
                reason = explainer.applies_to(loaded, params)
                row = {"family": family, "method": explainer.id, "seconds": None, "peak_mib": None}
                if reason is not None:
                    rows.append({**row, "status": "n/a: " + reason.split(":")[0]})
                    continue
                baseline = _reset_peak(device)
                started = time.perf_counter()
                try:
                    explanation = run_job(explainer.explain(trace, loaded, targets, params))
                    _sync(device)
                    status = _check(explanation, trace, targets)
                except Exception as exc:  # noqa: BLE001 - report every method, then exit 1
                    status = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                seconds = time.perf_counter() - started
                failures += status != "ok"
                rows.append({**row, "seconds": seconds, "peak_mib": _peak_mib(device, baseline), "status": status})
            del loaded
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows, failures


def _check(explanation, trace, targets: list[int]) -> str:
    """"ok", or what is wrong with the maps (the contract of ``testing.check_explanation``)."""
    for token in targets:
        maps = explanation.maps.get(token)
        if maps is None or len(maps) != len(trace.regions):
            return f"token {token}: {0 if maps is None else len(maps)} maps for {len(trace.regions)} regions"
        for grid_map, region in zip(maps, trace.regions):
            if tuple(grid_map.shape) != tuple(region.grid):
                return f"token {token}, {region.name}: shape {grid_map.shape} for grid {region.grid}"
            if not np.isfinite(grid_map).all():
                return f"token {token}, {region.name}: values not finite"
    return "ok"


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: str) -> int:
    if device != "cuda":
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak_mib(device: str, baseline: int) -> float | None:
    if device != "cuda":
        return None
    return (torch.cuda.max_memory_allocated() - baseline) / 2**20


def table(rows: list[dict]) -> str:
    lines = ["| family | method | time (ms) | peak GPU memory (MiB) | result |", "|---|---|---:|---:|---|"]
    for row in rows:
        ms = "" if row["seconds"] is None else f"{row['seconds'] * 1000:.0f}"
        mib = "" if row["peak_mib"] is None else f"{row['peak_mib']:.1f}"
        lines.append(f"| {row['family']} | {row['method']} | {ms} | {mib} | {row['status']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
