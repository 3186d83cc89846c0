"""Save and open one analysis (image, prompt, trace, explanations, metrics, masks, view) as one file.

A session file is a zip archive of plain parts, so that opening one never runs code:

    session.json              format, prompt, model, view settings, metric numbers, run record
    image.png                 the image as asked about
    trace.safetensors         the Trace (safetensors + JSON header, as ``Trace.save`` writes it)
    explanations/NNN.npz      one per method (``Explanation.save_npz``: arrays + JSON header)
    metric_curves.npz         every metric curve, as plain float arrays
    masks.npz                 ground-truth masks (bool arrays), when the image has them

Arrays are read with ``allow_pickle=False`` and member names are never used as paths, so a
crafted file can at worst fail to open. Saving writes a temporary file and renames it over the
target, so a crash while saving (or an autosave) never leaves a half-written session.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from lvlm_studio.core.contracts import MetricResult
from lvlm_studio.core.errors import InputError
from lvlm_studio.core.explanation import Explanation
from lvlm_studio.core.files import atomic_path
from lvlm_studio.core.records import jsonable

if TYPE_CHECKING:
    from lvlm_studio.core.trace import Trace

FORMAT = "lvlm-studio-session/1"
SUFFIX = ".lvlm"
FILE_FILTER = f"LVLM Studio sessions (*{SUFFIX})"
MANIFEST = "session.json"


@dataclass
class MetricRecord:
    """One metric's result for one method's map of one answer token."""

    method: str
    token: int
    metric: str
    result: MetricResult


@dataclass
class Session:
    """Everything needed to show an analysis again without the model.

    ``model_source`` is the model folder (None: the demo model); ``view`` holds what the user was
    looking at (selected token, method, colormap, opacity, threshold) as JSON-able values.
    """

    prompt: str = ""
    image: Image.Image | None = None
    image_name: str = ""
    model_source: str | None = None
    trace: Trace | None = None
    explanations: dict[str, Explanation] = field(default_factory=dict)
    metrics: list[MetricRecord] = field(default_factory=list)
    masks: dict[str | int, np.ndarray] = field(default_factory=dict)  # word or token index -> mask
    view: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # run record: versions, model, saved time

    def metric(self, method: str, token: int, metric: str) -> MetricResult | None:
        for item in self.metrics:
            if (item.method, item.token, item.metric) == (method, token, metric):
                return item.result
        return None


def run_record(trace: Trace | None) -> dict[str, Any]:
    """What produced an analysis: model, generation settings, timings, library versions, time."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("lvlm-studio", "torch", "transformers"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    record: dict[str, Any] = {"saved": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": versions}
    if trace is not None:
        record.update(model=trace.model_info, generation=trace.generation, timings=trace.timings)
    return record


# -- saving -------------------------------------------------------------------------------------
def save_session(session: Session, path: str | Path) -> Path:
    """Write ``session`` to ``path`` (``.lvlm`` is added when missing), atomically."""
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "prompt": session.prompt,
        "image_name": session.image_name,
        "model_source": session.model_source,
        "view": session.view,
        "record": session.record or run_record(session.trace),
        "explanations": {},
        "metrics": [],
        "masks": sorted(_mask_key(k) for k in session.masks),
        "has_image": session.image is not None,
        "has_trace": session.trace is not None,
    }
    curves: dict[str, np.ndarray] = {}
    with atomic_path(path) as temporary:  # a full disk or a crash leaves the previous file
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            if session.image is not None:
                buffer = io.BytesIO()
                session.image.convert("RGB").save(buffer, format="PNG")
                archive.writestr("image.png", buffer.getvalue())
            if session.trace is not None:
                with tempfile.TemporaryDirectory() as folder:
                    trace_file = session.trace.save(Path(folder) / "trace.safetensors")
                    archive.write(trace_file, "trace.safetensors")
            for i, (method, explanation) in enumerate(session.explanations.items()):
                member = f"explanations/{i:03d}.npz"
                buffer = io.BytesIO()
                explanation.save_npz(buffer)  # type: ignore[arg-type] - numpy writes to file objects
                archive.writestr(member, buffer.getvalue())
                manifest["explanations"][method] = member
            for i, item in enumerate(session.metrics):
                names = []
                for name, (x, y) in item.result.curves.items():
                    curves[f"{i}/{name}/x"] = np.asarray(x, dtype=np.float64)
                    curves[f"{i}/{name}/y"] = np.asarray(y, dtype=np.float64)
                    names.append(name)
                manifest["metrics"].append({
                    "method": item.method, "token": item.token, "metric": item.metric,
                    "values": {k: float(v) for k, v in item.result.values.items()},
                    "details": jsonable(item.result.details), "curves": names,
                })
            if curves:
                archive.writestr("metric_curves.npz", _npz_bytes(curves))
            if session.masks:
                masks = {_mask_key(k): np.asarray(v, dtype=bool) for k, v in session.masks.items()}
                archive.writestr("masks.npz", _npz_bytes(masks))
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
    return path


