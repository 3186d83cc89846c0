"""The plugin manager: first-party plugins registered by name, third-party ones by entry point.

Nothing is imported or registered until ``create_registry()`` is called, so importing this module
is free. Each plugin is loaded and each hook answered inside try/except (sys.exit included; only Ctrl-C goes
through), and each hook's answer is checked (a list of the right objects, each with an id): a broken
plugin is recorded in ``registry.status`` with its name, distribution and error and skipped, and the
rest keep working. ``lvlm-studio plugins`` lists them; a run that asks for a method of a failed plugin
is refused with the plugin's error.
"""

from __future__ import annotations

import importlib
import logging
import os
import reprlib
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, packages_distributions, version
from typing import Any

import pluggy

from lvlm_studio.core.errors import InputError, UnsupportedModelError
from lvlm_studio.core.plugin import hookspecs
from lvlm_studio.core.plugin.contracts import Analyzer, Explainer, Metric, PanelSpec

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
    # A plugin is code we do not control: besides exceptions it may call sys.exit() or raise another
    # BaseException while loading or answering a hook. Only Ctrl-C (KeyboardInterrupt) goes through.
    def register(self, plugin: Any, name: str, origin: str) -> bool:
        try:
            self.manager.register(plugin, name=name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a plugin's failure must not stop the others
            self._failed(name, origin, exc)
            return False
        self.status.append(PluginStatus(name, origin, "loaded"))
        return True

    def register_module(self, module_name: str, origin: str = "built-in") -> bool:
        try:
            module = importlib.import_module(module_name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            self._failed(module_name, origin, exc)
            return False
        return self.register(module, module_name, origin)

    def load_entry_points(self) -> None:
        setting = os.environ.get(DISABLE_ENV, "").strip()
        disable_all = setting.lower() in {"1", "true", "yes", "all"}
        blocked = set() if disable_all else {n.strip() for n in setting.split(",") if n.strip()}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            origin = f"entry point ({_distribution(ep)})"
            if disable_all or ep.name in blocked:
                self.status.append(PluginStatus(ep.name, origin, "disabled", f"{DISABLE_ENV}={setting}"))
                continue
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001
                self._failed(ep.name, origin, exc)
                continue
            self.register(plugin, ep.name, origin)

    def _failed(self, name: str, origin: str, exc: BaseException) -> None:
        message = _describe_error(exc)
        log.info("plugin %s failed and was skipped: %s", name, message)
        log.debug("%s", traceback.format_exc())
        self.status.append(PluginStatus(name, origin, "failed", message))

    # -- asking -----------------------------------------------------------------------------
    def collect(self, hook_name: str, problem: Callable[[Any], str | None] = lambda item: None
                ) -> list[tuple[str, Any]]:
        """(plugin name, item) for every item every plugin returns from a hook, in registration order.

        A plugin whose hook raises, or returns anything but a list, or an item for which
        ``problem`` gives a reason, is marked failed and contributes nothing to this hook; a plugin
        already failed is not asked again.
        """
        hook = getattr(self.manager.hook, hook_name)
        failed = {status.name for status in self.status if status.state == "failed"}
        items: list[tuple[str, Any]] = []
        for impl in hook.get_hookimpls():  # in registration order (pluggy *calls* them in reverse)
            if impl.plugin_name in failed:
                continue
            try:
                result = impl.function()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001
                self._mark_failed(impl.plugin_name, _describe_error(exc))
                continue
            if not isinstance(result, (list, tuple)):
                self._mark_failed(impl.plugin_name, f"{hook_name} returned {_describe(result)}, not a list")
                continue
            reasons = [reason for reason in map(problem, result) if reason]
            if reasons:
                self._mark_failed(impl.plugin_name, f"{hook_name} returned {reasons[0]}")
                continue
            items.extend((impl.plugin_name, item) for item in result)
        return items

    def _mark_failed(self, name: str, message: str) -> None:
        for status in self.status:
            if status.name == name:
                status.state, status.error = "failed", message
        log.info("plugin %s failed and was skipped: %s", name, message)

    def _unique(self, hook_name: str, kind: type) -> dict[str, Any]:
        def problem(item: Any) -> str | None:
            if not isinstance(item, kind):
                return f"{_describe(item)}, not a {kind.__name__}"
            if not isinstance(item.id, str) or not item.id:
                return f'{type(item).__name__} with no id (give its class one, e.g. id = "my-method")'
            return None

        found: dict[str, Any] = {}
        for plugin_name, item in self.collect(hook_name, problem):
            if item.id in found:
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
        from lvlm_studio.core.plugin.adapter import ModelAdapter  # torch: only when models are involved

        def problem(item: Any) -> str | None:
            if isinstance(item, type) and issubclass(item, ModelAdapter):
                return None
            return f"{_describe(item)}, not a ModelAdapter subclass"

        return [item for _, item in self.collect("lvlm_studio_model_adapters", problem)]

    def explainer(self, method_id: str) -> Explainer:
        available = self.explainers()
        if method_id not in available:
            failed = "".join(f"; plugin {s.name} [{s.origin}] failed ({s.error})" for s in self.status
                             if s.state == "failed")
            raise InputError(
                f"no explanation method {method_id!r}{failed}.",
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


def _distribution(ep: EntryPoint) -> str:
    return f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"


def distribution_of(obj: Any) -> str:
    """The distribution (name and version) whose code defines ``obj``'s class, for error messages
    that must say whom to tell: the one whose entry point is (or is in) that module's package, or
    else the one that installed the package; its module when neither is known."""
    module = type(obj).__module__
    package = module.partition(".")[0]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None and ep.value.partition(":")[0].strip().partition(".")[0] == package:
            return _distribution(ep)
    for name in packages_distributions().get(package, []):
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            continue
    return f"module {module}"


def _describe(item: Any) -> str:
    """A short description of what a plugin returned: its type, and its value when that is plain data."""
    if item is None:
        return "None"
    kind = type(item).__name__
    if isinstance(item, (str, int, float, dict, list, tuple)):
        return f"a {kind} {reprlib.repr(item)}"  # reprlib: short, and safe from a failing __repr__ inside
    return f"a {kind}"


def _describe_error(exc: BaseException) -> str:
    """One line (messages are printed as one): the exception's type and text."""
    if isinstance(exc, SystemExit):
        return f"SystemExit: the plugin called sys.exit({exc.code!r})"
    return " ".join(f"{type(exc).__name__}: {exc}".split())


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
