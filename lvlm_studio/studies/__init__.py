"""Studies: reproducible analyses over a dataset and models (``lvlm-studio study NAME``).

``datasets`` turns demo scenes, a folder with a manifest or a COCO file into ``StudySample``s;
``runner`` runs a ``Study`` plugin over them, resumably, and ``report`` writes its tables (CSV,
Markdown), figures (PNG) and ``report.json``, which the app opens (File > Open study).
"""
