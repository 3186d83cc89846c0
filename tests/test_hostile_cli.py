"""Hostile input to the command line: bad images, prompts and options, memory faults and Ctrl-C.

What can be checked without the model is refused before it loads (``no_model`` fails the test if
the model is loaded); what needs the model (its placeholder token, its context length) is refused
before anything is generated. Ctrl-C at any moment ends with exit 130 and no traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest
from hostile_helpers import EXIT_CANCELLED, ROOT, SAMPLE, Outcome, assert_refused, run_cli, run_cli_process

ASK = ("ask", "--device", "cpu", "--image", SAMPLE)
EXPLAIN = ("explain", "--device", "cpu", "--image", SAMPLE, "--prompt", "what color is the square?")
BENCH = ("benchmark", "--device", "cpu", "--n", "1", "--methods", "tam")


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the model is loaded: the mistake must be found before that work starts."""

    def refuse(*args, **kwargs):
        pytest.fail("the model was loaded before the input was checked")

    monkeypatch.setattr("lvlm_studio.core.models.loading.load_model", refuse)


# -- images -------------------------------------------------------------------------------------
@pytest.mark.hostile("images")
def test_missing_image_is_refused_before_loading(capsys, no_model, tmp_path):
    outcome = run_cli(capsys, "ask", "--image", tmp_path / "missing.png", "--prompt", "x")
    assert_refused(outcome, 2, "missing.png", "does not exist")


@pytest.mark.hostile("images")
def test_image_that_is_a_folder_is_refused_before_loading(capsys, no_model, tmp_path):
    outcome = run_cli(capsys, *EXPLAIN[:3], "--image", tmp_path, "--prompt", "x", "--method", "tam")
    assert_refused(outcome, 2, "folder")


@pytest.mark.hostile("images")
@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_image_is_refused_before_loading(capsys, no_model, tmp_path):
    locked = tmp_path / "locked.png"
    locked.write_bytes(SAMPLE.read_bytes())
    locked.chmod(0)
    outcome = run_cli(capsys, "ask", "--image", locked, "--prompt", "x")
    assert_refused(outcome, 2, "locked.png", "permission")


@pytest.mark.hostile("images")
def test_sae_inspect_missing_image_is_refused_before_loading(capsys, no_model, tmp_path):
    outcome = run_cli(capsys, "sae", "inspect", "--image", tmp_path / "gone.png", "--out", tmp_path / "out")
    assert_refused(outcome, 2, "gone.png")


# -- prompts ------------------------------------------------------------------------------------
@pytest.mark.hostile("prompts")
@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt_is_refused_before_loading(capsys, no_model, prompt):
    assert_refused(run_cli(capsys, *ASK, "--prompt", prompt), 2, "prompt is empty")


@pytest.mark.hostile("prompts")
def test_empty_benchmark_prompt_is_refused_before_loading(capsys, no_model, tmp_path):
    outcome = run_cli(capsys, *BENCH, "--prompt", " ", "--out", tmp_path / "bench")
    assert_refused(outcome, 2, "prompt is empty")


@pytest.mark.hostile("prompts")
def test_image_placeholder_in_prompt_is_refused(capsys):
    outcome = run_cli(capsys, *ASK, "--prompt", "what is in <image> here?")
    assert_refused(outcome, 2, "<image>", "placeholder")


@pytest.mark.hostile("prompts")
def test_prompt_longer_than_the_context_is_refused_with_the_numbers(capsys):
    outcome = run_cli(capsys, *ASK, "--prompt", "what color is the square? " * 60)
    line = assert_refused(outcome, 2, "256", "tokens")
    assert outcome.out == "", "no answer may be printed for a prompt the model cannot read"
    assert "shorter" in line


@pytest.mark.hostile("prompts")
@pytest.mark.parametrize("prompt, options, words", [
    ("<image> what is this?", {}, ("<image>",)),
    ("what color is the square? " * 60, {}, ("256",)),
    ("what color is the square?", {"max_new_tokens": 10_000}, ("10000",)),
    ("what color is the square?", {"do_sample": True, "temperature": float("nan")}, ("temperature",)),
], ids=["placeholder", "long-prompt", "many-new-tokens", "temperature"])
def test_the_core_refuses_what_the_model_cannot_take(demo_model, prompt, options, words):
    """The app and the benchmark generate through the same core: they get the same refusals."""
    from lvlm_studio.core.errors import InputError
    from lvlm_studio.core.tracing.trace import generate_trace

    with pytest.raises(InputError) as refused:
        generate_trace(demo_model, SAMPLE, prompt, **options)
    assert all(word in str(refused.value) for word in words), str(refused.value)


@pytest.mark.hostile("prompts")
@pytest.mark.parametrize("error", ["MemoryError", "OutOfMemoryError"])
def test_out_of_memory_during_generation_says_what_to_try(capsys, monkeypatch, error):
    import torch

    def exhausted(*args, **kwargs):
        raise MemoryError() if error == "MemoryError" else torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr("lvlm_studio.core.tracing.trace.generate_trace", exhausted)
    line = assert_refused(run_cli(capsys, *ASK, "--prompt", "describe the image."), 2, "memory")
    assert "--max-new-tokens" in line and "--device" in line


