"""Sparse-coder files: SAELens (read and write) and ViT-Prisma (read), never a full unpickle.

SAELens folder: ``cfg.json`` + ``sae_weights.safetensors`` holding ``W_enc`` [d_in, d_sae],
``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in], plus ``threshold`` [d_sae] for
JumpReLU (and ``W_skip`` for transcoders with a skip path). The architecture comes from
``architecture`` ("standard", "topk", "jumprelu") or, in older files, ``activation_fn_str``; TopK's k
from ``k`` or ``activation_fn_kwargs.k``; the hook from ``hook_name`` or ``metadata.hook_name``.
What SAELens has no field for (transcoder/crosscoder kind, which tokens) is kept under an
``lvlm_studio`` key that SAELens ignores.

ViT-Prisma folder: ``config.json`` (``d_in``, ``d_sae`` or ``expansion_factor``, ``hook_point``,
``activation_fn_str``, ``activation_fn_kwargs``) + ``weights.pt``, a torch file read with
``torch.load(weights_only=True)``: only tensors and plain containers can come out of it, and a file
that holds any other pickled object is refused before it can run code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import typing
import zipfile
from pathlib import Path
from typing import Any

import torch

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import atomic_path, write_text
from lvlm_studio.sae.coders import CoderConfig, SparseAutoencoder, build_coder

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
PRISMA_CONFIG = "config.json"
PRISMA_WEIGHTS = "weights.pt"
_TENSOR_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "log_threshold", "W_skip")


_KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
               tuple: "a list of strings", dict: "an object"}
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def save_saelens(coder: SparseAutoencoder, folder: str | Path, dtype: str = "float32") -> Path:
    """Write ``coder`` as a SAELens folder (created if needed); returns the folder. ``dtype``
    "float16" halves the file (the shipped demo SAE), and loading reads it back as float32."""
    from safetensors.torch import save_file

    if dtype not in SAVE_DTYPES:
        raise InputError(f"cannot save weights as {dtype!r}.", f"Choose one of: {', '.join(SAVE_DTYPES)}.")
    folder = Path(folder)
    cfg = coder.cfg
    parts = {name: getattr(coder, name) for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    if cfg.architecture == "jumprelu":
        parts["threshold"] = coder.threshold
    if cfg.kind == "transcoder" and cfg.skip:
        parts["W_skip"] = coder.W_skip
    tensors = {name: value.detach().cpu().to(SAVE_DTYPES[dtype]).contiguous() for name, value in parts.items()}
    config = {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "hook_name": cfg.hook_name,
        "hook_head_index": None,
        "model_name": cfg.model_name,
        "activation_fn_str": "topk" if cfg.architecture == "topk" else "relu",
        "activation_fn_kwargs": {"k": cfg.k} if cfg.architecture == "topk" else {},
        "metadata": {"hook_name": cfg.hook_name, "model_name": cfg.model_name},
        "lvlm_studio": cfg.to_dict(),
    }
    if cfg.architecture == "topk":
        config["k"] = cfg.k
    with atomic_path(folder / SAELENS_WEIGHTS) as temporary:  # a full disk leaves the previous file
        save_file(tensors, str(temporary))
    write_text(folder / SAELENS_CONFIG, json.dumps(config, indent=2))
    return folder


def load_coder(path: str | Path) -> SparseAutoencoder:
    """A coder from a SAELens folder, a ViT-Prisma folder, or a Prisma ``.pt`` file beside its config."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist.", "Give a folder with cfg.json + sae_weights.safetensors "
                                                    "(SAELens) or config.json + weights.pt (ViT-Prisma).")
    if path.is_file() and path.suffix == ".pt":
        return load_prisma(path.parent, path)
    if (path / SAELENS_CONFIG).exists():
        return load_saelens(path)
    if (path / PRISMA_CONFIG).exists():
        return load_prisma(path)
    raise InputError(f"{path} holds no sparse coder.", "Expected cfg.json + sae_weights.safetensors (SAELens) "
                                                       "or config.json + weights.pt (ViT-Prisma).")


