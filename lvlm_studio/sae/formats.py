"""Sparse-coder files: SAELens (read and write) and ViT-Prisma (read), never a full unpickle.

SAELens folder: ``cfg.json`` + ``sae_weights.safetensors`` holding ``W_enc`` [d_in, d_sae],
``b_enc`` [d_sae], ``W_dec`` [d_sae, d_out], ``b_dec`` [d_out], plus ``threshold`` [d_sae] for
JumpReLU, ``b_gate``, ``b_mag``, ``r_mag`` [d_sae] instead of ``b_enc`` for gated SAEs, and ``W_skip``
[d_out, d_in] for skip transcoders. The architecture comes from ``architecture`` (``SAELENS_READS``)
or, in older files, ``activation_fn_str``; TopK's k from ``k`` or ``activation_fn_kwargs.k``; the hook
from ``hook_name`` or ``metadata.hook_name``. What SAELens has no field for (crosscoders, which
tokens, a BatchTopK's training state) is kept under an ``lvlm_studio`` key that SAELens ignores.

Foreign files are read so that the loaded coder gives the numbers their own library gives:

* ``activation_fn_str: "topk"`` means TopK even beside ``"architecture": "standard"`` (what
  ViT-Prisma and older SAELens write); an architecture that contradicts it is refused, and so is an
  activation computed nowhere here (ViT-Prisma's ``tanh-relu``).
* SAELens TopK with ``rescale_acts_by_decoder_norm: true`` computes, with nᵢ = ‖W_dec,ᵢ‖,
  f = TopK(((x − b_dec) W_enc + b_enc) ⊙ n) and x̂ = (f ⊘ n) W_dec + b_dec. That is exactly a plain
  TopK coder with W_enc·diag(n), b_enc ⊙ n and decoder rows W_dec,ᵢ / nᵢ, which is what is loaded
  (the same features f, the same x̂; saved back, the file needs no flag). A zero decoder row is
  refused, since SAELens would divide by zero.
* SAELens's BatchTopK and Matryoshka-BatchTopK exist only in training; SAELens saves them for
  inference as a JumpReLU whose every threshold is the learned ``topk_threshold`` (after folding the
  decoder norms in, with the rescale flag). Their checkpoints (``"architecture": "batchtopk"``) are
  read as that JumpReLU.
* SAELens transcoders (``transcoder``, ``skip_transcoder``, ``jumprelu_transcoder``,
  ``jumprelu_skip_transcoder``) do not centre their input (b_dec is the output's bias) and apply
  the skip path as x W_skipᵀ.
* Transcoders written with ``is_transcoder: true`` (ViT-Prisma) compute
  f = act((x − b_dec) W_enc + b_enc) and x̂ = f W_dec + b_dec_out (+ x W_skipᵀ with
  ``transcoder_with_skip_connection``), with ``d_out`` outputs (d_in if absent). They load as a
  ``Transcoder`` whose b_enc is b_enc − b_dec W_enc (the input centring folded in) and whose output
  bias is ``b_dec_out``.
* Every tensor in the file must be used: an unknown one is refused by name rather than dropped,
  since the coder would run without it (an all-ones ``scaling_factor``, which SAELens drops too,
  excepted; any other is folded into the decoder when ``finetuning_scaling_factor`` says it applies).
* Run-time normalisations: ``layer_norm`` and ``constant_norm_rescale`` are applied per token by the
  coder (``coders.NORMALISATIONS``); ``expected_average_only_in`` is a dataset-wide factor, folded into
  the weights when SAELens's trainer left it beside the checkpoint (``activation_scaler.json``) and
  refused otherwise, since the file does not hold it; ``covariance_whitening`` is refused (its mean
  and matrix are not folded here); ``reshape_activations: "hook_z"`` is refused (no hook point gives
  attention heads' outputs).

Written files are read by SAELens as they are read here (``save_saelens``): the architecture
SAELens must run, decoder rows unit-norm with the scale folded in, ``dtype`` the compute dtype.

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
from lvlm_studio.sae.coders import NORMALISATIONS, CoderConfig, SparseAutoencoder, build_coder
from lvlm_studio.sae.prisma_checkpoint import read_checkpoint

SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
PRISMA_CONFIG = "config.json"
PRISMA_WEIGHTS = "weights.pt"
PRISMA_SPARSITY_LOG = "_log_feature_sparsity.pt"


_KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
               dict: "an object"}
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


#: the config layout these files follow: SAELens reads a config without this version as one of
#: its pre-6.0 files and rebuilds its metadata from other fields
SAELENS_FORMAT_VERSION = "6.0.0"
#: SAELens's names for a transcoder, by (activation, skip path)
SAELENS_TRANSCODERS = {("standard", False): "transcoder", ("standard", True): "skip_transcoder",
                       ("jumprelu", False): "jumprelu_transcoder", ("jumprelu", True): "jumprelu_skip_transcoder"}
#: SAELens's training-only architectures: their saved inference form is a JumpReLU (below)
SAELENS_BATCH_TOPK = ("batchtopk", "matryoshka_batchtopk")


def saelens_architecture(cfg: CoderConfig) -> str | None:
    """The SAELens architecture that computes what ``cfg``'s coder computes, or None where SAELens
    has none (a TopK or gated transcoder, a crosscoder). A BatchTopK coder, outside training, is
    a JumpReLU (with its one threshold for every feature): what SAELens saves it as."""
    architecture = "jumprelu" if cfg.architecture in SAELENS_BATCH_TOPK else cfg.architecture
    if cfg.kind == "sae":
        return architecture
    if cfg.kind == "transcoder":
        return SAELENS_TRANSCODERS.get((architecture, cfg.skip))
    return None


def saelens_tensors(coder: SparseAutoencoder, fold_decoder_norms: bool = True) -> dict[str, torch.Tensor]:
    """The coder's weights as SAELens names and lays them out (float32, on the CPU).

    ``W_skip`` is stored [d_out, d_in] and applied as x W_skipᵀ (SAELens's skip transcoder); a
    JumpReLU's threshold as ``threshold``, a BatchTopK's single threshold as one per feature.

    With ``fold_decoder_norms``, decoder rows are made unit-norm and their norms nᵢ moved into the
    encoder, as SAELens's ``fold_W_dec_norm`` does: W_enc·diag(n), b_enc ⊙ n (gated: b_gate ⊙ n,
    b_mag ⊙ n, r_mag unchanged), thresholds ⊙ n, W_dec,ᵢ / nᵢ. The reconstruction is unchanged and
    each feature's activation is multiplied by nᵢ. TopK coders are left as they are: scaling
    pre-activations by different nᵢ would change which k features win (SAELens refuses to fold
    them too), and so are crosscoders, which SAELens does not have.
    """
    cfg = coder.cfg
    names = ["W_enc", "W_dec", "b_dec"] + (["b_gate", "b_mag", "r_mag"] if cfg.architecture == "gated" else ["b_enc"])
    tensors = {name: getattr(coder, name).detach().float().cpu().clone() for name in names}
    if cfg.architecture == "jumprelu":
        tensors["threshold"] = coder.threshold.detach().float().cpu().clone()
    if cfg.architecture in SAELENS_BATCH_TOPK:
        tensors["threshold"] = torch.full((cfg.d_sae,), float(coder.topk_threshold))
    if cfg.kind == "transcoder" and cfg.skip:
        tensors["W_skip"] = coder.W_skip.detach().float().cpu().T.clone()
    if fold_decoder_norms and cfg.architecture != "topk" and cfg.kind != "crosscoder":
        norms = tensors["W_dec"].norm(dim=-1).clamp(min=1e-8)  # SAELens's clamp: a zero row stays zero
        tensors["W_dec"] /= norms[:, None]
        tensors["W_enc"] *= norms
        for name in ("b_enc", "b_gate", "b_mag", "threshold"):
            if name in tensors:
                tensors[name] *= norms
    return tensors


def save_saelens(coder: SparseAutoencoder, folder: str | Path, dtype: str = "float32",
                 compute_dtype: str = "float32", fold_decoder_norms: bool = True) -> Path:
    """Write ``coder`` as a SAELens folder (created if needed); returns the folder.

    ``dtype`` is how the weights are stored ("float16" halves the file, as for the shipped demo
    SAE); ``compute_dtype`` is the config's ``dtype``, which SAELens casts the weights to and runs
    in (float32 unless asked). Decoder rows are saved unit-norm with their scale folded into the
    encoder (``saelens_tensors``), so a reloaded coder reconstructs exactly as this one does and
    its features are this one's times ‖W_dec,ᵢ‖ (the same, for unit-norm rows).

    The config is SAELens 6's: ``architecture`` names what SAELens must run (``saelens_architecture``);
    a coder SAELens has no architecture for gets ``lvlm_studio.<kind>.<architecture>``, which
    SAELens refuses instead of running as something else. What SAELens has no field for (kind,
    tokens, the BatchTopK training state) is kept under an ``lvlm_studio`` key that it ignores.
    """
    from safetensors.torch import save_file

    for name, value in (("save", dtype), ("compute", compute_dtype)):
        if value not in SAVE_DTYPES:
            raise InputError(f"cannot {name} weights as {value!r}.", f"Choose one of: {', '.join(SAVE_DTYPES)}.")
    folder = Path(folder)
    cfg = coder.cfg
    architecture = saelens_architecture(cfg) or f"lvlm_studio.{cfg.kind}.{cfg.architecture}"
    tensors = {name: value.to(SAVE_DTYPES[dtype]).contiguous()
               for name, value in saelens_tensors(coder, fold_decoder_norms).items()}
    metadata = {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
                "hook_name": cfg.hook_name, "hook_head_index": None, "model_name": cfg.model_name}
    config = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": compute_dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "none",
        "hook_name": cfg.hook_name,  # where SAELens before 6.0 and other readers look
        "model_name": cfg.model_name,
        "metadata": metadata,
        "lvlm_studio": cfg.to_dict(),
    }
    if cfg.architecture == "topk":
        config.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    if cfg.kind == "transcoder":
        config["d_out"] = cfg.d_out
        metadata["hook_name_out"] = cfg.hook_name_out
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
    (module docstring: the rescale flag, transcoders' skip and biases, BatchTopK's threshold)."""
    cfg = _config_from(config, folder)
    architecture = config.get("architecture")
    if cfg.kind == "transcoder" and "W_skip" in tensors and (architecture in SAELENS_TRANSCODERS.values()
                                                            or str(architecture).startswith("lvlm_studio.")
                                                            or _flag(config, "is_transcoder", folder)):
        tensors["W_skip"] = _skip_from_saelens(tensors["W_skip"], cfg, source)
    if "lvlm_studio" in config:
        if cfg.architecture in SAELENS_BATCH_TOPK:
            cfg = _batch_topk_threshold(cfg, tensors)
        return _assemble(cfg, tensors, source)
    _fold_scaling_factor(config, tensors, source)
    if _normalisation(config, folder) == "expected_average_only_in":
        _fold_scale(tensors, _scaling_factor(folder), _flag(config, "rescale_acts_by_decoder_norm", folder))
    if architecture in SAELENS_BATCH_TOPK and "topk_threshold" in tensors:
        # a SAELens training checkpoint: its inference form, as SAELens saves it, a JumpReLU whose
        # every feature has the one threshold
        tensors["threshold"] = tensors.pop("topk_threshold").reshape(-1)[:1].expand(cfg.d_sae).clone()
    input_bias = None
    if _flag(config, "is_transcoder", folder):  # ViT-Prisma's transcoders: b_dec centres the input
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


