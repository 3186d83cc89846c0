"""Which tokens a coder is applied at: a coder trained on every token ("all", how SAELens and
ViT-Prisma coders load) can be inspected and edited at the patches, the class token, or both.

The coder's features are the activation's coordinates, f = [relu(x), relu(−x)] and x̂ = x exactly,
so every number can be read off the hook's activation directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sae_helpers import exact_coder

from lvlm_studio.cli import main
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.models.hooks import hooks, run_with_cache
from lvlm_studio.sae.activations import image_inputs
from lvlm_studio.sae.formats import save_saelens
from lvlm_studio.sae.inspect import cls_features, edited_answer, image_features, scoped
from lvlm_studio.sae.splice import scale_features, splice_hooks

HOOK = "blocks.2.hook_resid_post"


def _exact(tokens: str):
    return exact_coder(HOOK, tokens)


def test_a_coder_trained_on_all_tokens_may_be_applied_at_any_of_them():
    coder = _exact("all")
    assert scoped(coder) is coder and scoped(coder, "all") is coder
    for tokens in ("patch", "cls"):
        view = scoped(coder, tokens)
        assert view.cfg.tokens == tokens and coder.cfg.tokens == "all"  # the original is untouched
        assert view.W_enc is coder.W_enc  # the same weights, not a copy
    assert scoped(_exact("patch")).cfg.tokens == "patch"


@pytest.mark.parametrize(("trained", "asked", "message"), [
    ("patch", "cls", "trained on patch tokens only; applied at cls tokens"),
    ("patch", "all", "trained on patch tokens only; applied at all tokens"),
    ("cls", "patch", "trained on cls tokens only"),
    ("text", None, "language hook point"),
    ("all", "text", "not a vision token kind"),
])
def test_a_scope_the_coder_was_not_trained_on_is_refused(trained, asked, message):
    with pytest.raises(InputError, match=message):
        scoped(_exact(trained), asked)


def _activation(demo_model, demo_trace) -> torch.Tensor:
    _, cache = run_with_cache(demo_model, image_inputs(demo_model, [demo_trace.image], demo_trace.prompt), HOOK)
    return cache[HOOK][0]  # [class token + 64 patches, 128]


def test_an_all_tokens_coder_gives_patch_maps_and_class_token_features(demo_model, demo_trace):
    coder = _exact("all")
    x = _activation(demo_model, demo_trace)
    features = image_features(demo_model, coder, demo_trace.image, demo_trace.prompt)
    np.testing.assert_allclose(features[..., :128], torch.relu(x[1:]).reshape(8, 8, 128).numpy(), atol=1e-5)
    np.testing.assert_allclose(features, image_features(demo_model, _exact("patch"), demo_trace.image,
                                                        demo_trace.prompt), atol=1e-6)
    cls = cls_features(demo_model, coder, demo_trace.image, demo_trace.prompt)
    np.testing.assert_allclose(cls, torch.cat([torch.relu(x[0]), torch.relu(-x[0])]).numpy(), atol=1e-5)
    with pytest.raises(InputError, match="trained on the class token only, so it has no patch maps"):
        image_features(demo_model, _exact("cls"), demo_trace.image, demo_trace.prompt)
    with pytest.raises(InputError, match="trained on patch tokens only; applied at cls"):
        cls_features(demo_model, _exact("patch"), demo_trace.image, demo_trace.prompt)


@pytest.mark.parametrize(("tokens", "zeroed"), [("cls", [0]), ("patch", list(range(1, 65))),
                                                 ("all", list(range(65)))])
def test_edits_reach_exactly_the_chosen_tokens(demo_model, demo_trace, tokens, zeroed):
    """Every feature × 0 sets the edited rows to x − x̂ = 0 and leaves the others as they were."""
    coder = scoped(_exact("all"), tokens)
    inputs = image_inputs(demo_model, [demo_trace.image], demo_trace.prompt)
    ablate = scale_features({i: 0.0 for i in range(256)})
    with hooks(demo_model, splice_hooks(demo_model, coder, inputs, "edit", ablate)):
        _, cache = run_with_cache(demo_model, inputs, [HOOK, "hook_projector_in"])
    edited, original = cache[HOOK][0], _activation(demo_model, demo_trace)
    kept = [i for i in range(65) if i not in zeroed]
    assert edited[zeroed].abs().max() < 1e-5
    torch.testing.assert_close(edited[kept], original[kept])


def test_edited_answer_takes_the_scope(demo_model, demo_trace):
    coder = _exact("all")
    for tokens in (None, "patch", "cls", "all"):
        assert edited_answer(demo_model, coder, demo_trace.image, demo_trace.prompt, {3: 1.0},
                             tokens=tokens) == demo_trace.answer_text
    with pytest.raises(InputError, match="trained on patch tokens only"):
        edited_answer(demo_model, _exact("patch"), demo_trace.image, demo_trace.prompt, {3: 0.0}, tokens="cls")


def test_inspect_a_foreign_all_tokens_coder_from_the_command_line(tmp_path, demo_scene):
    sae = save_saelens(_exact("all"), tmp_path / "sae")
    image = tmp_path / "scene.png"
    demo_scene.image.save(image)
    base = ["sae", "inspect", "--device", "cpu", "--sae", str(sae), "--image", str(image)]
    assert main([*base, "--feature", "5", "--scale", "5=0", "--out", str(tmp_path / "all")]) == 0
    text = (tmp_path / "all" / "inspect.md").read_text()
    assert "trained on all tokens, applied at all" in text and "at all tokens:" in text
    assert (tmp_path / "all" / "feature00005_map.png").exists()
    assert main([*base, "--tokens", "cls", "--scale", "5=0", "--out", str(tmp_path / "cls")]) == 0
    text = (tmp_path / "cls" / "inspect.md").read_text()
    assert "Features of the class token" in text and "applied at cls" in text and "at cls tokens:" in text
    assert main([*base, "--tokens", "cls", "--folder", str(tmp_path), "--out", str(tmp_path / "no")]) == 2
    patch_only = save_saelens(scoped(_exact("all"), "patch"), tmp_path / "patch-sae")
    assert main(["sae", "inspect", "--device", "cpu", "--sae", str(patch_only), "--image", str(image),
                 "--tokens", "all", "--out", str(tmp_path / "no2")]) == 2
