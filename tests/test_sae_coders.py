"""Sparse coders and their files against values worked out by hand on a 2-d, 3-feature example."""

from __future__ import annotations

import json

import pytest
import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.sae.coders import CoderConfig, Crosscoder, Transcoder, build_coder
from lvlm_studio.sae.formats import load_coder, save_saelens

# x − b_dec = [2, −0.5]; pre = (x − b_dec) W_enc + b_enc = [2, −0.5, 2 − 0.5 − 1] = [2, −0.5, 0.5]
W_ENC = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
B_ENC = torch.tensor([0.0, 0.0, -1.0])
W_DEC = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
B_DEC = torch.tensor([1.0, 1.0])
X = torch.tensor([[3.0, 0.5]])


def _coder(architecture: str = "standard", **extra):
    coder = build_coder(CoderConfig(d_in=2, d_sae=3, architecture=architecture, hook_name="blocks.1.hook_resid_post",
                                    **extra))
    with torch.no_grad():
        coder.W_enc.copy_(W_ENC)
        coder.b_enc.copy_(B_ENC)
        coder.W_dec.copy_(W_DEC)
        coder.b_dec.copy_(B_DEC)
    return coder


def test_relu_encodes_and_decodes_as_by_hand():
    coder = _coder()
    torch.testing.assert_close(coder.pre_activation(X), torch.tensor([[2.0, -0.5, 0.5]]))
    torch.testing.assert_close(coder.encode(X), torch.tensor([[2.0, 0.0, 0.5]]))
    torch.testing.assert_close(coder(X), torch.tensor([[3.5, 1.5]]))  # 2·[1,0] + 0.5·[1,1] + [1,1]


def test_topk_keeps_the_k_largest():
    coder = _coder("topk", k=1)
    torch.testing.assert_close(coder.encode(X), torch.tensor([[2.0, 0.0, 0.0]]))
    torch.testing.assert_close(coder(X), torch.tensor([[3.0, 1.0]]))


def test_jumprelu_passes_only_values_above_the_threshold():
    coder = _coder("jumprelu")
    with torch.no_grad():
        coder.log_threshold.copy_(torch.tensor([1.0, 1.0, 1.0]).log())
    torch.testing.assert_close(coder.encode(X), torch.tensor([[2.0, 0.0, 0.0]]))  # 0.5 < 1: cut
    with torch.no_grad():
        coder.log_threshold.copy_(torch.tensor([0.4, 0.4, 0.4]).log())
    torch.testing.assert_close(coder.encode(X), torch.tensor([[2.0, 0.0, 0.5]]))  # 0.5 > 0.4: kept whole


def test_jumprelu_threshold_gets_the_straight_through_gradient():
    # pre = 0.52 sits within ε/2 of θ = 0.5 (ε = 0.1): d(jump)/dθ = −θ/ε = −5, d(step)/dθ = −1/ε = −10.
    coder = build_coder(CoderConfig(d_in=1, d_sae=1, architecture="jumprelu", jumprelu_bandwidth=0.1,
                                    apply_b_dec_to_input=False))
    with torch.no_grad():
        coder.W_enc.fill_(1.0)
        coder.log_threshold.fill_(torch.tensor(0.5).log().item())
    coder.encode(torch.tensor([[0.52]])).sum().backward()
    torch.testing.assert_close(coder.log_threshold.grad, torch.tensor([-5.0 * 0.5]))  # chain rule: dθ/dlogθ = θ
    coder.zero_grad()
    losses = coder.loss(torch.tensor([[0.52]]), torch.tensor([[0.0]]), coefficient=1.0)
    assert losses["sparsity"].item() == 1.0  # one active feature
    losses["sparsity"].backward()
    torch.testing.assert_close(coder.log_threshold.grad, torch.tensor([-10.0 * 0.5]))


