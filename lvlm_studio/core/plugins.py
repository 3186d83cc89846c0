"""The plugin manager: first-party plugins registered by name, third-party ones by entry point.

Nothing is imported or registered until ``create_registry()`` is called, so importing this module
is free. Each plugin is loaded and each hook answered inside try/except: a broken plugin is
recorded in ``registry.status`` with its name and error and skipped, and the rest keep working.
"""

from __future__ import annotations

import importlib
import logging
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import pluggy

from lvlm_studio.core import hookspecs
from lvlm_studio.core.contracts import Analyzer, Explainer, Metric, PanelSpec
from lvlm_studio.core.errors import InputError, UnsupportedModelError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lvlm_studio.plugins"
DISABLE_ENV = "LVLM_STUDIO_DISABLE_PLUGINS"
#: Built-in plugins, registered explicitly and in this order (first wins on conflicts).
FIRST_PARTY = ("lvlm_studio.core.models.families", "lvlm_explainers", "lvlm_metrics", "lvlm_panels", "lvlm_sae")


@dataclass
class PluginStatus:
    name: str
    origin: str  # "built-in" or "entry point (distribution x.y)"
    state: str  # "loaded", "failed" or "disabled"
    error: str = ""


class PluginRegistry:
    """A pluggy manager plus what happened to each plugin, and typed views of the hook results."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.status: list[PluginStatus] = []

    # -- loading ----------------------------------------------------------------------------
    def register(self, plugin: Any, name: str, origin: str) -> bool:
        try:
            self.manager.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - a plugin's failure must not stop the others
            self._failed(name, origin, exc)
            return False
        self.status.append(PluginStatus(name, origin, "loaded"))
        return True

    def register_module(self, module_name: str, origin: str = "built-in") -> bool:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001
            self._failed(module_name, origin, exc)
            return False
        return self.register(module, module_name, origin)

    def load_entry_points(self) -> None:
        setting = os.environ.get(DISABLE_ENV, "").strip()
        disable_all = setting.lower() in {"1", "true", "yes", "all"}
        blocked = set() if disable_all else {n.strip() for n in setting.split(",") if n.strip()}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
            origin = f"entry point ({dist})"
            if disable_all or ep.name in blocked:
                self.status.append(PluginStatus(ep.name, origin, "disabled", f"{DISABLE_ENV}={setting}"))
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001
                self._failed(ep.name, origin, exc)
                continue
            self.register(plugin, ep.name, origin)

    def _failed(self, name: str, origin: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("plugin %s failed and was skipped: %s", name, message)
        log.debug("%s", traceback.format_exc())
        self.status.append(PluginStatus(name, origin, "failed", message))

    # -- asking -----------------------------------------------------------------------------
    def collect(self, hook_name: str) -> list[tuple[str, Any]]:
        """(plugin name, item) for every item every plugin returns from a hook, in registration
        order; a plugin whose hook raises is marked failed and contributes nothing."""
        hook = getattr(self.manager.hook, hook_name)
        items: list[tuple[str, Any]] = []
        for impl in hook.get_hookimpls():  # in registration order (pluggy *calls* them in reverse)
            try:
                result = impl.function()
            except Exception as exc:  # noqa: BLE001
                self._mark_failed(impl.plugin_name, exc)
                continue
            items.extend((impl.plugin_name, item) for item in result or [])
        return items

    def _mark_failed(self, name: str, exc: BaseException) -> None:
        for status in self.status:
            if status.name == name:
                status.state, status.error = "failed", f"{type(exc).__name__}: {exc}"
        log.warning("plugin %s raised in a hook and was skipped: %s", name, exc)

    def _unique(self, hook_name: str, kind: type) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for plugin_name, item in self.collect(hook_name):
            if not isinstance(item, kind) or not getattr(item, "id", ""):
                self._mark_failed(plugin_name, TypeError(f"{hook_name} returned {item!r}, not a {kind.__name__}"))
            elif item.id in found:
                log.warning("plugin %s: %s id %r is taken; skipped", plugin_name, kind.__name__, item.id)
            else:
                found[item.id] = item
        return found

    def explainers(self) -> dict[str, Explainer]:
        return self._unique("lvlm_studio_explainers", Explainer)

    def metrics(self) -> dict[str, Metric]:
        return self._unique("lvlm_studio_metrics", Metric)

    def analyzers(self) -> dict[str, Analyzer]:
        return self._unique("lvlm_studio_analyzers", Analyzer)

    def panels(self) -> dict[str, PanelSpec]:
        return self._unique("lvlm_studio_panels", PanelSpec)

    def adapters(self) -> list[type]:
        from lvlm_studio.core.models.adapter import ModelAdapter  # torch: only when models are involved

        found = []
        for plugin_name, item in self.collect("lvlm_studio_model_adapters"):
            if isinstance(item, type) and issubclass(item, ModelAdapter):
                found.append(item)
            else:
                error = TypeError(f"model adapters must be ModelAdapter subclasses, got {item!r}")
                self._mark_failed(plugin_name, error)
        return found

    def explainer(self, method_id: str) -> Explainer:
        available = self.explainers()
        if method_id not in available:
            raise InputError(
                f"no explanation method {method_id!r}.",
                f"Available: {', '.join(sorted(available)) or 'none'} (see `lvlm-studio plugins`).",
            )
        return available[method_id]

    def adapter_for(self, config: Any) -> type:
        adapters = self.adapters()
        for adapter in adapters:
            if adapter.matches(config):
                return adapter
        supported = sorted({t for a in adapters for t in a.model_types})
        raise UnsupportedModelError(
            f"model type {getattr(config, 'model_type', '?')!r} is not supported.",
            f"Supported families: {', '.join(supported)}. A plugin can add one (see the plugin guide).",
        )


def create_registry(load_third_party: bool = True, extra: Iterable[tuple[Any, str]] = ()) -> PluginRegistry:
    """A registry with the first-party plugins, then ``extra`` (object, name) pairs, then the
    third-party entry points unless disabled."""
    registry = PluginRegistry()
    for module_name in FIRST_PARTY:
        registry.register_module(module_name)
    for plugin, name in extra:
        registry.register(plugin, name, "given")
    if load_third_party:
        registry.load_entry_points()
    return registry
