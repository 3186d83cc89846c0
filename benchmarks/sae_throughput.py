"""Throughput of sparse-autoencoder work on the demo model: caching activations, and training.

Caching: images per second through ``image_batch_rows`` at ``blocks.1.hook_resid_post`` (the
processor, the vision tower up to the hook point, the patch rows), 32 images per pass, against a
full forward pass of the model over the same inputs (what caching would cost without stopping at
the hook point). Training: patch tokens per second through the trainer's steps (ReLU SAE, 4x
expansion, 256-token minibatches) on those cached rows, against the rate the caching produces them.

Targets, measured in one run: caching with early stop >= 1.3x the full forward's images per
second; training consumes tokens at least as fast as caching produces them (ratio >= 1), so the
model, not the optimiser, bounds a training run.

    python benchmarks/sae_throughput.py
"""

from __future__ import annotations

import sys
import time

from demo_setup import load_demo

HOOK = "blocks.1.hook_resid_post"
IMAGES = 256
PER_PASS = 32
REPEATS = 3
CACHE_TARGET = 1.3
TRAIN_TARGET = 1.0



def main() -> int:
    import torch

    from lvlm_studio.sae.activations import demo_images, image_batch_rows, image_inputs
    from lvlm_studio.sae.training import TrainSettings, _Trainer

    loaded = load_demo()
    images = list(demo_images(IMAGES))
    chunks = [images[i:i + PER_PASS] for i in range(0, IMAGES, PER_PASS)]

    def cache_all() -> list[torch.Tensor]:
        return [image_batch_rows(loaded, [HOOK], chunk, "patch")[0] for chunk in chunks]

    @torch.no_grad()
    def full_forward() -> None:
        for chunk in chunks:
            loaded.model(**image_inputs(loaded, chunk), use_cache=False)

    cache_s, full_s = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        rows = cache_all()
        cache_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        full_forward()
        full_s.append(time.perf_counter() - started)
    rows = torch.cat(rows)
    cache_ips, full_ips = IMAGES / min(cache_s), IMAGES / min(full_s)
    cache_tps = len(rows) / min(cache_s)

    settings = TrainSettings(hook_name=HOOK, expansion=4, batch_tokens=256, coefficient=0.03)
    train_s = []
    for _ in range(REPEATS):
        trainer = _Trainer.start(loaded, settings, rows, rows)
        started = time.perf_counter()
        for _ in trainer.train_buffer(rows, rows):
            pass
        train_s.append(time.perf_counter() - started)
    train_tps = trainer.tokens_seen / min(train_s)

    print(f"demo model, {HOOK}, {IMAGES} scenes, {PER_PASS} per pass, best of {REPEATS}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"activation caching (early stop): {cache_ips:8.1f} images/s  ({cache_tps:,.0f} patch tokens/s)")
    print(f"full forward pass:               {full_ips:8.1f} images/s")
    print(f"SAE training (ReLU, d_sae 512):  {train_tps:8,.0f} tokens/s  "
          f"({trainer.step} steps of {settings.batch_tokens} tokens)")
    cache_ratio, train_ratio = cache_ips / full_ips, train_tps / cache_tps
    print(f"ratio caching / full forward: {cache_ratio:.2f} (target >= {CACHE_TARGET})")
    print(f"ratio training / caching tokens per second: {train_ratio:.2f} (target >= {TRAIN_TARGET})")
    met = cache_ratio >= CACHE_TARGET and train_ratio >= TRAIN_TARGET
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