def load_saelens(folder: str | Path) -> SparseAutoencoder:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = _read_json(folder / SAELENS_CONFIG)
    weights_path = folder / SAELENS_WEIGHTS
    if not weights_path.exists():
        raise InputError(f"{folder} has {SAELENS_CONFIG} but no {SAELENS_WEIGHTS}.", "Copy the weights file too.")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{weights_path} is not a safetensors file ({exc}).", "Re-save or re-download it.") from None
    return _assemble(_config_from(config, folder), tensors, weights_path)


def load_prisma(folder: str | Path, weights_path: Path | None = None) -> SparseAutoencoder:
    folder = Path(folder)
    config = _read_json(folder / PRISMA_CONFIG)
    weights_path = weights_path or folder / PRISMA_WEIGHTS
    if not weights_path.exists():
        raise InputError(f"{folder} has {PRISMA_CONFIG} but no {PRISMA_WEIGHTS}.", "Copy the weights file too.")
    try:
        loaded = torch.load(weights_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not zipfile.is_zipfile(weights_path):  # torch saves a zip archive; random bytes fail unpickling too
            raise InputError(f"{weights_path} is not a torch file.", "Re-save or re-download it.") from None
        raise InputError(f"{weights_path} holds a pickled object that is not a tensor, so it was not loaded "
                         f"({str(exc).splitlines()[0][:160]}).",
                         "Only weights are read from .pt files (torch.load with weights_only=True); re-save the "
                         "SAE's state_dict alone, or convert it to SAELens format.") from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"{weights_path} is not a readable torch file ({exc}).",
                         "Re-save or re-download it.") from None
    return _assemble(_config_from(config, folder), _state_dict(loaded, weights_path), weights_path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc}).", "Fix or replace the config file.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a JSON object.", "Fix or replace the config file.")
    return data


def _state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Prisma file: a state dict, possibly under "state_dict" / "model_state_dict"."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict):
        raise InputError(f"{path} holds a {type(loaded).__name__}, not a dictionary of tensors.",
                         "Save the SAE's state_dict().")
    tensors = {}
    for key, value in loaded.items():
        name = str(key).rsplit(".", 1)[-1]  # "sae.W_enc" and "module.W_enc" are both W_enc
        if name in _TENSOR_NAMES:
            if not isinstance(value, torch.Tensor):
                raise InputError(f"{path}: {key} is a {type(value).__name__}, not a tensor.", "Save the state_dict().")
            tensors[name] = value
    return tensors


def _config_from(config: dict[str, Any], folder: Path) -> CoderConfig:
    if "lvlm_studio" in config:
        return _our_config(config["lvlm_studio"], folder)
    normalise = config.get("normalize_activations") or "none"
    if normalise != "none":
        raise InputError(f"{folder}: activations were normalised ({normalise!r}) with a factor this file lacks.",
                         "Fold the scaling into the weights, or save with normalize_activations='none'.")
    kwargs = _section(config, "activation_fn_kwargs", folder)
    architecture = config.get("architecture") or ("topk" if config.get("activation_fn_str") == "topk" else "standard")
    if architecture == "jumprelu" or config.get("activation_fn_str") == "jumprelu":
        architecture = "jumprelu"
    if architecture not in ("standard", "topk", "jumprelu"):
        raise InputError(f"{folder}: architecture {architecture!r} is not supported.",
                         "LVLM Studio reads standard (ReLU), TopK and JumpReLU sparse autoencoders.")
    d_in = _number(config, "d_in", folder)
    d_sae = _number(config, "d_sae", folder) or int(d_in * _number(config, "expansion_factor", folder, float))
    metadata = _section(config, "metadata", folder)
    hook = config.get("hook_name") or config.get("hook_point") or metadata.get("hook_name") or ""
    if not d_in or not d_sae:
        raise InputError(f"{folder}: the config gives no d_in and d_sae.", "Add them (SAELens: d_in, d_sae).")
    if not isinstance(hook, str):
        raise InputError(f"{folder}: hook_name is {hook!r}, not a hook point's name.",
                         "Set it to a hook point, e.g. blocks.1.hook_resid_post (`lvlm-studio sae hooks`).")
    return CoderConfig(
        d_in=d_in, d_sae=d_sae, architecture=architecture,
        k=_number(config, "k", folder) or _number(kwargs, "k", folder),
        hook_name=hook, apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)),
        model_name=str(config.get("model_name") or metadata.get("model_name") or ""),
        tokens="all",
    )


