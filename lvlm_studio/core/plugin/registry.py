"""The plugin manager: first-party plugins registered by name, third-party ones by entry point.

Nothing is imported or registered until ``create_registry()`` is called, so importing this module
is free. Each plugin is loaded and each hook answered inside try/except (sys.exit included; only Ctrl-C goes
through), and each hook's answer is checked (a list of the right objects, each with an id): a broken
plugin is recorded in ``registry.status`` with its name, distribution and error and skipped, and the
rest keep working. ``lvlm-studio plugins`` lists them; a run that asks for a method of a failed plugin
is refused with the plugin's error.

Registration also validates: a plugin whose declared API range (``LVLM_STUDIO_API``) excludes
``API_VERSION`` is reported as incompatible and skipped; pluggy's ``check_pending()`` finds functions
marked ``@hookimpl`` under a name that is no hook (a typo), and that plugin is failed with the unknown
name; a plugin that contributes nothing is loaded with a warning; when two plugins give the same id
both are named (the first registered wins). Each plugin's status names the distribution and version
that installed it, so run records can say who provided each method, metric and panel (``provider``).
"""

from __future__ import annotations

import importlib
import logging
import os
import reprlib
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from difflib import get_close_matches
from importlib.metadata import EntryPoint, PackageNotFoundError, entry_points, packages_distributions, version
from types import ModuleType
from typing import Any

import pluggy

from lvlm_studio.core.errors import InputError, UnsupportedModelError
from lvlm_studio.core.io.records import package_version
from lvlm_studio.core.plugin import hookspecs
from lvlm_studio.core.plugin.contracts import Analyzer, Explainer, Metric, PanelSpec, Study
from lvlm_studio.core.plugin.hookspecs import API_RANGE_ATTRIBUTE, API_VERSION, PLUGIN_GUIDE

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lvlm_studio.plugins"
DISABLE_ENV = "LVLM_STUDIO_DISABLE_PLUGINS"
#: Built-in plugins, registered explicitly and in this order (first wins on conflicts).
FIRST_PARTY = ("lvlm_studio.core.models.families", "lvlm_explainers", "lvlm_metrics", "lvlm_panels", "lvlm_sae",
               "lvlm_studies")
#: The distribution that ships the first-party plugins.
OWN_DISTRIBUTION = "lvlm-studio"
#: What each hook contributes, in the words run records and listings use.
KINDS = {"lvlm_studio_model_adapters": "model families", "lvlm_studio_explainers": "methods",
         "lvlm_studio_metrics": "metrics", "lvlm_studio_analyzers": "analyzers", "lvlm_studio_panels": "panels",
         "lvlm_studio_studies": "studies"}


@dataclass
class PluginStatus:
    """What happened to one plugin, and who installed it."""

    name: str
    origin: str  # "built-in", "given" or "entry point (distribution x.y)"
    state: str  # "loaded", "failed", "incompatible" or "disabled"
    error: str = ""
    distribution: str = ""  # the distribution that installed the plugin ("lvlm-studio" for built-ins); "" unknown
    version: str = ""
    #: Problems that do not stop the plugin: it contributes nothing, an id it gives is taken.
    warnings: list[str] = field(default_factory=list)
    #: What it contributes, by kind ("methods", "metrics", "panels", ...): the ids it won.
    contributes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def provider(self) -> dict[str, str]:
        """The plugin, distribution and version, as run records name them."""
        return {"plugin": self.name, "distribution": self.distribution or "unknown",
                "version": self.version or "unknown"}

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


