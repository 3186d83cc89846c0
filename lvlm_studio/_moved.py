"""Module paths of LVLM Studio 0.1 that moved when the core was split into rooms (ARCHITECTURE.md).

Plugins written against the old paths keep working: importing an old name gives the module at its
new path (the very same module object) and a DeprecationWarning that names the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "lvlm_studio.benchmark_report": "lvlm_studio.benchmark.report",
    "lvlm_studio.core.agreement": "lvlm_studio.core.metrics.agreement",
    "lvlm_studio.core.capture": "lvlm_studio.core.models.capture",
    "lvlm_studio.core.contracts": "lvlm_studio.core.plugin.contracts",
    "lvlm_studio.core.explanation": "lvlm_studio.core.plugin.explanation",
    "lvlm_studio.core.faithfulness": "lvlm_studio.core.metrics.faithfulness",
    "lvlm_studio.core.head_attention": "lvlm_studio.core.tracing.head_attention",
    "lvlm_studio.core.hooks": "lvlm_studio.core.models.hooks",
    "lvlm_studio.core.hookspecs": "lvlm_studio.core.plugin.hookspecs",
    "lvlm_studio.core.images": "lvlm_studio.core.io.images",
    "lvlm_studio.core.jobs": "lvlm_studio.core.plugin.jobs",
    "lvlm_studio.core.masks": "lvlm_studio.core.metrics.masks",
    "lvlm_studio.core.perturb": "lvlm_studio.core.perturbation.perturb",
    "lvlm_studio.core.pixel_masks": "lvlm_studio.core.perturbation.pixel_masks",
    "lvlm_studio.core.plausibility": "lvlm_studio.core.metrics.plausibility",
    "lvlm_studio.core.plugins": "lvlm_studio.core.plugin.registry",
    "lvlm_studio.core.models.adapter": "lvlm_studio.core.plugin.adapter",
    "lvlm_studio.core.records": "lvlm_studio.core.io.records",
    "lvlm_studio.core.relevance": "lvlm_studio.core.tracing.relevance",
    "lvlm_studio.core.report": "lvlm_studio.core.formats.report",
    "lvlm_studio.core.sanity": "lvlm_studio.core.metrics.sanity",
    "lvlm_studio.core.session": "lvlm_studio.core.formats.session",
    "lvlm_studio.core.token_stats": "lvlm_studio.core.tracing.token_stats",
    "lvlm_studio.core.trace": "lvlm_studio.core.tracing.trace",
    "lvlm_studio.tiny_families": "lvlm_studio.testing.tiny_families",
    "lvlm_studio.tiny_models": "lvlm_studio.testing.tiny_models",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        warnings.warn(f"{spec.name} has moved to {self.new}; import it from there.", DeprecationWarning, stacklevel=3)
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        """The module at the new path is already executed."""


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        new = MOVED.get(name)
        return importlib.util.spec_from_loader(name, _Alias(new)) if new else None


def install() -> None:
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())  # before any finder that might find a stale copy
