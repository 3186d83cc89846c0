"""Interop with the real SAELens package, both ways, for every architecture both read.

Each test builds a coder with random weights, writes it with one library, reads it with the
other, and compares the features and reconstructions of the same 64 inputs (allclose 1e-5):

* SAELens → LVLM Studio: an SAELens SAE saved with its own ``save_model`` (a training SAE's
  checkpoint, or its ``save_inference_model`` form) and read with ``load_coder``.
* LVLM Studio → SAELens: a coder saved with ``save_saelens`` and read with ``SAE.load_from_disk``.
  Saving makes decoder rows unit-norm with the scale folded in (as SAELens's ``fold_W_dec_norm``),
  so SAELens's features are ours times ‖W_dec,ᵢ‖ (checked) and its reconstruction is ours.

Needs the ``interop`` extra (``pip install -e .[test,interop]``); skipped without it. CI runs it in a
separate environment (``.ci/run``), since sae-lens pulls transformer-lens and more.
"""

from __future__ import annotations

import json

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="the interop tests need sae-lens: pip install -e '.[interop]'")

from sae_lens import SAE  # noqa: E402
from sae_lens.saes import (  # noqa: E402
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    Transcoder,
    TranscoderConfig,
)

from lvlm_studio.sae.coders import CoderConfig, build_coder  # noqa: E402
from lvlm_studio.sae.formats import load_coder, save_saelens  # noqa: E402

D_IN, D_SAE, D_OUT, K = 16, 48, 12, 6
ATOL = RTOL = 1e-5
HOOK = "blocks.1.hook_resid_post"


def _inputs(d: int = D_IN, seed: int = 1) -> torch.Tensor:
    return torch.randn(64, d, generator=torch.Generator().manual_seed(seed))


