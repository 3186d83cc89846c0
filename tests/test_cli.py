"""The command line as a user meets it: answers, files, and one-line errors with exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lvlm_studio import cli
from lvlm_studio.core.plugin.explanation import Explanation

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "samples" / "shapes.png"


def run(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_ask_prints_answer_and_token_table(capsys, tmp_path):
    code, out, err = run(capsys, "ask", "--image", str(SAMPLE), "--prompt", "describe the image.",
                         "--device", "cpu", "--save-trace", str(tmp_path / "t.safetensors"))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("a ")  # the caption
    assert "prob" in lines[2] and "top alternatives" in lines[2]
    assert len(lines) >= 4 and (tmp_path / "t.safetensors").exists()


def test_explain_writes_overlays_maps_and_run_record(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run(capsys, "explain", "--method", "raw_attention", "--image", str(SAMPLE),
                         "--prompt", "what color is the square?", "--param", "layers=-1", "--out", str(out_dir))
    assert code == 0, err
    record = json.loads((out_dir / "run.json").read_text())
    assert record["method"]["id"] == "raw_attention"
    assert record["method"]["provided_by"]["distribution"] == "lvlm-studio"
    assert {"layers": [-1], "heads": [], "reduce": "mean"}.items() <= record["method"]["params"].items()
    assert record["model"]["family"] == "llava" and record["seed"] == 0
    assert {"load_s", "generate_s", "explain_s"} <= set(record["timings_s"])
    assert {"torch", "transformers", "python"} <= set(record["versions"])
    pngs = sorted(p.name for p in out_dir.glob("token*.png"))
    assert pngs == sorted(record["files"]) and len(pngs) == len(record["answer_tokens"])
    maps = Explanation.load_npz(out_dir / "maps.npz")
    assert maps.targets == record["targets"] and maps.maps[0][0].shape == (8, 8)
    assert np.isfinite(maps.maps[0][0]).all()


def test_cancelled_explain_leaves_no_output(capsys, tmp_path, monkeypatch):
    def interrupted(job, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("lvlm_studio.core.plugin.jobs.run_job", interrupted)
    out_dir = tmp_path / "run"
    code, _, err = run(capsys, "explain", "--method", "raw_attention", "--image", str(SAMPLE),
                       "--prompt", "describe the image.", "--out", str(out_dir))
    assert code == cli.EXIT_CANCELLED and "cancelled" in err
    assert not out_dir.exists()
    assert not list(tmp_path.glob(".lvlm-*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "--image", "missing.png", "--prompt", "x"], "image missing.png does not exist"),
        (["ask", "--model", "/no/such/model", "--image", str(SAMPLE), "--prompt", "x"], "does not exist"),
        (["explain", "--method", "nope", "--image", str(SAMPLE), "--prompt", "x"], "no explanation method 'nope'"),
        (["explain", "--method", "raw_attention", "--param", "reduce=median", "--image", str(SAMPLE),
          "--prompt", "x"], "Choose one of: mean, max"),
        (["explain", "--method", "raw_attention", "--param", "oops", "--image", str(SAMPLE), "--prompt", "x"],
         "is not NAME=VALUE"),
        (["ask", "--device", "tpu", "--image", str(SAMPLE), "--prompt", "x"], "unknown device 'tpu'"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == cli.EXIT_INPUT
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "Traceback" not in err


def test_corrupt_image_file(capsys, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    code, _, err = run(capsys, "ask", "--image", str(broken), "--prompt", "x", "--device", "cpu")
    assert code == cli.EXIT_INPUT and "could not be read as an image" in err


def test_plugins_lists_families_methods_and_status(capsys):
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert "loaded   lvlm_explainers" in out and "raw_attention" in out and "llava" in out


def test_installed_command_runs_without_traceback(tmp_path):
    """The real entry point, in a fresh process, as a user types it."""
    exe = Path(sys.executable).parent / "lvlm-studio"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "lvlm_studio"]
    result = subprocess.run([*command, "ask", "--image", str(tmp_path / "none.png"), "--prompt", "x"],
                            capture_output=True, text=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert result.returncode == cli.EXIT_INPUT
    assert result.stderr.strip().splitlines()[-1].startswith("error: image")
    assert "Traceback" not in result.stderr


def _method_ids():
    from lvlm_studio.core.plugin.registry import create_registry

    return sorted(create_registry(load_third_party=False).explainers())


@pytest.mark.parametrize("method", _method_ids())
def test_explain_works_for_every_method(capsys, tmp_path, method):
    out_dir = tmp_path / method
    code, _, err = run(capsys, "explain", "--method", method, "--image", str(SAMPLE), "--prompt",
                       "what color is the square?", "--tokens", "0", "--out", str(out_dir), "--device", "cpu")
    assert code == 0, err
    record = json.loads((out_dir / "run.json").read_text())
    assert record["method"]["id"] == method and record["files"] == [p.name for p in out_dir.glob("token00_*.png")]
