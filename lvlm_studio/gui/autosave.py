"""One autosave file per running window, found again after a crash.

Each window autosaves to its own file, ``<folder>/<pid>-<random>.lvlm``, and holds ``<same>.lock``
(a ``QLockFile``: the PID and host inside, and an OS lock that dies with the process) from its first
autosave until it closes. A file whose lock nobody holds was left by a window that crashed or was
killed: only such a file is offered for restore, and only the window that claimed its lock may
delete it. A live window's file stays locked, so another window neither offers nor deletes it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from PySide6.QtCore import QLockFile

SUFFIX = ".lvlm"


def _lock(path: Path) -> QLockFile:
    lock = QLockFile(str(path.with_suffix(".lock")))
    lock.setStaleLockTime(0)  # stale only when its process is gone, however long a window stays open
    return lock


class Autosave:
    """This window's autosave file and the lock that marks it as alive."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        self._lock = _lock(self.path)

    def save(self, session: Any) -> Path:
        """Write ``session`` to this window's file (atomically), claiming the file on the first call.
        Raises ``OSError`` when the folder cannot be written."""
        from lvlm_studio.core.formats.session import save_session

        if not self._lock.isLocked():
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self._lock.tryLock(0):
                raise OSError(f"cannot lock {self.path.with_suffix('.lock')} (error {self._lock.error().name})")
        return save_session(session, self.path)

    def discard(self) -> None:
        """A clean exit: nothing to restore, so the file and its lock go."""
        self.path.unlink(missing_ok=True)
        if self._lock.isLocked():
            self._lock.unlock()


class Orphan:
    """The autosave of a window that is gone, claimed (locked) by this window while it decides."""

    def __init__(self, path: Path, lock: QLockFile) -> None:
        self.path = path
        self._lock = lock

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)
        self._lock.unlock()

    def release(self) -> None:
        """Keep the file for a later start."""
        self._lock.unlock()


def claim_orphans(folder: Path) -> list[Orphan]:
    """The autosaves in ``folder`` whose window is gone, newest first, each now locked by the caller
    (two windows starting at once never offer the same file)."""
    orphans = []
    for path in folder.glob(f"*{SUFFIX}"):
        lock = _lock(path)
        if lock.tryLock(0):  # free, or stale: its process died
            orphans.append(Orphan(path, lock))
    return sorted(orphans, key=lambda o: o.path.stat().st_mtime if o.path.exists() else 0, reverse=True)
