"""Screenshots of the main window in its main states, for the docs and for looking at changes.

    python -m lvlm_studio.gui.screenshots OUTDIR

Runs offscreen (no display needed) at 1280x800 on the demo model, with throwaway settings (the
user's layout and recent files are neither read nor changed), and writes:

    01-started.png         right after start: plugins in, the demo model loading
    02-answered.png        the answer as token chips, the second token's map over the image
    03-relevance.png       chips coloured by visual relevance, the token timeline filled in
    04-attention-grid.png  layers x heads attention to the image, one head's map in the overlay
    05-compare.png         three methods side by side with their agreement
    06-metrics.png         a demo scene with masks, a metric's numbers and curves
    07-per-region.png      the overlay's per-region view with a threshold
    08-job-running.png     a long job in progress: progress bar and Cancel
    09-error-dialog.png    the error dialog (message, what to do, details)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

TIMEOUT_S = 300.0


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = TIMEOUT_S) -> None:
    """Run the event loop until ``condition`` holds; fail with ``what`` after ``timeout_s``."""
    from PySide6.QtCore import QCoreApplication, QThread

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        QCoreApplication.processEvents()
        QThread.msleep(20)


def settle(seconds: float = 0.3) -> None:
    """Let layouts and repaints finish before a grab."""
    from PySide6.QtCore import QCoreApplication, QThread

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        QThread.msleep(10)


def ask_when_ready(window) -> None:
    """Wait for the model to load, ask the window's question and wait for the answer."""
    wait_until(lambda: window.ask_button.isEnabled(), "the demo model")
    window.ask()
    wait_until(lambda: window.state.trace is not None and not window.runner.busy, "the answer")


def take(out: Path) -> list[Path]:
    """Drive a fresh window through the main states, saving one PNG in each."""
    from lvlm_studio.core.errors import InputError
    from lvlm_studio.gui.app import create_application, create_window
    from lvlm_studio.gui.dialogs import error_box
    from lvlm_studio.gui.settings import StudioSettings

    create_application()
    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    with tempfile.TemporaryDirectory() as folder:
        window = create_window(settings=StudioSettings(Path(folder) / "settings.ini"))
        window.show()
        idle = lambda: not window.runner.busy  # noqa: E731

        def shoot(name: str, widget=None) -> None:
            settle()
            path = out / name
            (widget or window).grab().save(str(path))
            shots.append(path)

        wait_until(lambda: window.panel_specs != {}, "the plugins")
        shoot("01-started.png")

        ask_when_ready(window)
        window.state.select(1)
        wait_until(lambda: window.state.explanation is not None and idle(), "the map")
        shoot("02-answered.png")

        window.chip_combo.setCurrentIndex(window.chip_combo.findData("relevance"))
        wait_until(lambda: window.state.stats is not None and idle(), "the token statistics")
        window.toggle_panel("timeline", True)
        shoot("03-relevance.png")

        window.toggle_panel("heads", True)
        wait_until(lambda: window.state.heads is not None and idle(), "the attention grid")
        mass = window.state.heads.image_mass(1)
        layer, head = divmod(int(mass.argmax()), mass.shape[1])
        window.dock("heads").widget().choose(layer, head)
        shoot("04-attention-grid.png")

        window.state.set_method("raw_attention")
        compare = window.toggle_panel("compare", True).widget()
        compare.set_ticked(["raw_attention", "relevancy", "tam"])
        wait_until(lambda: {"relevancy", "tam"} <= set(window.state.explanations) and idle(), "the comparison")
        shoot("05-compare.png")

        window.open_demo_scene(seed=2_000_000_007)
        wait_until(lambda: bool(window.state.masks) and idle(), "the demo scene")
        window.ask()
        wait_until(lambda: window.state.trace is not None and idle(), "the scene's answer")
        window.state.select(1)
        wait_until(lambda: window.state.explanation is not None and idle(), "the scene's map")
        window.toggle_panel("overlay", True)
        metrics = window.toggle_panel("metrics", True).widget()
        metric = "iou" if metrics.metric_combo.findData("iou") >= 0 else metrics.metric_combo.currentData()
        metrics.metric_combo.setCurrentIndex(max(metrics.metric_combo.findData(metric), 0))
        metrics.run()
        wait_until(lambda: metrics.result() is not None or (idle() and not metrics.metric_combo.count()),
                   "the metric")
        shoot("06-metrics.png")

        overlay = window.dock("overlay").widget()
        overlay.tiles_box.setChecked(True)
        window.state.set_view(threshold=0.4)
        shoot("07-per-region.png")
        overlay.tiles_box.setChecked(False)
        window.state.set_view(threshold=0.0)

        # A perturbation method: hundreds of forward passes, with progress after each batch.
        slow = next((m for m in ("rise", "occlusion", "rollout") if m in window.analysis.explainers), "rollout")
        window.state.set_method(slow)
        window.state.select(2)
        wait_until(lambda: window.progress_bar.maximum() > 0 and window.progress_bar.value() > 0
                   or (idle() and slow in window.state.explanations), "a job in progress")
        shoot("08-job-running.png")
        window.cancel()
        wait_until(idle, "the cancel")

        error = InputError("/home/me/photos/cat.heic could not be read as an image (cannot identify image file).",
                           "Use a PNG, JPEG, WebP, BMP or TIFF file.")
        box = error_box(window, "Opening cat.heic", error, "Traceback (most recent call last):\n  ...\nInputError")
        box.show()
        shoot("09-error-dialog.png", box)
        box.close()
        window.close()
    return shots


def command(take_shots: Callable[[Path], list[Path]], usage: str, argv: list[str] | None = None) -> int:
    """A screenshot script's command line: one OUTDIR argument, offscreen Qt, the written paths printed."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(usage.strip(), file=sys.stderr)
        return 2
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    for path in take_shots(Path(args[0])):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command(take, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
