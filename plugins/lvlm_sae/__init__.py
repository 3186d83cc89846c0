"""Sparse-autoencoder features as an Analyzer plugin, written against the public plugin API only.

``sae_features`` runs a sparse coder (SAELens or ViT-Prisma folder; the shipped demo SAE by
default) over the trace's image at the coder's hook point and returns plain arrays: every patch's
feature activations, the strongest features of the image, and, for a chosen answer token, each
feature's attribution (activation x gradient of that token's log-probability). The feature
inspector panel (``lvlm_sae.panel``, imported only when opened) shows the same in the app; the
feature dashboard (``lvlm_sae.dashboard_panel``) shows every feature's top patches, activation
histogram and logit attribution from a cache built in one pass.
"""

from __future__ import annotations

from typing import Any, ClassVar

from lvlm_studio.api import Analyzer, PanelSpec, Param, hookimpl


class SAEFeatures(Analyzer):
    id: ClassVar[str] = "sae_features"
    title: ClassVar[str] = "SAE features (vision tower)"
    params: ClassVar[tuple[Param, ...]] = (
        Param("sae", "", "coder folder (SAELens or ViT-Prisma); empty: the shipped demo SAE"),
        Param("token", -1, "answer token to attribute to features (-1: none)", minimum=-1),
        Param("top_k", 10, "strongest features reported for the image", minimum=1, maximum=1000),
    )

    def analyze(self, trace: Any, model: Any, params: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from lvlm_studio.api import feature_attribution, image_features

        coder = load(params["sae"])
        features = image_features(model, coder, trace.image, trace.prompt)
        totals = features.sum(axis=(0, 1))
        top = np.argsort(-totals, kind="stable")[: params["top_k"]]
        result: dict[str, Any] = {
            "hook_name": coder.cfg.hook_name,
            "features": features,  # [rows, cols, d_sae]
            "top_features": top.astype(np.int64),
            "top_totals": totals[top],
            "l0_per_patch": float((features > 0).sum(axis=-1).mean()),
        }
        if params["token"] >= 0:
            result["attribution"] = feature_attribution(model, coder, trace, params["token"])  # [rows, cols, d_sae]
        return result


_loaded: dict[str, Any] = {}


def load(path: str) -> Any:
    """The coder at ``path`` (the demo SAE when empty), loaded once per process."""
    from lvlm_studio.api import demo_sae_path, load_coder

    key = path or str(demo_sae_path())
    if key not in _loaded:
        _loaded[key] = load_coder(key)
    return _loaded[key]


@hookimpl
def lvlm_studio_analyzers() -> list:
    return [SAEFeatures()]


@hookimpl
def lvlm_studio_panels() -> list:
    return [PanelSpec("sae_features", "Feature inspector", "lvlm_sae.panel:FeatureInspectorPanel", "right"),
            PanelSpec("sae_dashboard", "Feature dashboard", "lvlm_sae.dashboard_panel:FeatureDashboardPanel", "right")]
