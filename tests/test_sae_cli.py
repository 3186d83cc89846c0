"""`lvlm-studio sae hooks|train|eval|inspect` and the analyzer plugin, end to end on the demo model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lvlm_studio.cli import main
from lvlm_studio.core.plugin.jobs import run_job


def test_hooks_lists_vision_projector_and_language_points(capsys):
    assert main(["sae", "hooks", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for name in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "hook_projector_out",
                 "lm.blocks.3.hook_mlp_out"):
        assert name in out


def test_train_then_eval_then_inspect(tmp_path, capsys):
    out = tmp_path / "sae"
    assert main(["sae", "train", "--device", "cpu", "--hook", "blocks.1.hook_resid_post", "--count", "16",
                 "--expansion", "2", "--batch-tokens", "128", "--out", str(out), "--checkpoint",
                 str(tmp_path / "ckpt")]) == 0
    assert (out / "cfg.json").exists() and (out / "sae_weights.safetensors").exists()
    assert (out / "training_curve.png").exists() and (tmp_path / "ckpt" / "trainer.json").exists()
    record = json.loads((out / "training.json").read_text())
    assert record["tokens_seen"] == 16 * 64 and record["training_tokens_per_second"] > 0
    assert "saved to" in capsys.readouterr().out

    assert main(["sae", "eval", "--device", "cpu", "--sae", str(out), "--n", "2", "--out", str(tmp_path / "eval")]) == 0
    table = capsys.readouterr().out
    assert "| explained variance |" in table and "| CE recovered |" in table
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["sae"]["examples"] == 2 and report["sae"]["rows"] == 2 * 64

    from lvlm_studio.demo.scenes import make_scene

    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(3):
        make_scene(2_000_000_200 + seed).image.save(folder / f"s{seed}.png")
    assert main(["sae", "inspect", "--device", "cpu", "--sae", str(out), "--image", str(folder / "s0.png"),
                 "--patch", "3,4", "--feature", "1", "--folder", str(folder), "--token", "1", "--scale", "1=0",
                 "--out", str(tmp_path / "inspect")]) == 0
    text = (tmp_path / "inspect" / "inspect.md").read_text()
    assert "Features at patch (3, 4)" in text and "Attribution to answer token 1" in text and "Edited answer" in text
    assert (tmp_path / "inspect" / "feature00001_map.png").exists()
    assert (tmp_path / "inspect" / "feature00001_top_patches.png").exists()


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["sae", "train", "--device", "cpu", "--hook", "blocks.7.hook_resid_post", "--out",
                 str(tmp_path / "x")]) == 2
    assert "no hook point 'blocks.7.hook_resid_post'" in capsys.readouterr().err
    assert main(["sae", "eval", "--device", "cpu", "--sae", str(tmp_path / "missing")]) == 2
    assert main(["sae", "train", "--device", "cpu", "--hook", "blocks.1.hook_resid_post", "--resume",
                 "--out", str(tmp_path / "y")]) == 2
    for nested in ("8,x", "32,8"):
        assert main(["sae", "train", "--device", "cpu", "--hook", "blocks.1.hook_resid_post", "--nested", nested,
                     "--out", str(tmp_path / "z")]) == 2
        assert "--nested" in capsys.readouterr().err
    assert main(["sae", "train", "--device", "cpu", "--hook", "blocks.1.hook_resid_post", "--architecture",
                 "matryoshka_batchtopk", "--out", str(tmp_path / "m")]) == 2
    assert "needs the nested prefix sizes" in capsys.readouterr().err
    assert main(["sae", "eval", "--device", "cpu", "--ablate-feature", "2"]) == 2
    assert "Add --ablate red" in capsys.readouterr().err


def test_new_objectives_and_schedules_train_from_the_command_line(tmp_path):
    from lvlm_studio.sae.formats import load_coder

    out = tmp_path / "batchtopk"
    assert main(["sae", "train", "--device", "cpu", "--hook", "blocks.1.hook_resid_post", "--count", "8",
                 "--architecture", "matryoshka_batchtopk", "--nested", "8,32", "--k", "8", "--lr-warmup-steps", "2",
                 "--lr-decay-steps", "1", "--clip-grad-norm", "1", "--b-dec-init", "geometric_median",
                 "--out", str(out)]) == 0
    coder = load_coder(out)
    assert coder.cfg.architecture in ("matryoshka_batchtopk", "jumprelu")  # SAELens saves BatchTopK as JumpReLU
    history = json.loads((out / "training.json").read_text())["history"]
    assert history[0]["lr"] == pytest.approx(5e-4)  # the first of two warm-up steps: lr / 2


def test_a_matryoshka_coder_records_its_prefixes(tmp_path):
    out = tmp_path / "nested"
    assert main(["sae", "train", "--device", "cpu", "--hook", "blocks.1.hook_resid_post", "--count", "8",
                 "--nested", "8,32", "--out", str(out)]) == 0
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["lvlm_studio"]["extra"]["nested"] == [8, 32]
    assert json.loads((out / "training.json").read_text())["settings"]["nested"] == [8, 32]


def test_the_analyzer_plugin_reports_features_and_attribution(lvlm_registry, demo_model, demo_trace):
    analyzer = lvlm_registry.analyzers()["sae_features"]
    result = run_job(analyzer.analyze(demo_trace, demo_model, analyzer.resolve_params({"token": 1, "top_k": 5})))
    assert result["hook_name"] == "blocks.1.hook_resid_post"
    assert result["features"].shape[:2] == (8, 8) and len(result["top_features"]) == 5
    assert result["attribution"].shape == result["features"].shape
    assert np.all(np.diff(result["top_totals"]) <= 0)


@pytest.mark.parametrize("name", ["vision-blocks.1.hook_resid_post"])
def test_the_shipped_demo_sae_is_small_and_loads(name):
    from lvlm_studio.sae.formats import load_coder
    from lvlm_studio.sae.shipped import demo_sae_path

    folder = demo_sae_path(name)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 400_000
    coder = load_coder(folder)
    assert coder.cfg.hook_name == "blocks.1.hook_resid_post" and coder.cfg.tokens == "patch"
