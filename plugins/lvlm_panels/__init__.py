"""First-party GUI panels, declared through the same hook a third-party plugin uses.

Declaring them is free: this module imports no Qt (the core loads it to list plugins), and each
panel's module is imported only when the user first opens the panel.
"""

from __future__ import annotations

from lvlm_studio.api import PanelSpec, hookimpl


@hookimpl
def lvlm_studio_panels() -> list:
    return [
        PanelSpec("overlay", "Image overlay", "lvlm_panels.overlay:OverlayPanel", "left"),
        PanelSpec("timeline", "Token timeline", "lvlm_panels.timeline:TimelinePanel", "bottom"),
        PanelSpec("heads", "Attention grid", "lvlm_panels.heads:AttentionGridPanel", "bottom"),
        PanelSpec("compare", "Compare methods", "lvlm_panels.compare:ComparePanel", "left"),
        PanelSpec("metrics", "Metrics", "lvlm_panels.metrics:MetricsPanel", "bottom"),
        PanelSpec("head_gallery", "Attention maps per head", "lvlm_panels.attention_views:HeadGalleryPanel",
                  "bottom"),
        PanelSpec("patch_text", "Patch \u2192 text attention", "lvlm_panels.attention_views:PatchTextPanel",
                  "bottom"),
        PanelSpec("question_answer", "Question \u2192 answer attention",
                  "lvlm_panels.attention_views:QuestionAnswerPanel", "bottom"),
        PanelSpec("influence", "Text vs image influence", "lvlm_panels.influence:InfluencePanel", "bottom"),
        PanelSpec("causal_graph", "Causal graph", "lvlm_panels.causal_graph:CausalGraphPanel", "bottom"),
        PanelSpec("lens", "Logit lens", "lvlm_panels.lens:LogitLensPanel", "bottom"),
    ]
