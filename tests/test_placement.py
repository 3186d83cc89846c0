"""Models larger than one device: accelerate placement with offload, and optional quantisation.

No GPU here, so placement is exercised the one way a CPU machine allows: ``max_memory`` caps the
CPU below the model's size and the rest goes to disk (accelerate then keeps those weights on the
"meta" device and loads them, layer by layer, into the forward pass). Every method must give the
same maps as on the plainly loaded model. Quantisation needs bitsandbytes and a CUDA GPU; where
either is missing, loading must refuse with the fix.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.loading import LoadOptions, load_model
from lvlm_studio.core.plugin.jobs import run_job
from lvlm_studio.core.tracing.trace import generate_trace
from lvlm_studio.testing import check_explanation
from lvlm_studio.testing.tiny_models import build_tiny_model

METHODS = ("raw_attention", "rollout", "relevancy", "grad_x_input", "gradcam", "tam")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_tiny_model("llava_next", tmp_path_factory.mktemp("placed"))


def test_every_method_gives_the_same_maps_with_layers_offloaded(folder, tmp_path, lvlm_registry):
    plain = load_model(folder, LoadOptions(device="cpu"))
    placed = load_model(folder, LoadOptions(device="cpu", placement="auto", max_memory={"cpu": "350KB"},
                                            offload_folder=str(tmp_path / "offload")))
    where = set(placed.model.hf_device_map.values())
    assert where == {"cpu", "disk"}  # split: part in memory, part offloaded
    assert placed.device.type == "cpu"  # inputs go where accelerate runs the embedding
    image = Image.new("RGB", (64, 40), (20, 20, 220))
    reference = generate_trace(plain, image, "describe the image.", max_new_tokens=3)
    trace = generate_trace(placed, image, "describe the image.", max_new_tokens=3)
    assert trace.answer_tokens == reference.answer_tokens
    np.testing.assert_allclose(trace.hidden, reference.hidden, atol=1e-5)
    for method in METHODS:
        explainer = lvlm_registry.explainer(method)
        params = explainer.resolve_params({})
        expected = run_job(explainer.explain(reference, plain, [0, 1], params))
        got = run_job(explainer.explain(trace, placed, [0, 1], params))
        check_explanation(got, trace, [0, 1])
        for token in (0, 1):
            for a, b in zip(got.maps[token], expected.maps[token]):
                np.testing.assert_allclose(a, b, atol=1e-5, err_msg=method)


def test_quantisation_refuses_without_a_gpu(folder, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError) as caught:
        load_model(folder, LoadOptions(quantization="4bit"))
    assert "needs a CUDA GPU" in caught.value.message and "without quantization" in caught.value.hint


def test_quantisation_refuses_without_bitsandbytes(folder, monkeypatch):
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(InputError) as caught:
        load_model(folder, LoadOptions(quantization="8bit", device="cpu"))
    assert "needs bitsandbytes" in caught.value.message and "lvlm-studio[quant]" in caught.value.hint
    with pytest.raises(InputError, match="unknown quantization '3bit'"):
        load_model(folder, LoadOptions(quantization="3bit", device="cpu"))
