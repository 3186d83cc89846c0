"""The studies' statistics on planted truth: the ANOVA finds the factor that was planted and not the other."""

import numpy as np
import pytest

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.metrics.effects import factor_anova


def _synthetic(architecture_effect, size_effect, seed=0, images=20, noise=0.2):
    """Rows of one statistic per (model, image): 3 architectures x 2 sizes, an image effect, noise."""
    rng = np.random.default_rng(seed)
    image_effect = rng.normal(0, 0.5, images)
    rows = []
    for a, arch in enumerate(["clip", "siglip", "internvit"]):
        for s, size in enumerate(["7B", "72B"]):
            for i in range(images):
                value = architecture_effect[a] + size_effect[s] + image_effect[i] + rng.normal(0, noise)
                rows.append({"architecture": arch, "llm_size": size, "image": i, "entropy": value})
    return rows


def test_planted_architecture_effect_and_no_scale_effect():
    rows = _synthetic([0.0, 0.5, 1.0], [0.0, 0.0])
    arch, size = factor_anova(rows, "entropy", ["architecture", "llm_size"], block="image")
    assert arch.factor == "architecture" and arch.levels == 3 and arch.df == 2
    assert arch.p_value < 1e-10 and arch.partial_eta_squared > 0.7
    assert size.p_value > 0.05 and size.partial_eta_squared < 0.05


def test_planted_scale_effect_only():
    rows = _synthetic([0.0, 0.0, 0.0], [0.0, 0.6], seed=1)
    arch, size = factor_anova(rows, "entropy", ["architecture", "llm_size"], block="image")
    assert size.p_value < 1e-10 and arch.p_value > 0.05


def test_blocking_by_image_adds_power():
    rows = _synthetic([0.0, 0.1, 0.2], [0.0, 0.0], noise=0.1)
    without = factor_anova(rows, "entropy", ["architecture", "llm_size"])[0]
    blocked = factor_anova(rows, "entropy", ["architecture", "llm_size"], block="image")[0]
    assert blocked.p_value < without.p_value


def test_one_level_is_refused():
    rows = [r for r in _synthetic([0, 1, 2], [0, 0]) if r["llm_size"] == "7B"]
    with pytest.raises(InputError, match="llm_size"):
        factor_anova(rows, "entropy", ["architecture", "llm_size"])