# -- options ------------------------------------------------------------------------------------
@pytest.mark.hostile("options")
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_bad_temperature_is_refused_before_loading(capsys, no_model, value):
    outcome = run_cli(capsys, *ASK, "--prompt", "x", "--sample", "--temperature", value)
    assert_refused(outcome, 2, "--temperature")


@pytest.mark.hostile("options")
@pytest.mark.parametrize("command", ["ask", "benchmark"])
def test_no_new_tokens_is_refused_before_loading(capsys, no_model, tmp_path, command):
    args = ASK if command == "ask" else (*BENCH, "--out", tmp_path / "bench")
    outcome = run_cli(capsys, *args, "--prompt", "x", "--max-new-tokens", "0")
    assert_refused(outcome, 2, "--max-new-tokens")


@pytest.mark.hostile("options")
@pytest.mark.parametrize("args, mentions", [
    (("--method", "nope"), ("nope",)),
    (("--method", "raw_attention", "--param", "layerz=0"), ("layerz",)),
    (("--method", "raw_attention", "--param", "reduce=median"), ("reduce", "mean")),
    (("--method", "raw_attention", "--param", "layers=one"), ("layers",)),
    (("--method", "rise", "--param", "keep=nan"), ("keep", "finite")),
    (("--method", "igos++", "--param", "lambda1=inf"), ("lambda1", "finite")),
    (("--method", "tam", "--colormap", "rainbowz"), ("rainbowz", "colormap")),
    (("--method", "tam", "--tokens", "first"), ("--tokens",)),
    (("--method", "tam", "--tokens", "-1"), ("--tokens",)),
], ids=["method", "param-name", "param-choice", "param-type", "param-nan", "param-inf", "colormap",
        "tokens-text", "tokens-negative"])
def test_bad_explain_option_is_refused_before_loading(capsys, no_model, tmp_path, args, mentions):
    outcome = run_cli(capsys, *EXPLAIN, "--out", tmp_path / "out", *args)
    assert_refused(outcome, 2, *mentions)
    assert not (tmp_path / "out").exists()


@pytest.mark.hostile("options")
@pytest.mark.parametrize("args, mentions", [
    (("--metrics", "deletion_insertoin"), ("deletion_insertoin",)),
    (("--metrics", "deletion_insertion", "--metric-param", "deletion_insertion.stepz=20"), ("stepz",)),
    (("--metrics", "deletion_insertion", "--metric-param", "deletion_insertion.steps=1"), ("steps",)),
    (("--metrics", "deletion_insertion", "--metric-param", "deletion_insertion.steps=nan"), ("steps",)),
    (("--metrics", "deletion_insertion", "--metric-param", "iou.threshold=0.5"), ("iou",)),
    (("--metrics", "agreement", "--metric-param", "agreement.other=tamm"), ("tamm",)),
    (("--n", "0"), ("--n",)),
    (("--methods", ","), ("--methods",)),
    (("--images", "no-such-folder", "--coco", "no.json"), ("no-such-folder",)),
], ids=["metric", "metric-param-name", "metric-param-bound", "metric-param-nan", "metric-not-run",
        "agreement-other", "n", "no-methods", "images-folder"])
def test_bad_benchmark_option_is_refused_before_loading(capsys, no_model, tmp_path, args, mentions):
    outcome = run_cli(capsys, *BENCH, "--out", tmp_path / "bench", *args)
    assert_refused(outcome, 2, *mentions)
    assert not (tmp_path / "bench").exists()


@pytest.mark.hostile("options")
@pytest.mark.parametrize("args, mentions", [
    (("demo", "accuracy", "--n", "0"), ("--n",)),
    (("demo", "accuracy", "--minimum", "nan"), ("--minimum",)),
    (("demo", "causal", "--param", "radiuz=2"), ("radiuz",)),
    (("sae", "train", "--hook", "blocks.1.hook_resid_post", "--lr", "nan", "--out", "o"), ("--lr",)),
    (("sae", "train", "--hook", "blocks.1.hook_resid_post", "--data", "no-such-folder", "--out", "o"),
     ("no-such-folder",)),
    (("sae", "eval", "--factor", "inf"), ("--factor",)),
    (("sae", "eval", "--ablate", "purple"), ("purple",)),
    (("sae", "inspect", "--image", str(SAMPLE), "--patch", "3", "--out", "o"), ("--patch",)),
    (("sae", "inspect", "--image", str(SAMPLE), "--scale", "17=nan", "--out", "o"), ("--scale",)),
], ids=["accuracy-n", "accuracy-minimum", "causal-param", "sae-lr", "sae-data", "sae-factor", "sae-ablate", "sae-patch",
        "sae-scale"])
def test_bad_demo_and_sae_option_is_refused_before_loading(capsys, no_model, args, mentions):
    assert_refused(run_cli(capsys, *args), 2, *mentions)


