"""First-party studies, written against the public plugin API only (as a third party would).

Each is a ``Study`` (``lvlm_studio.api``): ``run_sample`` answers a sample's questions with a model
and returns rows; ``summarize`` turns every row into tables, figures and text. ``lvlm-studio study
ID`` runs them over demo scenes, a manifest or a COCO file (docs/studies.md).
"""

from __future__ import annotations

from lvlm_studies.architecture import ArchitectureScaleStudy
from lvlm_studies.contradiction import ContradictionStudy
from lvlm_studies.grounding import GroundingStudy
from lvlm_studies.modality import ModalityInfluenceStudy
from lvlm_studies.sae_splice import SaeSpliceStudy
from lvlm_studies.vision_entry import VisionEntryStudy
from lvlm_studio.api import hookimpl


@hookimpl
def lvlm_studio_studies() -> list:
    return [ModalityInfluenceStudy(), ContradictionStudy(), GroundingStudy(), ArchitectureScaleStudy(),
            VisionEntryStudy(), SaeSpliceStudy()]
