"""Screenshots of the main window on the demo model, for the docs and for looking at changes.

    python -m lvlm_studio.gui.screenshots OUTDIR

Runs offscreen (no display needed) at 1280x800 and writes 1-started.png (right after start),
2-answered.png (after asking about the sample image) and 3-explained.png (the second answer token
selected, its raw-attention map over the image).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

TIMEOUT_S = 180.0


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Run the event loop until ``condition`` holds; fail with ``what`` after ``timeout_s``."""
    from PySide6.QtCore import QCoreApplication, QThread

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        QCoreApplication.processEvents()
        QThread.msleep(20)


def take(out: Path) -> list[Path]:
    """Drive a fresh window through start, ask and explain, saving one PNG after each."""
    from lvlm_studio.gui.app import create_application, create_window

    app = create_application()
    window = create_window()
    window.show()
    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []

    def shoot(name: str) -> None:
        app.processEvents()
        path = out / name
        window.grab().save(str(path))
        shots.append(path)

    wait_until(lambda: window.runner.busy, "the start-up jobs")
    shoot("1-started.png")

    wait_until(lambda: window.ask_button.isEnabled(), "the demo model")
    window.ask()
    wait_until(lambda: window.state.trace is not None and not window.runner.busy, "the answer")
    shoot("2-answered.png")

    window.state.select(1)
    wait_until(lambda: window.image_view.overlay is not None and not window.runner.busy, "the map")
    shoot("3-explained.png")
    window.close()
    return shots


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    for path in take(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
