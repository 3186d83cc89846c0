"""Gated, BatchTopK, Matryoshka-BatchTopK and transcoder coders: files laid out as SAELens writes
them, loaded and checked against SAELens's arithmetic restated in NumPy, and written back the way
SAELens reads them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lvlm_studio.core.errors import InputError
from lvlm_studio.sae.coders import CoderConfig, build_coder
from lvlm_studio.sae.formats import load_coder, save_saelens

D_IN, D_SAE, D_OUT = 6, 10, 4
META = {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_resid_post"}


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _weights(seed: int = 0, d_out: int = D_IN) -> dict[str, np.ndarray]:
    rng = _rng(seed)
    return {"W_enc": rng.normal(size=(D_IN, D_SAE)), "b_enc": rng.normal(size=D_SAE) * 0.3,
            "W_dec": rng.normal(size=(D_SAE, d_out)) * rng.uniform(0.1, 5.0, size=(D_SAE, 1)),
            "b_dec": rng.normal(size=d_out)}


X = _rng(1).normal(size=(7, D_IN)) * 2


def _saelens(folder, weights: dict[str, np.ndarray], cfg: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({n: torch.tensor(v, dtype=torch.float32) for n, v in weights.items()},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
                                                 "normalize_activations": "none", "metadata": META, **cfg}))


def _run(coder, x: np.ndarray = X) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        t = torch.tensor(x, dtype=torch.float32)
        return coder.encode(t).numpy(), coder(t).numpy()


def _close(actual, expected) -> None:
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)


# -- gated ---------------------------------------------------------------------------------------------
def _gated_weights() -> dict[str, np.ndarray]:
    w = _weights()
    rng = _rng(2)
    del w["b_enc"]
    return {**w, "b_gate": rng.normal(size=D_SAE) * 0.5, "b_mag": rng.normal(size=D_SAE) * 0.5,
            "r_mag": rng.normal(size=D_SAE) * 0.3}


def _gated(w: dict[str, np.ndarray], x: np.ndarray = X) -> tuple[np.ndarray, np.ndarray]:
    """SAELens's GatedSAE: f = [p + b_gate > 0] · ReLU(p ⊙ exp(r_mag) + b_mag), p = (x − b_dec) W_enc."""
    p = (x - w["b_dec"]) @ w["W_enc"]
    f = (p + w["b_gate"] > 0) * np.maximum(p * np.exp(w["r_mag"]) + w["b_mag"], 0)
    return f, f @ w["W_dec"] + w["b_dec"]


def test_a_saelens_gated_sae_gives_saelens_numbers_and_saves_back_folded(tmp_path):
    w = _gated_weights()
    _saelens(tmp_path / "g", w, {"architecture": "gated", "apply_b_dec_to_input": True})
    coder = load_coder(tmp_path / "g")
    f, x_hat = _gated(w)
    assert 0 < (f > 0).sum() < f.size  # the gate closes some features and opens others
    _close(_run(coder)[0], f)
    _close(_run(coder)[1], x_hat)
    folder = save_saelens(coder, tmp_path / "back")
    stored = {n: t.double().numpy() for n, t in load_file(str(folder / "sae_weights.safetensors")).items()}
    assert sorted(stored) == ["W_dec", "W_enc", "b_dec", "b_gate", "b_mag", "r_mag"]
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "gated"
    norms = np.linalg.norm(w["W_dec"], axis=1)
    _close(np.linalg.norm(stored["W_dec"], axis=1), np.ones(D_SAE))
    _close(stored["r_mag"], w["r_mag"])  # exp(r_mag) scales with W_enc already
    f_back, x_back = _gated(stored)  # SAELens's arithmetic on what was written
    _close(f_back, f * norms)
    _close(x_back, x_hat)
    _close(_run(load_coder(folder))[1], x_hat)


def test_a_gated_coder_trains_its_gate_through_the_auxiliary_loss():
    coder = build_coder(CoderConfig(d_in=D_IN, d_sae=D_SAE, architecture="gated"))
    coder.initialise(torch.randn(64, D_IN))
    x = torch.randn(16, D_IN)
    losses = coder.loss(x, x, 0.1)
    losses["loss"].backward()
    assert coder.b_gate.grad is not None and coder.b_gate.grad.abs().sum() > 0
    assert coder.r_mag.grad is not None


