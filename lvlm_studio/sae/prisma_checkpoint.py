"""ViT-Prisma trainer checkpoints (``n_images_N.pt``), read without running anything in them.

ViT-Prisma's trainer saves ``torch.save({"cfg": <its config dataclass>, "state_dict": {...}})``: the
weights are tensors, but the config is a pickled Python object, so ``torch.load(weights_only=True)``
refuses the file and a full ``torch.load`` would import and run whatever the pickle names.

LVLM Studio's rule is that nothing it saves or loads is a pickle. This module is the one documented
exception, for reading a foreign trainer's checkpoint, and it runs no code from the file:

1. **The config, as plain data.** The file's ``data.pkl`` is read by ``RestrictedUnpickler``, whose
   ``find_class`` admits only: classes of the ``vit_prisma`` package, each replaced by ``Record``, a
   stand-in that is never imported from anywhere and only keeps the fields the pickle hands it
   (through ``__setstate__``); torch dtypes and devices, as their names; ``OrderedDict``, ``set`` and
   ``frozenset``, as a dict and lists; and torch's tensor-rebuilding functions and storage types,
   replaced by a placeholder (no tensor is built in this pass). Every other global (``os.system``,
   ``builtins.eval``, any class of another package) is refused by name before anything is called.
2. **The tensors, through torch's own restricted loader.** ``torch.load(weights_only=True)`` reads
   the file again with the config classes found in step 1 allowlisted as a harmless stand-in, so
   torch's own checks still refuse anything but tensors and plain containers.

The config comes back as a dict (nested dataclasses as dicts), ready for ``formats._config_from``.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lvlm_studio.core.errors import InputError

#: The package whose classes may appear in a checkpoint's config (as ``Record`` stand-ins).
CONFIG_PACKAGE = "vit_prisma"
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
    torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)}
_TENSOR_REBUILDERS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
                      ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state")}


class RefusedGlobal(Exception):
    """The pickle names a global that the restricted unpickler does not admit."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class Record:
    """Stand-in for one config object of the pickle: keeps the fields it is given, runs nothing.

    ``class_name`` is the name the pickle used (for messages); ``fields`` what ``__setstate__``
    received. Built only by pickle's NEWOBJ with no arguments, the way dataclasses are pickled.
    """

    class_name = ""

    def __new__(cls, *args: Any) -> Record:
        if args:  # a dataclass is pickled with no constructor arguments; anything else is not a config
            raise RefusedGlobal(f"{cls.class_name} called with arguments")
        instance = super().__new__(cls)
        instance.fields = {}
        return instance

    def __init__(self, *args: Any) -> None:
        if args:
            raise RefusedGlobal(f"{self.class_name} called with arguments")

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise RefusedGlobal(f"{self.class_name} with a {type(state).__name__} state")
        self.fields.update(state)


class _PlainDict(dict):
    """``OrderedDict`` read as a dict (it may carry attributes, e.g. a state dict's ``_metadata``)."""


class _Placeholder:
    """Where a tensor or storage sits in the pickle; the tensors come from torch's loader."""

    def __repr__(self) -> str:
        return "<tensor>"


def _stand_ins() -> dict[str, Any]:
    """Fresh stand-ins for one file, so that whatever a pickle does to them (a BUILD can set their
    attributes) stays with that file's objects and is thrown away with them."""

    def tensor(*args: Any) -> _Placeholder:
        return _Placeholder()

    def device(*args: Any) -> str:
        return ":".join(str(a) for a in args)

    def as_list(items: Any = ()) -> list[Any]:
        return list(items)

    return {"tensor": tensor, "device": device, "list": as_list, "dict": type("OrderedDict", (_PlainDict,), {})}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain data and ViT-Prisma config objects (as ``Record``); refuses every other global."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.records: dict[str, type[Record]] = {}
        self.stand_ins = _stand_ins()

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # what protocol 2 (torch.save's) writes for builtins
            module = "builtins"
        full = f"{module}.{name}"
        if module == CONFIG_PACKAGE or module.startswith(CONFIG_PACKAGE + "."):
            if not name.isidentifier():
                raise RefusedGlobal(full)
            if full not in self.records:  # a fresh subclass, so each record knows its class's name
                self.records[full] = type(name, (Record,), {"class_name": full})
            return self.records[full]
        if module == "torch" and name in _DTYPES:
            return name
        if full == "torch.device":
            return self.stand_ins["device"]
        if (module, name) in _TENSOR_REBUILDERS or module in ("torch", "torch.storage") and name.endswith("Storage"):
            return self.stand_ins["tensor"]
        if full == "collections.OrderedDict":
            return self.stand_ins["dict"]
        if full in ("builtins.set", "builtins.frozenset"):
            return self.stand_ins["list"]
        raise RefusedGlobal(full)

    def persistent_load(self, pid: Any) -> _Placeholder:
        return _Placeholder()