def _skip_from_saelens(skip: torch.Tensor, cfg: CoderConfig, source: Path) -> torch.Tensor:
    """SAELens keeps W_skip [d_out, d_in] and applies x W_skipᵀ; ours is [d_in, d_out], applied x W_skip."""
    if skip.shape != (cfg.d_out, cfg.d_in):
        raise InputError(f"{source}: W_skip has shape {tuple(skip.shape)}, expected ({cfg.d_out}, {cfg.d_in}) "
                         f"(SAELens's [d_out, d_in]) for d_in={cfg.d_in}, d_out={cfg.d_out}.",
                         "The config and weights do not match.")
    return skip.T.contiguous()


def _batch_topk_threshold(cfg: CoderConfig, tensors: dict[str, torch.Tensor]) -> CoderConfig:
    """Our own BatchTopK file holds its threshold per feature (the JumpReLU SAELens reads). Equal
    thresholds (to a millionth) are the BatchTopK's one; unequal ones (decoder norms folded in on save) make it the
    JumpReLU it computes outside training."""
    threshold = tensors.get("threshold")
    if threshold is None or threshold.dim() != 1 or threshold.numel() != cfg.d_sae:
        return cfg  # _assemble names what is missing or misshapen
    if torch.allclose(threshold, threshold[:1], rtol=1e-6, atol=0):  # equal up to the rounding of unit-norm rows
        tensors["topk_threshold"] = tensors.pop("threshold").double().mean()
        return cfg
    return dataclasses.replace(cfg, architecture="jumprelu")


