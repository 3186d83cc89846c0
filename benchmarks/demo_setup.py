"""Shared by the benchmark scripts (each runs as its own process, with this folder on sys.path)."""

from __future__ import annotations

from typing import Any


def quiet_transformers() -> None:
    """No loading bars or backend notices between the numbers."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_demo(device: str = "cpu") -> Any:
    """The embedded demo model (on the CPU unless told), with transformers quiet."""
    from lvlm_studio.core.models.loading import LoadOptions, load_model

    quiet_transformers()
    return load_model(None, LoadOptions(device=device))
