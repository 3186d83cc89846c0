"""What a study that compares models needs to know about each: its vision architecture and LLM size.

A model folder declares them in ``study_meta.json`` beside its config::

    {"vision_architecture": "siglip", "llm_size": "7B"}

Both are labels (categorical factors of a fitted model), so "7B" and "72B", or "small" and "large",
are equally good. A study may also be given a manifest (a JSON object mapping a model's label or
folder to the same two fields), which wins over the folder's file. Without either, the metadata is
read from the model itself: the vision encoder's ``model_type`` (``clip_vision_model``,
``siglip_vision_model``, ...) and the language model's parameter count rounded to two significant
digits ("7.2B", "0.54M"); ``source`` then says "inferred", so a report can tell declared from guessed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lvlm_studio.core.errors import InputError

if TYPE_CHECKING:
    from lvlm_studio.core.models.loading import LoadedModel

META_FILE = "study_meta.json"
META_FIELDS = ("vision_architecture", "llm_size")


def read_meta_file(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path`` (a folder's study_meta.json or a manifest), or ``InputError``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path} does not exist.", f"Write it as JSON, e.g. {example()}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not readable JSON ({type(exc).__name__}).",
                         f"Write it as JSON, e.g. {example()}.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds a {type(data).__name__}, not a JSON object.", f"Write e.g. {example()}.")
    return data


def example() -> str:
    return json.dumps({"vision_architecture": "siglip", "llm_size": "7B"})


def _checked(data: Mapping[str, Any], where: str) -> dict[str, str]:
    missing = [name for name in META_FIELDS if not str(data.get(name, "")).strip()]
    if missing:
        raise InputError(f"{where} does not say the model's {' or '.join(missing)}.", f"Write e.g. {example()}.")
    return {name: str(data[name]).strip() for name in META_FIELDS}


def _size_label(parameters: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if parameters >= scale:
            return f"{float(f'{parameters / scale:.2g}'):g}{suffix}"
    return str(parameters)


def model_meta(loaded: LoadedModel, label: str | None = None, manifest: Mapping[str, Any] | None = None
               ) -> dict[str, str]:
    """{"vision_architecture", "llm_size", "source"} of a loaded model: from ``manifest`` (keyed by
    ``label`` or the model's folder), else the folder's ``study_meta.json``, else inferred (module
    docstring). ``source`` is "manifest", "declared" or "inferred"."""
    for key in (label, loaded.source):
        if manifest and key is not None and key in manifest:
            return {**_checked(manifest[key], f"the manifest's entry {key!r}"), "source": "manifest"}
    declared = Path(loaded.source) / META_FILE
    if declared.is_file():
        return {**_checked(read_meta_file(declared), str(declared)), "source": "declared"}
    vision = getattr(loaded.model.config, "vision_config", None)
    architecture = getattr(vision, "model_type", None) or loaded.family
    parameters = sum(p.numel() for p in loaded.adapter.language_model().parameters())
    return {"vision_architecture": str(architecture), "llm_size": _size_label(parameters), "source": "inferred"}
