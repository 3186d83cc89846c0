"""Hypothesis fuzzes the session loader with damaged copies of a real session and with arbitrary zips.

The promise: ``load_session`` returns a session the app can show as it is (every part consistent
with the answer and the image), or raises ``InputError``; never anything else, and never more memory
than a small bound, however large the file claims its parts are.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from session_helpers import members, npy_declaring, npz_bytes, write_full_session, write_zip

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.formats.session import Session, load_session, save_session
from lvlm_studio.core.plugin.explanation import Explanation

MiB = 1 << 20
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def valid(demo_trace, demo_scene, tmp_path_factory):
    path = write_full_session(demo_trace, demo_scene, tmp_path_factory.mktemp("fuzz"))
    return path, members(path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzzed") / "fuzzed.lvlm"


def assert_usable(session: Session) -> None:
    """What the app and the report rely on when they show a loaded session."""
    assert isinstance(session.prompt, str) and isinstance(session.image_name, str)
    assert session.model_source is None or isinstance(session.model_source, str)
    assert isinstance(session.view, dict) and isinstance(session.record, dict)
    assert session.image is None or (isinstance(session.image, Image.Image) and session.image.mode == "RGB")
    trace = session.trace
    count = len(trace.answer_tokens) if trace is not None else 0
    for key in ("opacity", "threshold"):
        if key in session.view:
            assert 0 <= session.view[key] <= 1
    selected = session.view.get("selected")
    assert selected is None or (type(selected) is int and 0 <= selected < count)
    if trace is None:
        assert not session.explanations and not session.metrics
    else:
        assert len(trace.answer_ids) == len(trace.logprobs) == len(trace.top_tokens) == count
        assert trace.hidden.shape[0] == len(trace.input_ids) + count
        for region in trace.regions:
            assert len(region.positions) == region.grid[0] * region.grid[1] and (region.positions >= 0).all()
    for explanation in session.explanations.values():
        for token, maps in explanation.maps.items():
            assert 0 <= token < count and len(maps) == len(trace.regions)
            assert [m.shape for m in maps] == [r.grid for r in trace.regions]
    for record in session.metrics:
        assert isinstance(record.method, str) and 0 <= record.token < count
        assert all(isinstance(v, float) for v in record.result.values.values())
        assert all(len(x) == len(y) for x, y in record.result.curves.values())
    for mask in session.masks.values():
        assert mask.dtype == bool and mask.shape == session.image.size[::-1]


def opens_or_refuses(path) -> None:
    try:
        session = load_session(path)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert_usable(session)


# -- strategies ---------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def json_paths(value, prefix=()):
    """Every path into a JSON value (keys and list indices), the value's own path first."""
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from json_paths(child, (*prefix, key))


def replaced(value, path, new):
    """A copy of JSON ``value`` with the part at ``path`` set to ``new`` (``...`` deletes it)."""
    if not path:
        return new
    copy = json.loads(json.dumps(value))
    target = copy
    for key in path[:-1]:
        target = target[key]
    if new is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = new
    return copy


arrays = hnp.arrays(dtype=st.sampled_from([np.float64, np.float32, np.int8, np.uint8, np.bool_, np.complex64]),
                    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=12))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# -- properties ---------------------------------------------------------------------------------
def test_the_unchanged_session_opens(valid):
    path, _ = valid
    session = load_session(path)
    assert_usable(session)
    assert session.trace is not None and len(session.explanations) == 2 and session.masks


def test_sessions_of_every_family_open(tiny_trace, tmp_path):
    """The checks refuse nothing LVLM Studio writes: regions, tiles and processor inputs of every family."""
    rng = np.random.default_rng(0)
    maps = {t: [rng.random(r.grid) for r in tiny_trace.regions] for t in range(len(tiny_trace.answer_tokens))}
    mask = np.zeros(tiny_trace.image.size[::-1], bool)
    session = Session(prompt="p", image=tiny_trace.image, trace=tiny_trace, masks={"blue": mask, 0: mask},
                      explanations={"m": Explanation("m", maps)}, view={"selected": 0})
    again = load_session(save_session(session, tmp_path / "family.lvlm"))
    assert_usable(again)
    assert set(again.trace.model_inputs) == set(tiny_trace.model_inputs) and set(again.masks) == {"blue", 0}


