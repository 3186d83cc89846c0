"""Steps the desktop-app tests share (fixtures are in conftest.py)."""

from __future__ import annotations

LOAD_TIMEOUT_MS = 180_000  # the demo model loads in seconds, but CI machines can be busy
JOB_TIMEOUT_MS = 60_000


def wait_idle(qtbot, window) -> None:
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=JOB_TIMEOUT_MS)


def ask(qtbot, window) -> None:
    assert window.ask() is not None
    qtbot.waitUntil(lambda: window.state.trace is not None and not window.runner.busy, timeout=JOB_TIMEOUT_MS)
