"""The plugin contract: what plugins implement (Explainer, Metric, Analyzer, PanelSpec, ModelAdapter), what they
return (Explanation), the hook specifications, the registry, jobs, and the checks of what plugins hand back."""