# -- BatchTopK and Matryoshka --------------------------------------------------------------------------
def _jumprelu(w: dict[str, np.ndarray], threshold: np.ndarray, x: np.ndarray = X) -> tuple[np.ndarray, np.ndarray]:
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    f = np.maximum(pre, 0) * (pre > threshold)
    return f, f @ w["W_dec"] + w["b_dec"]


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka_batchtopk"])
@pytest.mark.parametrize("rescale", [False, True])
def test_a_saelens_batchtopk_checkpoint_reads_as_the_jumprelu_saelens_saves_it_as(tmp_path, architecture, rescale):
    w = _weights()
    theta = 0.7
    extra = {"matryoshka_widths": [3, D_SAE]} if architecture == "matryoshka_batchtopk" else {}
    _saelens(tmp_path / "b", {**w, "topk_threshold": np.array(theta)},
             {"architecture": architecture, "k": 2.5, "rescale_acts_by_decoder_norm": rescale,
              "apply_b_dec_to_input": True, **extra})
    coder = load_coder(tmp_path / "b")
    assert coder.cfg.architecture == "jumprelu"
    # SAELens's save_inference_model: with the flag, decoder norms folded into the encoder first
    norms = np.linalg.norm(w["W_dec"], axis=1) if rescale else np.ones(D_SAE)
    folded = {**w, "W_enc": w["W_enc"] * norms, "b_enc": w["b_enc"] * norms, "W_dec": w["W_dec"] / norms[:, None]}
    f, x_hat = _jumprelu(folded, np.full(D_SAE, theta))
    assert 0 < (f > 0).sum() < f.size
    _close(_run(coder)[0], f)
    _close(_run(coder)[1], x_hat)


def test_batchtopk_keeps_k_per_token_on_average_in_training_and_its_threshold_outside():
    cfg = CoderConfig(d_in=D_IN, d_sae=D_SAE, architecture="batchtopk", k=2, topk_threshold_lr=0.5)
    coder = build_coder(cfg)
    coder.initialise(torch.randn(64, D_IN), seed=3)
    x = torch.randn(8, D_IN)
    coder.train()
    with torch.no_grad():
        pre = coder.pre_activation(x)
        f = coder.encode(x)
    assert int((f > 0).sum()) == min(16, int((pre > 0).sum()))  # k·n over the whole batch
    kept = torch.relu(pre).flatten().topk(16).values
    torch.testing.assert_close(f.flatten().sort().values[-16:], kept.sort().values)
    coder.loss(x, x, 0.0)  # one training step's forward moves θ halfway to the smallest survivor
    assert float(coder.topk_threshold) == pytest.approx(0.5 * float(f[f > 0].min()), rel=1e-6)
    coder.eval()
    theta = float(coder.topk_threshold)
    torch.testing.assert_close(coder.encode(x), torch.relu(pre) * (pre > theta))


def test_our_batchtopk_file_is_a_saelens_jumprelu_and_reads_back_as_batchtopk(tmp_path):
    coder = build_coder(CoderConfig(d_in=D_IN, d_sae=D_SAE, architecture="matryoshka_batchtopk", k=2,
                                    matryoshka_widths=(3, D_SAE)))
    coder.initialise(torch.randn(64, D_IN), seed=4)  # unit-norm decoder rows
    coder.topk_threshold.fill_(0.25)
    coder.eval()
    folder = save_saelens(coder, tmp_path / "m")
    config = json.loads((folder / "cfg.json").read_text())
    assert config["architecture"] == "jumprelu"
    torch.testing.assert_close(load_file(str(folder / "sae_weights.safetensors"))["threshold"],
                               torch.full((D_SAE,), 0.25))
    again = load_coder(folder)
    assert again.cfg.architecture == "matryoshka_batchtopk" and again.cfg.matryoshka_widths == (3, D_SAE)
    assert float(again.topk_threshold) == pytest.approx(0.25)
    x = torch.randn(5, D_IN)
    torch.testing.assert_close(again.encode(x), coder.encode(x))
    # decoder rows of unequal norms make the thresholds unequal once folded: it reads back as the JumpReLU
    with torch.no_grad():
        coder.W_dec.mul_(torch.linspace(0.5, 2.0, D_SAE)[:, None])
    jump = load_coder(save_saelens(coder, tmp_path / "j"))
    assert jump.cfg.architecture == "jumprelu"
    torch.testing.assert_close(jump(x), coder(x))


