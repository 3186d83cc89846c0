"""Sparse-coder files: SAELens (read and write) and ViT-Prisma (read), never a full unpickle.

SAELens folder: ``cfg.json`` + ``sae_weights.safetensors`` holding ``W_enc`` [d_in, d_sae],
``b_enc`` [d_sae], ``W_dec`` [d_sae, d_in], ``b_dec`` [d_in], plus ``threshold`` [d_sae] for
JumpReLU (and ``W_skip`` for transcoders with a skip path). The architecture comes from
``architecture`` ("standard", "topk", "jumprelu") or, in older files, ``activation_fn_str``; TopK's k
from ``k`` or ``activation_fn_kwargs.k``; the hook from ``hook_name`` or ``metadata.hook_name``.
What SAELens has no field for (transcoder/crosscoder kind, which tokens) is kept under an
``lvlm_studio`` key that SAELens ignores.

Foreign files are read so that the loaded coder gives the numbers their own library gives:

* ``activation_fn_str: "topk"`` means TopK even beside ``"architecture": "standard"`` (what
  ViT-Prisma and older SAELens write); an architecture that contradicts it is refused.
* SAELens TopK with ``rescale_acts_by_decoder_norm: true`` computes, with nᵢ = ‖W_dec,ᵢ‖,
  f = TopK(((x − b_dec) W_enc + b_enc) ⊙ n) and x̂ = (f ⊘ n) W_dec + b_dec. That is exactly a plain
  TopK coder with W_enc·diag(n), b_enc ⊙ n and decoder rows W_dec,ᵢ / nᵢ, which is what is loaded
  (the same features f, the same x̂; saved back, the file needs no flag). A zero decoder row is
  refused, since SAELens would divide by zero.
* Transcoders written with ``is_transcoder: true`` (ViT-Prisma) compute
  f = act((x − b_dec) W_enc + b_enc) and x̂ = f W_dec + b_dec_out, with ``d_out`` outputs (d_in if
  absent). They load as a ``Transcoder`` whose b_enc is b_enc − b_dec W_enc (the input centring
  folded in) and whose output bias is ``b_dec_out``.
* Every tensor in the file must be used: an unknown one (gated SAEs' ``b_gate``, ``r_mag``, ...) is
  refused by name rather than dropped, since the coder would run without it.
* Run-time normalisations (``layer_norm``, ``constant_norm_rescale``) are not applied yet, so files
  that need them are refused by name.

ViT-Prisma folder: ``config.json`` (``d_in``, ``d_sae`` or ``expansion_factor``, ``hook_point`` or
``hook_point_layer`` + ``layer_subtype``, ``activation_fn_str``, ``activation_fn_kwargs``) + ``weights.pt``,
a torch file read with ``torch.load(weights_only=True)``: only tensors and plain containers can come
out of it. Prisma's hook ``blocks.{L}.{subtype}`` is our hook point of the same name for the
block-level subtypes (``PRISMA_SUBTYPES``); its ``use_patches_only`` / ``cls_token_only`` give the
coder's tokens.

ViT-Prisma trainer checkpoints (``n_images_N.pt``: ``{"cfg": <dataclass>, "state_dict"}``) are the one
exception to "no pickle": their config is read as plain data by the restricted unpickler of
``prisma_checkpoint`` (nothing imported, nothing run; any global but plain data and ``vit_prisma``
config classes is refused), their tensors by ``torch.load(weights_only=True)``. Any other pickled
object is refused before it can run code.
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
from lvlm_studio.sae.prisma_checkpoint import read_checkpoint

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
PRISMA_CONFIG = "config.json"
PRISMA_WEIGHTS = "weights.pt"
PRISMA_SPARSITY_LOG = "_log_feature_sparsity.pt"


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
    """A coder from a SAELens folder, a ViT-Prisma folder, or a Prisma ``.pt`` file (a state dict
    beside its ``config.json``, or a trainer checkpoint such as ``n_images_N.pt`` that holds its config)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist.", "Give a folder with cfg.json + sae_weights.safetensors "
                                                    "(SAELens) or config.json + weights.pt (ViT-Prisma).")
    if path.is_file() and path.suffix == ".pt":
        return load_prisma(path.parent, path)
    if path.is_file() and path.name.endswith((".pkl", ".pkl.gz")):
        raise InputError(f"{path} is a plain pickle (ViT-Prisma's .pkl/.pkl.gz save), which LVLM Studio does not "
                         "read: unpickling it could run any code.",
                         "Save the SAE as .pt (torch.save) or in SAELens format, and load that.")
    if (path / SAELENS_CONFIG).exists():
        return load_saelens(path)
    if (path / PRISMA_CONFIG).exists() or _prisma_checkpoints(path):
        return load_prisma(path)
    raise InputError(f"{path} holds no sparse coder.", "Expected cfg.json + sae_weights.safetensors (SAELens) "
                                                       "or config.json + weights.pt (ViT-Prisma).")


