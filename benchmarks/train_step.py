"""Cost of one joint training step of the open-world demo model, float32 against bfloat16 autocast.

``python -m lvlm_studio.demo.train`` runs its forward passes under bfloat16 autocast where the CPU
computes in bfloat16 natively (``--precision auto``); weights, optimiser state and losses stay
float32. This measures what that buys: the same seeded batch of 32 open-world scenes, one joint
step (language, patch and word losses, backward, AdamW) at a time, the two precisions taking turns
so that both see the same machine load. The time is the model's alone; drawing the scenes runs in
another process during training and is not counted. Two threads, as training uses by default.

Target: bfloat16 / float32 <= 0.85 on a CPU with native bfloat16 (elsewhere it says so and passes).

    python benchmarks/train_step.py
"""

from __future__ import annotations

import sys
import time

TARGET = 0.85
ROUNDS = 5  # turns per precision, after one warm-up step each
BATCH = 32


def main() -> int:
    import torch

    from lvlm_studio.demo import train as training

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("this CPU has no native bfloat16: training runs in float32 here, nothing to compare")
        return 0
    torch.set_num_threads(2)
    model, processor = training.build("open", 0)
    batch = training.Batcher(processor, 0, steps=1000, world="open")(999, BATCH)
    aux_head = training.aux_head_for(model)
    projected: list[torch.Tensor] = []
    model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: projected.append(o))
    params = list(model.parameters()) + list(aux_head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    words = training.word_targets(processor.tokenizer)

    def step(bf16: bool) -> float:
        autocast = training.autocast_for("bf16" if bf16 else "fp32")
        started = time.perf_counter()
        lm_loss, aux, lens = training.joint_losses(model, aux_head, batch, projected, words, autocast)
        optimizer.zero_grad()
        (lm_loss + 0.5 * aux + 0.5 * lens).backward()
        optimizer.step()
        return time.perf_counter() - started

    step(False), step(True)
    times = {False: [], True: []}
    for _ in range(ROUNDS):
        for bf16 in (False, True):
            times[bf16].append(step(bf16))
    fp32, bf16 = min(times[False]), min(times[True])
    ratio = bf16 / fp32
    print(f"joint step, batch {BATCH}, {model.config.image_seq_length} image tokens, 2 threads (best of {ROUNDS}):")
    print(f"  float32          {fp32:.3f} s")
    print(f"  bfloat16 autocast {bf16:.3f} s")
    print(f"  ratio {ratio:.2f} (target <= {TARGET})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
