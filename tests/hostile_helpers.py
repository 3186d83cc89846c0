"""Shared checks for the hostile-input suite (tests/test_hostile_*.py).

Every case is a bad input or a fault that a real user or machine produces. The promise for each:
the documented exit code, one clear line on stderr that says what to do, no traceback, no
"this is a bug" for what was the user's or the machine's mistake, and nothing of the user's lost.

Mark each case ``@pytest.mark.hostile("AREA")`` (areas: images, prompts, models, options, outputs,
sessions, sae, benchmark, filesystem, plugins, app, audit) so ``tests/hostile_table.py`` can count them
for the reliability table in docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "resources" / "samples" / "shapes.png"
EXIT_INPUT = 2
EXIT_CANCELLED = 130


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        """What the user reads on stderr, without progress chatter ("loading ...", "generating ...", the
        answer, and progress bars, which redraw themselves with carriage returns)."""
        lines = [line.rsplit("\r", 1)[-1] for line in self.err.split("\n")]
        return [line for line in lines if line.strip() and not _is_status(line)]


def _is_status(line: str) -> bool:
    return line.startswith(("loading ", "loaded ", "generating ", "explaining ", "wrote ", "resuming ", "answer: "))


def run_cli(capsys, *argv: str) -> Outcome:
    """Run ``lvlm-studio ARGV`` in this process (fast: the demo model loads in a second)."""
    from lvlm_studio import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def run_cli_process(*argv: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None) -> Outcome:
    """Run ``lvlm-studio ARGV`` as a separate process (for exits, signals and import-time faults)."""
    full_env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", **(env or {})}
    done = subprocess.run([sys.executable, "-m", "lvlm_studio", *map(str, argv)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd)
    return Outcome(done.returncode, done.stdout, done.stderr)


def assert_refused(outcome: Outcome, code: int = EXIT_INPUT, *mentions: str) -> str:
    """The run ended with ``code`` and exactly one clear line on stderr naming ``mentions``; returns it."""
    assert outcome.code == code, f"exit {outcome.code}, wanted {code}\nstdout: {outcome.out}\nstderr: {outcome.err}"
    assert "Traceback" not in outcome.err and "Traceback" not in outcome.out, outcome.err
    assert "this is a bug" not in outcome.err, outcome.err
    lines = outcome.err_lines
    assert len(lines) == 1, f"wanted one line on stderr, got {len(lines)}:\n{outcome.err}"
    line = lines[0]
    for word in mentions:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    return line


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the SHA-256 of its bytes: compare before and after a run."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def assert_untouched(folder: Path, before: dict[str, str]) -> None:
    after = snapshot(folder)
    lost = {name for name in before if before[name] != after.get(name)}
    assert not lost, f"the user's files changed or vanished: {sorted(lost)}"


def assert_rgb_or_input_error(data: bytes, suffix: str) -> None:
    """``data`` saved with ``suffix`` opens as an RGB image of at least 4x4 pixels, or is refused with
    one InputError; either way without a warning."""
    from PIL import Image

    from lvlm_studio.core.errors import InputError
    from lvlm_studio.core.io.images import open_image

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzzed{suffix}"
        path.write_bytes(data)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                image = open_image(path)
            except InputError:
                image = None
        assert not seen, [str(w.message) for w in seen]
        if image is None:
            return
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        assert min(image.size) >= 4