def test_relu_loss_is_squared_error_plus_decoder_weighted_l1():
    coder = _coder()
    losses = coder.loss(X, X, coefficient=0.1)
    # error = [0.5, 1.0] → 1.25; penalty = 2·‖[1,0]‖ + 0.5·‖[1,1]‖ = 2 + 0.5·√2
    torch.testing.assert_close(losses["mse"], torch.tensor(1.25))
    torch.testing.assert_close(losses["sparsity"], torch.tensor(2 + 0.5 * 2 ** 0.5))
    torch.testing.assert_close(losses["loss"], torch.tensor(1.25 + 0.1 * (2 + 0.5 * 2 ** 0.5)))


def test_matryoshka_loss_averages_the_prefix_reconstructions():
    coder = _coder()
    losses = coder.loss(X, X, coefficient=0.1, nested=(1, 2))
    # f = [2, 0, 0.5]. First feature only: x̂ = 2·[1,0] + [1,1] = [3, 1], error [0, 0.5] → 0.25;
    # first two: the same (f₂ = 0) → 0.25; all three: [3.5, 1.5], error [0.5, 1.0] → 1.25.
    torch.testing.assert_close(losses["mse"], torch.tensor(1.25))  # the whole dictionary's, for explained variance
    torch.testing.assert_close(losses["loss"], torch.tensor((0.25 + 0.25 + 1.25) / 3 + 0.1 * (2 + 0.5 * 2 ** 0.5)))
    same = coder.loss(X, X, coefficient=0.1, nested=(3, 7))  # sizes that are the whole dictionary or more: ignored
    torch.testing.assert_close(same["loss"], coder.loss(X, X, coefficient=0.1)["loss"])


def test_transcoder_predicts_another_space_with_a_skip_path():
    coder = Transcoder(CoderConfig(d_in=2, d_sae=3, d_out=1, kind="transcoder", skip=True))
    assert not coder.cfg.apply_b_dec_to_input
    with torch.no_grad():
        coder.W_enc.copy_(W_ENC)
        coder.b_enc.copy_(B_ENC)
        coder.W_dec.copy_(torch.tensor([[1.0], [2.0], [3.0]]))
        coder.b_dec.fill_(0.5)
        coder.W_skip.copy_(torch.tensor([[1.0], [0.0]]))
    f = coder.encode(X)  # pre = x W_enc + b_enc = [3, 0.5, 2.5]
    torch.testing.assert_close(f, torch.tensor([[3.0, 0.5, 2.5]]))
    torch.testing.assert_close(coder(X), torch.tensor([[3 + 1 + 7.5 + 0.5 + 3.0]]))


def test_crosscoder_shares_features_across_sources():
    coder = Crosscoder(CoderConfig(d_in=2, d_sae=3, kind="crosscoder", n_sources=2, apply_b_dec_to_input=False))
    with torch.no_grad():
        coder.W_enc[0].copy_(W_ENC)
        coder.W_enc[1].copy_(-W_ENC)
        coder.b_enc.copy_(B_ENC)
        coder.W_dec[:, 0].copy_(W_DEC)
        coder.W_dec[:, 1].copy_(2 * W_DEC)
    x = torch.tensor([[[3.0, 0.5], [1.0, 0.0]]])  # source 0 and source 1 of one token
    # pre = [3, 0.5, 3.5] − [1, 0, 1] + b_enc = [2, 0.5, 1.5]
    torch.testing.assert_close(coder.encode(x), torch.tensor([[2.0, 0.5, 1.5]]))
    out = coder(x)
    torch.testing.assert_close(out[0, 0], torch.tensor([3.5, 2.0]))  # 2·[1,0] + 0.5·[0,1] + 1.5·[1,1]
    torch.testing.assert_close(out[0, 1], torch.tensor([7.0, 4.0]))
    torch.testing.assert_close(coder.decoder_norms(), 3 * W_DEC.norm(dim=1))  # ‖row‖ + ‖2·row‖


