"""``lvlm-studio plugins``: the plugins, model families, methods and their parameters, and what failed."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: argparse._SubParsersAction) -> None:
    plugins = sub.add_parser("plugins", help="list plugins, model families, methods and their status")
    plugins.set_defaults(func=cmd_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    from lvlm_studio.core.plugin.hookspecs import API_VERSION, PLUGIN_GUIDE
    from lvlm_studio.core.plugin.registry import create_registry

    registry = create_registry()
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
