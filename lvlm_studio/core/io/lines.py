"""JSON lines that survive interruption: the results files of resumable runs (benchmark, studies).

Each finished unit of work is appended as one JSON line and fsynced before the next starts, so an
interrupted run loses at most the unit in progress. Reading back skips damaged lines (their work
runs again) with a warning, and removes only a last line cut short by an interruption, so that
appending continues on a clean line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lvlm_studio.core.io.files import reporting

log = logging.getLogger(__name__)


def read_lines(path: str | Path, valid: Callable[[Any], bool]) -> list[dict[str, Any]]:
    """The records of ``path`` for which ``valid`` holds (none when the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    with reporting(path):
        data = path.read_bytes()
    lines = data.split(b"\n")
    unfinished = lines.pop()  # what follows the last newline: empty unless a write was cut short

    def parse(line: bytes) -> dict[str, Any] | None:
        try:
            record = json.loads(line)
        except ValueError:
            return None
        return record if isinstance(record, dict) and valid(record) else None

    records = [record for record in map(parse, lines) if record is not None]
    damaged = sum(1 for line in lines if line.strip()) - len(records)
    if unfinished:
        record = parse(unfinished)
        with reporting(path), path.open("r+b") as handle:
            if record is None:  # cut off mid-write: drop it
                handle.truncate(len(data) - len(unfinished))
            else:  # complete but for its newline
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
        if record is not None:
            records.append(record)
    if damaged:
        log.warning("%s: %d damaged line%s skipped; %s run again.", path, damaged, "s" if damaged > 1 else "",
                    "their samples are" if damaged > 1 else "its sample is")
    return records


def append_line(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line and fsync it."""
    path = Path(path)
    with reporting(path), path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