class PluginRegistry:
    """A pluggy manager plus what happened to each plugin, and typed views of the hook results."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.status: list[PluginStatus] = []
        #: (kind, id) -> name of the plugin whose item is used, for ``provider``.
        self.providers: dict[tuple[str, str], str] = {}
        #: One line per id given by two plugins, naming both (the first registered wins).
        self.conflicts: list[str] = []
        self._asked: set[str] = set()  # kinds whose hook has been asked at least once

    # -- loading ----------------------------------------------------------------------------
    # A plugin is code we do not control: besides exceptions it may call sys.exit() or raise another
    # BaseException while loading or answering a hook. Only Ctrl-C (KeyboardInterrupt) goes through.
    def register(self, plugin: Any, name: str, origin: str, distribution: str = "", version: str = "") -> bool:
        if not distribution:
            distribution, version = _installed_by(plugin)
        status = PluginStatus(name, origin, "loaded", distribution=distribution, version=version)
        incompatible = _api_problem(plugin)
        if incompatible:
            status.state, status.error = "incompatible", incompatible
            self.status.append(status)
            log.warning("plugin %s was skipped: %s", name, incompatible)
            return False
        try:
            self.manager.register(plugin, name=name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - a plugin's failure must not stop the others
            self._failed(name, origin, exc, status)
            return False
        self.status.append(status)
        if not self.manager.get_hookcallers(plugin):
            status.warn(_nothing_marked(plugin))
        return True

    def register_module(self, module_name: str, origin: str = "built-in") -> bool:
        own = (OWN_DISTRIBUTION, package_version(OWN_DISTRIBUTION)) if origin == "built-in" else ("", "")
        try:
            module = importlib.import_module(module_name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001
            self._failed(module_name, origin, exc, PluginStatus(module_name, origin, "failed", "", *own))
            return False
        return self.register(module, module_name, origin, *own)

    def check_pending(self) -> None:
        """pluggy's ``check_pending()``: a function marked ``@hookimpl`` whose name is no hook (a typo)
        fails its plugin, with the unknown names and the nearest hooks, and the plugin is unregistered;
        the other plugins stay."""
        while True:
            try:
                self.manager.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                plugin = exc.plugin
                name = self.manager.get_name(plugin) or repr(plugin)
                unknown = sorted(caller.name for caller in self.manager.get_hookcallers(plugin) or []
                                 if not caller.has_spec())
                self.manager.unregister(plugin)
                self._mark_failed(name, _unknown_hooks_message(unknown))

    def load_entry_points(self) -> None:
        setting = os.environ.get(DISABLE_ENV, "").strip()
        disable_all = setting.lower() in {"1", "true", "yes", "all"}
        blocked = set() if disable_all else {n.strip() for n in setting.split(",") if n.strip()}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            origin = f"entry point ({_distribution(ep)})"
            installed = (ep.dist.name, ep.dist.version) if ep.dist else ("", "")
            if disable_all or ep.name in blocked:
                self.status.append(PluginStatus(ep.name, origin, "disabled", f"{DISABLE_ENV}={setting}", *installed))
                continue
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001
                self._failed(ep.name, origin, exc, PluginStatus(ep.name, origin, "failed", "", *installed))
                continue
            self.register(plugin, ep.name, origin, *installed)

    def _failed(self, name: str, origin: str, exc: BaseException, status: PluginStatus | None = None) -> None:
        message = _describe_error(exc)
        log.info("plugin %s failed and was skipped: %s", name, message)
        log.debug("%s", traceback.format_exc())
        status = status or PluginStatus(name, origin, "failed")
        status.state, status.error = "failed", message
        self.status.append(status)

    # -- asking -----------------------------------------------------------------------------
    def collect(self, hook_name: str, problem: Callable[[Any], str | None] = lambda item: None
                ) -> list[tuple[str, Any]]:
        """(plugin name, item) for every item every plugin returns from a hook, in registration order.

        A plugin whose hook raises, or returns anything but a list, or an item for which
        ``problem`` gives a reason, is marked failed and contributes nothing to this hook; a plugin
        already failed is not asked again.
        """
        hook = getattr(self.manager.hook, hook_name)
        failed = {status.name for status in self.status if status.state != "loaded"}
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
                return f"{_describe(item)}, not {_article(kind.__name__)} (subclass lvlm_studio.api.{kind.__name__})"
            item_id = getattr(item, "id", None)
            if not isinstance(item_id, str) or not item_id:
                given = "" if item_id in (None, "") else f" ({_describe(item_id)})"
                return (f"{_article(kind.__name__)} with no id{given}: give its class {type(item).__name__} one, "
                        f'e.g. id = "my-method" (see {PLUGIN_GUIDE})')
            return None

        what = KINDS[hook_name]
        self._asked.add(what)
        found: dict[str, Any] = {}
        for plugin_name, item in self.collect(hook_name, problem):
            if item.id in found:
                self._conflict(what, item.id, self.providers[(what, item.id)], plugin_name)
            else:
                found[item.id] = item
                self.providers[(what, item.id)] = plugin_name
                self._contributed(plugin_name, what, item.id)
        return found

    def _status(self, name: str) -> PluginStatus | None:
        return next((status for status in self.status if status.name == name), None)

    def _contributed(self, plugin_name: str, what: str, item_id: str) -> None:
        status = self._status(plugin_name)
        if status is not None and item_id not in status.contributes.setdefault(what, []):
            status.contributes[what].append(item_id)

    def _conflict(self, what: str, item_id: str, first: str, second: str) -> None:
        """Both providers of an id, named with their distributions, on the skipped one's status."""
        def named(plugin_name: str) -> str:
            status = self._status(plugin_name)
            if status is None or not status.distribution:
                return f"plugin {plugin_name} (from no installed distribution)"
            return f"plugin {plugin_name} ({status.distribution} {status.version})"

        message = (f"{what[:-1]} id {item_id!r} is given by both {named(first)} and {named(second)}; "
                   f"the first registered, {first}, is used and {second}'s is skipped")
        if message not in self.conflicts:
            self.conflicts.append(message)
            log.warning("%s", message)
        status = self._status(second)
        if status is not None:
            status.warn(message)

    def explainers(self) -> dict[str, Explainer]:
        return self._unique("lvlm_studio_explainers", Explainer)

    def metrics(self) -> dict[str, Metric]:
        return self._unique("lvlm_studio_metrics", Metric)

    def analyzers(self) -> dict[str, Analyzer]:
        return self._unique("lvlm_studio_analyzers", Analyzer)

    def panels(self) -> dict[str, PanelSpec]:
        return self._unique("lvlm_studio_panels", PanelSpec)

    def studies(self) -> dict[str, Study]:
        return self._unique("lvlm_studio_studies", Study)

    def study(self, study_id: str) -> Study:
        """The study ``study_id`` (hyphens may stand for underscores: ``vision-entry``), or an
        ``InputError`` naming the available ones (and failed plugins)."""
        available = self.studies()
        if study_id not in available and study_id.replace("-", "_") in available:
            study_id = study_id.replace("-", "_")
        if study_id not in available:
            failed = "".join(f"; plugin {s.name} [{s.origin}] {s.state} ({s.error})" for s in self.status
                             if s.state in ("failed", "incompatible"))
            raise InputError(f"no study {study_id!r}{failed}.",
                             f"Available: {', '.join(sorted(available)) or 'none'} (see `lvlm-studio study --list`).")
        return available[study_id]

    def adapters(self) -> list[type]:
        from lvlm_studio.core.plugin.adapter import ModelAdapter  # torch: only when models are involved

        def problem(item: Any) -> str | None:
            if isinstance(item, type) and issubclass(item, ModelAdapter):
                return None
            return f"{_describe(item)}, not a ModelAdapter subclass"

        found = []
        for plugin_name, item in self.collect("lvlm_studio_model_adapters", problem):
            self._contributed(plugin_name, "model families", getattr(item, "family", "") or item.__name__)
            found.append(item)
        return found

    def survey(self) -> dict[str, Any]:
        """Ask every hook once, so that each plugin's status says what it contributes, conflicts are
        found, and a loaded plugin that contributes nothing is warned about. Returns the items by kind."""
        found: dict[str, Any] = {"methods": self.explainers(), "metrics": self.metrics(),
                                 "analyzers": self.analyzers(), "panels": self.panels(), "studies": self.studies()}
        try:
            found["model families"] = self.adapters()
        except ImportError as exc:  # torch missing: the listing still works
            log.info("model adapters not listed: %s", exc)
            found["model families"] = []
        for status in self.status:
            if status.state == "loaded" and not any(status.contributes.values()) and not status.warnings:
                status.warn("contributes nothing: its hooks returned empty lists")
        return found

    def provider(self, what: str, item_id: str) -> dict[str, str]:
        """Who provided the ``what`` ("methods", "metrics", "analyzers", "panels") with ``item_id``:
        plugin, distribution and version ("unknown" where not known, e.g. a method no plugin gives)."""
        if what not in self._asked:
            {"methods": self.explainers, "metrics": self.metrics, "analyzers": self.analyzers,
             "panels": self.panels, "studies": self.studies}.get(what, dict)()
        name = self.providers.get((what, item_id))
        status = self._status(name) if name else None
        if status is None:
            return {"plugin": "unknown", "distribution": "unknown", "version": "unknown"}
        return status.provider

    def providers_of(self, **ids: Iterable[str]) -> dict[str, dict[str, dict[str, str]]]:
        """``providers_of(methods=[...], metrics=[...])``: each id's provider, by kind, for run records."""
        return {what: {item_id: self.provider(what, item_id) for item_id in items} for what, items in ids.items()}

    def explainer(self, method_id: str) -> Explainer:
        available = self.explainers()
        if method_id not in available:
            failed = "".join(f"; plugin {s.name} [{s.origin}] {s.state} ({s.error})" for s in self.status
                             if s.state in ("failed", "incompatible"))
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
            f"Supported families: {', '.join(supported)}. A plugin can add one (see {PLUGIN_GUIDE}).",
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


