"""Checks that make opening a session file safe and all-or-nothing.

A session file can come from anywhere (a colleague, a download, a damaged disk), so the loader
trusts nothing in it:

* the zip directory is checked before any member is inflated: member count, names (no absolute or
  parent paths), compression method, each member's size and compression ratio, the total;
* every array's declared dtype and shape (the ``.npy`` headers inside an ``.npz``, the safetensors
  header of the trace) is checked before it is allocated: no Python objects, exactly as many bytes
  as the shape needs, and the shape the session itself implies (a map has its region's grid, a
  mask the image's size, a map's token exists in the answer);
* session.json is checked against its schema in full: keys, types, ranges, referenced members.

Every problem raises ``BadSession`` with one line saying what is wrong; ``load_session`` turns it
into an ``InputError`` naming the file. So a loader either returns a session the app can show as
it is, or nothing. The limits are far above what LVLM Studio writes; the one a real session could
meet is the ratio, for a member that inflates past 32 MB at more than 200:1 (a huge, nearly flat image).
"""

from __future__ import annotations

import io
import json
import math
import re
import reprlib
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

MAX_MEMBERS = 4096  # members of the session zip (one per method's maps, a handful of others)
MAX_ARRAYS = 65_536  # arrays in one .npz (maps: answer tokens x image regions)
MAX_BYTES = 4 << 30  # everything inflated from one session, together
MAX_RATIO = 200  # a member that inflates beyond RATIO_FREE_BYTES must compress at most this well
RATIO_FREE_BYTES = 32 << 20
MAX_JSON_BYTES = 64 << 20  # session.json, an explanation's header
MAX_JSON_DEPTH = 64  # nesting of free-form JSON (run record, metric details)
MAX_IMAGE_PIXELS = 89_478_485  # Pillow's own default limit: larger images are refused, not warned about
COMPRESSIONS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}  # bzip2 and lzma would allow far larger bombs
NUMPY_SAFETENSORS = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64"}
DAMAGED_HINT = "Open a .lvlm file saved by LVLM Studio; this one is damaged or was not written by it."


class BadSession(Exception):
    """What is wrong with a session file, in one line (``load_session`` names the file)."""

    def __init__(self, problem: str, hint: str = DAMAGED_HINT):
        super().__init__(problem)
        self.hint = hint