def _prisma_checkpoints(folder: Path) -> list[Path]:
    """The ``.pt`` files of a folder that may hold an SAE: all but ViT-Prisma's trainer's sparsity
    logs (``n_images_N_log_feature_sparsity.pt``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.pt") if not p.name.endswith(PRISMA_SPARSITY_LOG))


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
    return _build(config, folder, tensors, weights_path)


def load_prisma(folder: str | Path, weights_path: Path | None = None) -> SparseAutoencoder:
    """A ViT-Prisma coder: ``weights_path`` (default ``weights.pt``, or the folder's only ``.pt`` file)
    holds a state dict of tensors, read with ``weights_only=True``, and ``config.json`` the config; or
    it is a trainer checkpoint holding both, whose config is read as plain data (``prisma_checkpoint``)."""
    folder = Path(folder)
    weights_path = weights_path or _prisma_weights(folder)
    if weights_path.name.endswith(PRISMA_SPARSITY_LOG):
        checkpoint = weights_path.name.replace(PRISMA_SPARSITY_LOG, ".pt")
        raise InputError(f"{weights_path} is ViT-Prisma's log of feature sparsity, not an SAE.",
                         f"Give the checkpoint saved beside it ({checkpoint}).")
    try:
        loaded = torch.load(weights_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        if not zipfile.is_zipfile(weights_path):  # torch saves a zip archive; random bytes fail unpickling too
            raise InputError(f"{weights_path} is not a torch file.", "Re-save or re-download it.") from None
        # not only tensors: a ViT-Prisma trainer checkpoint ({"cfg": dataclass, "state_dict"}) is read
        # through the restricted unpickler; anything else is refused by it, naming what the pickle holds
        config, state = read_checkpoint(weights_path)
        return _build(config, folder, _state_dict(state, weights_path), weights_path)
    except (RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"{weights_path} is not a readable torch file ({exc}).",
                         "Re-save or re-download it.") from None
    if isinstance(loaded, torch.Tensor):
        raise InputError(f"{weights_path} holds one tensor, not an SAE's state dict.",
                         "Give the SAE's weights file (weights.pt, or a trainer checkpoint n_images_N.pt).")
    if isinstance(loaded, dict) and isinstance(loaded.get("cfg"), dict) and "state_dict" in loaded:
        config = loaded["cfg"]  # a checkpoint whose config was saved as a plain dict: its own config wins
    else:
        if not (folder / PRISMA_CONFIG).exists():
            raise InputError(f"{weights_path} holds weights but no config, and {folder} has no {PRISMA_CONFIG}.",
                             f"Put the SAE's {PRISMA_CONFIG} beside it.")
        config = _read_json(folder / PRISMA_CONFIG)
    return _build(config, folder, _state_dict(loaded, weights_path), weights_path)


def _prisma_weights(folder: Path) -> Path:
    """``weights.pt``, or else the folder's one checkpoint; several are refused rather than guessed among."""
    if (folder / PRISMA_WEIGHTS).exists():
        return folder / PRISMA_WEIGHTS
    candidates = _prisma_checkpoints(folder)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise InputError(f"{folder} has {PRISMA_CONFIG} but no {PRISMA_WEIGHTS}.", "Copy the weights file too.")
    names = ", ".join(p.name for p in candidates[:6]) + (", ..." if len(candidates) > 6 else "")
    raise InputError(f"{folder} holds {len(candidates)} ViT-Prisma checkpoints ({names}) and no {PRISMA_WEIGHTS}.",
                     "Give the file you want (its path) instead of the folder.")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not readable JSON ({exc}).", "Fix or replace the config file.") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a JSON object.", "Fix or replace the config file.")
    return data


