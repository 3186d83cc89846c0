"""Training sparse coders on streamed activations: progress, cancel, checkpoints, resume, dead features,
and evaluation against a coder whose answers are known exactly."""

from __future__ import annotations

import threading

import pytest
import torch
from sae_helpers import exact_coder

from lvlm_studio.core.errors import Cancelled, InputError
from lvlm_studio.core.plugin.jobs import collect, run_job
from lvlm_studio.sae.coders import CoderConfig, build_coder
from lvlm_studio.sae.evaluate import evaluate_coder, format_evaluations
from lvlm_studio.sae.training import TrainSettings, _Trainer, train_coder

SMALL = dict(count=32, images_per_pass=8, buffer_passes=2, batch_tokens=128, expansion=2, log_every=1)


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_each_architecture_trains_and_reconstructs_better_than_its_start(demo_model, architecture):
    settings = TrainSettings(hook_name="blocks.1.hook_resid_post", architecture=architecture, k=8, **SMALL)
    result, progress = collect(train_coder(demo_model, settings))
    assert progress[-1].done == 32 and progress[-1].total == 32
    assert result.tokens_seen == 32 * 64  # two buffers of 16 scenes x 64 patches, in whole minibatches
    assert result.history[-1]["explained_variance"] > result.history[0]["explained_variance"]
    assert result.coder.cfg.d_sae == 256 and result.coder.cfg.hook_name == "blocks.1.hook_resid_post"
    if architecture == "topk":
        assert result.history[-1]["l0"] <= 8