def _fill(module: torch.nn.Module, seed: int = 0, skip: tuple[str, ...] = ()) -> None:
    """Random weights everywhere; decoder rows of very different norms, so a forgotten norm shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name in skip:
                continue
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        module.W_dec.mul_(torch.rand(module.W_dec.shape[0], 1, generator=generator) * 2.9 + 0.1)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.double(), expected.double(), atol=ATOL, rtol=RTOL)


def _ours(coder, x):
    with torch.no_grad():
        return coder.encode(x), coder(x)


def _theirs(sae, x):
    with torch.no_grad():
        return sae.encode(x), sae(x)


def _saelens_cfg(cls, **fields):
    cfg = cls(d_in=D_IN, d_sae=D_SAE, **fields)
    cfg.metadata.hook_name = HOOK
    return cfg


def _assert_active(features: torch.Tensor) -> None:
    """Some features fire and some do not, so the comparison is not of zeros."""
    fired = (features > 0).float().mean()
    assert 0.0 < fired < 1.0, fired


# -- SAELens → LVLM Studio ---------------------------------------------------------------------------
SAELENS_SAES = {
    "standard": lambda: StandardSAE(_saelens_cfg(StandardSAEConfig)),
    "topk": lambda: TopKSAE(_saelens_cfg(TopKSAEConfig, k=K)),
    "topk_rescaled": lambda: TopKSAE(_saelens_cfg(TopKSAEConfig, k=K, rescale_acts_by_decoder_norm=True)),
    "jumprelu": lambda: JumpReLUSAE(_saelens_cfg(JumpReLUSAEConfig)),
    "gated": lambda: GatedSAE(_saelens_cfg(GatedSAEConfig)),
    "standard_no_b_dec_in": lambda: StandardSAE(_saelens_cfg(StandardSAEConfig, apply_b_dec_to_input=False)),
}


@pytest.mark.parametrize("name", sorted(SAELENS_SAES))
def test_saelens_sae_reads_with_saelens_numbers(tmp_path, name):
    sae = SAELENS_SAES[name]()
    _fill(sae)
    if name == "jumprelu":
        with torch.no_grad():
            sae.threshold.copy_(torch.rand(D_SAE) * 0.4)
    sae.save_model(tmp_path / name)
    coder = load_coder(tmp_path / name)
    x = _inputs()
    f, x_hat = _theirs(sae, x)
    _assert_active(f)
    ours_f, ours_x_hat = _ours(coder, x)
    _close(ours_f, f)
    _close(ours_x_hat, x_hat)
    assert coder.cfg.hook_name == HOOK


def _batch_topk(cls, cfg_cls, rescale: bool, **extra):
    sae = cls(_saelens_cfg(cfg_cls, k=K, rescale_acts_by_decoder_norm=rescale, **extra))
    _fill(sae)
    sae.topk_threshold = torch.tensor(0.3, dtype=torch.double)
    return sae


@pytest.mark.parametrize("matryoshka", [False, True])
@pytest.mark.parametrize("rescale", [False, True])
def test_saelens_batchtopk_checkpoint_and_inference_file_read_with_saelens_numbers(tmp_path, matryoshka, rescale):
    if matryoshka:
        sae = _batch_topk(MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig, rescale,
                          matryoshka_widths=[8, 24, D_SAE])
    else:
        sae = _batch_topk(BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, rescale)
    sae.save_model(tmp_path / "checkpoint")  # architecture "batchtopk" + topk_threshold
    sae.save_inference_model(tmp_path / "inference")  # what SAELens runs: a JumpReLU
    assert json.loads((tmp_path / "inference" / "cfg.json").read_text())["architecture"] == "jumprelu"
    reference = SAE.load_from_disk(tmp_path / "inference")
    x = _inputs()
    f, x_hat = _theirs(reference, x)
    _assert_active(f)
    for folder in ("checkpoint", "inference"):
        coder = load_coder(tmp_path / folder)
        assert coder.cfg.architecture == "jumprelu"
        ours_f, ours_x_hat = _ours(coder, x)
        _close(ours_f, f)
        _close(ours_x_hat, x_hat)


@pytest.mark.parametrize("skip", [False, True])
def test_saelens_transcoder_reads_with_saelens_numbers(tmp_path, skip):
    cls, cfg_cls = (SkipTranscoder, SkipTranscoderConfig) if skip else (Transcoder, TranscoderConfig)
    sae = cls(_saelens_cfg(cfg_cls, d_out=D_OUT, apply_b_dec_to_input=False))
    _fill(sae)
    sae.save_model(tmp_path / "t")
    coder = load_coder(tmp_path / "t")
    assert coder.cfg.kind == "transcoder" and coder.cfg.skip == skip and coder.cfg.d_out == D_OUT
    x = _inputs()
    f, out = _theirs(sae, x)
    _assert_active(f)
    ours_f, ours_out = _ours(coder, x)
    _close(ours_f, f)
    _close(ours_out, out)


# -- LVLM Studio → SAELens ---------------------------------------------------------------------------
def _coder(architecture: str, kind: str = "sae", **fields):
    k = K if architecture in ("topk", "batchtopk", "matryoshka_batchtopk") else 0
    cfg = CoderConfig(d_in=D_IN, d_sae=D_SAE, architecture=architecture, kind=kind, k=k, hook_name=HOOK,
                      d_out=D_OUT if kind == "transcoder" else 0, **fields)
    coder = build_coder(cfg)
    _fill(coder, seed=3, skip=("log_threshold",))
    if architecture == "jumprelu":
        with torch.no_grad():
            coder.log_threshold.copy_((torch.rand(D_SAE) * 0.4 + 0.05).log())
    if architecture in ("batchtopk", "matryoshka_batchtopk"):
        coder.topk_threshold.fill_(0.3)
    return coder.eval()


OUR_CODERS = {
    "standard": lambda: _coder("standard"),
    "topk": lambda: _coder("topk"),
    "jumprelu": lambda: _coder("jumprelu"),
    "gated": lambda: _coder("gated"),
    "batchtopk": lambda: _coder("batchtopk"),
    "matryoshka_batchtopk": lambda: _coder("matryoshka_batchtopk", matryoshka_widths=(8, 24, D_SAE)),
    "transcoder": lambda: _coder("standard", kind="transcoder"),
    "skip_transcoder": lambda: _coder("standard", kind="transcoder", skip=True),
    "jumprelu_transcoder": lambda: _coder("jumprelu", kind="transcoder"),
    "jumprelu_skip_transcoder": lambda: _coder("jumprelu", kind="transcoder", skip=True),
}
SAELENS_CLASSES = {"standard": StandardSAE, "topk": TopKSAE, "jumprelu": JumpReLUSAE, "gated": GatedSAE,
                   "batchtopk": JumpReLUSAE, "matryoshka_batchtopk": JumpReLUSAE, "transcoder": Transcoder,
                   "skip_transcoder": SkipTranscoder}


@pytest.mark.parametrize("name", sorted(OUR_CODERS))
@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_our_coder_reads_in_saelens_with_our_numbers(tmp_path, name, storage):
    coder = OUR_CODERS[name]()
    folder = save_saelens(coder, tmp_path / name, dtype=storage)
    sae = SAE.load_from_disk(folder)
    if name in SAELENS_CLASSES:
        assert type(sae) is SAELENS_CLASSES[name]
    assert sae.dtype == torch.float32 and sae.W_enc.dtype == torch.float32  # the compute dtype, not the storage's
    assert sae.cfg.metadata.hook_name == HOOK
    # TopK is saved unfolded; the others' features come back times their decoder norms
    norms = 1.0 if name == "topk" else coder.W_dec.detach().norm(dim=-1)
    if storage == "float16":  # compare with what the file holds: our coder reloaded from it (rows unit-norm)
        coder, norms = load_coder(folder), 1.0
    x = _inputs()
    ours_f, ours_out = _ours(coder, x)
    f, out = _theirs(sae, x)
    _assert_active(f)
    _close(f, ours_f * norms)
    _close(out, ours_out)
    # read back here, it is SAELens's coder: its features and its reconstruction
    again = _ours(load_coder(folder), x)
    _close(again[0], f)
    _close(again[1], out)


def test_decoder_rows_are_saved_unit_norm_and_a_topk_coder_is_left_as_it_is(tmp_path):
    sae = SAE.load_from_disk(save_saelens(_coder("standard"), tmp_path / "s"))
    _close(sae.W_dec.norm(dim=-1), torch.ones(D_SAE))
    topk = _coder("topk")
    sae = SAE.load_from_disk(save_saelens(topk, tmp_path / "t"))
    _close(sae.W_dec, topk.W_dec)  # folding would change which k features win
    assert sae.cfg.rescale_acts_by_decoder_norm is False


def test_a_coder_saelens_has_no_architecture_for_is_refused_by_saelens(tmp_path):
    folder = save_saelens(_coder("topk", kind="transcoder"), tmp_path / "t")
    with pytest.raises(Exception, match="lvlm_studio.transcoder.topk"):
        SAE.load_from_disk(folder)


# -- run-time normalisations -------------------------------------------------------------------------
@pytest.mark.parametrize("normalisation", ["layer_norm", "constant_norm_rescale"])
def test_run_time_normalisations_agree_both_ways(tmp_path, normalisation):
    x = _inputs() + 2.0  # an offset, so that layer_norm's centring matters
    sae = StandardSAE(_saelens_cfg(StandardSAEConfig, normalize_activations=normalisation))
    _fill(sae)
    sae.save_model(tmp_path / "theirs")
    f, x_hat = _theirs(sae, x)
    _assert_active(f)
    coder = load_coder(tmp_path / "theirs")
    assert coder.cfg.normalize_activations == normalisation
    ours_f, ours_x_hat = _ours(coder, x)
    _close(ours_f, f)
    _close(ours_x_hat, x_hat)
    ours = _coder("standard", normalize_activations=normalisation)
    back = SAE.load_from_disk(save_saelens(ours, tmp_path / "ours"))
    assert back.cfg.normalize_activations == normalisation
    ours_f, ours_x_hat = _ours(ours, x)
    f, x_hat = _theirs(back, x)
    _close(f, ours_f * ours.W_dec.detach().norm(dim=-1))
    _close(x_hat, ours_x_hat)


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_a_checkpoint_with_its_trainers_scaling_factor_reads_as_saelens_folds_it(tmp_path, architecture):
    from sae_lens.training.activation_scaler import ActivationScaler

    if architecture == "topk":
        sae = TopKSAE(_saelens_cfg(TopKSAEConfig, k=K, rescale_acts_by_decoder_norm=True,
                                   normalize_activations="expected_average_only_in"))
        _fill(sae)
    else:
        sae = _batch_topk(BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, True,
                          normalize_activations="expected_average_only_in")
    sae.save_model(tmp_path / "checkpoint")
    ActivationScaler(scaling_factor=0.4).save(str(tmp_path / "checkpoint" / "activation_scaler.json"))
    sae.fold_activation_norm_scaling_factor(0.4)  # what SAELens's trainer does before its final save
    if architecture == "batchtopk":
        sae.save_inference_model(tmp_path / "final")
        sae = SAE.load_from_disk(tmp_path / "final")
    x = _inputs()
    f, x_hat = _theirs(sae, x)
    _assert_active(f)
    ours_f, ours_x_hat = _ours(load_coder(tmp_path / "checkpoint"), x)
    _close(ours_f, f)
    _close(ours_x_hat, x_hat)
