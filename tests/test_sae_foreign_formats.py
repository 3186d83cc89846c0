"""Foreign sparse-coder files built by hand the way SAELens and ViT-Prisma write them, loaded and
checked against the formulas those libraries compute (restated here in NumPy), or refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.sae.formats import load_coder, save_saelens

D_IN, D_SAE, D_OUT, K = 6, 10, 4, 3


def _weights(seed: int = 0, d_out: int = D_IN) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(size=(D_IN, D_SAE)), "b_enc": rng.normal(size=D_SAE) * 0.3,
            # decoder rows of very different norms, so that rescaling changes which features win
            "W_dec": rng.normal(size=(D_SAE, d_out)) * rng.uniform(0.1, 5.0, size=(D_SAE, 1)),
            "b_dec": rng.normal(size=d_out)}


def _inputs(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(7, D_IN)) * 2


def _topk(pre: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest entries, ReLU'd; zero the rest (SAELens's and Prisma's TopK)."""
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[:, :k]
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, axis=-1), 0), axis=-1)
    return out


def _saelens(folder, weights: dict[str, np.ndarray], cfg: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({n: torch.tensor(v, dtype=torch.float32) for n, v in weights.items()},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))


def _prisma(folder, weights: dict[str, np.ndarray], cfg: dict) -> None:
    folder.mkdir()
    torch.save({n: torch.tensor(v, dtype=torch.float32) for n, v in weights.items()}, folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps(cfg))