def test_the_saved_coder_reads_raw_activations(demo_model):
    """The training-time scaling is folded into the weights: encoding raw rows gives the features
    the trainer saw on scaled rows."""
    from lvlm_studio.sae.activations import demo_images, image_batch_rows

    settings = TrainSettings(hook_name="blocks.1.hook_resid_post", **SMALL)
    images = list(demo_images(8))
    (rows,) = image_batch_rows(demo_model, ["blocks.1.hook_resid_post"], images, "patch")
    trainer = _Trainer.start("demo-model", settings, rows, rows)
    folded = trainer.folded()
    with torch.no_grad():  # the features are 1/scale as large, so that the decoder rows stay unit-norm
        scaled = trainer.coder.encode(rows * trainer.scale_in)
        torch.testing.assert_close(folded.encode(rows) * trainer.scale_out, scaled, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(folded.W_dec.norm(dim=1), torch.ones(folded.cfg.d_sae))
        torch.testing.assert_close(folded(rows), trainer.coder(rows * trainer.scale_in) / trainer.scale_in,
                                   atol=1e-4, rtol=1e-4)


def test_transcoder_and_crosscoder_train_on_two_hook_points(demo_model):
    transcoder = run_job(train_coder(demo_model, TrainSettings(
        hook_name="blocks.1.hook_resid_mid", hook_name_out="blocks.1.hook_mlp_out", kind="transcoder", skip=True,
        **SMALL)))
    assert transcoder.coder.cfg.kind == "transcoder"
    assert transcoder.history[-1]["explained_variance"] > transcoder.history[0]["explained_variance"]
    crosscoder = run_job(train_coder(demo_model, TrainSettings(
        hook_name="blocks.0.hook_resid_post", hook_names=("blocks.0.hook_resid_post", "blocks.2.hook_resid_post"),
        kind="crosscoder", **SMALL)))
    assert crosscoder.coder.W_dec.shape == (256, 2, 128)
    assert crosscoder.coder.source_norms().shape == (256, 2)


def test_cancel_checkpoints_and_resume_finishes_the_same_data(demo_model, tmp_path):
    settings = TrainSettings(hook_name="blocks.1.hook_resid_post", checkpoint_every=1000, **SMALL)
    cancel = threading.Event()
    steps = []

    def stop_after_first(progress):
        steps.append(progress)
        cancel.set()

    with pytest.raises(Cancelled):
        run_job(train_coder(demo_model, settings, tmp_path / "ckpt"), stop_after_first, cancel)
    assert (tmp_path / "ckpt" / "trainer.safetensors").exists()
    resumed = run_job(train_coder(demo_model, settings, tmp_path / "ckpt", resume=True))
    assert len(steps) == 1 and resumed.history[0]["step"] == 1  # the history goes on from the saved step
    # The interrupted run trained one 128-token step on its first buffer (scenes 0-15); resuming
    # carries that step on and reads from scene 16, the first one not yet read.
    assert resumed.tokens_seen == 128 + 16 * 64
    with pytest.raises(InputError, match="trained with architecture"):
        run_job(train_coder(demo_model, TrainSettings(hook_name="blocks.1.hook_resid_post", architecture="topk",
                                                      **SMALL), tmp_path / "ckpt", resume=True))
    with pytest.raises(InputError, match="no checkpoint"):
        run_job(train_coder(demo_model, settings, tmp_path / "empty", resume=True))


def test_dead_features_get_the_direction_of_the_worst_reconstructed_token():
    settings = TrainSettings(hook_name="x", dead_after_tokens=1, expansion=1)
    coder = build_coder(CoderConfig(d_in=2, d_sae=2))
    with torch.no_grad():
        coder.W_enc.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        coder.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    trainer = _Trainer(coder, settings, torch.tensor(1.0), torch.tensor(1.0))
    trainer.since_fired = torch.tensor([0, 5])  # feature 1 never fires
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # the second token's y-part is not reconstructed at all
    assert trainer.resample(x, x) == 1
    torch.testing.assert_close(coder.W_dec[1], torch.tensor([0.0, 1.0]))  # its residual, normalised
    torch.testing.assert_close(coder.W_enc[:, 1], torch.tensor([0.0, 0.2]))  # 0.2 x mean alive encoder norm (1)
    assert trainer.since_fired.tolist() == [0, 0]


def test_language_coders_train_at_text_positions(demo_model):
    result = run_job(train_coder(demo_model, TrainSettings(hook_name="lm.blocks.2.hook_resid_post", tokens="text",
                                                           count=16, buffer_passes=4, batch_tokens=64, expansion=2)))
    assert result.coder.cfg.tokens == "text" and result.tokens_seen > 0
    with pytest.raises(InputError, match="tokens=text"):
        run_job(train_coder(demo_model, TrainSettings(hook_name="lm.blocks.2.hook_resid_post", **SMALL)))
    with pytest.raises(InputError, match="attention patterns"):
        run_job(train_coder(demo_model, TrainSettings(hook_name="blocks.0.attn.hook_pattern", **SMALL)))


def test_evaluation_of_an_exact_coder_recovers_everything(demo_model):
    from lvlm_studio.demo.evaluate import heldout_examples

    examples = [(s.image, e.prompt, e.answer) for s, e in heldout_examples(3, "caption")]
    vision = run_job(evaluate_coder(demo_model, exact_coder("blocks.1.hook_resid_post", "patch"), examples, 3))
    assert vision.rows == 3 * 64 and vision.l0 == 128 and vision.l0_cls == 128
    assert vision.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert vision.nll_coder == pytest.approx(vision.nll_original, abs=1e-5)
    assert vision.nll_zero > vision.nll_original + 0.1
    assert vision.ce_recovered == pytest.approx(1.0, abs=1e-4)
    # Feature j fires where coordinate j is positive, feature 128 + j where it is negative.
    from lvlm_studio.sae.activations import image_batch_rows

    (rows,) = image_batch_rows(demo_model, ["blocks.1.hook_resid_post"], [e[0] for e in examples], "patch")
    expected_alive = int((rows > 0).any(0).sum() + (rows < 0).any(0).sum())
    assert vision.alive == expected_alive and vision.dead == 256 - expected_alive
    language = run_job(evaluate_coder(demo_model, exact_coder("lm.blocks.2.hook_resid_post", "text"), examples, 3))
    assert language.l0_cls is None and language.ce_recovered == pytest.approx(1.0, abs=1e-4)
    table = format_evaluations([("vision", vision), ("language", language)])
    # The demo captions' clean NLL is ~0, the loss floor: CE recovered is flagged as saturated there.
    assert "| CE recovered | 1.000 (saturated) | 1.000 (saturated) |" in table
