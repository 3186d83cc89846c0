"""Redraw latency after selecting another token, with the maps already computed and cached.

The demo model answers about the sample image; raw attention is computed for every token once and
each token is visited once (so its map is resampled to pixels and cached, as after any first look).
Then the selection steps through the answer many times. One step is timed from the change of
selection to the end of the repaint: every view that follows the selection updates (token chips,
overlay, colour bar, timeline cursor, captions) and the event loop paints them. Measured with the
default layout and with every panel of the shell (``lvlm_panels``) open.

Target: median <= 16 ms (one frame at 60 Hz) in both. Both the wall clock and the GUI thread's CPU
time are printed; on a machine busy with other work (load average above one per core) the wall
clock mostly measures waiting for a core, and the CPU time is judged instead.

    python benchmarks/gui_redraw.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 16.0
STEPS = 120


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    from lvlm_studio.gui.app import launch
    from lvlm_studio.gui.screenshots import ask_when_ready, settle, wait_until
    from lvlm_studio.gui.settings import StudioSettings

    with tempfile.TemporaryDirectory() as folder:
        app, window = launch(settings=StudioSettings(Path(folder) / "settings.ini"))
        idle = lambda: not window.runner.busy  # noqa: E731
        ask_when_ready(window)
        state = window.state
        count = len(state.trace.answer_tokens)
        state.select(0)
        wait_until(lambda: state.explanation is not None and idle(), "the maps")

        def measure(label: str) -> float:
            for token in range(count):  # first visits: resample and cache each map
                state.select(token)
            settle(0.5)
            wall, cpu = [], []
            for step in range(STEPS):
                started, started_cpu = time.perf_counter(), time.thread_time()
                state.select((step + 1) % count)
                QApplication.processEvents()  # the paint events the change posted
                wall.append((time.perf_counter() - started) * 1e3)
                cpu.append((time.thread_time() - started_cpu) * 1e3)
            print(f"{label:<18} wall: median {statistics.median(wall):6.2f} ms, 90th percentile "
                  f"{statistics.quantiles(wall, n=10)[-1]:6.2f} ms   GUI-thread CPU: median "
                  f"{statistics.median(cpu):6.2f} ms   ({STEPS} steps, {count}-token answer)")
            return statistics.median(wall), statistics.median(cpu)

        default = measure("default layout")
        for panel, spec in window.panel_specs.items():
            if spec.factory.startswith("lvlm_panels."):  # the shell's own panels
                window.toggle_panel(panel, True)
        wait_until(lambda: state.stats is not None and state.heads is not None and idle(), "every panel's data")
        everything = measure("every panel open")
        window.close()
        del app
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    wall, cpu = max(default[0], everything[0]), max(default[1], everything[1])
    print(f"load average per core during the run: {load:.1f} (above 1, other processes slow the wall clock)")
    print(f"ratio worst median / target: wall {wall / TARGET_MS:.2f}, GUI-thread CPU {cpu / TARGET_MS:.2f} "
          f"(target <= {TARGET_MS:.0f} ms)")
    # The wall clock is the target on an idle machine; on a shared one the GUI thread's own CPU
    # time is what the app costs (the wall clock then mostly measures waiting for a core).
    met = (wall if load <= 1.0 else cpu) <= TARGET_MS
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
