"""Count the hostile-input cases by area, for the reliability table in docs/reliability.md.

    python tests/hostile_table.py          # prints the Markdown table
    pytest -m hostile                      # runs every case it counts

A case is a test marked ``@pytest.mark.hostile("AREA")`` (tests/hostile_helpers.py says what each
promises); parametrised tests count once per parameter set.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest

HOW_THEY_END = {
    "images": "exit 2, one line (missing, a folder, damaged, a bomb, a cut or image-less DICOM file); "
              "16-bit and float images open windowed",
    "prompts": "exit 2, one line, before the model loads where it can be known (empty, placeholder, too long)",
    "options": "exit 2, one line before the model loads (NaN, inf, zero, unknown names, bad values); Ctrl-C exit 130",
    "models": "exit 2, one line naming the missing, unexpected or damaged weights; pickle and remote code refused",
    "outputs": "exit 2, one line; nothing of the user's is deleted; a failed overwrite keeps the previous output",
    "filesystem": "exit 2, one line naming the path (disk full, read-only, permission denied); the old file intact",
    "sessions": "one line naming the file and the problem; nothing applied; memory bounded before reading",
    "sae": "exit 2, one line naming the field, tensor or hook",
    "benchmark": "damaged lines skipped, finished samples kept; old tables removed; a bad run.json exits 2",
    "plugins": "the plugin is marked failed and named with its distribution; every other command and panel works",
    "app": "one dialog with the details folded; the window stays alive and nothing is lost",
    "audit": "a missing log exits 2, one line; a file that is not an audit log exits 1 naming its first bad record, "
             "and nothing is appended to it",
}


class _Counter:
    def __init__(self) -> None:
        self.areas: collections.Counter[str] = collections.Counter()

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            marker = item.get_closest_marker("hostile")
            if marker:
                self.areas[marker.args[0]] += 1


def main() -> int:
    counter = _Counter()
    tests = Path(__file__).resolve().parent
    code = pytest.main(["--collect-only", "-q", "-m", "hostile", "-p", "no:cacheprovider", str(tests)],
                       plugins=[counter])
    if code not in (0, 5):
        return code
    print("\n| area | cases | how each ends |\n|---|---:|---|")
    for area, count in sorted(counter.areas.items(), key=lambda kv: -kv[1]):
        print(f"| {area} | {count} | {HOW_THEY_END.get(area, '')} |")
    print(f"| **all** | **{sum(counter.areas.values())}** | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
