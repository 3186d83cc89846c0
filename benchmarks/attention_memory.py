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
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

TARGET = 0.10
VARIANTS = ("baseline", "capture", "output_attentions")
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


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports kilobytes


def run_variant(name: str) -> dict[str, int]:
    import torch

    from lvlm_studio.core.models.capture import capture_attention

    torch.set_num_threads(1)
    loaded, inputs, queries, keys = build()
    start = peak_bytes()
    with torch.no_grad():
        if name == "baseline":
            loaded.model(**inputs, use_cache=False, logits_to_keep=1)
            retained = 0
        elif name == "capture":
            retained = capture_attention(loaded, inputs, queries, keys).nbytes
        else:
            out = loaded.model(**inputs, use_cache=False, logits_to_keep=1, output_attentions=True)
            retained = sum(a.nbytes for a in out.attentions)
    return {"growth": peak_bytes() - start, "retained": retained, "length": inputs["input_ids"].shape[1]}


def measure(name: str) -> dict[str, int]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--variant", name], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"variant {name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
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
    if len(sys.argv) == 3 and sys.argv[1] == "--variant":
        print(json.dumps(run_variant(sys.argv[2])))
    else:
        sys.exit(main())
