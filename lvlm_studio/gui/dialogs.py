"""How a failure is shown: one dialog that says what happened, what to do, and (folded) the details.

An ``LVLMError`` carries its own message and hint. Anything else is a bug: the dialog says so and
keeps the traceback in the details, where it can be copied into a report.
"""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget

from lvlm_studio.core.errors import LVLMError

BUG_HINT = "This is a bug in LVLM Studio or a plugin. The app keeps working; the details help to report it."


def error_box(parent: QWidget | None, title: str, error: BaseException, details: str = "") -> QMessageBox:
    """The dialog for ``error``, ready to ``exec()``."""
    box = QMessageBox(parent)
    box.setWindowTitle(f"LVLM Studio: {title}")
    if isinstance(error, LVLMError):
        box.setIcon(QMessageBox.Icon.Warning)
        box.setText(error.message)  # as written: it may start with a file name
        box.setInformativeText(error.hint)
    else:
        box.setIcon(QMessageBox.Icon.Critical)
        box.setText(f"{title} failed: {type(error).__name__}: {error}")
        box.setInformativeText(BUG_HINT)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    return box