@pytest.mark.hostile("options")
def test_bad_report_tokens_are_refused_before_the_session_is_read(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("lvlm_studio.core.formats.session.load_session", lambda *a: pytest.fail("the session was read"))
    outcome = run_cli(capsys, "report", tmp_path / "s.lvlm", "--tokens", "1,x", "--out", tmp_path / "r.pdf")
    assert_refused(outcome, 2, "--tokens")


@pytest.mark.hostile("options")
@pytest.mark.parametrize("args, mentions", [
    ((*ASK, "--prompt", "x", "--max-new-tokens", "many"), ("--max-new-tokens", "many")),
    ((*ASK, "--prompt", "x", "--sample", "--seed", "-1"), ("--seed", "-1")),
    (("demo", "scene", "--seed", str(2**64)), ("--seed",)),
    (("sae", "train", "--hook", "blocks.1.hook_resid_post", "--seed", "x", "--out", "o"), ("--seed",)),
], ids=["int", "negative-seed", "huge-seed", "sae-seed"])
def test_argument_the_parser_rejects_is_one_line(capsys, no_model, args, mentions):
    assert_refused(run_cli(capsys, *args), 2, *mentions)


# -- Ctrl-C -------------------------------------------------------------------------------------
# A sitecustomize for the child process: a real SIGINT to itself when a named module starts to
# import, or at the Nth forward call of any torch module (mid-generation).
_SIGINT_TRIGGER = textwrap.dedent('''
    import importlib.util, os, signal, sys

    _at = os.environ.get("LVLM_TEST_SIGINT_IMPORT")
    _forward = int(os.environ.get("LVLM_TEST_SIGINT_FORWARD", "0"))

    def _interrupt():
        os.kill(os.getpid(), signal.SIGINT)

    class _Trigger:
        def find_spec(self, name, path=None, target=None):
            if _at and name == _at:
                sys.meta_path.remove(self)
                _interrupt()
            elif _forward and name == "lvlm_studio.core.tracing.trace":
                sys.meta_path.remove(self)
                spec = importlib.util.find_spec(name)
                run = spec.loader.exec_module

                def exec_module(module):
                    run(module)
                    import torch

                    calls = []

                    def count(*args):
                        calls.append(1)
                        if len(calls) == _forward:
                            _interrupt()

                    torch.nn.modules.module.register_module_forward_pre_hook(count)

                spec.loader.exec_module = exec_module
                return spec
            return None

    sys.meta_path.insert(0, _Trigger())
''')


@pytest.mark.hostile("options")
@pytest.mark.parametrize("moment, env, seen", [
    ("cli import", {"LVLM_TEST_SIGINT_IMPORT": "lvlm_studio.cli"}, None),
    ("transformers import", {"LVLM_TEST_SIGINT_IMPORT": "transformers"}, None),
    ("torch import", {"LVLM_TEST_SIGINT_IMPORT": "torch"}, None),
    ("model load", {"LVLM_TEST_SIGINT_IMPORT": "lvlm_studio.core.models.llava"}, "loading "),
    ("generation", {"LVLM_TEST_SIGINT_FORWARD": "40"}, "generating "),
], ids=lambda v: v if isinstance(v, str) else None)
def test_ctrl_c_at_any_moment_ends_with_130_and_no_traceback(tmp_path, moment, env, seen):
    (tmp_path / "sitecustomize.py").write_text(_SIGINT_TRIGGER)
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    outcome = run_cli_process(*ASK, "--prompt", "describe the image.", env={**env, "PYTHONPATH": path})
    line = assert_refused(outcome, EXIT_CANCELLED, "cancelled")
    assert outcome.out == "", f"interrupted at {moment}, yet an answer was printed"
    if seen:
        assert seen in outcome.err, f"the interrupt came before the {moment}"
    assert line.startswith("cancelled")


@pytest.mark.hostile("options")
def test_ctrl_c_while_the_installed_command_imports_the_cli(tmp_path):
    """The console script imports pyproject's entry point and calls it, as pip's wrapper does; an
    interrupt while that imports the command line ends the same way."""
    module, function = re.search(r'^lvlm-studio = "(.+):(.+)"', (ROOT / "pyproject.toml").read_text(), re.M).groups()
    (tmp_path / "sitecustomize.py").write_text(_SIGINT_TRIGGER)
    env = {**os.environ, "LVLM_TEST_SIGINT_IMPORT": "lvlm_studio.cli",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    wrapper = f"import sys\nfrom {module} import {function}\nsys.exit({function}())"
    done = subprocess.run([sys.executable, "-c", wrapper, *map(str, ASK), "--prompt", "x"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert_refused(Outcome(done.returncode, done.stdout, done.stderr), EXIT_CANCELLED, "cancelled")


@pytest.mark.hostile("options")
def test_ctrl_c_while_parsing_arguments(capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("argparse.ArgumentParser.parse_args", interrupted)
    assert_refused(run_cli(capsys, *ASK, "--prompt", "x"), EXIT_CANCELLED, "cancelled")

