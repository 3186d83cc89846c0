"""Run records: what a saved result needs so that it can be trusted and reproduced."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from typing import Any


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON keeps it: arrays become lists, numpy scalars numbers, NaN and infinities
    null (JSON has no such numbers; other readers reject them), anything else text."""
    text = json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    return json.loads(text, parse_constant=lambda _: None)


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or "not installed"."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment(packages: Iterable[str]) -> dict[str, str]:
    """Versions of ``packages`` plus the Python version and platform."""
    return {name: package_version(name) for name in packages} | {
        "python": platform.python_version(), "platform": platform.platform()}