def plain(value: Any) -> Any:
    """``value`` with every ``Record`` turned into a dict of its fields (recursively)."""
    if isinstance(value, Record):
        return {key: plain(v) for key, v in value.fields.items()}
    if isinstance(value, dict):
        return {key: plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config as plain data, the state dict of tensors) of a ViT-Prisma trainer checkpoint.

    Raises ``InputError`` naming the global for a pickle that names anything not admitted (nothing
    of it has run), and for a file that is not ``{"cfg": ..., "state_dict": ...}``.
    """
    unpickler = RestrictedUnpickler(io.BytesIO(_data_pickle(path)))
    try:
        structure = unpickler.load()
    except RefusedGlobal as refused:
        raise InputError(f"{path} holds a pickled object that is not a tensor or a ViT-Prisma config "
                         f"({refused.name}), so it was not loaded (nothing in it was run).",
                         "Only weights are read from .pt files (torch.load with weights_only=True), and a "
                         "ViT-Prisma trainer checkpoint's config as plain data; re-save the SAE's state_dict "
                         "alone, or convert it to SAELens format.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise InputError(f"{path} is not a readable torch file ({type(exc).__name__}: {exc}).",
                         "Re-save or re-download it.") from None
    if not (isinstance(structure, dict) and "cfg" in structure and isinstance(structure.get("state_dict"), dict)):
        raise InputError(f"{path} holds a pickled object that is not a tensor, and is not a ViT-Prisma trainer "
                         "checkpoint ({\"cfg\": ..., \"state_dict\": ...}).",
                         "Only weights are read from .pt files (torch.load with weights_only=True); re-save the "
                         "SAE's state_dict alone, or convert it to SAELens format.")
    config = plain(structure["cfg"])
    if not isinstance(config, dict):
        raise InputError(f"{path}: the checkpoint's cfg is a {type(config).__name__}, not a config.",
                         "Re-save the checkpoint with ViT-Prisma, or convert it to SAELens format.")
    return config, _tensors(path, unpickler.records)


def _data_pickle(path: Path) -> bytes:
    """The pickle inside a torch zip archive (``<name>/data.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            if len(names) != 1:
                raise InputError(f"{path} is a zip archive but not a torch file (it has {len(names)} data.pkl).",
                                 "Re-save or re-download it.")
            return archive.read(names[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is not a readable torch file ({exc}).", "Re-save or re-download it.") from None


class _ConfigStandIn:
    """What torch's weights-only loader builds for a config object (its fields are not used)."""


def _tensors(path: Path, records: dict[str, type[Record]]) -> dict[str, Any]:
    """The checkpoint's state dict from ``torch.load(weights_only=True)``, with the config classes
    that the restricted pass admitted allowlisted as ``_ConfigStandIn``."""
    allow: list[Callable | tuple[Callable, str]] = [(_ConfigStandIn, name) for name in records]
    try:
        with torch.serialization.safe_globals(allow):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (AttributeError, TypeError) as exc:  # torch before 2.6 cannot allowlist a class under another name
        raise InputError(f"{path} is a ViT-Prisma trainer checkpoint, which this torch ({torch.__version__}) "
                         f"cannot read with weights_only=True ({exc}).",
                         "Upgrade torch to 2.6 or newer, or convert the checkpoint to SAELens format.") from None
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable torch file ({str(exc).splitlines()[0][:160]}).",
                         "Re-save or re-download it.") from None
    state = loaded.get("state_dict") if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{path} has no state_dict of tensors.", "Re-save the checkpoint with ViT-Prisma.")
    return state
