"""Build real session files and damaged copies of them (tests/test_hostile_sessions.py, test_session_fuzz.py)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lvlm_studio.core.formats.session import MetricRecord, Session, save_session
from lvlm_studio.core.plugin.contracts import MetricResult
from lvlm_studio.core.plugin.explanation import Explanation


def full_session(trace: Any, scene: Any) -> Session:
    """A session with every part: image, trace, two methods' maps, a metric with a curve, masks, view."""
    rng = np.random.default_rng(0)
    explanations = {
        method: Explanation(method, {t: [rng.random(r.grid) for r in trace.regions]
                                     for t in range(len(trace.answer_tokens))}, {"layers": [1]}, {"method": method})
        for method in ("a", "b")
    }
    metric = MetricResult(values={"deletion_auc": 0.25}, curves={"deletion": (np.linspace(0, 1, 5), np.arange(5.0))},
                          details={"steps": 5})
    return Session(
        prompt=trace.prompt, image=trace.image, image_name="scene.png", trace=trace, explanations=explanations,
        metrics=[MetricRecord("a", 1, "deletion", metric)],
        masks={"red": scene.objects[0].mask, 3: scene.objects[1].mask},
        view={"selected": 1, "method": "b", "opacity": 0.4, "colormap": "inferno", "threshold": 0.0,
              "chip_mode": "probability", "stats": None},
    )


def write_full_session(trace: Any, scene: Any, folder: Path) -> Path:
    return save_session(full_session(trace, scene), folder / "valid.lvlm")


def members(path: Path) -> dict[str, bytes]:
    """Every member of a zip file, by name, in order."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path: Path, contents: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in contents.items():
            archive.writestr(name, data)
    return path


def rebuild(source: Path, target: Path, replace: dict[str, bytes | None] | None = None,
            manifest: Callable[[dict], Any] | None = None) -> Path:
    """A copy of session ``source`` with members replaced (None: removed) and session.json edited in place."""
    contents = members(source)
    for name, data in (replace or {}).items():
        if data is None:
            contents.pop(name, None)
        else:
            contents[name] = data
    if manifest is not None:
        edited = json.loads(contents["session.json"])
        manifest(edited)
        contents["session.json"] = json.dumps(edited).encode()
    return write_zip(target, contents)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_declaring(shape: tuple[int, ...], descr: str = "<f8", data: bytes = b"\0" * 16) -> bytes:
    """A .npy file whose header declares ``shape`` but which holds only ``data``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def npz_bytes(arrays: dict[str, bytes]) -> bytes:
    """An .npz archive of ready-made .npy members (names without the .npy suffix)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in arrays.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()