def test_matryoshka_widths_are_checked():
    with pytest.raises(InputError, match="matryoshka_widths"):
        CoderConfig(d_in=D_IN, d_sae=D_SAE, architecture="matryoshka_batchtopk", k=2, matryoshka_widths=(3, 5))
    with pytest.raises(InputError, match="matryoshka_widths"):
        CoderConfig(d_in=D_IN, d_sae=D_SAE, architecture="matryoshka_batchtopk", k=2, matryoshka_widths=(6, 3, D_SAE))


# -- transcoders ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ["transcoder", "skip_transcoder", "jumprelu_transcoder",
                                          "jumprelu_skip_transcoder"])
def test_saelens_transcoders_give_saelens_numbers_and_save_back_in_its_layout(tmp_path, architecture):
    w = _weights(d_out=D_OUT)
    rng = _rng(5)
    skip = "skip" in architecture
    jump = architecture.startswith("jumprelu")
    if skip:
        w["W_skip"] = rng.normal(size=(D_OUT, D_IN)) * 0.2  # SAELens: [d_out, d_in], applied x W_skipᵀ
    if jump:
        w["threshold"] = rng.uniform(0.0, 0.8, size=D_SAE)
    _saelens(tmp_path / "t", w, {"architecture": architecture, "d_out": D_OUT, "apply_b_dec_to_input": False,
                                 "metadata": {**META, "hook_name_out": "blocks.1.hook_mlp_out"}})
    coder = load_coder(tmp_path / "t")
    assert coder.cfg.kind == "transcoder" and coder.cfg.skip == skip
    assert coder.cfg.hook_name_out == "blocks.1.hook_mlp_out"
    pre = X @ w["W_enc"] + w["b_enc"]  # no input centring: b_dec is the output's bias
    f = np.maximum(pre, 0) * ((pre > w["threshold"]) if jump else 1)
    out = f @ w["W_dec"] + w["b_dec"] + (X @ w["W_skip"].T if skip else 0)
    _close(_run(coder)[0], f)
    _close(_run(coder)[1], out)
    folder = save_saelens(coder, tmp_path / "back")
    config = json.loads((folder / "cfg.json").read_text())
    assert config["architecture"] == architecture and config["d_out"] == D_OUT
    assert config["apply_b_dec_to_input"] is False and config["metadata"]["hook_name_out"] == "blocks.1.hook_mlp_out"
    stored = load_file(str(folder / "sae_weights.safetensors"))
    if skip:
        torch.testing.assert_close(stored["W_skip"].double(), torch.tensor(w["W_skip"]))
    _close(_run(load_coder(folder))[1], out)


def test_a_saelens_transcoder_that_centres_its_input_is_refused(tmp_path):
    _saelens(tmp_path / "t", _weights(d_out=D_OUT), {"architecture": "transcoder", "d_out": D_OUT,
                                                     "apply_b_dec_to_input": True})
    with pytest.raises(InputError, match="apply_b_dec_to_input"):
        load_coder(tmp_path / "t")


def test_a_transcoder_saelens_has_no_architecture_for_is_named_so_that_saelens_refuses_it(tmp_path):
    coder = build_coder(CoderConfig(d_in=D_IN, d_sae=D_SAE, architecture="topk", k=2, kind="transcoder",
                                    d_out=D_OUT, skip=True))
    coder.initialise(torch.randn(64, D_IN), torch.randn(64, D_OUT))
    with torch.no_grad():
        coder.W_skip.normal_()
    folder = save_saelens(coder, tmp_path / "t")
    assert json.loads((folder / "cfg.json").read_text())["architecture"] == "lvlm_studio.transcoder.topk"
    x = torch.randn(5, D_IN)
    torch.testing.assert_close(load_coder(folder)(x), coder.eval()(x))


@pytest.mark.parametrize("architecture", ["abstopk", "temporal", "matching_pursuit", "something_new"])
def test_architectures_not_computed_here_are_refused_by_name(tmp_path, architecture):
    _saelens(tmp_path / "a", _weights(), {"architecture": architecture})
    with pytest.raises(InputError, match=f"architecture '{architecture}' is not supported"):
        load_coder(tmp_path / "a")


@pytest.mark.parametrize("function", ["tanh-relu", "leaky_relu"])
def test_prisma_activations_not_computed_here_are_refused(tmp_path, function):
    _saelens(tmp_path / "a", _weights(), {"architecture": "standard", "activation_fn_str": function})
    with pytest.raises(InputError, match=f"activation_fn_str '{function}'"):
        load_coder(tmp_path / "a")
