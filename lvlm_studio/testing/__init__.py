"""pytest fixtures for plugin authors (registered through the ``pytest11`` entry point).

Install LVLM Studio in the environment that tests your plugin and these fixtures are available
with no import:

    def test_my_method(demo_model, demo_trace):
        explanation = run_explainer(MyExplainer(), demo_trace, demo_model)
        check_explanation(explanation, demo_trace)

    def test_every_family(tiny_model, tiny_trace):   # parametrised over the built-in families
        check_explanation(run_explainer(MyExplainer(), tiny_trace, tiny_model), tiny_trace)

Nothing heavy is imported until a fixture is used, so merely installing LVLM Studio costs other
projects' test runs nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

HELDOUT_SCENE_SEED = 2_000_000_007  # a held-out demo scene with three objects


@pytest.fixture(scope="session")
def lvlm_registry():
    """The plugin registry as the application builds it (first-party and installed plugins)."""
    from lvlm_studio.core.plugin.registry import create_registry

    return create_registry()


@pytest.fixture(scope="session")
def demo_model():
    """The embedded demo model (a tiny LLaVA trained on shape scenes), on the CPU."""
    from lvlm_studio.core.models.loading import LoadOptions, load_model

    return load_model(None, LoadOptions(device="cpu"))


@pytest.fixture(scope="session")
def demo_scene():
    """A held-out demo scene: ``.image``, ``.objects`` (each with ``.mask`` and ``.words``)."""
    from lvlm_studio.demo.scenes import make_scene

    return make_scene(HELDOUT_SCENE_SEED)


@pytest.fixture(scope="session")
def demo_trace(demo_model, demo_scene):
    """The demo model's caption of ``demo_scene``."""
    from lvlm_studio.core.tracing.trace import generate_trace

    return generate_trace(demo_model, demo_scene.image, "describe the image.")


def _tiny_families() -> tuple[str, ...]:
    """Every built-in family, or the comma-separated subset in ``LVLM_STUDIO_TINY_FAMILIES`` (for a
    quick local run; CI runs them all)."""
    import os

    from lvlm_studio.testing.tiny_models import TINY_FAMILIES

    chosen = [f.strip() for f in os.environ.get("LVLM_STUDIO_TINY_FAMILIES", "").split(",") if f.strip()]
    unknown = sorted(set(chosen) - set(TINY_FAMILIES))
    if unknown:
        raise pytest.UsageError(f"LVLM_STUDIO_TINY_FAMILIES names unknown families {unknown}; "
                                f"choose from {', '.join(TINY_FAMILIES)}")
    return tuple(chosen) or TINY_FAMILIES


@pytest.fixture(scope="session", params=_tiny_families())
def tiny_model(request, tmp_path_factory):
    """A tiny random model of each built-in family (a fresh parameter per family), loaded on CPU
    through the same path as a user's model folder."""
    from lvlm_studio.core.models.loading import LoadOptions, load_model
    from lvlm_studio.testing.tiny_models import build_tiny_model

    folder = build_tiny_model(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))
    return load_model(folder, LoadOptions(device="cpu"))


@pytest.fixture(scope="session")
def tiny_trace(tiny_model):
    """A short answer of each family's tiny model about a wide image (skips if it says nothing)."""
    from PIL import Image

    from lvlm_studio.core.tracing.trace import generate_trace

    trace = generate_trace(tiny_model, Image.new("RGB", (64, 40), (20, 20, 220)), "describe the image.",
                           max_new_tokens=3)
    if len(trace.answer_ids) == 0:
        pytest.skip("the random model ended its answer at once")
    return trace


def run_explainer(explainer: Any, trace: Any, model: Any, targets: list[int] | None = None, **params: Any):
    """Resolve parameters, run the explainer (driving it if it is a job) and return its Explanation.

    When the explainer declares that it does not apply to ``model`` (``Explainer.applies_to``, e.g. a
    method that reads image tokens on Mllama, whose image enters by cross-attention), the test is
    skipped with that reason: every-family tests then cover exactly the families a method supports.
    """
    from lvlm_studio.core.plugin.jobs import run_job

    targets = list(range(len(trace.answer_ids))) if targets is None else targets
    resolved = explainer.resolve_params(params)
    if model is not None and (reason := explainer.applies_to(model, resolved)) is not None:
        pytest.skip(f"{explainer.id} does not apply to {model.family}: {reason}")
    return run_job(explainer.explain(trace, model, targets, resolved))


def check_explanation(explanation: Any, trace: Any, targets: list[int] | None = None) -> None:
    """Assert the contract every explainer must keep: a finite map of each region's grid shape
    for every target token."""
    import numpy as np

    targets = list(range(len(trace.answer_ids))) if targets is None else targets
    assert sorted(explanation.maps) == sorted(targets), "one entry per target token"
    for token in targets:
        maps = explanation.maps[token]
        assert len(maps) == len(trace.regions), f"token {token}: one map per image region"
        for grid_map, region in zip(maps, trace.regions):
            assert grid_map.shape == tuple(region.grid), f"token {token}, {region.name}: grid shape"
            assert np.isfinite(grid_map).all(), f"token {token}, {region.name}: finite values"
