"""The inputs of one forward pass over a token sequence: what the trace, the perturbation methods
and the SAEs feed the model when they replay prompt + answer (teacher forcing)."""

from __future__ import annotations

import torch

TOKEN_ALIGNED_INPUTS = ("mm_token_type_ids", "token_type_ids", "cross_attention_mask")


def forward_inputs(ids: torch.Tensor, extras: dict[str, torch.Tensor], dtype: torch.dtype,
                   generated: dict[str, int | None] | None = None) -> dict[str, torch.Tensor]:
    """Inputs for a forward pass over ``ids`` [1, L]: the processor's extras with floating tensors
    cast to the model's dtype, and per-token extras cut or extended to length L. Extension uses the
    value generated tokens take (``generated``, from the adapter's ``generated_token_inputs``: 0,
    "text", unless the family says otherwise; None repeats the last prompt entry, as Mllama's
    cross-attention mask does)."""
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    length = ids.shape[1]
    generated = generated or {}
    for key, value in extras.items():
        if key in TOKEN_ALIGNED_INPUTS:
            value = value[:, :length]
            missing = length - value.shape[1]
            if missing > 0:
                fill = generated.get(key, 0)
                tail = value[:, -1:] if fill is None else torch.full_like(value[:, -1:], fill)
                value = torch.cat([value, tail.expand(-1, missing, *value.shape[2:])], dim=1)
        elif value.is_floating_point():
            value = value.to(dtype)
        inputs[key] = value
    return inputs
