"""The core, the CLI and the demo must work on a machine with no Qt: checked by importing them in
an interpreter where every Qt import fails, and by import-linter's contract in pyproject.toml."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QT_PACKAGES = ("PySide6", "pyqtgraph", "superqt", "shiboken6", "magicgui", "qtpy")

# Run with ``python -c BOOTSTRAP QT_PACKAGE... -- TARGET...``: blocks the Qt packages, imports each
# target and, for a package, every module below it, then prints the imported names as JSON.
BOOTSTRAP = """
import importlib, json, pkgutil, sys

split = sys.argv.index("--")
blocked, targets = set(sys.argv[1:split]), sys.argv[split + 1:]

class NoQt:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in blocked:
            raise ImportError(f"{name} is not installed here (blocked by test_qt_free)")
        return None

sys.meta_path.insert(0, NoQt())
for name in blocked:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
    else:
        sys.exit(f"the blocker let {name} through")

def fail(name):
    raise ImportError(f"cannot import {name}")

imported = []
for target in targets:
    module = importlib.import_module(target)
    imported.append(target)
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, target + ".", onerror=fail):
            importlib.import_module(info.name)
            imported.append(info.name)
leaked = sorted(name for name in sys.modules if name.partition(".")[0] in blocked)
print(json.dumps({"imported": imported, "leaked": leaked}))
"""


def import_without_qt(target: str) -> list[str]:
    path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    result = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, *QT_PACKAGES, "--", target],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"importing {target} without Qt failed:\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["leaked"] == []
    return report["imported"]


def test_core_imports_without_qt():
    imported = import_without_qt("lvlm_studio.core")
    expected = {"lvlm_studio.core.plugin.registry", "lvlm_studio.core.plugin.hookspecs",
                "lvlm_studio.core.models.llava"}
    assert expected <= set(imported)


def test_demo_imports_without_qt():
    imported = import_without_qt("lvlm_studio.demo")
    assert {"lvlm_studio.demo.scenes", "lvlm_studio.demo.model"} <= set(imported)


def test_review_imports_without_qt():
    imported = import_without_qt("lvlm_studio.review")
    expected = {"lvlm_studio.review.assessment", "lvlm_studio.review.calibrate", "lvlm_studio.review.report"}
    assert expected <= set(imported)


def test_studies_and_their_plugins_import_without_qt():
    imported = import_without_qt("lvlm_studio.studies")
    assert {"lvlm_studio.studies.runner", "lvlm_studio.studies.report", "lvlm_studio.studies.datasets"} <= set(imported)
    assert {"lvlm_studies.modality", "lvlm_studies.grounding"} <= set(import_without_qt("lvlm_studies"))


def test_cli_imports_without_qt():
    if importlib.util.find_spec("lvlm_studio.cli") is None:
        pytest.skip("lvlm_studio.cli does not exist yet")
    assert import_without_qt("lvlm_studio.cli")[0] == "lvlm_studio.cli"


def test_the_blocker_really_blocks_qt():
    """A module that imports Qt must fail under the bootstrap, or the tests above prove nothing."""
    result = subprocess.run(
        [sys.executable, "-c", BOOTSTRAP, *QT_PACKAGES, "--", "pyqtgraph.colormap"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "pyqtgraph is not installed here" in result.stderr


def test_import_linter_contracts_hold():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), f"{lint_imports} is missing: install the test extra (import-linter)"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"[1-9]\d* kept, 0 broken", result.stdout), result.stdout[-4000:]