def _installed_by(plugin: Any) -> tuple[str, str]:
    """The distribution and version that installed ``plugin``'s module (or its class's), or ("", "")."""
    module = plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__
    package = (module or "").partition(".")[0]
    if package in {name.partition(".")[0] for name in FIRST_PARTY} | {"lvlm_studio"}:
        return OWN_DISTRIBUTION, package_version(OWN_DISTRIBUTION)
    for name in packages_distributions().get(package, []):
        try:
            return name, version(name)
        except PackageNotFoundError:
            continue
    return "", ""


def _api_problem(plugin: Any) -> str:
    """Why ``plugin``'s declared API range (``LVLM_STUDIO_API``) excludes this release; "" when it fits
    or declares none."""
    try:
        declared = getattr(plugin, API_RANGE_ATTRIBUTE, None)
    except Exception:  # noqa: BLE001 - a hostile __getattr__ counts as no declaration
        return ""
    if declared is None:
        return ""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        needed = SpecifierSet(str(declared))
    except InvalidSpecifier:
        return (f"its {API_RANGE_ATTRIBUTE} = {declared!r} is not a version range; write one like \">=1,<2\" "
                f"(see {PLUGIN_GUIDE})")
    if needed.contains(API_VERSION, prereleases=True):
        return ""
    return (f"it needs plugin API {declared}, and this LVLM Studio ({package_version(OWN_DISTRIBUTION)}) provides "
            f"API {API_VERSION}: install a release of the plugin made for API {API_VERSION.partition('.')[0]}, "
            f"or a release of LVLM Studio in its range")


def _nothing_marked(plugin: Any) -> str:
    """The warning for a plugin with no ``@hookimpl`` function, naming hook-like functions left unmarked."""
    unmarked = sorted(name for name in dir(plugin) if name.startswith(f"{hookspecs.PROJECT}_")
                      and callable(getattr(plugin, name, None)))
    if unmarked:
        return (f"contributes nothing: {', '.join(unmarked)} {'is' if len(unmarked) == 1 else 'are'} not marked "
                f"@hookimpl (from lvlm_studio.api import hookimpl; see {PLUGIN_GUIDE})")
    return f"contributes nothing: no function is marked @hookimpl (see {PLUGIN_GUIDE})"


def _unknown_hooks_message(unknown: list[str]) -> str:
    hooks = sorted(name for name in vars(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_"))
    parts = []
    for name in unknown:
        near = get_close_matches(name, hooks, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    return (f"unknown hook {', '.join(parts)}: the hooks are {', '.join(hooks)} (see {PLUGIN_GUIDE})")


def _article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


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
    registry.check_pending()
    return registry
