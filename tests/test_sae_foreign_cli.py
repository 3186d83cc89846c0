"""Every SAELens architecture read here can be inspected and edited from the command line at the
tokens asked for (``sae inspect --tokens patch|cls|all --scale F=0``), as SAELens coders load
trained on every token.

The files are laid out as SAELens writes them, with weights that reconstruct the demo model's
activation exactly through f = [relu(x), relu(−x)] (the architecture's own parameters set so), so
zeroing a feature is an edit of a known size."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lvlm_studio.cli import main
from lvlm_studio.sae.formats import load_coder

HOOK = "blocks.2.hook_resid_post"
D = 128


def _exact_weights() -> dict[str, torch.Tensor]:
    eye = torch.eye(D)
    return {"W_enc": torch.cat([eye, -eye], dim=1), "b_enc": torch.zeros(2 * D),
            "W_dec": torch.cat([eye, -eye], dim=0), "b_dec": torch.zeros(D)}


def _gated() -> tuple[dict, dict]:
    w = _exact_weights()
    del w["b_enc"]
    zeros = torch.zeros(2 * D)
    return {**w, "b_gate": zeros, "b_mag": zeros, "r_mag": zeros}, {"architecture": "gated"}


ARCHITECTURES = {
    "gated": _gated,
    "jumprelu": lambda: ({**_exact_weights(), "threshold": torch.full((2 * D,), 1e-4)}, {"architecture": "jumprelu"}),
    "topk_rescaled": lambda: (_exact_weights(), {"architecture": "topk", "k": D,
                                                 "rescale_acts_by_decoder_norm": True}),
    "batchtopk": lambda: ({**_exact_weights(), "topk_threshold": torch.tensor(1e-4, dtype=torch.float64)},
                          {"architecture": "batchtopk", "k": 8.0, "rescale_acts_by_decoder_norm": True}),
    "matryoshka_batchtopk": lambda: ({**_exact_weights(), "topk_threshold": torch.tensor(1e-4, dtype=torch.float64)},
                                     {"architecture": "matryoshka_batchtopk", "k": 8.0,
                                      "matryoshka_widths": [16, 2 * D]}),
    "layer_norm": lambda: (_exact_weights(), {"architecture": "standard", "normalize_activations": "layer_norm"}),
}


def _saelens_folder(folder, name: str):
    weights, config = ARCHITECTURES[name]()
    folder.mkdir()
    save_file({n: t.clone().contiguous() for n, t in weights.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": D, "d_sae": 2 * D, "dtype": "float32", "apply_b_dec_to_input": True,
        "normalize_activations": "none", "metadata": {"sae_lens_version": "6.54.12", "hook_name": HOOK}, **config}))
    return folder


#: each architecture at one scope (the three scopes over the six, every scope for gated): each run loads
#: the demo model and inspects, ~5 s
SCOPES = {"gated": ("patch", "cls", "all"), "jumprelu": ("cls",), "topk_rescaled": ("patch",), "batchtopk": ("all",),
          "matryoshka_batchtopk": ("cls",), "layer_norm": ("patch",)}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_a_foreign_coder_of_each_architecture_is_inspected_and_edited_at_the_tokens_asked(tmp_path, demo_scene,
                                                                                          name):
    sae = _saelens_folder(tmp_path / "sae", name)
    coder = load_coder(sae)
    assert coder.cfg.tokens == "all"
    x = torch.randn(5, D)
    with torch.no_grad():  # the weights reconstruct exactly, through the architecture's own arithmetic
        torch.testing.assert_close(coder(x), x, atol=2e-4, rtol=1e-4)
    image = tmp_path / "scene.png"
    demo_scene.image.save(image)
    base = ["sae", "inspect", "--device", "cpu", "--sae", str(sae), "--image", str(image), "--scale", "5=0"]
    for tokens in SCOPES[name]:
        out = tmp_path / tokens
        assert main([*base, "--tokens", tokens, "--out", str(out)]) == 0, tokens
        text = (out / "inspect.md").read_text()
        assert f"trained on all tokens, applied at {tokens}" in text and f"at {tokens} tokens:" in text
        if tokens == "cls":
            assert "Features of the class token" in text