def _state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Prisma file (a state dict, possibly under "state_dict" / "model_state_dict"),
    named by the last part of its key; ``_assemble`` refuses any that the coder would not use."""
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict):
        raise InputError(f"{path} holds a {type(loaded).__name__}, not a dictionary of tensors.",
                         "Save the SAE's state_dict().")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        name = str(key).rsplit(".", 1)[-1]  # "sae.W_enc" and "module.W_enc" are both W_enc
        if not isinstance(value, torch.Tensor):
            raise InputError(f"{path}: {key} is a {type(value).__name__}, not a tensor.", "Save the state_dict().")
        if name in tensors:
            raise InputError(f"{path} holds two tensors named {name} ({key} is the second).",
                             "Save the state_dict() of one SAE only.")
        tensors[name] = value
    return tensors


def _build(config: dict[str, Any], folder: Path, tensors: dict[str, torch.Tensor], source: Path) -> SparseAutoencoder:
    """The coder a config and its tensors describe, with foreign conventions folded into our weights
    (module docstring: the rescale flag, Prisma transcoders' biases)."""
    cfg = _config_from(config, folder)
    if "lvlm_studio" in config:
        return _assemble(cfg, tensors, source)
    input_bias = None
    if cfg.kind == "transcoder":
        for name in ("b_dec", "b_dec_out"):
            if name not in tensors:
                raise InputError(f"{source} has no {name!r} tensor, which a transcoder (is_transcoder) needs.",
                                 f"It holds: {', '.join(sorted(tensors)) or 'nothing'}.")
        input_bias = tensors.pop("b_dec")
        tensors["b_dec"] = tensors.pop("b_dec_out")
    coder = _assemble(cfg, tensors, source)
    if input_bias is not None:
        _fold_input_bias(coder, input_bias, source)
    if _flag(config, "rescale_acts_by_decoder_norm", folder):
        _fold_decoder_norms(coder, source)
    return coder


@torch.no_grad()
def _fold_input_bias(coder: SparseAutoencoder, input_bias: torch.Tensor, source: Path) -> None:
    """(x − b) W_enc + b_enc = x W_enc + (b_enc − b W_enc): a transcoder's input centring in b_enc."""
    if input_bias.shape != (coder.cfg.d_in,):
        raise InputError(f"{source}: b_dec has shape {tuple(input_bias.shape)}, expected ({coder.cfg.d_in},) "
                         f"for d_in={coder.cfg.d_in}.", "The config and weights do not match.")
    if not torch.isfinite(input_bias).all():
        raise InputError(f"{source}: b_dec holds NaN or infinite values.", "Re-save or re-download the coder.")
    coder.b_enc.sub_(input_bias.float() @ coder.W_enc)


@torch.no_grad()
def _fold_decoder_norms(coder: SparseAutoencoder, source: Path) -> None:
    """SAELens's ``rescale_acts_by_decoder_norm`` folded into the weights (module docstring)."""
    norms = coder.W_dec.norm(dim=-1)
    if not (norms > 0).all():
        zero = (norms <= 0).nonzero().flatten().tolist()
        raise InputError(f"{source}: rescale_acts_by_decoder_norm is set but decoder rows {zero[:10]} are zero, "
                         "so the activations would be divided by zero.",
                         "Remove those features (or give them a non-zero decoder row) and save again.")
    coder.W_enc.mul_(norms)
    coder.b_enc.mul_(norms)
    coder.W_dec.div_(norms[:, None])


def _flag(config: dict[str, Any], key: str, folder: Path) -> bool:
    """``config[key]`` as true or false (false when absent or null); anything else is refused."""
    value = config.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InputError(f"{folder}: {key} in the config is {value!r}, not true or false.",
                         "Fix or replace the config file.")
    return value


_RUN_TIME_NORMALISATIONS = {
    "layer_norm": "each token centred and divided by its standard deviation before encoding",
    "constant_norm_rescale": "each token scaled to norm √d_in before encoding",
}


def _config_from(config: dict[str, Any], folder: Path) -> CoderConfig:
    if "lvlm_studio" in config:
        return _our_config(config["lvlm_studio"], folder)
    normalise = config.get("normalize_activations") or "none"
    if normalise in _RUN_TIME_NORMALISATIONS:
        raise InputError(f"{folder}: this SAE needs the run-time normalisation normalize_activations={normalise!r} "
                         f"({_RUN_TIME_NORMALISATIONS[normalise]}, undone after decoding), which LVLM Studio does "
                         "not apply yet; loaded without it, its features would be wrong.",
                         "Use an SAE trained with normalize_activations='none'.")
    if normalise == "expected_average_only_in":
        raise InputError(f"{folder}: activations were scaled by a dataset-wide factor "
                         "(normalize_activations='expected_average_only_in') that this file does not hold.",
                         "Fold the factor into the weights and save with normalize_activations='none' "
                         "(SAELens does this when it saves a finished SAE).")
    if normalise != "none":
        raise InputError(f"{folder}: unknown normalize_activations {normalise!r}.",
                         "LVLM Studio reads SAEs saved with normalize_activations='none'.")
    kwargs = _section(config, "activation_fn_kwargs", folder)
    function = config.get("activation_fn_str")
    architecture = config.get("architecture") or "standard"
    if function in ("topk", "jumprelu") and architecture != function:
        if architecture != "standard":  # "standard" beside activation_fn_str: ViT-Prisma's and older SAELens's way
            raise InputError(f"{folder}: the config says architecture {architecture!r} but activation_fn_str "
                             f"{function!r}.", "Fix the config so that the two agree.")
        architecture = function
    if architecture not in ("standard", "topk", "jumprelu"):
        raise InputError(f"{folder}: architecture {architecture!r} is not supported.",
                         "LVLM Studio reads standard (ReLU), TopK and JumpReLU sparse autoencoders.")
    if _flag(config, "rescale_acts_by_decoder_norm", folder) and architecture != "topk":
        raise InputError(f"{folder}: rescale_acts_by_decoder_norm is set for a {architecture} SAE; LVLM Studio "
                         "reads that flag for TopK SAEs only.", "Check the config's architecture.")
    transcoder = _flag(config, "is_transcoder", folder)
    d_in = _number(config, "d_in", folder)
    d_sae = _number(config, "d_sae", folder) or int(d_in * _number(config, "expansion_factor", folder, float))
    metadata = _section(config, "metadata", folder)
    hook = config.get("hook_name") or metadata.get("hook_name") or _prisma_hook(config, folder)
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
        tokens=_prisma_tokens(config, folder),
        kind="transcoder" if transcoder else "sae",
        d_out=_number(config, "d_out", folder) if transcoder else 0,
    )


