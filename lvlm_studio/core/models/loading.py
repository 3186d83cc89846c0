"""Open a vision-language model from a local folder: safely, on the device the user chose.

Models are only ever read from disk (``local_files_only``): nothing is downloaded. Weights must be
safetensors unless the user opts into pickle files; remote code stays off unless the user opts in.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError

from lvlm_studio.core.errors import InputError, ModelLoadError, UnsafeModelError
from lvlm_studio.core.plugin.adapter import ModelAdapter

log = logging.getLogger(__name__)

DEMO_MODEL_DIR = Path(__file__).resolve().parents[3] / "resources" / "demo-model"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json")
QUANTIZATIONS = ("4bit", "8bit")


@dataclass
class LoadOptions:
    """How to load. ``placement="auto"`` spreads a model too large for one GPU over the GPUs and
    CPU with accelerate (``max_memory`` caps each device, e.g. {"0": "20GiB", "cpu": "64GiB"}; what
    fits nowhere goes to ``offload_folder`` on disk). ``quantization`` "4bit" or "8bit" loads the
    weights with bitsandbytes (the ``quant`` extra; CUDA GPUs only), placed by accelerate."""

    device: str = "auto"
    dtype: str = "auto"
    placement: str | None = None  # None: one device; "auto": accelerate's device_map="auto"
    max_memory: dict[str, str] | None = None
    offload_folder: str | None = None  # with placement="auto": disk space for weights that fit nowhere
    quantization: str | None = None  # None, "4bit" or "8bit" (bitsandbytes)
    attn_implementation: str | None = None  # None: the model's default (usually SDPA)
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass
class LoadedModel:
    """A model, its processor and its family adapter, plus where it came from."""

    model: Any
    processor: Any
    adapter: ModelAdapter
    source: str
    options: LoadOptions = field(default_factory=LoadOptions)

    @property
    def family(self) -> str:
        return self.model.config.model_type

    @property
    def device(self) -> torch.device:
        return self.adapter.input_device()

    def describe(self) -> dict[str, Any]:
        """What a run record says about the model."""
        return {
            "source": self.source,
            "family": self.family,
            "dtype": str(self.model.dtype).replace("torch.", ""),
            "device": str(self.device),
            "attn_implementation": self.model.config._attn_implementation,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise ModelLoadError(f"unknown device {device!r}.", f"Choose one of: {', '.join(DEVICES)}.")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU.",
                             "Use --device cpu, or install a CUDA build of PyTorch on a machine with a GPU.")
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}.", f"Choose one of: {', '.join(DTYPES)}.")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def quantization_config(quantization: str | None, dtype: torch.dtype) -> Any:
    """The transformers ``BitsAndBytesConfig`` for "4bit" (NF4, computing in ``dtype``) or "8bit"
    (LLM.int8), or None. Refuses, with the fix, where bitsandbytes cannot run: it needs a CUDA GPU
    and the optional ``quant`` extra."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise InputError(f"unknown quantization {quantization!r}.", f"Choose one of: {', '.join(QUANTIZATIONS)}.")
    if not torch.cuda.is_available():
        raise InputError(f"{quantization} loading needs a CUDA GPU (bitsandbytes), and PyTorch sees none.",
                         "Load without quantization (float32 on the CPU), or use a machine with an NVIDIA GPU.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError(f"{quantization} loading needs bitsandbytes, which is not installed.",
                         "Install the optional extra: pip install 'lvlm-studio[quant]' (or pip install bitsandbytes).")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def check_folder(folder: Path, allow_pickle: bool) -> dict[str, Any]:
    """Fail early, with a fix, on everything a folder can get wrong; return its config.json."""
    if not folder.exists():
        raise ModelLoadError(f"model folder {folder} does not exist.",
                             "Pass a local folder in Hugging Face layout (config.json, *.safetensors, "
                             "processor files); models are never downloaded.")
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file, not a model folder.", "Pass the folder that holds config.json.")
    config_path = folder / "config.json"
    if not config_path.exists():
        raise ModelLoadError(f"{folder} has no config.json.", "Pass the folder of a saved Hugging Face model.")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc}).", "Re-copy the model folder.") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} holds a JSON {type(config).__name__}, not an object of settings.",
                             "Re-copy the model folder.")
    has_safetensors = any(folder.glob("*.safetensors"))
    has_pickle = any((folder / name).exists() for name in PICKLE_WEIGHTS) or any(folder.glob("pytorch_model-*.bin"))
    if not has_safetensors and has_pickle and not allow_pickle:
        raise UnsafeModelError(
            f"{folder} only has pickle weights (pytorch_model*.bin), which can run code when loaded.",
            "Convert them to safetensors, or allow pickle weights (--allow-pickle) only if you trust their source.",
            option="allow_pickle",
        )
    if not has_safetensors and not has_pickle:
        raise ModelLoadError(f"{folder} has no weights.",
                             "Expected model.safetensors or model-0000x-of-0000y.safetensors.")
    if not any((folder / name).exists() for name in PROCESSOR_FILES):
        raise ModelLoadError(
            f"{folder} has no processor or tokenizer files.",
            "Save the processor next to the model (processor.save_pretrained(folder)); "
            "LVLM Studio needs it to turn an image and a prompt into model inputs.",
        )
    return config


