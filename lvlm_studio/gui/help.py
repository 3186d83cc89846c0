"""Help › Keyboard shortcuts and Help › Documentation.

The shortcuts dialog is generated from the window itself: every ``QAction`` with a shortcut (with the
menu it sits in), every ``QShortcut`` (described by its ``whatsThis``), and the keys the window
handles in ``keyPressEvent`` (``STEP_KEYS``, defined here and used there). A shortcut added anywhere in the window
shows up without touching this module, so the list cannot go stale.

The documentation is read from this machine, never from the internet: the built site
(``site/index.html``, written by ``mkdocs build``) when there is one, else the Markdown pages
(``docs/index.md``) that ship with the source and the installed bundle. When neither is there, a
dialog says where it looked and how to get them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from lvlm_studio.gui.main_window import MainWindow

# Next to the package, as resources/ is: the source checkout's root, or the installed bundle's _internal.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOC_CANDIDATES = ("site/index.html", "docs/index.md")
STEP_KEYS = {Qt.Key.Key_Left: -1, Qt.Key.Key_Right: 1}  # keys the window uses to step through the answer


def _plain(text: str) -> str:
    """A menu text as a person reads it: no mnemonic ampersands, no trailing ellipsis."""
    return text.replace("&&", "\0").replace("&", "").replace("\0", "&").rstrip("\u2026").strip()


def _keys(sequences: list[QKeySequence]) -> str:
    return ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in sequences if not s.isEmpty())


def shortcut_rows(window: MainWindow) -> list[tuple[str, str, str]]:
    """(keys, what they do, where) for every shortcut of ``window``, in menu order, then the others."""
    rows: list[tuple[str, str, str]] = []
    seen: set[int] = set()
    for menu_action in window.menuBar().actions():
        menu = menu_action.menu()
        if menu is not None:
            rows += _menu_rows(menu, _plain(menu.title()), seen)
    for entry in window.findChildren(QAction):  # actions outside the menu bar (panels' own, for instance)
        if id(entry) not in seen and entry.shortcuts() and entry.text() and _in(window, entry.parent()):
            seen.add(id(entry))
            rows.append((_keys(entry.shortcuts()), _plain(entry.text()), ""))
    for shortcut in window.findChildren(QShortcut):
        if shortcut.isEnabled() and not shortcut.key().isEmpty() and _in(window, shortcut.parent()):
            rows.append((_keys([shortcut.key()]), shortcut.whatsThis() or "(no description)", ""))
    steps = {}
    for key, step in STEP_KEYS.items():
        steps.setdefault(step, []).append(QKeySequence(key))
    for step, sequences in sorted(steps.items()):
        rows.append((_keys(sequences), "Previous answer token" if step < 0 else "Next answer token",
                     "the answer (when no field uses the key)"))
    return rows


def _in(window: QWidget, owner: object) -> bool:
    """Whether ``owner`` is part of ``window`` itself (not of a window it opened, such as the review)."""
    return isinstance(owner, QWidget) and owner.window() is window


def _menu_rows(menu: QMenu, where: str, seen: set[int]) -> list[tuple[str, str, str]]:
    rows = []
    for entry in menu.actions():
        if entry.menu() is not None:
            rows += _menu_rows(entry.menu(), f"{where} \u203a {_plain(entry.menu().title())}", seen)
        elif entry.shortcuts() and id(entry) not in seen:
            seen.add(id(entry))
            rows.append((_keys(entry.shortcuts()), _plain(entry.text()), where))
    return rows


class ShortcutsDialog(QDialog):
    """Help › Keyboard shortcuts: a table of keys, what they do and the menu they are in (non-modal)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window_ = window
        self.setWindowTitle("Keyboard shortcuts")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["keys", "does", "menu"])
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        note = QLabel("Listed from the window's own menus and keys.")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self.resize(560, 460)
        self.refresh()

    def refresh(self) -> None:
        rows = shortcut_rows(self.window_)
        self.table.setRowCount(len(rows))
        for r, values in enumerate(rows):
            for c, text in enumerate(values):
                self.table.setItem(r, c, QTableWidgetItem(text))


def find_documentation(root: Path = PROJECT_ROOT) -> Path | None:
    """The local documentation's start page under ``root`` (the built site first), or None."""
    for candidate in DOC_CANDIDATES:
        path = root / candidate
        if path.is_file():
            return path
    return None


def open_documentation(parent: QWidget, root: Path = PROJECT_ROOT) -> Path | None:
    """Open the local documentation with the system's viewer; say so in a dialog when it is not
    there or cannot be opened. Returns the page opened (None when none was)."""
    path = find_documentation(root)
    if path is None:
        looked = ", ".join(str(root / c) for c in DOC_CANDIDATES)
        _tell(parent, "The documentation is not installed with this copy of LVLM Studio.",
              f"Looked for {looked}. In a source checkout, `mkdocs build` writes the site to site/; "
              "the pages are also the Markdown files under docs/ of the source.")
        return None
    if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))):
        _tell(parent, f"No program on this computer opened {path}.",
              "Open that file in a web browser or a text editor.")
        return None
    return path


def _tell(parent: QWidget, text: str, hint: str) -> None:
    box = QMessageBox(parent)
    box.setWindowTitle("LVLM Studio: Documentation")
    box.setIcon(QMessageBox.Icon.Information)
    box.setText(text)
    box.setInformativeText(hint)
    box.exec()
