"""Stock processors without their video half, for families whose video processor needs torchvision.

transformers insists on a video processor for Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision,
SmolVLM and InternVL, and each of those needs torchvision, which LVLM Studio does not otherwise
need (it explains images). A subclass whose ``__init__`` leaves ``video_processor`` out makes the
processor machinery neither require nor load one; text and image handling are the stock code.

Classes are built on first use (importing transformers' processors is slow) and named as module
attributes (``Qwen2_5_VLProcessorImageOnly``), so that pickle finds them in any process.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

SUFFIX = "ImageOnly"


class NoVideo:
    """Stands in for the missing video processor where stock code reads its frame-sampling defaults
    (SmolVLM's chat template does, even for images). It processes nothing: calling it says why."""

    num_frames = None
    fps = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise ImportError("this processor was loaded without its video processor (it needs torchvision); "
                          "LVLM Studio explains images only")


@functools.cache
def image_only_processor_class(stock_name: str) -> type:
    """``transformers.<stock_name>`` with ``video_processor`` fixed to None."""
    import transformers

    stock = getattr(transformers, stock_name)

    # The processor machinery reads __init__'s argument names (its code object, not only its
    # signature) to learn which sub-processors and settings it has, saves and loads; so __init__ is
    # compiled with the stock parameters minus ``video_processor``, each passed on by name.
    parameters = [p for name, p in inspect.signature(stock.__init__).parameters.items() if name != "video_processor"]
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
    header, call = [], []
    for p in parameters[1:]:
        if p.kind is p.VAR_POSITIONAL:
            raise TypeError(f"{stock_name}.__init__ takes *args; cannot drop its video processor by name")
        if p.kind is p.VAR_KEYWORD:
            header.append(f"**{p.name}")
            call.append(f"**{p.name}")
        else:
            header.append(f"{p.name}=_defaults[{p.name!r}]" if p.name in defaults else p.name)
            call.append(f"{p.name}={p.name}")
    source = (f"def __init__(self, {', '.join(header)}):\n"
              f"    _stock.__init__(self, video_processor=None, {', '.join(call)})\n"
              f"    self.video_processor = _NoVideo()\n")
    namespace: dict[str, Any] = {"_stock": stock, "_defaults": defaults, "_NoVideo": NoVideo}
    exec(compile(source, f"<{stock_name}{SUFFIX}.__init__>", "exec"), namespace)  # our own text, no input
    __init__ = namespace["__init__"]

    cls = type(stock_name + SUFFIX, (stock,), {"__init__": __init__, "__module__": __name__,
                                              "__qualname__": stock_name + SUFFIX})
    return cls


def load_image_only(stock_name: str, folder: Path, **kwargs: Any) -> Any:
    """The processor saved in ``folder`` as ``stock_name``, loaded without its video processor."""
    return image_only_processor_class(stock_name).from_pretrained(folder, **kwargs)


def save_as_stock(processor: Any, folder: Path, stock_name: str, video_processor: str) -> None:
    """Save an image-only processor under its stock class name, with a default ``video_processor``
    entry of class ``video_processor``, so that where torchvision is installed transformers loads the
    folder exactly like a released checkpoint."""
    import json

    processor.save_pretrained(folder)
    path = Path(folder) / "processor_config.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved["processor_class"] = stock_name
    saved["video_processor"] = {"video_processor_type": video_processor}
    path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")


def __getattr__(name: str) -> Any:
    if name.endswith(SUFFIX):
        return image_only_processor_class(name[: -len(SUFFIX)])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
