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

Opening checks every part before anything large is read (``lvlm_studio.core.formats.session_checks``), so
a damaged or hostile file ends in one clear ``InputError``, and opening is all or nothing.
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

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.formats import session_checks as checks
from lvlm_studio.core.io.files import atomic_path
from lvlm_studio.core.io.records import jsonable
from lvlm_studio.core.plugin.contracts import MetricResult
from lvlm_studio.core.plugin.explanation import Explanation

if TYPE_CHECKING:
    from lvlm_studio.core.tracing.trace import Trace

FORMAT = "lvlm-studio-session/1"
SUFFIX = ".lvlm"
FILE_FILTER = f"LVLM Studio sessions (*{SUFFIX})"
MANIFEST = "session.json"


@dataclass
class MetricRecord:
    """One metric's result for one method's map of one answer token, and which way each of its values
    is better ("higher" or "lower", as the metric declared it when it scored; values not named: neither)."""

    method: str
    token: int
    metric: str
    result: MetricResult
    directions: dict[str, str] = field(default_factory=dict)


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


def run_record(trace: Trace | None, providers: dict[str, Any] | None = None,
               explanations: dict[str, Explanation] | None = None) -> dict[str, Any]:
    """What produced an analysis: model, generation settings, timings, library versions, time,
    ``providers`` (the plugin, distribution and version behind each method, metric and panel:
    ``PluginRegistry.providers_of``) and the parameters each method's maps were made with."""
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
    if providers:
        record["providers"] = jsonable(providers)
    if explanations:
        record["methods"] = {method: {"params": jsonable(e.params)} for method, e in explanations.items()}
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
        "record": session.record or run_record(session.trace, explanations=session.explanations),
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
                    "directions": dict(item.directions),
                })
            if curves:
                archive.writestr("metric_curves.npz", _npz_bytes(curves))
            if session.masks:
                masks = {_mask_key(k): np.asarray(v, dtype=bool) for k, v in session.masks.items()}
                archive.writestr("masks.npz", _npz_bytes(masks))
            archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
    return path


def _mask_key(name: str | int) -> str:
    """Masks are keyed by word, or by answer-token index (``lvlm_studio.core.metrics.masks.ObjectMasks``)."""
    return f"token:{name}" if isinstance(name, int) else str(name)


def _mask_name(key: str) -> str | int:
    return int(key[6:]) if key.startswith("token:") and key[6:].isascii() and key[6:].isdigit() else key


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