def _section(config: dict[str, Any], key: str, folder: Path) -> dict[str, Any]:
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise InputError(f"{folder}: {key} in the config is a {type(value).__name__}, not an object.",
                         "Fix or replace the config file.")
    return value


def _number(config: dict[str, Any], key: str, folder: Path, kind: type = int) -> Any:
    """``config[key]`` as ``kind`` (0 when absent or null); a string or a fraction where a count
    belongs is refused rather than guessed at."""
    value = config.get(key)
    if value is None:
        return kind(0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (kind is int and value != int(value)):
        raise InputError(f"{folder}: {key} in the config is {value!r}, not {'a whole' if kind is int else 'a'} number.",
                         "Fix or replace the config file.")
    return kind(value)


def _our_config(section: Any, folder: Path) -> CoderConfig:
    """The ``lvlm_studio`` section, written by ``save_saelens``: checked field by field against
    ``CoderConfig`` so that a damaged file is named, not a TypeError deep in the coder."""
    if not isinstance(section, dict):
        raise InputError(f"{folder}: the config's lvlm_studio section is a {type(section).__name__}, not an object.",
                         "Fix or replace the config file.")
    hints = typing.get_type_hints(CoderConfig)
    fields = {f.name: f for f in dataclasses.fields(CoderConfig)}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise InputError(f"{folder}: the config's lvlm_studio section has unknown fields: {', '.join(unknown)}.",
                         "It was written by another version of LVLM Studio, or edited; fix or replace it.")
    missing = sorted(name for name, f in fields.items() if f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING and name not in section)
    if missing:
        raise InputError(f"{folder}: the config's lvlm_studio section lacks {', '.join(missing)}.",
                         "Fix or replace the config file.")
    values = {}
    for name, value in section.items():
        expected = typing.get_origin(hints[name]) or hints[name]
        if expected is tuple and isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = tuple(value)
        fits = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, fits = float(value), True
        if not fits:
            raise InputError(f"{folder}: {name} in the config's lvlm_studio section is {value!r}, not "
                             f"{_KIND_NAMES.get(expected, expected.__name__)}.", "Fix or replace the config file.")
        values[name] = value
    return CoderConfig(**values)


def _assemble(cfg: CoderConfig, tensors: dict[str, torch.Tensor], source: Path) -> SparseAutoencoder:
    """The coder ``cfg`` describes with ``tensors`` as its weights, each checked first.

    The checks run on a coder built on the meta device (shapes, no memory), so a config that
    claims a huge d_sae is refused for its shapes instead of allocating them.
    """
    if "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors["log_threshold"].exp()
    with torch.device("meta"):
        expected = dict(build_coder(cfg).named_parameters())
    for name, parameter in expected.items():
        stored = "threshold" if name == "log_threshold" else name
        if stored not in tensors:
            raise InputError(f"{source} has no {stored!r} tensor, which a {cfg.architecture} {cfg.kind} needs.",
                             f"It holds: {', '.join(sorted(tensors)) or 'nothing'}.")
        value = tensors[stored]
        if value.shape != parameter.shape:
            raise InputError(f"{source}: {stored} has shape {tuple(value.shape)}, expected {tuple(parameter.shape)} "
                             f"for d_in={cfg.d_in}, d_sae={cfg.d_sae}.", "The config and weights do not match.")
        if not torch.isfinite(value).all():
            raise InputError(f"{source}: {stored} holds NaN or infinite values.", "Re-save or re-download the coder.")
    coder = build_coder(cfg)
    for name, parameter in coder.named_parameters():
        value = tensors["threshold" if name == "log_threshold" else name].float()
        with torch.no_grad():
            parameter.copy_(value.clamp(min=1e-12).log() if name == "log_threshold" else value)
    return coder.eval()