@FUZZ
@given(data=st.data())
def test_flipped_bytes(valid, scratch, data):
    path, _ = valid
    content = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    scratch.write_bytes(bytes(content))
    opens_or_refuses(scratch)


@FUZZ
@given(data=st.data())
def test_members_removed_renamed_or_resized(valid, scratch, data):
    _, contents = valid
    contents = dict(contents)
    for _ in range(data.draw(st.integers(1, 3))):
        name = data.draw(st.sampled_from(sorted(contents)))
        action = data.draw(st.sampled_from(["remove", "rename", "truncate", "extend", "replace"]))
        if action == "remove":
            del contents[name]
        elif action == "rename":
            contents[data.draw(st.sampled_from(["image.png", "trace.safetensors", "masks.npz", "explanations/001.npz",
                                                "metric_curves.npz", "x/../y", "/abs"]))] = contents.pop(name)
        elif action == "truncate":
            contents[name] = contents[name][: data.draw(st.integers(0, len(contents[name])))]
        elif action == "extend":
            contents[name] += data.draw(st.binary(min_size=1, max_size=64))
        else:
            contents[name] = data.draw(st.binary(max_size=256))
        if not contents:
            break
    opens_or_refuses(write_zip(scratch, contents))


@FUZZ
@given(data=st.data())
def test_session_json_values_replaced(valid, scratch, data):
    _, contents = valid
    manifest = json.loads(contents["session.json"])
    path = data.draw(st.sampled_from(list(json_paths(manifest))))
    new = data.draw(st.just(...) if path and data.draw(st.booleans()) else json_values)
    text = json.dumps(replaced(manifest, path, new))
    opens_or_refuses(write_zip(scratch, {**contents, "session.json": text.encode()}))


@FUZZ
@given(data=st.data())
def test_trace_metadata_values_replaced(valid, scratch, data):
    from safetensors.numpy import load, save

    _, contents = valid
    raw = contents["trace.safetensors"]
    (length,) = np.frombuffer(raw[:8], "<u8")
    meta = json.loads(json.loads(raw[8:8 + int(length)])["__metadata__"]["lvlm_studio"])
    tensors = load(raw)
    if data.draw(st.booleans()):
        path = data.draw(st.sampled_from(list(json_paths(meta))))
        meta = replaced(meta, path, data.draw(st.just(...) if path and data.draw(st.booleans()) else json_values))
    else:
        name = data.draw(st.sampled_from(sorted(tensors) + ["model_inputs.extra", "unexpected"]))
        tensors[name] = np.ascontiguousarray(data.draw(arrays.filter(lambda a: a.dtype != np.complex64)))
    trace = save(tensors, metadata={"lvlm_studio": json.dumps(meta)})
    opens_or_refuses(write_zip(scratch, {**contents, "trace.safetensors": trace}))


@FUZZ
@given(data=st.data())
def test_npz_arrays_replaced(valid, scratch, data):
    _, contents = valid
    member = data.draw(st.sampled_from(["explanations/000.npz", "masks.npz", "metric_curves.npz"]))
    inner = members_of(contents[member])
    key = data.draw(st.sampled_from(sorted(inner) + ["token0_region1", "token99_region0", "0/deletion/z", "blue"]))
    action = data.draw(st.sampled_from(["replace", "remove", "declare"]))
    if action == "remove":
        inner.pop(key, None)
    elif action == "declare":  # a header that claims more (or less) than the data holds
        shape = tuple(data.draw(st.lists(st.integers(0, 2**40), max_size=3)))
        inner[key] = npy_declaring(shape, data.draw(st.sampled_from(["<f8", "|b1", "|O", "<c16", "|V8"])))
    else:
        inner[key] = npy(data.draw(arrays))
    opens_or_refuses(write_zip(scratch, {**contents, member: npz_bytes(inner)}))


