"""The public API for plugin authors: everything a plugin may import, in one Qt-free module.

``__all__`` is the promise: names listed here keep working within a major version of
``API_VERSION``. Panels also need the Qt side, ``lvlm_studio.gui.api``.
"""

from __future__ import annotations

from lvlm_studio.core.errors import Cancelled, InputError, LVLMError, PluginError
from lvlm_studio.core.models.capture import capture_attention, split_by_region
from lvlm_studio.core.plugin.adapter import ImageRegion, ModelAdapter
from lvlm_studio.core.plugin.contracts import (
    Analyzer,
    Explainer,
    Metric,
    MetricResult,
    PanelSpec,
    Param,
    image_tokens_reason,
)
from lvlm_studio.core.plugin.explanation import Explanation
from lvlm_studio.core.plugin.hookspecs import hookimpl
from lvlm_studio.core.plugin.jobs import Progress
from lvlm_studio.core.tracing.trace import Trace

API_VERSION = "1.0.0"

__all__ = [
    "API_VERSION",
    "Analyzer",
    "Cancelled",
    "Explainer",
    "Explanation",
    "ImageRegion",
    "InputError",
    "LVLMError",
    "Metric",
    "MetricResult",
    "ModelAdapter",
    "PanelSpec",
    "Param",
    "PluginError",
    "Progress",
    "Trace",
    "capture_attention",
    "hookimpl",
    "image_tokens_reason",
    "split_by_region",
]
