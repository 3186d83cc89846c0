"""Coders with known weights, shared by the sparse-coder tests."""

from __future__ import annotations

import torch

from lvlm_studio.sae.coders import CoderConfig, build_coder


def exact_coder(hook: str, tokens: str = "patch") -> torch.nn.Module:
    """A 128-wide ReLU coder that reconstructs exactly: f = [relu(x), relu(-x)], x̂ = relu(x) - relu(-x) = x,
    so its L0 is the number of nonzero coordinates."""
    coder = build_coder(CoderConfig(d_in=128, d_sae=256, hook_name=hook, apply_b_dec_to_input=False, tokens=tokens))
    eye = torch.eye(128)
    with torch.no_grad():
        coder.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        coder.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return coder
