"""Peak extra memory of ``capture_attention`` against ``output_attentions=True``.

A tiny random LLaVA with LLaVA-1.5's geometry (336 px images in 14 px patches: a 24 x 24 grid of
576 image tokens) reads a prompt and a 64-token answer, teacher-forced. Three variants run one
eager forward each, every one in its own Python process:

    baseline            the plain eager forward (attention weights exist one layer at a time)
    capture             the same forward through capture_attention: answer-query rows x image keys
    output_attentions   the same forward returning every layer's full attention tensor

Each process records its peak resident memory (``ru_maxrss``) just before and just after the
forward; "extra" is a variant's growth minus the baseline's. glibc is told to serve large blocks
with mmap (``MALLOC_MMAP_THRESHOLD_``) so that freed memory really leaves the process and the peak
is what was alive at once. The retained bytes (what each variant hands back) are printed too.

Target: capture's extra <= 10 % of output_attentions' extra. Both keep layers x heads x rows x
columns floats, so the ratio is about (answer rows x image keys) / (sequence length)^2.

    python benchmarks/attention_memory.py

At real shape, ``--skeleton`` runs the same variants on the skeleton of a released checkpoint
(``lvlm_studio.testing.skeletons``: real depth, heads and image geometry, tiny width) with a square
photo that fills its largest image layout (LLaVA-NeXT: 576 + 48 x 48 + 48 newlines = 2,928 image
tokens) and a 20-token answer. output_attentions is first estimated (layers x heads x T^2 x 4
bytes) and refused, with ``require_full_attention_fits``'s InputError, when the estimate exceeds
the memory available; capture is then compared with the estimate. Target there: capture <= 1 %.
``--methods`` adds one process per explanation method (every registered one by default), each
explaining the first answer token with small sample counts (peak memory depends on batch sizes, not
counts), under an address-space cap so that a method that cannot fit fails instead of the machine:

    python benchmarks/attention_memory.py --skeleton llava-v1.6-mistral-7b-hf [--methods all] [--layers N]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

TARGET = 0.10
SKELETON_TARGET = 0.01
VARIANTS = ("baseline", "capture", "output_attentions")
ANSWER_AT_SCALE = 20
# Sample counts for the per-method memory runs: one batch of 4 each (memory follows the batch, not the
# count: a batch of b perturbed images holds b forwards' activations at once).
SMALL = {"rise": {"masks": 4, "batch_size": 4}, "occlusion": {"window": 0.5, "stride": 0.5, "batch_size": 4},
         "igos++": {"iterations": 1, "steps": 1}, "causal": {"samples": 8}}
IMAGE_SIZE, PATCH = 336, 14  # 24 x 24 image tokens
ANSWER_TOKENS = 64
PROMPT_TEXT = (12, 8)  # text tokens before and after the image ("user: <image> describe ... assistant:")
LAYERS, HEADS, HIDDEN = 16, 8, 64
VOCAB, IMAGE_TOKEN = 64, 63


def build():
    """A random LLaVA at toy width but LLaVA-1.5's token geometry, and one teacher-forced input."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from lvlm_studio.core.models.llava import LlavaAdapter
    from lvlm_studio.core.models.loading import LoadedModel

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=32)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                       num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                       max_position_embeddings=1024)
    n_image = (IMAGE_SIZE // PATCH) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         image_seq_length=n_image)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")
    before, after = PROMPT_TEXT
    text_ids = torch.randint(1, IMAGE_TOKEN, (before + after + ANSWER_TOKENS,))
    ids = torch.cat([text_ids[:before], torch.full((n_image,), IMAGE_TOKEN), text_ids[before:]])[None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "pixel_values": torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)}
    length = ids.shape[1]
    queries = list(range(length - ANSWER_TOKENS - 1, length - 1))  # token p is predicted at p - 1
    keys = list(range(before, before + n_image))
    return LoadedModel(model, None, LlavaAdapter(model, None), "benchmark"), inputs, queries, keys


def build_skeleton_case(folder: str, answer: int = ANSWER_AT_SCALE, device: str = "cpu", dtype: str | None = None):
    """The skeleton saved in ``folder`` on a 672 x 672 photo (LLaVA-NeXT's largest square canvas:
    2,928 image tokens), with a teacher-forced ``answer``-token answer: (loaded, inputs, queries,
    image keys, trace)."""
    import numpy as np
    import torch
    from demo_setup import quiet_transformers
    from PIL import Image

    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.core.tracing.trace import generate_trace

    quiet_transformers()
    loaded = load_model(folder, LoadOptions(device=device, **({"dtype": dtype} if dtype else {})))
    image = Image.fromarray(np.random.default_rng(0).integers(160, 256, (672, 672, 3), dtype=np.uint8))
    trace = answered(loaded, generate_trace(loaded, image, "describe the image.", max_new_tokens=1), answer)
    inputs = trace.teacher_forced_inputs(loaded)
    length = inputs["input_ids"].shape[1]
    queries = list(range(length - answer - 1, length - 1))
    torch.set_num_threads(1)
    return loaded, inputs, queries, [int(p) for p in trace.image_positions], trace


