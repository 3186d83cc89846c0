"""Help › Plugins: every plugin, who installed it, what it contributes, and what went wrong.

The same facts as ``lvlm-studio plugins``, for someone who only uses the app: plugins that failed
or were skipped as incompatible (with the reason), warnings (a plugin that contributes nothing, an
id given by two plugins, with both named), panels that broke while in use, and the plugin API
version plugins are checked against.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

from lvlm_studio.core.plugin.hookspecs import API_VERSION, PLUGIN_GUIDE

if TYPE_CHECKING:
    from lvlm_studio.core.plugin.registry import PluginRegistry

STATE_COLOURS = {"loaded": "#188038", "failed": "#d93025", "incompatible": "#d93025", "disabled": "#80868b"}


def plugins_html(registry: PluginRegistry, panel_failures: dict[str, str] | None = None) -> str:
    """The listing as HTML: a paragraph per plugin, then conflicts and panels that broke."""
    registry.survey()  # what each plugin contributes, conflicts, and plugins that give nothing
    text = html.escape
    parts = [f"<p>Plugin API {text(API_VERSION)}. Writing a plugin: {text(PLUGIN_GUIDE)}.</p>"]
    problems = sum(status.state in ("failed", "incompatible") for status in registry.status)
    if problems:
        parts.append(f"<p><b>{problems} plugin{'s' if problems != 1 else ''} could not be used</b> "
                     "(the others work).</p>")
    for status in registry.status:
        colour = STATE_COLOURS.get(status.state, "#80868b")
        provider = status.provider
        lines = [f"<b>{text(status.name)}</b> <span style='color:{colour}'>{text(status.state)}</span> "
                 f"&nbsp;{text(provider['distribution'])} {text(provider['version'])} ({text(status.origin)})"]
        if status.error:
            lines.append(f"<span style='color:#d93025'>{text(status.error)}</span>")
        lines.extend(f"warning: {text(warning)}" for warning in status.warnings)
        for what, ids in status.contributes.items():
            if ids and status.state == "loaded":
                lines.append(f"{text(what)}: {text(', '.join(ids))}")
        parts.append("<p>" + "<br>".join(lines) + "</p>")
    if registry.conflicts:
        parts.append("<p><b>Conflicts</b><br>" + "<br>".join(map(text, registry.conflicts)) + "</p>")
    if panel_failures:
        parts.append("<p><b>Panels that failed while in use</b><br>"
                     + "<br>".join(f"{text(panel)}: {text(error)}" for panel, error in panel_failures.items())
                     + "</p>")
    return "".join(parts)


class PluginsDialog(QDialog):
    """A read-only listing of the plugins (``plugins_html``) with a Close button."""

    def __init__(self, registry: PluginRegistry, panel_failures: dict[str, str] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("plugins_dialog")
        self.setWindowTitle("LVLM Studio: plugins")
        self.browser = QTextBrowser()
        self.refresh(registry, panel_failures)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
        self.resize(640, 480)

    def refresh(self, registry: PluginRegistry, panel_failures: dict[str, str] | None = None) -> None:
        """Show the listing as it is now (a panel may have failed since the dialog was last open)."""
        self.browser.setHtml(plugins_html(registry, panel_failures))

    def text(self) -> str:
        """What the dialog says, as plain text (for tests and for copying into a report)."""
        return self.browser.toPlainText()
