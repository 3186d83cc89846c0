"""`lvlm-studio new-plugin`: the package it writes installs with pip and its own tests pass."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import lvlm_studio
from lvlm_studio.cli import EXIT_INPUT, main
from lvlm_studio.cli.new_plugin import import_name, write_plugin
from lvlm_studio.core.errors import InputError

REPO = Path(lvlm_studio.__file__).resolve().parents[1]


def test_the_package_has_every_part(tmp_path):
    out = write_plugin("lvlm-brightness", tmp_path / "plain")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {"pyproject.toml", "README.md", ".github/workflows/tests.yml", "src/lvlm_brightness/__init__.py",
                     "src/lvlm_brightness/explainer.py", "src/lvlm_brightness/metric.py", "tests/test_plugin.py"}
    text = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert "##" not in text.replace("## ", "")  # every template marker was resolved
    assert "__PKG__" not in text and "__DIST__" not in text
    assert '[project.entry-points."lvlm_studio.plugins"]\nlvlm_brightness = "lvlm_brightness"' in text
    assert "PanelSpec" not in (out / "src/lvlm_brightness/__init__.py").read_text()
    with_panel = write_plugin("lvlm-brightness", tmp_path / "panel", panel=True)
    assert (with_panel / "src/lvlm_brightness/panel.py").is_file()
    assert "lvlm_studio_panels" in (with_panel / "src/lvlm_brightness/__init__.py").read_text()


def test_the_generated_code_passes_the_projects_lint_rules(tmp_path):
    out = write_plugin("lvlm-brightness", tmp_path / "plugin", panel=True)
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "E,F,I,B,UP",
                           "--line-length", "120", "--target-version", "py310", "."],
                          cwd=out, capture_output=True, text=True)
    if "No module named ruff" in lint.stderr:
        pytest.skip("ruff is not installed (the test extra has it)")
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.parametrize("name", ["Brightness", "2d-maps", "my plugin", "a--b", "lvlm-studio", "class", ""])
def test_unusable_names_are_refused(name):
    with pytest.raises(InputError):
        import_name(name)


def test_an_existing_folder_is_left_alone(tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["new-plugin", "lvlm-brightness", "--out", str(tmp_path / "taken")]) == EXIT_INPUT
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_the_generated_plugin_installs_and_its_tests_pass(tmp_path, capsys):
    """Written by the command, installed with pip (editable, into a throwaway environment that sees
    this one's packages), then its own tests run there: the entry point, the fixtures, the panel."""
    if importlib.util.find_spec("setuptools") is None:  # pip builds the package offline with this one's
        pytest.skip("setuptools is not installed here, and the build must not download it (CI's template step "
                    "installs the plugin with it)")
    assert main(["new-plugin", "lvlm-check-me", "--panel", "--out", str(tmp_path / "plugin")]) == 0
    assert "pip install -e" in capsys.readouterr().out
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # this environment's packages
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"),
                                                         os.environ.get("PYTHONPATH", "")]),
           "QT_QPA_PLATFORM": "offscreen", "LVLM_STUDIO_TINY_FAMILIES": "llava,mllama", "PIP_NO_INDEX": "1"}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "-e", str(tmp_path / "plugin")], env=env, capture_output=True, text=True)
    assert install.returncode == 0, install.stderr
    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"],
                           cwd=tmp_path / "plugin", env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert " passed" in tests.stdout and "failed" not in tests.stdout
    assert "does not apply to mllama" in tests.stdout  # the method's applies_to, reported as a skip
