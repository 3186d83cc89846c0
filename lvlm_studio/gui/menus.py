"""The window's menu bar: File, View (with a Panels menu filled from the plugins), Review and Help.

The menus only call the window (and its sessions); what an entry does is written there. The
actions that change with the analysis (Save, Export report) are kept here so the window can
enable them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QWidget

if TYPE_CHECKING:
    from lvlm_studio.core.plugin.contracts import PanelSpec
    from lvlm_studio.gui.main_window import MainWindow


class Menus:
    """Builds the menu bar of ``window`` and keeps the entries that change later."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window
        sessions = window.sessions
        file_menu = window.menuBar().addMenu("&File")
        self.open_image_action = action(window, "Open &image\u2026", QKeySequence.StandardKey.Open,
                                        window.choose_image)
        self.open_model_action = action(window, "Open &model folder\u2026", "Ctrl+Shift+O",
                                        window.model_box.choose_model)
        file_menu.addAction(self.open_image_action)
        file_menu.addAction(action(window, "New &demo scene", "Ctrl+D", lambda: window.open_demo_scene()))
        file_menu.addAction(self.open_model_action)
        file_menu.addSeparator()
        file_menu.addAction(action(window, "Open &session\u2026", "Ctrl+Shift+S", sessions.choose_session))
        self.recent_menu = file_menu.addMenu("&Recent sessions")
        self.recent_menu.aboutToShow.connect(self._fill_recent_sessions)
        self.save_action = action(window, "&Save session", QKeySequence.StandardKey.Save, sessions.save_session)
        file_menu.addAction(self.save_action)
        file_menu.addAction(action(window, "Save session &as\u2026", None, lambda: sessions.save_session(ask=True)))
        self.report_action = action(window, "Export &report (PDF)\u2026", "Ctrl+P", sessions.choose_report)
        file_menu.addAction(self.report_action)
        file_menu.addSeparator()
        file_menu.addAction(action(window, "Open &worklist\u2026", "Ctrl+Shift+W",
                                   lambda: window.open_review().choose_worklist()))
        file_menu.addAction(action(window, "Open s&tudy\u2026", None, window.choose_study))
        file_menu.addSeparator()
        file_menu.addAction(action(window, "&Quit", QKeySequence.StandardKey.Quit, window.close))

        view_menu = window.menuBar().addMenu("&View")
        self.panels_menu = view_menu.addMenu("&Panels")
        self.panels_menu.aboutToShow.connect(self._sync_panel_actions)
        self.panel_actions: dict[str, QAction] = {}
        view_menu.addAction(action(window, "Reset &layout", None, window.reset_layout))
        review_menu = window.menuBar().addMenu("&Review")
        review_menu.addAction(action(window, "Open &worklist\u2026", None,
                                     lambda: window.open_review().choose_worklist()))
        review_menu.addAction(action(window, "Open worklist &folder\u2026", None,
                                     lambda: window.open_review().choose_folder()))
        review_menu.addAction(action(window, "Show the review &workspace", None, window.open_review))
        review_menu.addSeparator()
        review_menu.addAction(action(window, "Re&viewer\u2026", None, lambda: window.open_review().change_reviewer()))
        review_menu.addAction(action(window, "Audit &log\u2026", None, lambda: window.open_review().choose_audit_log()))
        help_menu = window.menuBar().addMenu("&Help")
        self.plugins_action = action(window, "&Plugins\u2026", None, window.show_plugins)
        help_menu.addAction(self.plugins_action)
        help_menu.addAction(action(window, "&Keyboard shortcuts\u2026", "Ctrl+/", window.show_shortcuts))
        help_menu.addAction(action(window, "&Documentation", QKeySequence.StandardKey.HelpContents,
                                   window.open_documentation))
        help_menu.addSeparator()
        help_menu.addAction(action(window, "&About LVLM Studio", None, window.show_about))

    def set_panels(self, specs: dict[str, PanelSpec]) -> None:
        """One checkable entry per panel the plugins contribute (the registry arrives after the menus)."""
        self.panels_menu.clear()
        self.panel_actions.clear()
        for panel_id, spec in specs.items():
            entry = QAction(spec.title, self.window)
            entry.setCheckable(True)
            entry.triggered.connect(lambda checked, p=panel_id: self.window.toggle_panel(p, checked))
            self.panels_menu.addAction(entry)
            self.panel_actions[panel_id] = entry

    def _sync_panel_actions(self) -> None:
        for panel_id, entry in self.panel_actions.items():
            dock = self.window.dock(panel_id)
            entry.setChecked(dock is not None and not dock.isHidden())

    def _fill_recent_sessions(self) -> None:
        self.recent_menu.clear()
        recent = self.window.settings.recent_sessions()
        for path in recent:
            self.recent_menu.addAction(action(self.window, Path(path).name, None,
                                              lambda p=path: self.window.open_session(p)))
        if not recent:
            self.recent_menu.addAction("No recent sessions").setEnabled(False)


def action(parent: QWidget, text: str, shortcut: Any, slot: Callable[[], Any]) -> QAction:
    """A menu action that calls ``slot()`` with no arguments: ``triggered`` sends ``checked``, which a
    slot with optional parameters would take as its first one (Save session took it as the path)."""
    entry = QAction(text, parent)
    if shortcut is not None:
        entry.setShortcut(shortcut)
    entry.triggered.connect(lambda: slot())
    return entry