def _fold_scaling_factor(config: dict[str, Any], tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Older SAELens files may hold ``scaling_factor`` [d_sae], which multiplied the features before
    decoding when ``finetuning_scaling_factor`` was set: all ones it is dropped (as SAELens drops
    it), otherwise folded into the decoder rows, which gives the same reconstruction and features."""
    factor = tensors.pop("scaling_factor", None)
    if factor is None or bool((factor == 1).all()):
        return
    if not config.get("finetuning_scaling_factor"):
        raise InputError(f"{source} holds a scaling_factor that is not all ones but the config does not set "
                         "finetuning_scaling_factor, so it is unclear whether it applies (SAELens refuses this too).",
                         "Set finetuning_scaling_factor: true if the factor scales the features, or remove it.")
    if "W_dec" in tensors and factor.shape == tensors["W_dec"].shape[:1]:
        tensors["W_dec"] = tensors["W_dec"].float() * factor.float()[:, None]
    else:
        raise InputError(f"{source}: scaling_factor has shape {tuple(factor.shape)}, not one entry per feature.",
                         "The config and weights do not match.")


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


SAELENS_SCALER = "activation_scaler.json"  # beside a SAELens trainer's checkpoint: its dataset-wide factor


def _normalisation(config: dict[str, Any], folder: Path) -> str:
    """``normalize_activations``, with SAELens's older true/false meaning the dataset-wide factor / none."""
    value = config.get("normalize_activations")
    if value is None or value is False:
        return "none"
    if value is True:
        return "expected_average_only_in"
    if value in (*NORMALISATIONS, "expected_average_only_in"):
        return value
    if value == "covariance_whitening":
        held = (folder / "activation_whitening.safetensors").exists()
        raise InputError(f"{folder}: this SAE was trained on whitened activations (normalize_activations="
                         "'covariance_whitening': (x − mean)·M before encoding, M⁻¹ and the mean after), "
                         + ("and LVLM Studio does not fold the mean and matrix saved beside it into the weights."
                            if held else "and this folder does not hold the mean and matrix."),
                         "Load it in SAELens and save the finished SAE (SAELens folds the whitening into the "
                         "weights and writes normalize_activations='none').")
    raise InputError(f"{folder}: unknown normalize_activations {value!r}.",
                     f"LVLM Studio reads: {', '.join(NORMALISATIONS)}, expected_average_only_in (with its factor).")


def _scaling_factor(folder: Path) -> float:
    """The dataset-wide factor of an ``expected_average_only_in`` SAE: SAELens's trainer keeps it in
    ``activation_scaler.json`` beside its checkpoints; SAELens's pretrained releases keep it in
    SAELens's own directory of releases, which no file here holds."""
    path = folder / SAELENS_SCALER
    factor = _read_json(path).get("scaling_factor") if path.exists() else None
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise InputError(f"{folder}: this SAE was trained on activations multiplied by a dataset-wide factor "
                         "(normalize_activations='expected_average_only_in'), and "
                         + (f"{SAELENS_SCALER} gives {factor!r}, not a positive number." if path.exists() else
                            f"neither its folder ({SAELENS_SCALER}) nor its file holds the factor; SAELens "
                            "itself would run it unscaled."),
                         f"Put {SAELENS_SCALER} with {{\"scaling_factor\": <the factor>}} beside cfg.json, or load it "
                         "in SAELens by its release and save it (which folds the factor into the weights).")
    return float(factor)


def _fold_scale(tensors: dict[str, torch.Tensor], factor: float, rescaled: bool) -> None:
    """SAELens's ``fold_activation_norm_scaling_factor``: the coder read s·x and wrote s·x̂, so
    W_enc·s, W_dec / s and b_dec / s read and write x itself; a BatchTopK checkpoint that rescales
    by decoder norms also has its threshold divided by s (its units are those of ‖W_dec,ᵢ‖)."""
    for name, scale in (("W_enc", factor), ("W_dec", 1 / factor), ("b_dec", 1 / factor)):
        if name in tensors:
            tensors[name] = tensors[name].double() * scale
    if rescaled and "topk_threshold" in tensors:
        tensors["topk_threshold"] = tensors["topk_threshold"].double() / factor


def _config_from(config: dict[str, Any], folder: Path) -> CoderConfig:
    if "lvlm_studio" in config:
        return _our_config(config["lvlm_studio"], folder)
    normalise = _normalisation(config, folder)
    kwargs = _section(config, "activation_fn_kwargs", folder)
    function = config.get("activation_fn_str")
    architecture = config.get("architecture") or "standard"
    if function not in (None, "relu", "topk", "jumprelu"):  # ViT-Prisma also has "tanh-relu", "leaky_relu"
        raise InputError(f"{folder}: activation_fn_str {function!r} is not computed by LVLM Studio; loaded as ReLU, "
                         "its features would be wrong.", "LVLM Studio reads ReLU, TopK and JumpReLU activations.")
    if function in ("topk", "jumprelu") and architecture != function:
        if architecture != "standard":  # "standard" beside activation_fn_str: ViT-Prisma's and older SAELens's way
            raise InputError(f"{folder}: the config says architecture {architecture!r} but activation_fn_str "
                             f"{function!r}.", "Fix the config so that the two agree.")
        architecture = function
    if architecture not in SAELENS_READS:
        refused = _REFUSED_ARCHITECTURES.get(architecture, "not an architecture LVLM Studio knows")
        raise InputError(f"{folder}: architecture {architecture!r} is not supported ({refused}).",
                         f"LVLM Studio reads these SAELens architectures: {', '.join(SAELENS_READS)}.")
    activation, kind, skip = SAELENS_READS[architecture]
    if _flag(config, "rescale_acts_by_decoder_norm", folder) and architecture not in ("topk", *SAELENS_BATCH_TOPK):
        raise InputError(f"{folder}: rescale_acts_by_decoder_norm is set for a {architecture} SAE; SAELens reads that "
                         "flag for TopK and BatchTopK SAEs only.", "Check the config's architecture.")
    if _flag(config, "is_transcoder", folder):
        if kind != "sae":
            raise InputError(f"{folder}: the config sets is_transcoder (ViT-Prisma's transcoders) beside SAELens's "
                             f"{architecture!r}.", "Keep one of the two.")
        kind, skip = "transcoder", _flag(config, "transcoder_with_skip_connection", folder)
    elif kind == "transcoder" and config.get("apply_b_dec_to_input", True) is not False:
        raise InputError(f"{folder}: a SAELens {architecture} with apply_b_dec_to_input true: its b_dec is an output "
                         "bias of d_out entries and cannot centre the input (SAELens refuses this config too).",
                         "Set apply_b_dec_to_input to false.")
    if config.get("reshape_activations", "none") not in ("none", None):
        raise InputError(f"{folder}: reshape_activations={config['reshape_activations']!r}: this SAE reads attention "
                         "heads' outputs (hook_z) flattened, which LVLM Studio's hook points do not give.",
                         "Use an SAE trained on a block-level hook point (`lvlm-studio sae hooks`).")
    d_in = _number(config, "d_in", folder)
    d_sae = _number(config, "d_sae", folder) or int(d_in * _number(config, "expansion_factor", folder, float))
    metadata = _section(config, "metadata", folder)
    hook = config.get("hook_name") or metadata.get("hook_name") or _prisma_hook(config, folder)
    if not d_in or not d_sae:
        raise InputError(f"{folder}: the config gives no d_in and d_sae.", "Add them (SAELens: d_in, d_sae).")
    if not isinstance(hook, str):
        raise InputError(f"{folder}: hook_name is {hook!r}, not a hook point's name.",
                         "Set it to a hook point, e.g. blocks.1.hook_resid_post (`lvlm-studio sae hooks`).")
    hook_out = config.get("hook_name_out") or metadata.get("hook_name_out") or ""
    run_time = normalise if normalise in NORMALISATIONS else "none"  # the factor is folded in by _build
    if run_time != "none" and kind != "sae":
        why = ("ViT-Prisma maps the output back after adding the skip path of the raw input, which LVLM Studio's "
               "transcoders do not compute" if _flag(config, "is_transcoder", folder) else
               "SAELens normalises a transcoder's input but never maps its output back, so which output was meant "
               "is unclear")
        raise InputError(f"{folder}: a transcoder with normalize_activations={run_time!r}: {why}.",
                         "LVLM Studio reads transcoders with normalize_activations='none'.")
    return CoderConfig(
        d_in=d_in, d_sae=d_sae, architecture=activation, normalize_activations=run_time,
        k=_number(config, "k", folder) or _number(kwargs, "k", folder) if activation == "topk" else 0,
        hook_name=hook, apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)),
        model_name=str(config.get("model_name") or metadata.get("model_name") or ""),
        tokens=_prisma_tokens({**metadata, **config}, folder),
        kind=kind, skip=skip, hook_name_out=hook_out if isinstance(hook_out, str) else "",
        d_out=_number(config, "d_out", folder) if kind == "transcoder" else 0,
    )


