"""Every GPU check in one run, printed as the Markdown the README carries: a machine with a GPU runs this.

    python benchmarks/gpu_day.py [--dtype bfloat16|float16] [--skeletons all|a,b] [--out FILE]

1. ``gpu_smoke``: every family's tiny model and every skeleton of a released checkpoint
   (``lvlm_studio.testing.skeletons``: real depth, heads and image geometry, tiny width) on the GPU
   in half precision, every method that applies: time, peak GPU memory above the loaded model and its
   trace, and whether the maps are finite and of each region's grid shape.
2. Attention memory at real shape on the GPU: the LLaVA-NeXT skeleton at its full image-token count
   (672 x 672 photo: 2,928 image tokens, 20 answer tokens); peak GPU memory of a plain forward,
   of ``capture_attention`` and of ``output_attentions=True`` (estimated first, and refused when the
   estimate exceeds the free GPU memory). Target: capture <= 1 % of output_attentions.

Without a CUDA GPU it prints one line saying so and exits 0. It exits 1 if a method failed or a
target was missed. Written for one short session on a lent GPU (about five minutes on one H100/H200).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

CAPTURE_TARGET = 0.01


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--skeletons", default="all", help="skeletons for the smoke test: 'all', names, or ''")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_day: no CUDA GPU visible to PyTorch; nothing to do.")
        return 0
    from demo_setup import quiet_transformers
    from gpu_smoke import header, run, skeleton_names, table

    from lvlm_studio.testing.tiny_models import TINY_FAMILIES

    quiet_transformers()
    started = time.perf_counter()
    rows, failures = run("cuda", args.dtype, list(TINY_FAMILIES), [], skeletons=skeleton_names(args.skeletons))
    memory, ratio = attention_memory(args.dtype)
    lines = [f"### {header('cuda', args.dtype)}", "", "Every family and skeleton, every method that applies:", "",
             table(rows), "", "Attention memory at real shape (LLaVA-NeXT skeleton, 2,928 image tokens, "
             "20 answer tokens):", "", memory, "",
             f"capture / output_attentions: {ratio:.4f} (target <= {CAPTURE_TARGET}); "
             f"{failures} method failure(s); {time.perf_counter() - started:.0f} s in all."]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if failures == 0 and ratio <= CAPTURE_TARGET else 1


def attention_memory(dtype: str) -> tuple[str, float]:
    """Peak GPU memory above the loaded model of a forward, of capture and of output_attentions."""
    from attention_memory import build_skeleton_case

    from lvlm_studio.core.errors import InputError
    from lvlm_studio.core.models.capture import attention_implementation, capture_attention, require_full_attention_fits
    from lvlm_studio.testing.skeletons import build_skeleton

    with tempfile.TemporaryDirectory() as scratch:
        folder = build_skeleton("llava-v1.6-mistral-7b-hf", Path(scratch) / "next")
        loaded, inputs, queries, keys, _ = build_skeleton_case(str(folder), device="cuda", dtype=dtype)
        length = inputs["input_ids"].shape[1]
        width = torch.finfo(loaded.model.dtype).bits // 8

        def peak(run) -> tuple[float, float]:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            begun = time.perf_counter()
            with torch.no_grad():
                run()
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2**20, time.perf_counter() - begun

        forward = peak(lambda: loaded.model(**inputs, use_cache=False, logits_to_keep=1))
        capture = peak(lambda: capture_attention(loaded, inputs, queries, keys))
        rows = [("forward (SDPA)", *forward, ""), ("capture_attention", *capture, "")]
        try:
            estimate = require_full_attention_fits(loaded, length, torch.cuda.mem_get_info()[0], width)

            def full() -> None:
                with attention_implementation(loaded.model, "eager"):
                    loaded.model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=True)

            everything = peak(full)
            rows.append(("output_attentions=True", *everything, f"estimate {estimate / 2**20:.0f} MiB"))
            ratio = (capture[0] - forward[0]) / max(everything[0] - forward[0], 1e-9)
        except InputError as refused:
            from lvlm_studio.core.models.capture import full_attention_bytes

            estimate = full_attention_bytes(loaded, length, width)
            rows.append(("output_attentions=True", None, None, f"refused: {refused}"))
            ratio = (capture[0] - forward[0]) / (estimate / 2**20)
    lines = [f"| sequence {length} tokens | peak GPU memory above the model (MiB) | time (s) | note |",
             "|---|---:|---:|---|"]
    for name, mib, seconds, note in rows:
        lines.append(f"| {name} | {'' if mib is None else f'{mib:.0f}'} | "
                     f"{'' if seconds is None else f'{seconds:.2f}'} | {note} |")
    return "\n".join(lines), ratio


if __name__ == "__main__":
    sys.exit(main())