def load_model(path: str | Path | None = None, options: LoadOptions | None = None, registry: Any = None) -> LoadedModel:
    """Load the model in ``path`` (the embedded demo model when None) with its processor and adapter."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from lvlm_studio.core.plugin.registry import create_registry

    options = options or LoadOptions()
    folder = Path(path).expanduser() if path else DEMO_MODEL_DIR
    check_folder(folder, options.allow_pickle)
    registry = registry or create_registry()
    common = {"local_files_only": True, "trust_remote_code": options.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(folder, **common)
    except (ValueError, TypeError, KeyError, StrictDataclassError) as exc:
        if options.trust_remote_code or not _needs_remote_code(exc):
            raise ModelLoadError(f"transformers cannot read the config in {folder}: {_first_line(exc)}",
                                 "Check that the folder holds a vision-language model's config.json.") from None
        raise UnsafeModelError(f"transformers cannot read the config in {folder}: {_first_line(exc)}",
                               "If it is a custom architecture, allow remote code (--trust-remote-code) "
                               "only if you trust it.", option="trust_remote_code") from None
    adapter_class = registry.adapter_for(config)  # raises UnsupportedModelError naming the families

    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
    quantized = quantization_config(options.quantization, dtype)
    if options.placement not in (None, "auto"):
        raise InputError(f"unknown placement {options.placement!r}.", "Use placement 'auto' or none.")
    # Shapes that do not fit are reported with the missing keys below, not raised half-way through.
    kwargs: dict[str, Any] = {**common, "dtype": dtype, "use_safetensors": not options.allow_pickle or None,
                              "output_loading_info": True, "ignore_mismatched_sizes": True}
    if options.attn_implementation:
        kwargs["attn_implementation"] = options.attn_implementation
    if quantized is not None:  # bitsandbytes weights cannot be moved after loading: place them now
        kwargs["quantization_config"] = quantized
        kwargs["device_map"] = "auto" if options.placement == "auto" else {"": device}
    if options.placement == "auto":
        kwargs["device_map"] = "auto"
        if options.max_memory:
            kwargs["max_memory"] = {(int(k) if k.isdigit() else k): v for k, v in options.max_memory.items()}
        if options.offload_folder:
            kwargs["offload_folder"] = str(options.offload_folder)
    try:
        model, loading_info = AutoModelForImageTextToText.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ModelLoadError(f"could not load the weights in {folder}: {_first_line(exc)}",
                             "Check that the folder is complete (all shards present) and not corrupted.") from None
    check_loading_info(loading_info, folder)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    try:
        processor = adapter_class.load_processor(folder, **common)
    except ImportError as exc:  # a processor part needs an optional package (often torchvision)
        raise ModelLoadError(f"the processor in {folder} needs a package that is missing: {_first_line(exc)}",
                             "Install the package it names (pip install ...) in this environment.") from None
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"could not load the processor in {folder}: {_first_line(exc)}",
                             "Save the processor next to the model (processor.save_pretrained(folder)).") from None
    return LoadedModel(model, processor, adapter_class(model, processor), str(folder), options)


def check_loading_info(info: dict[str, Any], folder: Path) -> None:
    """Refuse weights that do not fit the architecture the config describes.

    transformers fills a parameter the checkpoint lacks (or holds in another shape) with random
    values and carries on; the model then answers fluent nonsense. Tied parameters (an LM head
    that shares the embedding matrix) are legitimately absent and not reported by transformers.
    Unexpected tensors mean the file belongs to another architecture or another configuration.
    """
    problems = []
    for kind, keys in (("missing", info.get("missing_keys")), ("unexpected", info.get("unexpected_keys"))):
        if keys:
            problems.append(f"{len(keys)} {kind} ({_some(sorted(keys))})")
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        shapes = [f"{key}: file {tuple(stored)}, config {tuple(expected)}"
                  for key, stored, expected in sorted(mismatched)]
        problems.append(f"{len(shapes)} of the wrong shape ({_some(shapes)})")
    if problems:
        raise ModelLoadError(f"the weights in {folder} do not match its config.json: tensors " + "; ".join(problems)
                             + ".", "Re-copy the complete model folder (every shard), or the config.json that "
                             "belongs to these weights; a model with missing weights would answer nonsense.")


def _some(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` names and how many more there are."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _needs_remote_code(exc: BaseException) -> bool:
    """Whether transformers refused the config because its architecture is not built in (custom code)."""
    text = str(exc)
    return isinstance(exc, ValueError) and any(
        hint in text for hint in ("trust_remote_code", "does not recognize this architecture", "Unrecognized model"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