def _run(coder, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        t = torch.tensor(x, dtype=torch.float32)
        return coder.encode(t).numpy(), coder(t).numpy()


SAELENS_TOPK = {"architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "k": K, "dtype": "float32",
                "apply_b_dec_to_input": True, "normalize_activations": "none",
                "metadata": {"hook_name": "blocks.1.hook_resid_post"}}


def test_saelens_topk_with_rescale_acts_by_decoder_norm_gives_saelens_numbers(tmp_path):
    w, x = _weights(), _inputs()
    _saelens(tmp_path / "sae", w, {**SAELENS_TOPK, "rescale_acts_by_decoder_norm": True})
    coder = load_coder(tmp_path / "sae")
    # SAELens: hidden_pre = ((x − b_dec) W_enc + b_enc) ⊙ ‖W_dec,i‖; f = TopK; x̂ = (f / ‖W_dec,i‖) W_dec + b_dec
    norms = np.linalg.norm(w["W_dec"], axis=-1)
    f = _topk(((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms, K)
    x_hat = (f / norms) @ w["W_dec"] + w["b_dec"]
    features, reconstruction = _run(coder, x)
    np.testing.assert_allclose(features, f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(reconstruction, x_hat, atol=1e-5, rtol=1e-5)
    # the flag changes the answer on these weights, so the test would catch it being ignored
    assert not np.allclose(_topk((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], K), f, atol=1e-3)
    # saved back, the folded coder needs no flag and gives the same numbers
    again = load_coder(save_saelens(coder, tmp_path / "back"))
    np.testing.assert_allclose(_run(again, x)[1], x_hat, atol=1e-5, rtol=1e-5)


def test_saelens_topk_without_the_flag_is_unchanged(tmp_path):
    w, x = _weights(), _inputs()
    _saelens(tmp_path / "sae", w, {**SAELENS_TOPK, "rescale_acts_by_decoder_norm": False})
    f = _topk((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], K)
    features, reconstruction = _run(load_coder(tmp_path / "sae"), x)
    np.testing.assert_allclose(features, f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(reconstruction, f @ w["W_dec"] + w["b_dec"], atol=1e-5, rtol=1e-5)


def test_rescale_flag_with_a_zero_decoder_row_or_a_non_topk_sae_is_refused(tmp_path):
    w = _weights()
    w["W_dec"][2] = 0
    _saelens(tmp_path / "zero", w, {**SAELENS_TOPK, "rescale_acts_by_decoder_norm": True})
    with pytest.raises(InputError, match=r"rescale_acts_by_decoder_norm.*decoder rows \[2\]"):
        load_coder(tmp_path / "zero")
    _saelens(tmp_path / "relu", _weights(), {**SAELENS_TOPK, "architecture": "standard",
                                             "rescale_acts_by_decoder_norm": True})
    with pytest.raises(InputError, match="rescale_acts_by_decoder_norm is set for a standard SAE"):
        load_coder(tmp_path / "relu")


PRISMA = {"d_in": D_IN, "expansion_factor": D_SAE / D_IN, "hook_point": "blocks.1.hook_resid_post",
          "architecture": "standard", "normalize_activations": None}


def test_prisma_standard_architecture_with_topk_activation_loads_as_topk(tmp_path):
    w, x = _weights(), _inputs()
    _prisma(tmp_path / "p", w, {**PRISMA, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K}})
    coder = load_coder(tmp_path / "p")
    assert coder.cfg.architecture == "topk" and coder.cfg.k == K
    f = _topk((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], K)
    features, reconstruction = _run(coder, x)
    assert (features > 0).sum(axis=-1).max() <= K
    np.testing.assert_allclose(features, f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(reconstruction, f @ w["W_dec"] + w["b_dec"], atol=1e-5, rtol=1e-5)


def test_an_architecture_contradicting_the_activation_is_refused(tmp_path):
    _prisma(tmp_path / "p", _weights(), {**PRISMA, "architecture": "jumprelu", "activation_fn_str": "topk",
                                         "activation_fn_kwargs": {"k": K}})
    with pytest.raises(InputError, match="architecture 'jumprelu' but activation_fn_str 'topk'"):
        load_coder(tmp_path / "p")


def test_prisma_transcoder_uses_its_output_bias_and_size(tmp_path):
    w, x = _weights(d_out=D_OUT), _inputs()
    w["b_dec"] = np.random.default_rng(5).normal(size=D_IN)  # the input centring, d_in
    w["b_dec_out"] = np.random.default_rng(6).normal(size=D_OUT) * 3
    _prisma(tmp_path / "t", w, {**PRISMA, "activation_fn_str": "relu", "is_transcoder": True, "d_out": D_OUT})
    coder = load_coder(tmp_path / "t")
    assert coder.cfg.kind == "transcoder" and coder.cfg.d_out == D_OUT
    # Prisma: f = ReLU((x − b_dec) W_enc + b_enc); out = f W_dec + b_dec_out
    f = np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
    features, output = _run(coder, x)
    np.testing.assert_allclose(features, f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(output, f @ w["W_dec"] + w["b_dec_out"], atol=1e-5, rtol=1e-5)


def test_prisma_transcoder_with_a_skip_connection_adds_x_times_w_skip_transposed(tmp_path):
    w, x = _weights(), _inputs()  # Prisma's skip needs d_out = d_in: W_skip is [d_in, d_in], applied x W_skipᵀ
    w["b_dec_out"] = np.random.default_rng(6).normal(size=D_IN)
    w["W_skip"] = np.random.default_rng(7).normal(size=(D_IN, D_IN))
    _prisma(tmp_path / "t", w, {**PRISMA, "activation_fn_str": "relu", "is_transcoder": True,
                                "transcoder_with_skip_connection": True})
    coder = load_coder(tmp_path / "t")
    assert coder.cfg.skip
    f = np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
    np.testing.assert_allclose(_run(coder, x)[1], f @ w["W_dec"] + w["b_dec_out"] + x @ w["W_skip"].T,
                               atol=1e-5, rtol=1e-5)
    assert not np.allclose(w["W_skip"], w["W_skip"].T)  # so that the orientation is tested
    _prisma(tmp_path / "n", w, {**PRISMA, "activation_fn_str": "relu", "is_transcoder": True,
                                "transcoder_with_skip_connection": True, "normalize_activations": "layer_norm"})
    with pytest.raises(InputError, match="ViT-Prisma maps the output back after adding the skip path"):
        load_coder(tmp_path / "n")


def test_prisma_transcoder_without_its_output_bias_is_refused(tmp_path):
    _prisma(tmp_path / "t", _weights(), {**PRISMA, "activation_fn_str": "relu", "is_transcoder": True})
    with pytest.raises(InputError, match="no 'b_dec_out' tensor, which a transcoder"):
        load_coder(tmp_path / "t")


def test_unknown_tensors_are_named_not_dropped(tmp_path):
    w = _weights()
    extra = {**w, "b_gate": np.zeros(D_SAE), "r_mag": np.zeros(D_SAE)}
    _saelens(tmp_path / "s", extra, {**SAELENS_TOPK, "architecture": "standard"})
    with pytest.raises(InputError, match="does not use: b_gate, r_mag"):
        load_coder(tmp_path / "s")
    _prisma(tmp_path / "p", {**w, "b_dec_out": np.zeros(D_IN)}, {**PRISMA, "activation_fn_str": "relu"})
    with pytest.raises(InputError, match="does not use: b_dec_out"):
        load_coder(tmp_path / "p")


def _normalised(x: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SAELens's and ViT-Prisma's run-time normalisation: (normalised x, scale, shift) with
    x = normalised · scale + shift (layer_norm's way back has no 1e-5)."""
    if mode == "constant_norm_rescale":
        scale = np.linalg.norm(x, axis=-1, keepdims=True) / np.sqrt(x.shape[-1])
        return x / scale, scale, np.zeros_like(scale)
    mu = x.mean(axis=-1, keepdims=True)
    std = (x - mu).std(axis=-1, ddof=1, keepdims=True)
    return (x - mu) / (std + 1e-5), std, mu


@pytest.mark.parametrize("normalisation", ["layer_norm", "constant_norm_rescale"])
def test_run_time_normalisations_give_their_library_numbers(tmp_path, normalisation):
    w, x = _weights(), _inputs() + 3.0  # an offset, so that layer_norm's centring matters
    z, scale, shift = _normalised(x, normalisation)
    f = _topk((z - w["b_dec"]) @ w["W_enc"] + w["b_enc"], K)
    x_hat = (f @ w["W_dec"] + w["b_dec"]) * scale + shift
    _saelens(tmp_path / "s", w, {**SAELENS_TOPK, "normalize_activations": normalisation})
    _prisma(tmp_path / "p", w, {**PRISMA, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K},
                                "normalize_activations": normalisation})
    for folder in ("s", "p"):
        coder = load_coder(tmp_path / folder)
        assert coder.cfg.normalize_activations == normalisation
        features, reconstruction = _run(coder, x)
        np.testing.assert_allclose(features, f, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(reconstruction, x_hat, atol=1e-5, rtol=1e-5)
    again = load_coder(save_saelens(coder, tmp_path / "back"))  # written with its normalisation, read back the same
    assert json.loads((tmp_path / "back" / "cfg.json").read_text())["normalize_activations"] == normalisation
    np.testing.assert_allclose(_run(again, x)[1], x_hat, atol=1e-5, rtol=1e-5)


def test_a_dataset_wide_factor_is_folded_in_when_its_trainer_left_it_and_refused_otherwise(tmp_path):
    w, x = _weights(), _inputs()
    config = {**SAELENS_TOPK, "normalize_activations": "expected_average_only_in"}
    _saelens(tmp_path / "s", w, config)
    with pytest.raises(InputError, match="neither its folder .activation_scaler.json. nor its file holds the factor"):
        load_coder(tmp_path / "s")
    (tmp_path / "s" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.25}))
    # SAELens's trainer: the coder read 0.25·x and wrote 0.25·x̂
    f = _topk((0.25 * x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], K)
    x_hat = (f @ w["W_dec"] + w["b_dec"]) / 0.25
    features, reconstruction = _run(load_coder(tmp_path / "s"), x)
    np.testing.assert_allclose(features, f, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(reconstruction, x_hat, atol=1e-5, rtol=1e-5)
    (tmp_path / "s" / "activation_scaler.json").write_text(json.dumps({"scaling_factor": None}))
    with pytest.raises(InputError, match="gives None, not a positive number"):
        load_coder(tmp_path / "s")
    _saelens(tmp_path / "old", w, {**SAELENS_TOPK, "normalize_activations": True})  # SAELens < 6 wrote a flag
    with pytest.raises(InputError, match="expected_average_only_in"):
        load_coder(tmp_path / "old")


def test_whitening_and_head_reshaping_are_refused_with_what_they_need(tmp_path):
    _saelens(tmp_path / "w", _weights(), {**SAELENS_TOPK, "normalize_activations": "covariance_whitening"})
    with pytest.raises(InputError, match="does not hold the mean and matrix"):
        load_coder(tmp_path / "w")
    _saelens(tmp_path / "z", _weights(), {**SAELENS_TOPK, "reshape_activations": "hook_z"})
    with pytest.raises(InputError, match="hook_z"):
        load_coder(tmp_path / "z")
    transcoder = {**SAELENS_TOPK, "architecture": "transcoder", "d_out": D_OUT, "apply_b_dec_to_input": False,
                  "normalize_activations": "layer_norm"}
    _saelens(tmp_path / "t", _weights(d_out=D_OUT), transcoder)
    with pytest.raises(InputError, match="never maps its output back"):
        load_coder(tmp_path / "t")
