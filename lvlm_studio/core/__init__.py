"""The Qt-free core. Its rooms, from the ground up: errors, io, plugin, models, tracing, perturbation, metrics,
formats (ARCHITECTURE.md says what each holds and which may import which)."""