@contextmanager
def reading(member: str) -> Iterator[None]:
    """Errors of the libraries that read a member (zip, zlib, numpy, safetensors, Pillow) say the
    member is damaged; nothing else is caught, so a real bug still shows as one."""
    from PIL import Image
    from safetensors import SafetensorError

    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, SyntaxError, struct.error,
            NotImplementedError, SafetensorError, Image.DecompressionBombError) as exc:
        raise BadSession(f"{member} is damaged ({type(exc).__name__}: {_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 120 else text[:117] + "..."


def _size(count: int) -> str:
    """A byte count as people read it (1.2 GB)."""
    if count < 1000:
        return f"{count} bytes"
    exponent = min(int(math.log10(count)) // 3, 4)
    return f"{count / 1000 ** exponent:.1f} {('KB', 'MB', 'GB', 'TB')[exponent - 1]}"


# -- the zip directory --------------------------------------------------------------------------
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_member(info: zipfile.ZipInfo, where: str = "") -> None:
    """One zip member, from the directory alone: a plain relative name, a method we write, an
    inflated size and compression ratio no real session comes near. (Names are never used as paths;
    one that would escape a folder only shows the file was made to attack.) ``where`` names the
    .npz a member is inside of: array names there may be any word, "C:" included."""
    name = info.filename
    parts = name.rstrip("/").split("/")
    if (not name or name.startswith("/") or "\\" in name or "\0" in name or (not where and _DRIVE.match(name))
            or any(part in ("", ".", "..") for part in parts)):
        raise BadSession(f"{where}member name {name!r} is a path outside the session")
    if info.flag_bits & 0x1:
        raise BadSession(f"{where}{name} is encrypted; sessions never are")
    if info.compress_type not in COMPRESSIONS:
        raise BadSession(f"{where}{name} is compressed with zip method {info.compress_type}; sessions use deflate")
    if info.file_size > MAX_BYTES:
        raise BadSession(f"{where}{name} expands to {_size(info.file_size)}, more than the {_size(MAX_BYTES)} "
                         "a session may hold")
    if info.file_size > RATIO_FREE_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise BadSession(f"{where}{name} expands {info.file_size // max(info.compress_size, 1)}:1 to "
                         f"{_size(info.file_size)} (a zip bomb, not session data)")


class SessionArchive:
    """A session zip whose directory passed ``check_member``; reads members within one byte budget."""

    def __init__(self, archive: zipfile.ZipFile):
        self.archive = archive
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise BadSession(f"it has {len(infos)} members; a session has at most {MAX_MEMBERS}")
        self.members: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            check_member(info)
            if info.filename in self.members:
                raise BadSession(f"member {info.filename} appears twice")
            self.members[info.filename] = info
        self.spent = 0
        self.spend(sum(info.file_size for info in infos), "its members")

    def spend(self, size: int, what: str) -> None:
        """Count ``size`` inflated bytes against the session's budget (npz contents count again)."""
        self.spent += size
        if self.spent > MAX_BYTES:
            raise BadSession(f"{what} expand to more than the {_size(MAX_BYTES)} a session may hold")

    def info(self, name: str) -> zipfile.ZipInfo:
        if name not in self.members:
            raise BadSession(f"{name} is missing")
        return self.members[name]

    def read(self, name: str, limit: int = MAX_BYTES) -> bytes:
        size = self.info(name).file_size
        if size > limit:
            raise BadSession(f"{name} is {_size(size)}, more than the {_size(limit)} it may be")
        with reading(name):
            return self.archive.read(name)

    def extract(self, name: str, target: Path) -> None:
        """Copy a member to a file in chunks (a trace is never held in memory as one blob). A
        failing write (a full disk) is an OSError, not a damaged session."""
        self.info(name)
        with reading(name):
            source = self.archive.open(name)
        with source, open(target, "wb") as sink:
            while True:
                with reading(name):
                    chunk = source.read(1 << 20)
                if not chunk:
                    return
                sink.write(chunk)


# -- JSON ---------------------------------------------------------------------------------------
def parse_json(data: bytes | str, what: str) -> Any:
    if len(data) > MAX_JSON_BYTES:
        raise BadSession(f"{what} is {_size(len(data))}, more than the {_size(MAX_JSON_BYTES)} it may be")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise BadSession(f"{what} is not valid JSON ({type(exc).__name__})") from None


_KINDS: dict[str, tuple[type, ...]] = {
    "a string": (str,), "a number": (int, float), "a whole number": (int,), "true or false": (bool,),
    "an object": (dict,), "a list": (list,),
}


def typed(value: Any, kind: str, where: str, optional: bool = False) -> Any:
    """``value`` if it is of ``kind`` (a key of ``_KINDS``; booleans are not numbers), else BadSession."""
    if optional and value is None:
        return value
    ok = isinstance(value, _KINDS[kind]) and (kind == "true or false" or not isinstance(value, bool))
    if not ok:
        raise BadSession(f"{where} is {reprlib.repr(value)}, not {kind}{' or null' if optional else ''}")
    return value


def field(data: dict[str, Any], key: str, kind: str, where: str, optional: bool = False) -> Any:
    """``data[key]`` checked with ``typed``; a missing key is a problem too (every key is always written)."""
    if key not in data:
        raise BadSession(f"{where}{key} is missing")
    return typed(data[key], kind, f"{where}{key}", optional)


def strings(value: Any, where: str) -> list[str]:
    for i, item in enumerate(typed(value, "a list", where)):
        typed(item, "a string", f"{where}[{i}]")
    return value


def free_json(value: Any, where: str, depth: int = 0) -> Any:
    """Free-form JSON (run record, metric details): any values, nested no deeper than MAX_JSON_DEPTH."""
    if depth > MAX_JSON_DEPTH:
        raise BadSession(f"{where} is nested more than {MAX_JSON_DEPTH} levels deep")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        free_json(child, where, depth + 1)
    return value


def index(value: Any, count: int, where: str) -> int:
    """An answer-token index, in range."""
    typed(value, "a whole number", where)
    if not 0 <= value < count:
        raise BadSession(f"{where} is token {value}, but the answer has {count} tokens")
    return value


# -- session.json -------------------------------------------------------------------------------
JSON = "session.json: "  # where a problem of the manifest is


def check_manifest(manifest: Any, expected_format: str) -> dict[str, Any]:
    """session.json's keys and types (members: ``check_members``; token indices: ``check_tokens``)."""
    typed(manifest, "an object", "session.json")
    found = field(manifest, "format", "a string", JSON)
    if found != expected_format:
        family, _, version = expected_format.rpartition("/")
        theirs = re.fullmatch(re.escape(family) + r"/([0-9]+)", found)
        if theirs is not None and int(theirs[1]) > int(version):
            raise BadSession(f"it was saved by a newer LVLM Studio (format {found!r})",
                             f"This version reads {expected_format}: update LVLM Studio to open it.")
        raise BadSession(f"{JSON}format is {found!r}, not {expected_format}")
    for key, kind, optional in (("prompt", "a string", False), ("image_name", "a string", False),
                                ("model_source", "a string", True), ("view", "an object", False),
                                ("record", "an object", False), ("explanations", "an object", False),
                                ("metrics", "a list", False), ("masks", "a list", False),
                                ("has_image", "true or false", False), ("has_trace", "true or false", False)):
        field(manifest, key, kind, JSON, optional)
    free_json(manifest["record"], f"{JSON}record")
    for method, member in manifest["explanations"].items():
        typed(member, "a string", f"{JSON}explanations.{method}")
    for i, item in enumerate(manifest["metrics"]):
        where = f"{JSON}metrics[{i}]"
        typed(item, "an object", where)
        for key in ("method", "metric"):
            field(item, key, "a string", f"{where}.")
        field(item, "token", "a whole number", f"{where}.")
        for name, value in field(item, "values", "an object", f"{where}.").items():
            typed(value, "a number", f"{where}.values.{name}")
        free_json(field(item, "details", "an object", f"{where}."), f"{where}.details")
        for name, way in typed(item.get("directions", {}), "an object", f"{where}.directions").items():
            typed(way, "a string", f"{where}.directions.{name}")  # older sessions have none
        curves = strings(field(item, "curves", "a list", f"{where}."), f"{where}.curves")
        if len(set(curves)) != len(curves):
            raise BadSession(f"{where}.curves names a curve twice")
    masks = strings(manifest["masks"], f"{JSON}masks")
    if len(set(masks)) != len(masks):
        raise BadSession(f"{JSON}masks names a mask twice")
    check_view(manifest["view"])
    return manifest


def check_view(view: dict[str, Any]) -> None:
    """What the app reads back from the view; other keys are kept as they are."""
    where = f"{JSON}view."
    free_json(view, f"{JSON}view")
    for key in ("method", "colormap", "chip_mode"):
        if key in view:
            typed(view[key], "a string", f"{where}{key}")
    for key in ("opacity", "threshold"):
        if key in view and not 0 <= typed(view[key], "a number", f"{where}{key}") <= 1:
            raise BadSession(f"{where}{key} is {view[key]!r}, not a number from 0 to 1")
    if "selected" in view:
        typed(view["selected"], "a whole number", f"{where}selected", optional=True)
    if "shared_scale" in view:
        typed(view["shared_scale"], "true or false", f"{where}shared_scale")
    if view.get("stats") is not None:
        typed(view["stats"], "an object", f"{where}stats")
    for method, chosen in typed(view.get("params", {}), "an object", f"{where}params").items():
        typed(chosen, "an object", f"{where}params.{method}")  # the values are checked by the method itself


def check_members(manifest: dict[str, Any], archive: SessionArchive) -> None:
    """Every member session.json refers to exists (before any of them is read)."""
    if manifest["has_image"]:
        archive.info("image.png")
    if manifest["has_trace"]:
        archive.info("trace.safetensors")
    for member in manifest["explanations"].values():
        archive.info(member)
    if any(item["curves"] for item in manifest["metrics"]):
        archive.info("metric_curves.npz")
    if manifest["masks"]:
        archive.info("masks.npz")


def check_tokens(manifest: dict[str, Any], answer_length: int | None) -> None:
    """Every answer token session.json names exists (``answer_length`` None: there is no trace)."""
    if answer_length is None:
        if manifest["explanations"] or manifest["metrics"]:
            raise BadSession("it holds maps or metrics but no trace of the answer they explain")
        if manifest["view"].get("selected") is not None:
            raise BadSession(f"{JSON}view.selected names a token, but the session has no answer")
        return
    for i, item in enumerate(manifest["metrics"]):
        index(item["token"], answer_length, f"{JSON}metrics[{i}].token")
    view = manifest["view"]
    if view.get("selected") is not None:
        index(view["selected"], answer_length, f"{JSON}view.selected")
    stats = view.get("stats")
    if stats is not None:
        for key, kind in (("llr", "a number"), ("relevant", "true or false"), ("entropy", "a number")):
            values = field(stats, key, "a list", f"{JSON}view.stats.")
            if len(values) != answer_length:
                raise BadSession(f"{JSON}view.stats.{key} has {len(values)} values for {answer_length} answer tokens")
            for value in values:
                typed(value, kind, f"{JSON}view.stats.{key}")


# -- arrays -------------------------------------------------------------------------------------
Expect = Callable[[str, np.dtype, tuple[int, ...]], None]


def read_npz(archive: SessionArchive, member: str, expect: Expect) -> dict[str, np.ndarray]:
    """The arrays of an .npz member, each checked before it is allocated: its zip entry
    (``check_member``), its .npy header (no objects, a plain number type, exactly as many bytes as
    its shape needs) and ``expect(key, dtype, shape)``, which raises BadSession for a wrong one."""
    data = archive.read(member)
    with reading(member):
        inner = zipfile.ZipFile(io.BytesIO(data))
        infos = inner.infolist()
    if len(infos) > MAX_ARRAYS:
        raise BadSession(f"{member} holds {len(infos)} arrays; at most {MAX_ARRAYS} are allowed")
    keys: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        check_member(info, f"{member}: ")
        if not info.filename.endswith(".npy") or info.filename[:-4] in keys:
            raise BadSession(f"{member}: {info.filename!r} is not one array of an .npz file")
        keys[info.filename[:-4]] = info
    archive.spend(sum(info.file_size for info in infos), member)
    for key, info in keys.items():
        with reading(member), inner.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise BadSession(f"{member}: array {key} has .npy version {version}, which sessions never use")
            offset = handle.tell()
        if dtype.hasobject:
            raise BadSession(f"{member}: array {key} holds Python objects (pickled data), which sessions never do")
        if dtype.kind not in "biuf" or dtype.fields is not None:
            raise BadSession(f"{member}: array {key} has type {dtype}, not a plain number type")
        needed = math.prod(shape) * dtype.itemsize
        if needed != info.file_size - offset:
            raise BadSession(f"{member}: array {key} declares shape {shape} of {dtype} ({_size(needed)}) "
                             f"but holds {_size(max(info.file_size - offset, 0))}")
        expect(key, dtype, tuple(shape))
    arrays = {}
    for key, info in keys.items():
        with reading(member), inner.open(info) as handle:
            arrays[key] = np.lib.format.read_array(handle, allow_pickle=False)
    return arrays


def wanted(member: str, key: str, dtype: np.dtype, shape: tuple[int, ...], kinds: str,
           want: tuple[int | None, ...], what: str) -> None:
    """One array has a dtype kind in ``kinds`` and shape ``want`` (None: any length on that axis)."""
    if dtype.kind not in kinds:
        raise BadSession(f"{member}: {key} is {dtype}, not {'true/false' if kinds == 'b' else 'numbers'}")
    if len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want, shape)):
        shown = "x".join(str(s) for s in shape) or "a single value"
        expected = "x".join("N" if w is None else str(w) for w in want)
        raise BadSession(f"{member}: {key} is {shown}, but {what} is {expected}")


