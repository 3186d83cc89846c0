"""``lvlm-studio plugins``: the plugins, model families, methods and their parameters, and what failed."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: argparse._SubParsersAction) -> None:
    plugins = sub.add_parser("plugins", help="list plugins, model families, methods and their status")
    plugins.set_defaults(func=cmd_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    from lvlm_studio.core.plugin.registry import create_registry

    registry = create_registry()
    explainers, metrics = registry.explainers(), registry.metrics()
    analyzers, panels, adapters = registry.analyzers(), registry.panels(), registry.adapters()
    print("plugins")
    for status in registry.status:
        line = f"  {status.state:<8} {status.name}  [{status.origin}]"
        print(line + (f"\n           {status.error}" if status.error else ""))
    print("model families")
    for adapter in adapters:
        print(f"  {', '.join(adapter.model_types):<16} {adapter.family}")
    for heading, items in (("explanation methods", explainers), ("metrics", metrics),
                           ("analyzers", analyzers), ("panels", panels)):
        print(heading + ("" if items else "  (none)"))
        for item_id, item in items.items():
            print(f"  {item_id:<20} {item.title}")
            for param in getattr(item, "params", ()):
                choices = f" [{'|'.join(map(str, param.choices))}]" if param.choices else ""
                print(f"      {param.name}={_show(param.default)}{choices}  {param.help}")
    return 0


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "all"
    return str(value).lower() if isinstance(value, bool) else str(value)
