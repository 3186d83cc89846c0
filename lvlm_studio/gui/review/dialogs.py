"""The two questions a sign-off asks: who the reviewer is (once), and for override or defer a comment.

Both dialogs refuse what the audit trail would refuse or what a reviewer must not skip: an empty
name or comment is not accepted, the dialog says why in red and stays open. Everything works from
the keyboard: Tab between fields, Ctrl+Enter (or Enter in a one-line field) signs, Esc cancels.
"""

from __future__ import annotations

import re

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

MAX_NAME = 200  # as the audit trail allows
ERROR_STYLE = "color: #d93025; font-weight: bold;"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ReviewerDialog(QDialog):
    """Asks the reviewer's name: every sign-off is recorded under it, and the app keeps it."""

    def __init__(self, current: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Reviewer")
        intro = QLabel("Your name or user name, as it should appear in the audit trail of every case you sign off. "
                       "It is kept for the next time (Review \u203a Reviewer\u2026 changes it).")
        intro.setWordWrap(True)
        self.name_edit = QLineEdit(current)
        self.name_edit.setPlaceholderText("e.g. dr.lee")
        self.name_edit.setMaxLength(MAX_NAME)
        self.error_label = _error_label()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for widget in (intro, self.name_edit, self.error_label, buttons):
            layout.addWidget(widget)
        self.resize(420, self.sizeHint().height())

    @property
    def name(self) -> str:
        return self.name_edit.text().strip()

    def accept(self) -> None:
        if not self.name:
            return self._refuse("Give a name: a sign-off without a reviewer cannot be recorded.")
        if _CONTROL.search(self.name):
            return self._refuse("Give the name on one line.")
        super().accept()

    def _refuse(self, text: str) -> None:
        self.error_label.setText(text)
        self.error_label.show()
        self.name_edit.setFocus()


class SignOffDialog(QDialog):
    """Override (a corrected answer and a comment) or defer (a comment); both refuse an empty comment."""

    def __init__(self, decision: str, case: str, answer: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.decision = decision
        override = decision == "override"
        self.setWindowTitle(f"{'Override' if override else 'Defer'} case {case}")
        intro = QLabel(
            f"Give the corrected answer to case <b>{_escape(case)}</b> and say why the model's answer is wrong."
            if override else
            f"Defer case <b>{_escape(case)}</b> to a human expert, and say why (what should be looked at).")
        intro.setTextFormat(Qt.TextFormat.RichText)
        intro.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        self.answer_edit: QLineEdit | None = None
        if override:
            said = QLabel(f"The model answered: \u201c{answer}\u201d")
            said.setTextFormat(Qt.TextFormat.PlainText)
            said.setWordWrap(True)
            layout.addWidget(said)
            self.answer_edit = QLineEdit(answer)
            self.answer_edit.selectAll()  # typing replaces the model's answer
            self.answer_edit.setPlaceholderText("The corrected answer")
            self.answer_edit.returnPressed.connect(self.accept)
            layout.addWidget(_label("&Corrected answer", self.answer_edit))
            layout.addWidget(self.answer_edit)
        self.comment_edit = QPlainTextEdit()
        self.comment_edit.setTabChangesFocus(True)
        self.comment_edit.setPlaceholderText("Required: goes into the audit trail with your decision")
        self.comment_edit.setFixedHeight(5 * self.comment_edit.fontMetrics().lineSpacing() + 12)
        layout.addWidget(_label("C&omment (required)", self.comment_edit))
        layout.addWidget(self.comment_edit)
        self.error_label = _error_label()
        layout.addWidget(self.error_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.sign_button = buttons.addButton("Override" if override else "Defer",
                                             QDialogButtonBox.ButtonRole.AcceptRole)
        self.sign_button.setToolTip("Sign (Ctrl+Enter)")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout.addWidget(QLabel("Ctrl+Enter signs, Esc cancels."))
        layout.addWidget(buttons)
        for keys in ("Ctrl+Return", "Ctrl+Enter"):
            QShortcut(QKeySequence(keys), self, self.accept)
        (self.answer_edit or self.comment_edit).setFocus()
        self.resize(480, self.sizeHint().height())

    @property
    def comment(self) -> str:
        return self.comment_edit.toPlainText().strip()

    @property
    def corrected_answer(self) -> str:
        return self.answer_edit.text().strip() if self.answer_edit is not None else ""

    def accept(self) -> None:
        """Sign, unless a required field is empty: then say so and stay open."""
        if self.answer_edit is not None and not self.corrected_answer:
            return self._refuse("Give the corrected answer.", self.answer_edit)
        if not self.comment:
            what = "an override" if self.decision == "override" else "deferring a case"
            return self._refuse(f"Write a comment: {what} needs one in the audit trail.", self.comment_edit)
        super().accept()

    def _refuse(self, text: str, field: QWidget) -> None:
        self.error_label.setText(text)
        self.error_label.show()
        field.setFocus()


def _label(text: str, buddy: QWidget) -> QLabel:
    """A field's label; its underlined letter (Alt+letter) moves the focus to the field."""
    label = QLabel(text)
    label.setBuddy(buddy)
    return label


def _error_label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(ERROR_STYLE)
    label.hide()
    return label


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
