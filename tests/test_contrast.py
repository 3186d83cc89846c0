"""Contrastive targets ("why this token rather than that one"): the logit difference, scored once in
the core and read by every gradient, relevancy and perturbation method; attention views refuse it."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lvlm_studio import cli
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.perturbation.perturb import score_images
from lvlm_studio.core.plugin.contracts import CONTRAST, contrast_token, require_contrast, supports_contrast
from lvlm_studio.core.plugin.jobs import collect
from lvlm_studio.core.tracing.relevance import blurred_baseline
from lvlm_studio.core.tracing.scores import log_probability, logit_difference
from lvlm_studio.testing import run_explainer

CONTRASTIVE = ("grad_x_input", "gradcam", "relevancy", "occlusion", "rise", "integrated_gradients", "gradient_shap",
               "smoothgrad", "vargrad", "kernel_shap", "lime")
NOT_CONTRASTIVE = ("raw_attention", "rollout")


def _alternative(trace, token: int) -> int:
    """The most likely alternative at ``token`` that is not the chosen token."""
    return next(int(i) for i in trace.top_ids[token] if int(i) != int(trace.answer_ids[token]))


def test_the_logit_difference_is_the_difference_of_log_probabilities():
    logits = torch.randn(3, 5, 11, dtype=torch.float64) * 4
    targets = torch.randint(0, 11, (3, 5))
    difference = logit_difference(logits, targets, 7)
    alternative = torch.full_like(targets, 7)
    torch.testing.assert_close(difference, log_probability(logits, targets) - log_probability(logits, alternative))
    with pytest.raises(InputError, match="not in the model's vocabulary"):
        logit_difference(logits, targets, 11)


def test_which_methods_contrast(lvlm_registry):
    for method in CONTRASTIVE:
        explainer = lvlm_registry.explainer(method)
        assert supports_contrast(explainer), method
        assert contrast_token(explainer.resolve_params({})) is None
        assert contrast_token(explainer.resolve_params({"contrast": 5})) == 5
        require_contrast(explainer)  # no error
    for method in NOT_CONTRASTIVE:
        explainer = lvlm_registry.explainer(method)
        assert not supports_contrast(explainer)
        with pytest.raises(InputError, match="cannot explain a token against an alternative") as caught:
            require_contrast(explainer, ["occlusion"])
        assert "occlusion" in caught.value.hint
    with pytest.raises(InputError):
        CONTRAST.parse(-2)


def test_contrastive_grad_x_input_is_the_difference_of_the_two_gradients(lvlm_registry, demo_model, demo_trace):
    """Linearity: grad x input of z_chosen - z_alt equals grad x input of z_chosen minus that of z_alt."""
    explainer = lvlm_registry.explainer("grad_x_input")
    token = 1
    alternative = _alternative(demo_trace, token)
    contrast = run_explainer(explainer, demo_trace, demo_model, [token], contrast=alternative).maps[token][0]
    chosen = run_explainer(explainer, demo_trace, demo_model, [token], score="logit").maps[token][0]
    # The alternative's logit at the same position: the same trace with the alternative as the answer
    # token (the pass that predicts a token does not read the token itself).
    answer = demo_trace.answer_ids.copy()
    answer[token] = alternative
    other_trace = dataclasses.replace(demo_trace, answer_ids=answer)
    other = run_explainer(explainer, other_trace, demo_model, [token], score="logit").maps[token][0]
    scale = np.abs(chosen).max()
    assert scale > 0 and np.abs(contrast).max() > 0
    np.testing.assert_allclose(contrast, chosen - other, atol=1e-4 * scale)
    # The same contrast whatever score was chosen: log p differs from the logit by a shared term.
    logprob = run_explainer(explainer, demo_trace, demo_model, [token], contrast=alternative, score="logprob")
    np.testing.assert_allclose(logprob.maps[token][0], contrast, atol=1e-6 * scale)


def test_a_perturbation_score_against_an_alternative_is_the_difference_of_logits(demo_model, demo_trace):
    token = 1
    alternative = _alternative(demo_trace, token)
    images = [demo_trace.image, blurred_baseline(demo_trace.image)]
    scores, _ = collect(score_images(demo_model, demo_trace, images, contrast=alternative))
    with torch.no_grad():
        logits = demo_model.model(**demo_trace.teacher_forced_inputs(demo_model), use_cache=False).logits[0].double()
    rows = logits[torch.as_tensor([demo_trace.answer_position(i) - 1 for i in range(len(demo_trace.answer_ids))])]
    expected = rows[torch.arange(len(rows)), torch.as_tensor(demo_trace.answer_ids).long()] - rows[:, alternative]
    np.testing.assert_allclose(scores[0], expected.numpy(), atol=1e-4)
    # On an altered image too: log p(chosen) - log p(alternative), read from the trace's top-k alternatives.
    plain, _ = collect(score_images(demo_model, demo_trace, images))
    k = list(demo_trace.top_ids[token]).index(alternative)
    assert scores[0, token] == pytest.approx(demo_trace.logprobs[token] - demo_trace.top_logprobs[token, k], abs=1e-3)
    assert scores[1, token] != pytest.approx(scores[0, token], abs=1e-3)  # the blur moves it
    assert np.isfinite(plain).all()


@pytest.mark.parametrize("method", ["grad_x_input", "relevancy", "occlusion"])
def test_a_token_against_itself_has_a_zero_map(lvlm_registry, demo_model, demo_trace, method):
    explainer = lvlm_registry.explainer(method)
    token = 1
    fast = {"stride": 0.35} if method == "occlusion" else {}
    made = run_explainer(explainer, demo_trace, demo_model, [token], contrast=int(demo_trace.answer_ids[token]), **fast)
    assert np.abs(made.maps[token][0]).max() < 1e-6
    assert "minus that of token" in made.provenance["score"]



SAMPLE = Path(__file__).resolve().parents[1] / "resources" / "samples" / "shapes.png"


def _cli(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_refuses_a_contrast_for_attention_at_once(capsys, tmp_path):
    code, _, err = _cli(capsys, "explain", "--method", "raw_attention", "--contrast", "blue", "--image", str(SAMPLE),
                        "--prompt", "what color is the square?", "--out", str(tmp_path / "run"))
    assert code == cli.EXIT_INPUT
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot explain a token against an alternative" in errors[0]
    assert "occlusion" in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_the_cli_explains_against_an_alternative(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, _, err = _cli(capsys, "explain", "--method", "grad_x_input", "--contrast", "blue", "--image", str(SAMPLE),
                        "--prompt", "what color is the square?", "--device", "cpu", "--out", str(out_dir))
    assert code == 0, err
    record = json.loads((out_dir / "run.json").read_text())
    blue = record["method"]["params"]["contrast"]
    assert blue >= 0 and "against 'blue'" in err
    assert f"minus that of token {blue}" in record["provenance"]["score"]
    code, _, err = _cli(capsys, "explain", "--method", "grad_x_input", "--contrast", "blue green", "--image",
                        str(SAMPLE), "--prompt", "what color is the square?", "--device", "cpu", "--out",
                        str(tmp_path / "other"))
    assert code == cli.EXIT_INPUT and "is not one token of this model's vocabulary" in err


@pytest.mark.parametrize("method", ["grad_x_input", "relevancy"])
def test_red_rather_than_blue_points_at_the_red_object_more(lvlm_registry, demo_model, method):
    """A scene with one red and one blue object, asked the red one's colour: the map of "red" against
    "blue" puts a larger share of its positive mass on the red object than the plain map does
    (measured over ten such scenes in docs/METHODS.md; this is one of them)."""
    from lvlm_studio.core.plugin.explanation import to_pixels
    from lvlm_studio.core.tracing.trace import generate_trace
    from lvlm_studio.demo.scenes import make_scene

    scene = make_scene(10050)
    (red,) = [o for o in scene.objects if o.colour == "red"]
    (blue,) = [o for o in scene.objects if o.colour == "blue"]
    trace = generate_trace(demo_model, scene.image, f"what color is the {red.shape}?")
    token = [t.strip() for t in trace.answer_tokens].index("red")
    blue_id = demo_model.processor.tokenizer.convert_tokens_to_ids("blue")
    explainer = lvlm_registry.explainer(method)

    def red_share(**params) -> float:
        maps = run_explainer(explainer, trace, demo_model, [token], **params).maps[token]
        positive = np.clip(np.nan_to_num(to_pixels(maps, trace.regions, trace.image.size)), 0, None)
        on_red, on_blue = positive[red.mask].sum(), positive[blue.mask].sum()
        return on_red / (on_red + on_blue)

    plain, contrast = red_share(), red_share(contrast=blue_id)
    assert contrast > plain + 0.1, (plain, contrast)


def test_captum_methods_explain_the_logit_difference(lvlm_registry, demo_model, demo_trace):
    """Integrated Gradients is linear in the function it explains: against an alternative, its map is
    IG of log p(chosen) minus IG of log p(alternative) (the same trace with the alternative as the
    answer token), which is what the logit difference is."""
    explainer = lvlm_registry.explainer("integrated_gradients")
    token = 1
    alternative = _alternative(demo_trace, token)
    cheap = {"steps": 4, "baseline": "black"}
    contrast = run_explainer(explainer, demo_trace, demo_model, [token], contrast=alternative, **cheap)
    chosen = run_explainer(explainer, demo_trace, demo_model, [token], **cheap).maps[token][0]
    answer = demo_trace.answer_ids.copy()
    answer[token] = alternative
    other_trace = dataclasses.replace(demo_trace, answer_ids=answer)
    other = run_explainer(explainer, other_trace, demo_model, [token], **cheap).maps[token][0]
    scale = np.abs(chosen - other).max()
    assert scale > 0
    np.testing.assert_allclose(contrast.maps[token][0], chosen - other, atol=1e-6 * scale)
    assert "minus that of token" in contrast.provenance["score"]
