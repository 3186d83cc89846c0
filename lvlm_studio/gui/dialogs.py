"""How a failure is shown: one dialog that says what happened, what to do, and (folded) the details.

An ``LVLMError`` carries its own message and hint. A file-system error (read-only, disk full,
permission denied) and running out of memory are the machine's doing and say what to try.
Anything else is a bug: the dialog says so and keeps the traceback in the details, where it can be
copied into a report.
"""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget

from lvlm_studio.core.errors import LVLMError

BUG_HINT = "This is a bug in LVLM Studio or a plugin. The app keeps working; the details help to report it."
FILE_HINT = ("Check that the place exists, that you may write there and that the disk has room, "
             "or choose another place; then try again.")
MEMORY_HINT = "Close other programs, or use a smaller image or model, then try again."


def error_box(parent: QWidget | None, title: str, error: BaseException, details: str = "") -> QMessageBox:
    """The dialog for ``error``, ready to ``exec()``."""
    box = QMessageBox(parent)
    box.setWindowTitle(f"LVLM Studio: {title}")
    if isinstance(error, LVLMError):
        box.setIcon(QMessageBox.Icon.Warning)
        box.setText(error.message)  # as written: it may start with a file name
        box.setInformativeText(error.hint)
    elif isinstance(error, OSError):
        box.setIcon(QMessageBox.Icon.Warning)
        where = f" ({error.filename})" if error.filename else ""
        box.setText(f"{title} failed: {error.strerror or error}{where}.")
        box.setInformativeText(FILE_HINT)
    elif isinstance(error, MemoryError):
        box.setIcon(QMessageBox.Icon.Warning)
        box.setText(f"{title} failed: there was not enough memory.")
        box.setInformativeText(MEMORY_HINT)
    else:
        box.setIcon(QMessageBox.Icon.Critical)
        box.setText(f"{title} failed: {type(error).__name__}: {error}")
        box.setInformativeText(BUG_HINT)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    return box
