"""First-party metrics, written against the public plugin API only (as a third party would).

Each wraps a computation of the Qt-free core, reached through ``lvlm_studio.api`` (``deletion_insertion``,
``plausibility``, ``model_randomisation``, ``input_independence``, ``agreement``), as a ``Metric`` plugin
returning ``MetricResult(values, curves, details)``, so the CLI's benchmark, the GUI's metrics panel and
other plugins all score the same way.
"""

from __future__ import annotations

from lvlm_metrics.agreement import MethodAgreement
from lvlm_metrics.faithfulness import DeletionInsertion
from lvlm_metrics.plausibility import PlausibilityIoU, PointingGame
from lvlm_metrics.sanity import InputIndependence, ModelRandomisation
from lvlm_studio.api import hookimpl


@hookimpl
def lvlm_studio_metrics() -> list:
    return [DeletionInsertion(), PlausibilityIoU(), PointingGame(), ModelRandomisation(), InputIndependence(),
            MethodAgreement()]
