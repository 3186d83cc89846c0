"""The installer's parts that can be checked without building it (installer/build.sh builds, and
installer/smoke.sh tests the built folder): the PyInstaller spec, the entry script, the icon, the
desktop entry, the shell scripts, the hosted-runner workflow, and the app's ``--screenshot`` check."""

from __future__ import annotations

import ast
import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from PIL import Image

from lvlm_studio.cli import EXIT_INPUT, build_parser, main
from lvlm_studio.core.plugin.registry import FIRST_PARTY

ROOT = Path(__file__).resolve().parents[1]
INSTALLER = ROOT / "installer"


def spec_constants() -> dict[str, object]:
    """The spec's top-level constants (NAME = ..., lists of names), read without running PyInstaller."""
    tree = ast.parse((INSTALLER / "lvlm-studio.spec").read_text(), filename="lvlm-studio.spec")
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return constants


def test_spec_parses_and_collects_what_a_frozen_app_cannot_find():
    text = (INSTALLER / "lvlm-studio.spec").read_text()
    constants = spec_constants()
    assert constants["NAME"] == "lvlm-studio"
    # The registry imports the first-party plugins by name: each must be a hidden import of the spec.
    plugin_packages = {name.partition(".")[0] for name in FIRST_PARTY} - {"lvlm_studio"}
    assert plugin_packages == set(constants["FIRST_PARTY_PLUGINS"])
    # Entry points and versions come from dist-info folders.
    assert "lvlm-studio" in constants["METADATA"]
    for needed in ("collect_submodules", "copy_metadata", '"resources"', "entry.py", "lvlm-studio.png"):
        assert needed in text, needed
    assert "lvlm_studio.testing" in constants["EXCLUDES"]  # needs pytest; not part of the app


def test_entry_script_runs_the_same_function_as_the_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["lvlm-studio"].partition(":")
    tree = ast.parse((INSTALLER / "entry.py").read_text())
    imports = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names]
    assert (module, function) in imports


def test_icon_is_a_square_png_and_its_script_draws_it():
    icon = Image.open(INSTALLER / "icon" / "lvlm-studio.png")
    assert icon.format == "PNG" and icon.size == (256, 256) and icon.mode == "RGBA"
    sys.path.insert(0, str(INSTALLER))
    try:
        import make_icon
    finally:
        sys.path.remove(str(INSTALLER))
    drawn = make_icon.draw(64)
    assert drawn.size == (64, 64) and drawn.getpixel((0, 0))[3] == 0  # transparent corners
    centre = drawn.getpixel((32, 32))[:3]  # the pupil (give or take the scaling filter's ringing)
    assert all(abs(a - b) <= 12 for a, b in zip(centre, make_icon.BACKGROUND)), centre


def test_desktop_entry_has_the_keys_a_desktop_needs():
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(INSTALLER / "lvlm-studio.desktop", encoding="utf-8")
    assert parser.sections() == ["Desktop Entry"]
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Name"] == "LVLM Studio"
    # No %f: the command line takes an image as --image FILE, and a bare path would read as a subcommand.
    assert entry["Exec"] == "lvlm-studio"
    assert entry["Icon"] == "lvlm-studio" and (INSTALLER / "icon" / f"{entry['Icon']}.png").exists()
    assert entry["Terminal"] == "false"
    known = {"Type", "Name", "GenericName", "Comment", "Exec", "Icon", "Terminal", "Categories", "Keywords"}
    assert set(entry) <= known
    for key in ("Categories", "Keywords"):  # lists end with a semicolon
        assert entry[key].endswith(";"), key
    if shutil.which("desktop-file-validate"):  # apt-get install desktop-file-utils
        run = subprocess.run(["desktop-file-validate", str(INSTALLER / "lvlm-studio.desktop")],
                             capture_output=True, text=True)
        assert run.returncode == 0 and not run.stdout.strip(), run.stdout  # no error, warning or hint


def test_desktop_entry_script_points_the_menu_at_the_unpacked_folder(tmp_path):
    folder = tmp_path / "unpacked app"  # a space, as in "My Programs"
    folder.mkdir()
    for name in ("lvlm-studio.desktop", "install-desktop-entry.sh"):
        shutil.copy(INSTALLER / name, folder / name)
    shutil.copy(INSTALLER / "icon" / "lvlm-studio.png", folder / "lvlm-studio.png")
    data = tmp_path / "data"
    run = subprocess.run(["sh", str(folder / "install-desktop-entry.sh")], capture_output=True, text=True,
                         env={**os.environ, "XDG_DATA_HOME": str(data)})
    assert run.returncode == 0, run.stderr
    entry = (data / "applications" / "lvlm-studio.desktop").read_text()
    assert f'Exec="{folder}/lvlm-studio"\n' in entry
    assert (data / "icons" / "hicolor" / "256x256" / "apps" / "lvlm-studio.png").exists()


@pytest.mark.parametrize("script", ["build.sh", "smoke.sh", "install-desktop-entry.sh"])
def test_shell_scripts_parse_and_are_executable(script):
    path = INSTALLER / script
    assert os.access(path, os.X_OK)
    shell = "sh" if script == "install-desktop-entry.sh" else "bash"
    assert subprocess.run([shell, "-n", str(path)]).returncode == 0


def test_workflow_builds_on_windows_and_macos():
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "installer.yml").read_text())
    assert True in workflow or "on" in workflow  # YAML 1.1 reads the key `on` as True
    jobs = workflow["jobs"]
    systems = {job["runs-on"].split("-")[0] for job in jobs.values()}
    assert {"windows", "macos"} <= systems
    for name, job in jobs.items():
        steps = job["steps"]
        assert all(isinstance(step, dict) and ("uses" in step or "run" in step) for step in steps), name
        commands = "\n".join(step.get("run", "") for step in steps)
        assert "installer/lvlm-studio.spec" in commands, name
        assert "torch==2.13.0" in commands, name  # never an unpinned torch
        assert "--screenshot" in commands and " ask " in commands and " explain " in commands, name


def test_ci_builds_and_smoke_tests_the_folder_after_the_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index(".venv/bin/pytest") < ci.index("bash installer/build.sh") < ci.index("bash installer/smoke.sh")


def test_screenshot_option_is_on_the_command_line():
    args = build_parser().parse_args(["--screenshot", "window.png"])
    assert args.screenshot == "window.png" and args.command is None


@pytest.mark.parametrize("name", ["window.jpg", "missing-folder-is-fine/but/a/file/is/not.png"])
def test_screenshot_refuses_a_bad_file_before_the_window_opens(tmp_path, capsys, name):
    (tmp_path / "missing-folder-is-fine" / "but").mkdir(parents=True)
    (tmp_path / "missing-folder-is-fine" / "but" / "a").write_text("a file, not a folder")
    assert main(["--screenshot", str(tmp_path / name)]) == EXIT_INPUT
    error = capsys.readouterr().err
    assert error.startswith("error: ") and len(error.strip().splitlines()) == 1


def test_screenshot_run_opens_answers_and_saves_the_window(tmp_path):
    """What smoke.sh runs in the bundle, here from the source: a window, an answer, a PNG, exit 0."""
    out = tmp_path / "window.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "lvlm_studio", "--screenshot", str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("window on screen at ")
    assert Image.open(out).size[0] >= 640