_MAP_KEY = re.compile(r"token([0-9]+)_region([0-9]+)")


def explanation_expect(member: str, answer_length: int, grids: list[tuple[int, int]]) -> Expect:
    """A map per (answer token, region) with the region's grid, and the JSON header."""
    def expect(key: str, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if key == "__header__":
            wanted(member, key, dtype, shape, "u", (None,), "the header")
            return
        match = _MAP_KEY.fullmatch(key)
        if match is None:
            raise BadSession(f"{member}: unexpected array {key!r}")
        token, region = int(match[1]), int(match[2])
        index(token, answer_length, f"{member}: {key}")
        if region >= len(grids):
            raise BadSession(f"{member}: {key} is a map of region {region}, but the image has {len(grids)} regions")
        wanted(member, key, dtype, shape, "biuf", grids[region], f"region {region}'s grid")
    return expect


def explanation_from(member: str, arrays: dict[str, np.ndarray], regions: int) -> tuple[str, dict, dict, dict]:
    """(method, maps, params, provenance) of checked arrays: every token has a map for every region."""
    if "__header__" not in arrays:
        raise BadSession(f"{member} has no header")
    header = typed(parse_json(arrays.pop("__header__").tobytes(), f"{member} header"), "an object",
                   f"{member} header")
    method = field(header, "method", "a string", f"{member} header: ")
    params = free_json(field(header, "params", "an object", f"{member} header: "), f"{member} header")
    provenance = free_json(field(header, "provenance", "an object", f"{member} header: "), f"{member} header")
    found: dict[int, dict[int, np.ndarray]] = {}
    for key, array in arrays.items():
        match = _MAP_KEY.fullmatch(key)
        assert match is not None  # explanation_expect let only maps through
        found.setdefault(int(match[1]), {})[int(match[2])] = array
    for token, maps in found.items():
        if sorted(maps) != list(range(regions)):
            raise BadSession(f"{member}: token {token} has maps of regions {sorted(maps)}, not of all {regions}")
    maps = {token: [found[token][r] for r in range(regions)] for token in sorted(found)}
    return method, maps, params, provenance


# -- the trace ----------------------------------------------------------------------------------
def check_trace(meta: Any, tensors: dict[str, tuple[str, list[int]]], expected_format: str) -> None:
    """A trace's JSON metadata and its tensors' dtypes and shapes (from the header: nothing loaded)."""
    where = "trace.safetensors: "
    typed(meta, "an object", "trace.safetensors metadata")
    found = field(meta, "format", "a string", where)
    if found != expected_format:
        raise BadSession(f"{where}format is {found!r}, not {expected_format}")
    for key in ("prompt", "prompt_text"):
        field(meta, key, "a string", where)
    answer = strings(field(meta, "answer_tokens", "a list", where), f"{where}answer_tokens")
    strings(field(meta, "token_strings", "a list", where), f"{where}token_strings")
    for key in ("model_info", "generation", "timings"):
        free_json(field(meta, key, "an object", where), f"{where}{key}")
    for name, value in meta["timings"].items():
        typed(value, "a number", f"{where}timings.{name}")
    if "answer_text" in meta["generation"]:
        typed(meta["generation"]["answer_text"], "a string", f"{where}generation.answer_text")
    n = len(answer)

    def tensor(name: str, kinds: set[str], want: tuple[int | None, ...]) -> list[int]:
        if name not in tensors:
            raise BadSession(f"{where}tensor {name} is missing")
        dtype, shape = tensors[name]
        if dtype not in kinds or len(shape) != len(want) or any(w not in (None, s) for w, s in zip(want, shape)):
            expected = "x".join("N" if w is None else str(w) for w in want)
            raise BadSession(f"{where}tensor {name} is {dtype} {shape}, not {'/'.join(sorted(kinds))} {expected}")
        return shape

    height, width, _ = tensor("image", {"U8"}, (None, None, 3))
    if height * width > MAX_IMAGE_PIXELS or not height or not width:
        raise BadSession(f"{where}the image is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS} are allowed")
    (length,) = tensor("input_ids", {"I64"}, (None,))
    tensor("answer_ids", {"I64"}, (n,))
    tensor("logprobs", {"F32"}, (n,))
    _, k = tensor("top_ids", {"I64"}, (n, None))
    tensor("top_logprobs", {"F32"}, (n, k))
    tensor("hidden", {"F16", "F32", "F64"}, (length + n, None))
    top = field(meta, "top_tokens", "a list", where)
    if len(top) != n or any(len(strings(row, f"{where}top_tokens[{i}]")) != k for i, row in enumerate(top)):
        raise BadSession(f"{where}top_tokens is not {n} lists of {k} tokens")
    if len(meta["token_strings"]) not in (0, length):
        raise BadSession(f"{where}token_strings has {len(meta['token_strings'])} entries for {length} prompt tokens")
    for i, region in enumerate(field(meta, "regions", "a list", where)):
        check_region(region, f"{where}regions[{i}]")
    expected = {"image", "input_ids", "answer_ids", "logprobs", "top_ids", "top_logprobs", "hidden"}
    relevance = meta.get("visual_relevance")
    if relevance is not None:
        typed(relevance, "an object", f"{where}visual_relevance")
        for key in ("blur_sigma", "threshold"):
            field(relevance, key, "a number", f"{where}visual_relevance.")
        for name, dtype in (("logprob_image", "F32"), ("logprob_blurred", "F32"), ("relevant", "U8")):
            tensor(f"visual_relevance.{name}", {dtype}, (n,))
            expected.add(f"visual_relevance.{name}")
    for name, (dtype, _) in tensors.items():
        if name.startswith("model_inputs.") and dtype in NUMPY_SAFETENSORS:
            continue
        if name not in expected:
            raise BadSession(f"{where}unexpected tensor {name} ({dtype})")


def check_region(region: Any, where: str) -> None:
    """One image region: a grid of prompt positions and the box of the image it shows."""
    typed(region, "an object", where)
    field(region, "name", "a string", f"{where}.")
    if field(region, "image_index", "a whole number", f"{where}.") < 0:
        raise BadSession(f"{where}.image_index is negative")
    grid = field(region, "grid", "a list", f"{where}.")
    if len(grid) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in grid):
        raise BadSession(f"{where}.grid is {reprlib.repr(grid)}, not two positive whole numbers")
    positions = field(region, "positions", "a list", f"{where}.")
    if len(positions) != grid[0] * grid[1]:
        raise BadSession(f"{where} has {len(positions)} positions for a {grid[0]}x{grid[1]} grid")
    for position in positions:  # prompt positions, or vision keys for cross-attention families (Mllama)
        if not (isinstance(position, int) and not isinstance(position, bool) and position >= 0):
            raise BadSession(f"{where}.positions holds {reprlib.repr(position)}, not a position")
    box = field(region, "box", "a list", f"{where}.")
    if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                for v in box):
        raise BadSession(f"{where}.box is not four finite numbers")
    left, top, right, bottom = box
    if not (left < right and top < bottom):
        raise BadSession(f"{where}.box {box} is empty")


def png_size(data: bytes, member: str) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, read before Pillow decodes (or warns about) anything."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise BadSession(f"{member} is not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    if width * height > MAX_IMAGE_PIXELS or not width or not height:
        raise BadSession(f"{member} is {width}x{height} pixels; at most {MAX_IMAGE_PIXELS} are allowed")
    return width, height
