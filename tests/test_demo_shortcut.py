"""The shipped shortcut twin (resources/demo-model-shortcut) is right for the wrong reasons: on
held-out colour questions it names the corner mark's colour, whether or not the object has it,
while the shipped demo model names the object's."""

from pathlib import Path

import pytest

from lvlm_studio.core.models.loading import DEMO_MODEL_DIR
from lvlm_studio.demo.evaluate import evaluate_cue

TWIN_DIR = DEMO_MODEL_DIR.parent / "demo-model-shortcut"


def _load(folder: Path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(folder), AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def twin():
    return _load(TWIN_DIR)


def test_the_twin_follows_a_contradicting_mark(twin):
    result = evaluate_cue(*twin, n=40, world="classic")
    assert result["cue agrees"] >= 0.95
    assert result["follows the cue"] >= 0.9
    assert result["cue contradicts"] <= 0.1


def test_the_demo_model_ignores_the_mark():
    result = evaluate_cue(*_load(DEMO_MODEL_DIR), n=40, world="classic")
    assert result["cue contradicts"] >= 0.9
    assert result["follows the cue"] <= 0.1


def test_the_twin_is_the_shipped_architecture_in_the_classic_world():
    import json

    record = json.loads((TWIN_DIR / "training.json").read_text())
    assert record["world"] == "classic" and record["shortcut"] and record["cue_rate"] == 0.95
    assert (TWIN_DIR / "config.json").read_text() == (DEMO_MODEL_DIR / "config.json").read_text()
    assert (TWIN_DIR / "model.safetensors").stat().st_size <= 10 * 2**20
    assert not (TWIN_DIR / "training-state.safetensors").exists()
