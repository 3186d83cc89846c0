"""``lvlm-studio plugins``: the plugins, model families, methods and their parameters, and what failed;
with ``--check [NAME]``, each plugin's methods and metrics run on the demo model and every family's
tiny model, and what they return is checked (``lvlm_studio.testing.conformance``)."""

from __future__ import annotations

import argparse
from typing import Any

from lvlm_studio.core.errors import InputError


def add_parsers(sub: argparse._SubParsersAction) -> None:
    plugins = sub.add_parser("plugins", help="list plugins, model families, methods and their status")
    plugins.add_argument("--check", nargs="?", const="", metavar="NAME",
                         help="run the explainers and metrics of every plugin (or of plugin NAME, as listed) on the "
                              "demo model and each family's tiny model, and check what they return")
    plugins.add_argument("--families", metavar="LIST",
                         help="with --check: only these tiny-model families, comma-separated (default: all; "
                              "none: the demo model only)")
    plugins.set_defaults(func=cmd_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    from lvlm_studio.core.plugin.hookspecs import API_VERSION, PLUGIN_GUIDE
    from lvlm_studio.core.plugin.registry import create_registry

    check, families = getattr(args, "check", None), getattr(args, "families", None)  # callers may pass neither
    if families is not None and check is None:
        raise InputError("--families only applies with --check.", "Add --check, or leave --families out.")
    registry = create_registry()
    if check is not None:
        return cmd_check(registry, check or None, _families(families))
    found = registry.survey()
    explainers, metrics, analyzers, panels = (found[k] for k in ("methods", "metrics", "analyzers", "panels"))
    print(f"plugins (plugin API {API_VERSION}; writing one: {PLUGIN_GUIDE})")
    for status in registry.status:
        print(f"  {status.state:<8} {status.name}  [{status.origin}]")
        if status.error:
            print(f"           {status.error}")
        for warning in status.warnings:
            print(f"           warning: {warning}")
        if status.state == "loaded" and status.contributes:
            given = "; ".join(f"{what}: {', '.join(ids)}" for what, ids in status.contributes.items() if ids)
            if given:
                print(f"           gives {given}")
    print("model families")
    for adapter in found["model families"]:
        print(f"  {', '.join(adapter.model_types):<16} {adapter.family}")
    for heading, items in (("explanation methods", explainers), ("metrics", metrics),
                           ("analyzers", analyzers), ("panels", panels)):
        print(heading + ("" if items else "  (none)"))
        for item_id, item in items.items():
            print(f"  {item_id:<20} {item.title}")
            for param in getattr(item, "params", ()):
                choices = f" [{'|'.join(map(str, param.choices))}]" if param.choices else ""
                print(f"      {param.name}={_show(param.default)}{choices}  {param.help}")
    if registry.conflicts:
        print("conflicts")
        for conflict in registry.conflicts:
            print(f"  {conflict}")
    return 0


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "all"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _families(text: str | None) -> list[str] | None:
    """The tiny-model families chosen with ``--families`` (None: all), refused with the choices."""
    from lvlm_studio.testing.tiny_models import TINY_FAMILIES

    if text is None:
        return None
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    if chosen == ["none"]:
        return []
    unknown = [name for name in chosen if name not in TINY_FAMILIES]
    if unknown or not chosen:
        raise InputError(f"--families {text!r} names no known family{': ' + ', '.join(unknown) if unknown else ''}.",
                         f"Choose from: {', '.join(TINY_FAMILIES)}, or none.")
    return chosen


def cmd_check(registry: Any, plugin: str | None, families: list[str] | None) -> int:
    """Run and check the plugins' explainers and metrics; print the table; 1 when any failed."""
    from lvlm_studio.testing.conformance import FAIL, check_plugins, plugin_items

    names = [status.name for status in registry.status]
    if plugin is not None and plugin not in names:
        raise InputError(f"no plugin {plugin!r}.", f"Plugins: {', '.join(names)} (see `lvlm-studio plugins`).")
    registry.survey()  # asks every hook: a plugin whose hook raises or returns the wrong things is marked failed
    items = plugin_items(registry, plugin)
    broken = [s for s in registry.status if s.state == "failed" and plugin in (None, s.name)]
    for status in broken:
        print(f"FAIL  plugin {status.name} [{status.origin}]: {status.error}")
    if not items:
        print(f"{plugin or 'no plugin'} contributes no explanation method or metric: nothing to run")
        return 1 if broken else 0
    results = check_plugins(registry, plugin, families,
                            on_result=lambda r: print(f"  {r.model:<16} {r.item:<24} {r.outcome}", flush=True))
    print()
    print(format_table(results))
    failed = sum(r.outcome == FAIL for r in results) + len(broken)
    print(f"\n{len(results)} checks: {sum(r.outcome == 'pass' for r in results)} passed, "
          f"{failed - len(broken)} failed, {sum(r.outcome == 'n/a' for r in results)} not applicable"
          + (f"; {len(broken)} plugin(s) failed to load" if broken else ""))
    return 1 if failed else 0


def format_table(results: list) -> str:
    """One row per explainer or metric, one column per model: pass, FAIL or n/a with a note number;
    the notes (the reasons) follow the table."""
    models = list(dict.fromkeys(r.model for r in results))
    rows = list(dict.fromkeys((r.plugin, r.kind, r.item) for r in results))
    cells = {(r.plugin, r.kind, r.item, r.model): r for r in results}
    notes: dict[str, int] = {}
    header = ["plugin", "kind", "id", *models]
    body = []
    for row in rows:
        line = list(row)
        for model in models:
            result = cells.get((*row, model))
            if result is None:
                line.append("")
                continue
            text = {"pass": "pass", "fail": "FAIL", "n/a": "n/a"}[result.outcome]
            if result.reason:
                text += f"[{notes.setdefault(result.reason, len(notes) + 1)}]"
            line.append(text)
        body.append(line)
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [header, *body]]
    lines += [""] + [f"[{number}] {reason}" for reason, number in notes.items()] if notes else []
    return "\n".join(lines)