def members_of(npz: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(npz)) as archive:
        return {name[:-4]: archive.read(name) for name in archive.namelist()}


member_names = st.sampled_from(["session.json", "image.png", "trace.safetensors", "masks.npz", "metric_curves.npz",
                                "explanations/000.npz"]) | st.text(
    st.characters(exclude_characters="\0", exclude_categories=["Cs"]), min_size=1, max_size=12)  # what zip can name


@FUZZ
@given(contents=st.dictionaries(
    member_names, st.binary(max_size=128) | st.builds(lambda v: json.dumps(v).encode(), json_values), max_size=6))
def test_arbitrary_zips(scratch, contents):
    opens_or_refuses(write_zip(scratch, contents))


@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_bombs_are_refused_within_a_memory_bound(valid, scratch, data):
    """A member that inflates to hundreds of MB (some as a .npy inside an .npz) costs no memory."""
    _, contents = valid
    name = data.draw(st.sampled_from(sorted(contents)))
    size = data.draw(st.integers(64, 512)) * MiB
    nested = name.endswith(".npz") and data.draw(st.booleans())
    with zipfile.ZipFile(scratch, "w", zipfile.ZIP_DEFLATED) as archive:
        for other, content in contents.items():
            if other != name:
                archive.writestr(other, content)
        if nested:
            inner = io.BytesIO()
            with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as npz:
                _write_zeros(npz, "token0_region0.npy", size, npy_declaring((size // 8,), "<f8", b""))
            archive.writestr(name, inner.getvalue())
        else:
            _write_zeros(archive, name, size)
    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            load_session(scratch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 48 * MiB, f"{peak / MiB:.0f} MiB"


def _write_zeros(archive: zipfile.ZipFile, name: str, size: int, head: bytes = b"") -> None:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as member:
        member.write(head)
        for _ in range(size // MiB):
            member.write(bytes(MiB))


def test_bombs_cost_no_memory_outside_python_either(valid, tmp_path):
    """The resident set of a process (numpy, zlib, safetensors and mmap included) hardly grows while
    it refuses bombs: measured from outside tracemalloc's view."""
    _, contents = valid
    bombs = []
    for name in ("trace.safetensors", "image.png", "explanations/000.npz"):
        path = tmp_path / f"bomb-{name.replace('/', '-')}.lvlm"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for other, content in contents.items():
                if other != name:
                    archive.writestr(other, content)
            _write_zeros(archive, name, 400 * MiB)
        bombs.append(path)
    declared = npz_bytes({"__header__": npy(np.frombuffer(b"{}", np.uint8)),
                          "token0_region0": npy_declaring((400_000, 250_000))})
    bombs.append(write_zip(tmp_path / "declared.lvlm", {**contents, "explanations/000.npz": declared}))
    script = textwrap.dedent(f"""
        import resource, sys
        from lvlm_studio.core.errors import InputError
        from lvlm_studio.core.formats.session import load_session
        load_session({str(tmp_path / 'valid.lvlm')!r})  # pays for torch and a real trace first
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for path in sys.argv[1:]:
            try:
                load_session(path)
            except InputError:
                pass
            else:
                sys.exit(f"{{path}} opened")
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    (tmp_path / "valid.lvlm").write_bytes(valid[0].read_bytes())
    done = subprocess.run([sys.executable, "-c", script, *map(str, bombs)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout
    grown_kib = int(done.stdout.split()[-1])
    assert grown_kib < 64 * 1024, f"the process grew by {grown_kib / 1024:.0f} MiB"