def _prisma_tokens(config: dict[str, Any], folder: Path) -> str:
    """Which tokens a foreign coder was trained on: ViT-Prisma's trainer keeps only the class token
    (``cls_token_only``) or only the patches (``use_patches_only``), else every token, as SAELens does."""
    cls_only, patches_only = _flag(config, "cls_token_only", folder), _flag(config, "use_patches_only", folder)
    if cls_only and patches_only:
        raise InputError(f"{folder}: the config sets both cls_token_only and use_patches_only.",
                         "Fix the config so that at most one is true.")
    for key in ("hook_head_index", "hook_point_head_index"):
        if config.get(key) is not None:
            raise InputError(f"{folder}: {key} is {config[key]!r}: this coder reads one attention head's slice "
                             "of the hook point, which LVLM Studio's hook points do not give.",
                             "Use a coder trained on the whole hook point (head index null).")
    return "cls" if cls_only else "patch" if patches_only else "all"


#: ViT-Prisma's block-level hook names that are LVLM Studio hook points of the same name
#: (``core/models/hooks.py``); Prisma's others (``mlp.hook_post``, ``attn.hook_z``, ``ln1.hook_normalized``,
#: ...) have no hook point here.
PRISMA_SUBTYPES = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")


def _prisma_hook(config: dict[str, Any], folder: Path) -> Any:
    """The hook point a ViT-Prisma config names: ``hook_point`` ("blocks.9.hook_mlp_out"), or the
    ``hook_point_layer`` + ``layer_subtype`` pair its trainer's config holds (it builds
    ``blocks.{layer}.{subtype}`` at run time and does not save it). Prisma's vision blocks are our
    vision blocks (``blocks.{L}``, counted from 0), so the name carries over; a subtype with no hook
    point here is refused. "" when the config names no hook at all."""
    layer, subtype = config.get("hook_point_layer"), config.get("layer_subtype")
    if isinstance(layer, list) and len(layer) == 1:  # older Prisma configs keep one layer in a list
        layer = layer[0]
    hook = config.get("hook_point")
    if layer is None:
        return hook or ""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise InputError(f"{folder}: hook_point_layer in the config is {layer!r}, not one block's index.",
                         "A sparse coder reads one hook point; set hook_point_layer to one block, e.g. 9.")
    subtype = "hook_resid_post" if subtype is None else subtype  # Prisma's default
    if subtype not in PRISMA_SUBTYPES:
        raise InputError(f"{folder}: layer_subtype {subtype!r} (ViT-Prisma's blocks.{layer}.{subtype}) has no "
                         "matching hook point in LVLM Studio.",
                         f"LVLM Studio reads a vision block at {', '.join(PRISMA_SUBTYPES)}; "
                         "`lvlm-studio sae hooks` lists them.")
    derived = f"blocks.{layer}.{subtype}"
    if hook and hook != derived:
        raise InputError(f"{folder}: the config says hook_point {hook!r} but hook_point_layer {layer} with "
                         f"layer_subtype {subtype!r}, which is {derived!r}.", "Fix the config so that they agree.")
    return derived


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
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    with torch.device("meta"):
        expected = dict(build_coder(cfg).named_parameters())
    unknown = sorted(set(tensors) - {"threshold" if name == "log_threshold" else name for name in expected})
    if unknown:
        raise InputError(f"{source} holds tensors that a {cfg.architecture} {cfg.kind} does not use: "
                         f"{', '.join(unknown)}; ignoring them would give wrong numbers.",
                         "LVLM Studio reads standard, TopK and JumpReLU SAEs and transcoders; check that the config's "
                         "architecture matches the weights (a gated SAE, for one, is not supported yet).")
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