def answered(loaded, trace, answer: int):
    """``trace`` with an ``answer``-token answer of vocabulary words, teacher-forced (a random model
    stops when it likes; cost and memory are measured at a fixed answer length)."""
    import numpy as np
    from relevancy_cost import with_answer

    words = loaded.processor.tokenizer.convert_tokens_to_ids(["the", "red", "circle", "is", "on", "left", "."])
    return with_answer(trace, np.resize(np.asarray(words, dtype=np.int64), answer))


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping)."""
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """Resident memory now (/proc/self/statm), which falls again when memory is freed."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class PeakSampler:
    """Highest resident memory above the level at entry, sampled every millisecond in a thread
    (the skeleton runs load, trace and a forward before the measured step, so the process's
    high-water mark ``ru_maxrss`` is already above what the step needs)."""

    def __enter__(self) -> PeakSampler:
        import threading

        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.growth = self.peak - self.start


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kilobytes


def run_variant(name: str, folder: str | None = None) -> dict:
    import time

    import torch

    from lvlm_studio.core.errors import InputError
    from lvlm_studio.core.models.capture import attention_implementation, capture_attention, require_full_attention_fits

    torch.set_num_threads(1)
    if folder is None:
        loaded, inputs, queries, keys = build()
        trace = None
    else:
        loaded, inputs, queries, keys, trace = build_skeleton_case(folder)
    length = inputs["input_ids"].shape[1]
    start, started = peak_bytes(), time.perf_counter()
    method = name.startswith("method:")  # methods take their own gradients
    with torch.set_grad_enabled(method), PeakSampler() as sampled:
        if name == "baseline":
            loaded.model(**inputs, use_cache=False, logits_to_keep=1)
            retained = 0
        elif name == "capture":
            retained = capture_attention(loaded, inputs, queries, keys).nbytes
        elif name == "output_attentions":
            try:
                estimate = require_full_attention_fits(loaded, length, available_bytes())
            except InputError as refused:
                return {"refused": str(refused), "estimate": _estimate(loaded, length), "length": length,
                        "growth": 0, "retained": 0, "seconds": 0.0}
            with attention_implementation(loaded.model, "eager"):
                out = loaded.model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=True)
            retained = sum(a.nbytes for a in out.attentions if a is not None)
        else:  # method:<id>
            retained = _run_method(name.split(":", 1)[1], loaded, trace)
    growth = peak_bytes() - start if folder is None else sampled.growth  # see PeakSampler
    return {"growth": growth, "retained": retained, "length": length, "seconds": time.perf_counter() - started,
            **({"estimate": estimate} if name == "output_attentions" else {})}


def _estimate(loaded, length: int) -> int:
    from lvlm_studio.core.models.capture import full_attention_bytes

    return full_attention_bytes(loaded, length)


def _run_method(method: str, loaded, trace) -> int:
    """Explain the first answer token with ``method`` (small sample counts); 0 bytes retained."""
    from lvlm_studio.core.plugin.jobs import run_job
    from lvlm_studio.core.plugin.registry import create_registry

    explainer = create_registry().explainer(method)
    params = explainer.resolve_params(SMALL.get(method, {}))
    reason = explainer.applies_to(loaded, params)
    if reason is not None:
        raise SystemExit(f"n/a: {reason.split(':')[0]}")
    run_job(explainer.explain(trace, loaded, [0], params))
    return 0