#: SAELens's (and ViT-Prisma's) architecture names read here, as (activation, kind, skip path).
#: BatchTopK and Matryoshka-BatchTopK are SAELens training checkpoints: read as the JumpReLU SAELens
#: saves them as for inference (their one learned threshold for every feature).
SAELENS_READS = {
    "standard": ("standard", "sae", False), "topk": ("topk", "sae", False), "jumprelu": ("jumprelu", "sae", False),
    "gated": ("gated", "sae", False), "batchtopk": ("jumprelu", "sae", False),
    "matryoshka_batchtopk": ("jumprelu", "sae", False),
    **{name: (activation, "transcoder", skip) for (activation, skip), name in SAELENS_TRANSCODERS.items()},
}
_REFUSED_ARCHITECTURES = {
    "abstopk": "SAELens's TopK by absolute value, which LVLM Studio does not compute",
    "temporal": "SAELens's temporal SAE reads a sequence of tokens at once",
    "matching_pursuit": "SAELens's matching-pursuit SAE encodes iteratively, which LVLM Studio does not compute",
}


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
#: (``core/models/hooks.py``; ``ln2.hook_normalized`` is the MLP's input, a transcoder's usual input); Prisma's
#: others (``mlp.hook_post``, ``attn.hook_z``, ``ln1.hook_normalized``,
#: ...) have no hook point here.
PRISMA_SUBTYPES = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "ln2.hook_normalized", "hook_mlp_out",
                   "hook_resid_post")


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
        kind_name = _KIND_NAMES.get(expected, expected.__name__)
        if expected is tuple:  # tuple[str, ...] or tuple[int, ...], stored as a JSON list
            item = typing.get_args(hints[name])[0]
            kind_name = f"a list of {'strings' if item is str else 'whole numbers'}"
            if isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                value = tuple(value)
        fits = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value, fits = float(value), True
        if not fits:
            raise InputError(f"{folder}: {name} in the config's lvlm_studio section is {value!r}, not "
                             f"{kind_name}.", "Fix or replace the config file.")
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
        meta = build_coder(cfg)
        expected = {**dict(meta.named_parameters()), **dict(meta.named_buffers())}
    unknown = sorted(set(tensors) - {"threshold" if name == "log_threshold" else name for name in expected})
    if unknown:
        raise InputError(f"{source} holds tensors that a {cfg.architecture} {cfg.kind} does not use: "
                         f"{', '.join(unknown)}; ignoring them would give wrong numbers.",
                         "Check that the config's architecture matches the weights (a gated SAE holds b_gate, b_mag "
                         "and r_mag; a JumpReLU, threshold; a skip transcoder, W_skip).")
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
    for name, parameter in [*coder.named_parameters(), *coder.named_buffers()]:
        value = tensors["threshold" if name == "log_threshold" else name].to(parameter.dtype)
        with torch.no_grad():
            parameter.copy_(value.clamp(min=1e-12).log() if name == "log_threshold" else value)
    return coder.eval()
