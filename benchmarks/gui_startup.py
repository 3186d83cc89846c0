"""How long after launch the main window is on screen, without waiting for a model load.

Each run starts a fresh Python process that does what ``lvlm-studio`` does (``gui.app.launch``:
create the application and the window, show it; plugins and the demo model load on the worker
thread) and reports the moment the event loop first runs after ``show()``, i.e. once the window
has been laid out and painted. The time counts from just before the process is spawned, so it
includes the interpreter's start and every import. Offscreen platform, throwaway settings.

Target: median of the runs <= 2 s.

    python benchmarks/gui_startup.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 2.0
RUNS = 5

CHILD = """
import os, sys, time
from PySide6.QtCore import QTimer
from lvlm_studio.gui.app import launch

app, window = launch()

def shown():
    print("SHOWN", time.monotonic(), window.isVisible(), window.state.model is None, flush=True)
    os._exit(0)  # the worker thread may still be importing plugins; nothing to clean up here

QTimer.singleShot(0, shown)
app.exec()
"""


def one_run(settings: Path) -> tuple[float, bool]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "LVLM_STUDIO_SETTINGS": str(settings)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SHOWN")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the window did not show:\n{done.stdout}\n{done.stderr[-3000:]}")
    _, when, visible, no_model = lines[0].split()
    if visible != "True":
        raise RuntimeError("the window was not visible")
    return float(when) - started, no_model == "True"


def main() -> int:
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(RUNS):
            seconds, before_model = one_run(Path(folder) / f"settings{i}.ini")
            times.append(seconds)
            print(f"run {i + 1}: window shown {seconds:.2f} s after launch"
                  f"{' (model still loading)' if before_model else ''}")
    median = statistics.median(times)
    print(f"median {median:.2f} s, worst {max(times):.2f} s (target: median <= {TARGET_S} s); "
          f"ratio median / target: {median / TARGET_S:.2f}")
    met = median <= TARGET_S
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