def measure(name: str, folder: str | None = None, cap_bytes: int | None = None) -> dict:
    """Run one variant in its own process (under an address-space cap, when given)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--variant", name] + (["--folder", folder] if folder else [])
    limit = None
    if cap_bytes:
        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
    done = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=limit)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        if cap_bytes and ("MemoryError" in done.stderr or "alloc" in done.stderr.lower()):
            return {"error": f"over the {cap_bytes / 2**30:.0f} GiB cap"}
        if folder:
            return {"error": last[:120]}
        raise SystemExit(f"variant {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main_skeleton(name: str, layers: int | None, methods: list[str], cap_gib: float,
                  methods_only: bool = False) -> int:
    """Capture against output_attentions (estimated, refused when it cannot fit) at real shape, then
    each method's peak memory, on the skeleton ``name``."""
    import tempfile
    from pathlib import Path

    from demo_setup import quiet_transformers

    from lvlm_studio.testing.skeletons import build_skeleton

    quiet_transformers()
    mib = 2**20
    with tempfile.TemporaryDirectory() as scratch:
        folder = str(build_skeleton(name, Path(scratch) / name, layers=layers))
        results = {v: measure(v, folder) for v in (VARIANTS if not methods_only else ("baseline",))}
        base = results["baseline"]
        if methods_only:
            return _method_rows(methods, folder, base, cap_gib)
        capture, full = results["capture"], results["output_attentions"]
        capture_extra = capture["growth"] - base["growth"]
        depth = "" if layers is None else f", capped at {layers} layers"
        print(f"skeleton {name}{depth}: sequence {capture['length']} tokens, {ANSWER_AT_SCALE} answer tokens")
        print(f"baseline forward (SDPA): peak grew {base['growth'] / mib:8.1f} MiB in {base['seconds']:.1f} s")
        print(f"capture_attention:       extra peak {capture_extra / mib:8.1f} MiB, retained "
              f"{capture['retained'] / mib:.2f} MiB, {capture['seconds']:.1f} s")
        if "refused" in full:
            full_extra = full["estimate"]
            print(f"output_attentions:       refused before running: {full['refused']}")
        else:
            full_extra = full["growth"] - base["growth"]
            print(f"output_attentions:       extra peak {full_extra / mib:8.1f} MiB, retained "
                  f"{full['retained'] / mib:.1f} MiB (estimate {full['estimate'] / mib:.1f} MiB)")
        ratio = capture_extra / full_extra
        print(f"ratio capture / output_attentions: {ratio:.4f}   target <= {SKELETON_TARGET}")
        _method_rows(methods, folder, base, cap_gib)
    met = ratio <= SKELETON_TARGET
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


def _method_rows(methods: list[str], folder: str, base: dict, cap_gib: float) -> int:
    """Each method's extra peak memory over a plain forward, one process each, as a Markdown table."""
    rows = []
    for method in methods:
        result = measure(f"method:{method}", folder, cap_bytes=int(cap_gib * 2**30))
        if "error" in result:
            rows.append(f"| {method} | | | {result['error']} |")
        else:
            extra = max(result["growth"] - base["growth"], 0) / 2**20
            rows.append(f"| {method} | {extra:.0f} | {result['seconds']:.0f} | ok |")
    if rows:
        print()
        print("| method (first answer token) | extra peak over a forward (MiB) | time (s) | result |")
        print("|---|---:|---:|---|")
        print("\n".join(rows))
    return 0


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skeleton", help="run at real shape on this skeleton (lvlm_studio.testing.skeletons)")
    parser.add_argument("--layers", type=int, default=None, help="cap the skeleton's depth (default: the real one)")
    parser.add_argument("--methods", default="", help="'all' or method ids: each method's peak memory too")
    parser.add_argument("--cap-gib", type=float, default=12.0, help="address-space cap of each method's process")
    parser.add_argument("--methods-only", action="store_true", help="skip capture against output_attentions")
    args = parser.parse_args()
    if args.skeleton:
        methods = [m for m in args.methods.split(",") if m]
        if methods == ["all"]:
            from lvlm_studio.core.plugin.registry import create_registry

            methods = list(create_registry().explainers())
        return main_skeleton(args.skeleton, args.layers, methods, args.cap_gib, args.methods_only)
    results = {name: measure(name) for name in VARIANTS}
    base = results["baseline"]["growth"]
    capture_extra = results["capture"]["growth"] - base
    full_extra = results["output_attentions"]["growth"] - base
    ratio = capture_extra / full_extra
    retained_ratio = results["capture"]["retained"] / results["output_attentions"]["retained"]
    mib = 1024 * 1024
    print(f"tiny LLaVA: {LAYERS} layers x {HEADS} heads, sequence {results['capture']['length']} tokens "
          f"(576 image tokens, {ANSWER_TOKENS} answer tokens)")
    print(f"baseline eager forward: peak grew {base / mib:.1f} MiB")
    print(f"capture_attention:      extra peak {capture_extra / mib:7.1f} MiB, retained "
          f"{results['capture']['retained'] / mib:7.1f} MiB")
    print(f"output_attentions=True: extra peak {full_extra / mib:7.1f} MiB, retained "
          f"{results['output_attentions']['retained'] / mib:7.1f} MiB")
    print(f"ratio (extra peak): {ratio:.3f}   ratio (retained): {retained_ratio:.3f}   target <= {TARGET}")
    met = ratio <= TARGET
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--variant":
        print(json.dumps(run_variant(sys.argv[2], sys.argv[4] if len(sys.argv) == 5 else None)))
    else:
        sys.exit(main())