# -- opening ------------------------------------------------------------------------------------
def load_session(path: str | Path) -> Session:
    """Open a session file: a session the app can show as it is, or one ``InputError`` saying what
    is wrong (nothing large is read before the parts are checked: ``lvlm_studio.core.formats.session_checks``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"session file {path} does not exist.", "Check the path, or pick one from File \u203a Recent.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not a session file.", f"Open a {SUFFIX} file saved by LVLM Studio.")
    try:
        with open(path, "rb") as file:
            with checks.reading("the file"):
                archive = zipfile.ZipFile(file)
            with archive:
                return _read(checks.SessionArchive(archive))
    except OSError as exc:  # unreadable, or no room to unpack the trace (a damaged archive is a BadSession)
        raise InputError(f"{path} could not be opened: {exc.strerror or exc}.",
                         f"Check that the file is readable and that {tempfile.gettempdir()} has room.") from None
    except checks.BadSession as exc:
        raise InputError(f"{path} is not a readable LVLM Studio session: {exc}.", exc.hint) from None


def _read(archive: checks.SessionArchive) -> Session:
    """Check everything, then build the session: the trace first, since maps, masks, metrics and the
    view are checked against its answer and image grids."""
    manifest = checks.check_manifest(checks.parse_json(archive.read(MANIFEST, checks.MAX_JSON_BYTES), MANIFEST), FORMAT)
    checks.check_members(manifest, archive)
    trace = _read_trace(archive) if manifest["has_trace"] else None
    checks.check_tokens(manifest, len(trace.answer_tokens) if trace is not None else None)
    image = _read_image(archive) if manifest["has_image"] else trace.image if trace is not None else None
    session = Session(prompt=manifest["prompt"], image=image, image_name=manifest["image_name"],
                      model_source=manifest["model_source"], trace=trace, view=manifest["view"],
                      record=manifest["record"])
    if trace is not None:
        grids = [region.grid for region in trace.regions]
        for method, member in manifest["explanations"].items():
            expect = checks.explanation_expect(member, len(trace.answer_tokens), grids)
            arrays = checks.read_npz(archive, member, expect)
            session.explanations[method] = Explanation(*checks.explanation_from(member, arrays, len(grids)))
    session.metrics = _read_metrics(archive, manifest["metrics"])
    if manifest["masks"]:
        session.masks = _read_masks(archive, manifest["masks"], image)
    return session


def _read_trace(archive: checks.SessionArchive) -> Trace:
    """The trace, copied to a temporary file in chunks and checked from its header before any
    tensor is read (safetensors then maps the file instead of holding a second copy)."""
    from safetensors import safe_open

    from lvlm_studio.core.tracing.trace import FORMAT as TRACE_FORMAT
    from lvlm_studio.core.tracing.trace import Trace  # torch: only when there is a trace to read

    member = "trace.safetensors"
    with tempfile.TemporaryDirectory() as folder:
        trace_file = Path(folder) / member
        archive.extract(member, trace_file)
        with checks.reading(member), safe_open(str(trace_file), framework="numpy") as handle:
            meta = (handle.metadata() or {}).get("lvlm_studio")
            tensors = {key: (handle.get_slice(key).get_dtype(), handle.get_slice(key).get_shape())
                       for key in handle.keys()}
        if meta is None:
            raise checks.BadSession(f"{member} has no LVLM Studio metadata")
        checks.check_trace(checks.parse_json(meta, f"{member} metadata"), tensors, TRACE_FORMAT)
        try:
            with checks.reading(member):
                return Trace.load(trace_file)
        except InputError as exc:  # it names the temporary file, which means nothing to the user
            raise checks.BadSession(f"{member} is damaged ({exc.message})") from None


def _read_image(archive: checks.SessionArchive) -> Image.Image:
    """image.png, its size read from the header before Pillow decodes it."""
    data = archive.read("image.png")
    checks.png_size(data, "image.png")
    with checks.reading("image.png"):
        image = Image.open(io.BytesIO(data), formats=["PNG"])
        image.load()
        return image.convert("RGB")


def _read_metrics(archive: checks.SessionArchive, items: list[dict[str, Any]]) -> list[MetricRecord]:
    """Each metric's numbers (checked with session.json) and curves: x and y of one length."""
    member = "metric_curves.npz"
    keys = {f"{i}/{name}/{axis}" for i, item in enumerate(items) for name in item["curves"] for axis in "xy"}

    def expect(key: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if key not in keys:
            raise checks.BadSession(f"{member}: unexpected array {key!r}")
        checks.wanted(member, key, dtype, shape, "biuf", (None,), "a curve")

    curves = checks.read_npz(archive, member, expect) if keys else {}
    records = []
    for i, item in enumerate(items):
        pairs = {}
        for name in item["curves"]:
            x, y = (curves.get(f"{i}/{name}/{axis}") for axis in "xy")
            if x is None or y is None or len(x) != len(y):
                raise checks.BadSession(f"{member}: curve {i}/{name} is missing, or its x and y differ in length")
            pairs[name] = (x, y)
        values = {name: float(value) for name, value in item["values"].items()}
        result = MetricResult(values=values, curves=pairs, details=item["details"])
        directions = {name: way for name, way in item.get("directions", {}).items() if way in ("higher", "lower")}
        records.append(MetricRecord(item["method"], item["token"], item["metric"], result, directions))
    return records


def _read_masks(archive: checks.SessionArchive, keys: list[str],
                image: Image.Image | None) -> dict[str | int, np.ndarray]:
    """The masks session.json names, each a boolean array of the image's size."""
    member = "masks.npz"
    if image is None:
        raise checks.BadSession("it holds object masks but no image")
    width, height = image.size

    def expect(key: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if key not in keys:
            raise checks.BadSession(f"{member}: unexpected mask {key!r}")
        checks.wanted(member, key, dtype, shape, "b", (height, width), "the image")

    masks = checks.read_npz(archive, member, expect)
    missing = sorted(set(keys) - set(masks))
    if missing:
        raise checks.BadSession(f"{member}: mask {missing[0]!r} is missing")
    return {_mask_name(key): masks[key] for key in keys}