def test_saelens_round_trip_keeps_weights_and_config(tmp_path):
    coder = _coder("jumprelu")
    with torch.no_grad():
        coder.log_threshold.copy_(torch.tensor([0.1, 0.2, 0.3]).log())
    folder = save_saelens(coder, tmp_path / "sae")
    config = json.loads((folder / "cfg.json").read_text())
    assert config["architecture"] == "jumprelu" and config["d_in"] == 2 and config["d_sae"] == 3
    assert config["hook_name"] == "blocks.1.hook_resid_post"
    from safetensors.torch import load_file

    stored = load_file(str(folder / "sae_weights.safetensors"))
    assert sorted(stored) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    # decoder rows saved unit-norm, their norms [1, 1, √2] folded into the encoder and thresholds
    norms = torch.tensor([1.0, 1.0, 2 ** 0.5])
    torch.testing.assert_close(stored["W_dec"].norm(dim=1), torch.ones(3))
    torch.testing.assert_close(stored["threshold"], torch.tensor([0.1, 0.2, 0.3]) * norms)
    torch.testing.assert_close(stored["W_enc"], W_ENC * norms)
    again = load_coder(folder)
    torch.testing.assert_close(again.encode(X), coder.encode(X) * norms)
    torch.testing.assert_close(again(X), coder(X))
    assert again.cfg.hook_name == "blocks.1.hook_resid_post"
    # a coder whose rows are unit-norm already reads back exactly, features included
    exact = load_coder(save_saelens(again, tmp_path / "again"))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        torch.testing.assert_close(getattr(exact, name), getattr(again, name))


def test_reads_a_saelens_file_written_by_the_older_field_names(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "old"
    folder.mkdir()
    save_file({"W_enc": W_ENC, "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": 2, "d_sae": 3, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 1},
        "metadata": {"hook_name": "blocks.0.hook_mlp_out"}, "normalize_activations": "none"}))
    coder = load_coder(folder)
    assert coder.cfg.architecture == "topk" and coder.cfg.k == 1 and coder.cfg.hook_name == "blocks.0.hook_mlp_out"
    torch.testing.assert_close(coder(X), torch.tensor([[3.0, 1.0]]))


def test_reads_a_prisma_folder(tmp_path):
    folder = tmp_path / "prisma"
    folder.mkdir()
    torch.save({"state_dict": {"W_enc": W_ENC, "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC}},
               folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps({
        "d_in": 2, "expansion_factor": 1.5, "hook_point": "blocks.1.hook_resid_post", "activation_fn_str": "relu"}))
    coder = load_coder(folder)
    assert coder.cfg.d_sae == 3 and coder.cfg.architecture == "standard"
    torch.testing.assert_close(coder(X), torch.tensor([[3.5, 1.5]]))


class _NotATensor:
    """Stands for anything a malicious or careless .pt file could pickle."""

    def __init__(self) -> None:
        self.payload = "runs on unpickle in a full torch.load"


def test_a_prisma_file_holding_a_pickled_object_is_refused(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"W_enc": W_ENC, "extra": _NotATensor()}, folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps({"d_in": 2, "d_sae": 3}))
    with pytest.raises(InputError, match="pickled object that is not a tensor") as info:
        load_coder(folder)
    assert "weights_only" in info.value.hint


def test_mismatched_or_missing_files_say_what_is_wrong(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_coder(tmp_path / "nowhere")
    folder = tmp_path / "bad"
    folder.mkdir()
    with pytest.raises(InputError, match="holds no sparse coder"):
        load_coder(folder)
    from safetensors.torch import save_file

    save_file({"W_enc": W_ENC.T.contiguous(), "b_enc": B_ENC, "W_dec": W_DEC, "b_dec": B_DEC},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"d_in": 2, "d_sae": 3}))
    with pytest.raises(InputError, match="W_enc has shape"):
        load_coder(folder)
    with pytest.raises(InputError, match="k="):
        CoderConfig(d_in=2, d_sae=3, architecture="topk")