def _mask_key(name: str | int) -> str:
    """Masks are keyed by word, or by answer-token index (``lvlm_studio.core.masks.ObjectMasks``)."""
    return f"token:{name}" if isinstance(name, int) else str(name)


def _mask_name(key: str) -> str | int:
    return int(key[6:]) if key.startswith("token:") and key[6:].isdigit() else key


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


# -- opening ------------------------------------------------------------------------------------
def load_session(path: str | Path) -> Session:
    """Open a session file; anything that is not one raises ``InputError`` with what to do."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"session file {path} does not exist.", "Check the path, or pick one from File \u203a Recent.")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(MANIFEST))
            if manifest.get("format") != FORMAT:
                raise InputError(f"{path} has session format {manifest.get('format')!r}.",
                                 f"This version reads {FORMAT}.")
            return _read(archive, manifest)
    except InputError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, TypeError) as exc:
        raise InputError(f"{path} is not a readable LVLM Studio session ({type(exc).__name__}: {exc}).",
                         f"Open a {SUFFIX} file saved by LVLM Studio.") from None


def _read(archive: zipfile.ZipFile, manifest: dict[str, Any]) -> Session:
    session = Session(
        prompt=str(manifest.get("prompt", "")),
        image_name=str(manifest.get("image_name", "")),
        model_source=manifest.get("model_source"),
        view=dict(manifest.get("view") or {}),
        record=dict(manifest.get("record") or {}),
    )
    if manifest.get("has_image"):
        image = Image.open(io.BytesIO(archive.read("image.png")))
        image.load()
        session.image = image.convert("RGB")
    if manifest.get("has_trace"):
        from lvlm_studio.core.trace import Trace  # torch: only when there is a trace to read

        with tempfile.TemporaryDirectory() as folder:
            trace_file = Path(folder) / "trace.safetensors"
            trace_file.write_bytes(archive.read("trace.safetensors"))
            session.trace = Trace.load(trace_file)
        if session.image is None:
            session.image = session.trace.image
    for method, member in manifest.get("explanations", {}).items():
        session.explanations[method] = Explanation.load_npz(io.BytesIO(archive.read(member)))  # type: ignore[arg-type]
    curves = _npz(archive, "metric_curves.npz") if "metric_curves.npz" in archive.namelist() else {}
    for i, item in enumerate(manifest.get("metrics", [])):
        result = MetricResult(
            values={k: float(v) for k, v in item["values"].items()},
            curves={name: (curves[f"{i}/{name}/x"], curves[f"{i}/{name}/y"]) for name in item.get("curves", [])},
            details=item.get("details", {}),
        )
        session.metrics.append(MetricRecord(str(item["method"]), int(item["token"]), str(item["metric"]), result))
    if manifest.get("masks"):
        session.masks = {_mask_name(k): v.astype(bool) for k, v in _npz(archive, "masks.npz").items()}
    return session


def _npz(archive: zipfile.ZipFile, member: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(archive.read(member)), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}
