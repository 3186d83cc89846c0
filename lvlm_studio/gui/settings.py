"""What the app remembers between runs: dock layout, device, dtype, recent models and sessions, and
for clinical review the reviewer's name and where the audit trail is written.

Stored with ``QSettings`` (the platform's usual place) or, when ``LVLM_STUDIO_SETTINGS`` names a
file or a test passes one, in that INI file, so tests and screenshots never touch the user's
settings. The dock layout is saved with ``LAYOUT_VERSION``; a layout from another version, or one
Qt cannot restore, is ignored and the default layout is used.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings, QStandardPaths

SETTINGS_ENV = "LVLM_STUDIO_SETTINGS"
ORGANISATION = "LVLM Studio"
APPLICATION = "LVLM Studio"
LAYOUT_VERSION = 2  # bump when panels or their default places change
MAX_RECENT = 8
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")


class StudioSettings:
    """Typed access to the few things LVLM Studio remembers."""

    def __init__(self, path: str | Path | None = None) -> None:
        path = path or os.environ.get(SETTINGS_ENV) or None
        if path:
            self.qsettings = QSettings(str(path), QSettings.Format.IniFormat)
            self.folder = Path(path).resolve().parent
        else:
            self.qsettings = QSettings(ORGANISATION, APPLICATION)
            location = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
            self.folder = Path(location or Path.home() / ".lvlm-studio")

    @property
    def autosave_folder(self) -> Path:
        """Where each open window autosaves its analysis (gui/autosave.py); a file is left there by a
        window that did not close normally."""
        return self.folder / "autosave"

    # -- lists ---------------------------------------------------------------------------------
    def _list(self, key: str) -> list[str]:
        value = self.qsettings.value(key, [])
        if isinstance(value, str):  # QSettings returns a one-item list as a plain string
            value = [value]
        return [str(v) for v in value or [] if str(v)]

    def _push(self, key: str, item: str) -> list[str]:
        items = [item] + [i for i in self._list(key) if i != item]
        self.qsettings.setValue(key, items[:MAX_RECENT])
        return items[:MAX_RECENT]

    def recent_models(self) -> list[str]:
        """Model folders opened before, newest first (the demo model is not listed: it is always there)."""
        return self._list("models/recent")

    def add_recent_model(self, folder: str) -> list[str]:
        return self._push("models/recent", folder)

    def recent_sessions(self) -> list[str]:
        return [p for p in self._list("sessions/recent") if Path(p).exists()]

    def add_recent_session(self, path: str) -> list[str]:
        return self._push("sessions/recent", path)

    # -- model options -------------------------------------------------------------------------
    def device(self) -> str:
        value = str(self.qsettings.value("models/device", "auto"))
        return value if value in DEVICES else "auto"

    def dtype(self) -> str:
        value = str(self.qsettings.value("models/dtype", "auto"))
        return value if value in DTYPES else "auto"

    def set_device(self, device: str) -> None:
        self.qsettings.setValue("models/device", device)

    def set_dtype(self, dtype: str) -> None:
        self.qsettings.setValue("models/dtype", dtype)

    # -- review --------------------------------------------------------------------------------
    def reviewer(self) -> str:
        """The name every sign-off is recorded under ("" until the reviewer gave it, once)."""
        return str(self.qsettings.value("review/reviewer", "") or "").strip()

    def set_reviewer(self, name: str) -> None:
        self.qsettings.setValue("review/reviewer", name.strip())
        self.qsettings.sync()

    def audit_log(self) -> Path:
        """The audit trail sign-offs are appended to: the one chosen, else review/review-audit.jsonl in the
        app's data folder."""
        chosen = str(self.qsettings.value("review/audit_log", "") or "")
        return Path(chosen) if chosen else self.folder / "review" / "review-audit.jsonl"

    def set_audit_log(self, path: str | Path) -> None:
        self.qsettings.setValue("review/audit_log", str(path))
        self.qsettings.sync()

    # -- layout --------------------------------------------------------------------------------
    def save_layout(self, state: QByteArray, geometry: QByteArray, panels: list[str]) -> None:
        self.qsettings.setValue("layout/version", LAYOUT_VERSION)
        self.qsettings.setValue("layout/state", state)
        self.qsettings.setValue("layout/geometry", geometry)
        self.qsettings.setValue("layout/panels", panels)
        self.qsettings.sync()

    def layout(self) -> tuple[QByteArray, QByteArray, list[str]] | None:
        """The saved (dock state, geometry, open panels), or None when there is none of this version."""
        try:
            version = int(self.qsettings.value("layout/version", -1))
        except (TypeError, ValueError):
            return None
        state = self.qsettings.value("layout/state")
        geometry = self.qsettings.value("layout/geometry")
        if version != LAYOUT_VERSION or not isinstance(state, QByteArray):
            return None
        return state, geometry if isinstance(geometry, QByteArray) else QByteArray(), self._list("layout/panels")

    def sync(self) -> None:
        self.qsettings.sync()
