"""Hostile session files: each is refused with one InputError naming the file and what is wrong,
before anything large is read, and nothing of a half-read session reaches the caller."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest
from hostile_helpers import assert_refused, run_cli
from session_helpers import members, npy_bytes, npy_declaring, npz_bytes, rebuild, write_full_session, write_zip

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.formats.session import load_session

MiB = 1 << 20


@pytest.fixture(scope="module")
def valid(demo_trace, demo_scene, tmp_path_factory):
    return write_full_session(demo_trace, demo_scene, tmp_path_factory.mktemp("sessions"))


def refused(path, *mentions: str, peak_mib: float = 64) -> str:
    """``load_session(path)`` raises InputError naming the file and ``mentions``, allocating at most
    ``peak_mib`` on the way (tracemalloc sees Python and numpy allocations)."""
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as caught:
            load_session(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert path.name in message, message
    for word in mentions:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    assert "\n" not in message
    assert peak < peak_mib * MiB, f"loading took {peak / MiB:.0f} MiB before it was refused"
    return message


def _deflated(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _zero_member(archive: zipfile.ZipFile, name: str, size: int, head: bytes = b"") -> None:
    """Write ``head`` and ``size`` zero bytes as member ``name`` without holding them in memory."""
    chunk = bytes(MiB)
    with archive.open(_deflated(name), "w", force_zip64=True) as member:
        member.write(head)
        for _ in range(size // MiB):
            member.write(chunk)


def _set(manifest: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    target = manifest
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def test_the_valid_session_opens(valid):  # the control: every damaged copy below starts from it
    session = load_session(valid)
    assert session.trace is not None and set(session.explanations) == {"a", "b"}
    assert session.view["opacity"] == 0.4 and set(session.masks) == {"red", 3}


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(200), b"PK\x03\x04garbage" * 50,
                                     bytes(range(256)) * 40], ids=["empty", "png", "broken-zip", "garbage"])
def test_a_file_that_is_not_a_session_is_refused(tmp_path, content):
    path = tmp_path / "bad.lvlm"
    path.write_bytes(content)
    refused(path, "session")


@pytest.mark.hostile("sessions")
def test_a_folder_is_not_a_session(tmp_path):
    (tmp_path / "folder.lvlm").mkdir()
    refused(tmp_path / "folder.lvlm", "folder")


@pytest.mark.hostile("sessions")
def test_a_zip_bomb_member_is_refused_before_it_is_inflated(valid, tmp_path):
    path = tmp_path / "bomb.lvlm"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members(valid).items():
            if name != "image.png":
                archive.writestr(name, data)
        _zero_member(archive, "image.png", 300 * MiB)
    assert path.stat().st_size < 2 * MiB
    refused(path, "image.png", "expands")


@pytest.mark.hostile("sessions")
def test_a_bomb_inside_an_npz_member_is_refused_before_it_is_inflated(valid, tmp_path):
    inner = tmp_path / "masks.npz"
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("red.npy", npy_bytes(np.zeros((2, 2), bool)))
        _zero_member(archive, "token:3.npy", 400 * MiB, npy_declaring((20 * 1024, 20 * 1024), "|b1", b""))
    path = rebuild(valid, tmp_path / "nested.lvlm", {"masks.npz": inner.read_bytes()})
    refused(path, "masks.npz", "token:3")


@pytest.mark.hostile("sessions")
def test_an_array_declaring_800_gb_is_refused_without_allocating_it(valid, tmp_path):
    header = npy_bytes(np.frombuffer(json.dumps({"method": "a", "params": {}, "provenance": {}}).encode(), np.uint8))
    npz = npz_bytes({"__header__": header, "token0_region0": npy_declaring((400_000, 250_000))})
    path = rebuild(valid, tmp_path / "huge.lvlm", {"explanations/000.npz": npz})
    refused(path, "explanations/000.npz", "token0_region0")


@pytest.mark.hostile("sessions")
def test_a_map_that_does_not_fit_the_image_grid_is_refused(valid, demo_trace, tmp_path):
    header = npy_bytes(np.frombuffer(json.dumps({"method": "a", "params": {}, "provenance": {}}).encode(), np.uint8))
    rows, cols = demo_trace.regions[0].grid
    npz = npz_bytes({"__header__": header, "token0_region0": npy_bytes(np.zeros((rows + 1, cols)))})
    path = rebuild(valid, tmp_path / "shape.lvlm", {"explanations/000.npz": npz})
    refused(path, "explanations/000.npz", "token0_region0", f"{rows}x{cols}")


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize("length", [2**40, 2**64 - 1, 200_000_000], ids=["1tb", "max", "200mb"])
def test_a_huge_safetensors_header_is_refused(valid, tmp_path, length):
    trace = struct.pack("<Q", length) + b'{"__metadata__": {}}'
    path = rebuild(valid, tmp_path / "header.lvlm", {"trace.safetensors": trace})
    refused(path, "trace.safetensors")


@pytest.mark.hostile("sessions")
def test_a_tensor_declaring_more_than_its_data_is_refused(valid, tmp_path):
    header = json.dumps({"hidden": {"dtype": "F32", "shape": [400_000, 500_000], "data_offsets": [0, 16]}}).encode()
    trace = struct.pack("<Q", len(header)) + header + bytes(16)
    path = rebuild(valid, tmp_path / "tensor.lvlm", {"trace.safetensors": trace})
    refused(path, "trace.safetensors")


@pytest.mark.hostile("sessions")
def test_too_many_members_are_refused(valid, tmp_path):
    contents = members(valid)
    contents.update({f"extra/{i}": b"" for i in range(5000)})
    refused(write_zip(tmp_path / "many.lvlm", contents), "members")


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize("name", ["../evil.npz", "/etc/evil.npz", "explanations/../../evil.npz", "C:\\evil.npz"])
def test_member_names_that_are_paths_outside_the_session_are_refused(valid, tmp_path, name):
    npz = members(valid)["explanations/000.npz"]
    path = rebuild(valid, tmp_path / "traversal.lvlm", {name: npz},
                   manifest=lambda m: m["explanations"].update(a=name))
    refused(path, "evil.npz")


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize(("key", "value"), [
    ("prompt", 5), ("image_name", ["x"]), ("model_source", 3), ("view", None), ("view.opacity", "abc"),
    ("view.opacity", float("nan")), ("view.threshold", 7), ("view.selected", "1"), ("view.selected", True),
    ("view.method", 2), ("view.colormap", None), ("view.stats", {"llr": "x"}), ("record", []),
    ("explanations", ["a"]), ("explanations.a", 0), ("metrics", {}), ("metrics.0", "deletion"),
    ("metrics.0.token", "1"), ("metrics.0.values", {"deletion_auc": "high"}), ("metrics.0.curves", "deletion"),
    ("metrics.0.details", 5), ("metrics.0.method", None), ("masks", "red"), ("has_trace", "yes"), ("has_image", 1),
])
def test_wrong_typed_session_values_are_refused(valid, tmp_path, key, value):
    path = rebuild(valid, tmp_path / "typed.lvlm", manifest=lambda m: _set(m, key, value))
    refused(path, key.rsplit(".", 1)[-1])


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize("key", ["format", "prompt", "view", "explanations", "metrics", "has_trace", "metrics.0.token"])
def test_missing_session_keys_are_refused(valid, tmp_path, key):
    def drop(manifest):
        *parents, last = key.split(".")
        target = manifest
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        del target[last]

    refused(rebuild(valid, tmp_path / "keys.lvlm", manifest=drop), key.rsplit(".", 1)[-1])


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize(("key", "value"), [("metrics.0.token", 99), ("metrics.0.token", -1), ("view.selected", 99)])
def test_out_of_range_token_indices_are_refused(valid, tmp_path, key, value):
    path = rebuild(valid, tmp_path / "range.lvlm", manifest=lambda m: _set(m, key, value))
    refused(path, str(value))


@pytest.mark.hostile("sessions")
def test_a_map_of_a_token_the_answer_does_not_have_is_refused(valid, demo_trace, tmp_path):
    header = npy_bytes(np.frombuffer(json.dumps({"method": "a", "params": {}, "provenance": {}}).encode(), np.uint8))
    npz = npz_bytes({"__header__": header, "token99_region0": npy_bytes(np.zeros(demo_trace.regions[0].grid))})
    refused(rebuild(valid, tmp_path / "token.lvlm", {"explanations/000.npz": npz}), "token 99")


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize("member", ["session.json", "trace.safetensors", "image.png", "explanations/001.npz",
                                    "masks.npz", "metric_curves.npz"])
def test_missing_members_are_refused(valid, tmp_path, member):
    refused(rebuild(valid, tmp_path / "missing.lvlm", {member: None}), member)


@pytest.mark.hostile("sessions")
def test_a_session_from_a_newer_version_says_to_update(valid, tmp_path):
    path = rebuild(valid, tmp_path / "future.lvlm", manifest=lambda m: m.update(format="lvlm-studio-session/2"))
    message = refused(path, "lvlm-studio-session/2", "newer")
    assert "update" in message.lower()


@pytest.mark.hostile("sessions")
def test_a_pickle_payload_inside_an_npz_is_refused(valid, tmp_path):
    payload = npy_bytes(np.array([{"os.system": "echo owned"}], dtype=object), allow_pickle=True)
    npz = npz_bytes({"red": payload, "token:3": npy_bytes(np.zeros((2, 2), bool))})
    refused(rebuild(valid, tmp_path / "pickle.lvlm", {"masks.npz": npz}), "masks.npz", "red", "object")


@pytest.mark.hostile("sessions")
def test_deeply_nested_json_is_refused(valid, tmp_path):
    contents = members(valid)
    text = contents["session.json"].decode()
    contents["session.json"] = text.replace('"record": {', '"record": {"deep": ' + "[" * 100_000 + "]" * 100_000
                                            + ", ", 1).encode()
    refused(write_zip(tmp_path / "deep.lvlm", contents), "session.json")


@pytest.mark.hostile("sessions")
def test_masks_that_are_not_the_image_size_are_refused(valid, tmp_path):
    npz = npz_bytes({"red": npy_bytes(np.ones((3, 3), bool)), "token:3": npy_bytes(np.ones((3, 3), bool))})
    refused(rebuild(valid, tmp_path / "masks.lvlm", {"masks.npz": npz}), "masks.npz", "red")


@pytest.mark.hostile("sessions")
def test_an_unsupported_compression_method_is_refused(valid, tmp_path):
    refused(write_zip(tmp_path / "bz2.lvlm", members(valid), zipfile.ZIP_BZIP2), "compress")


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize("damage", ["garbage", "bomb", "typed", "pickle"])
def test_the_report_command_refuses_a_bad_session_in_one_line(valid, tmp_path, capsys, damage):
    path = tmp_path / "BAD.lvlm"
    if damage == "garbage":
        path.write_bytes(b"not a zip at all")
    elif damage == "bomb":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members(valid).items():
                archive.writestr(name, data) if name != "trace.safetensors" else _zero_member(archive, name, 200 * MiB)
    elif damage == "typed":
        rebuild(valid, path, manifest=lambda m: _set(m, "view.opacity", "abc"))
    else:
        payload = npy_bytes(np.array([object()], dtype=object), allow_pickle=True)
        rebuild(valid, path, {"metric_curves.npz": npz_bytes({"0/deletion/x": payload})})
    outcome = run_cli(capsys, "report", path, "--out", tmp_path / "r.pdf")
    assert_refused(outcome, 2, "BAD.lvlm")
    assert not (tmp_path / "r.pdf").exists()


@pytest.mark.hostile("sessions")
def test_an_unreadable_session_says_so(valid, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    # as chmod 000 does, even for root
    monkeypatch.setattr("lvlm_studio.core.formats.session.open", denied, raising=False)
    refused(valid, "permission denied")


@pytest.mark.hostile("sessions")
def test_no_room_to_unpack_the_trace_says_so(valid, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lvlm_studio.core.formats.session_checks.open", full, raising=False)
    message = refused(valid, "no space left")
    assert "damaged" not in message


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize("word", ["token:\u00b2", "token:\u0663", "C:", "a/b", ""])
def test_masks_named_like_anything_open_as_words(valid, demo_scene, tmp_path, word):
    mask = npy_bytes(demo_scene.objects[0].mask.astype(bool))
    path = rebuild(valid, tmp_path / "words.lvlm", {"masks.npz": npz_bytes({word: mask})},
                   manifest=lambda m: m.update(masks=[word]))
    assert list(load_session(path).masks) == [word]


@pytest.mark.hostile("sessions")
@pytest.mark.parametrize("found", ["lvlm-studio-session/\u00b2", "lvlm-studio-session/0", "lvlm-studio-session/"])
def test_odd_format_versions_are_refused_as_unknown(valid, tmp_path, found):
    path = rebuild(valid, tmp_path / "odd.lvlm", manifest=lambda m: m.update(format=found))
    assert "newer" not in refused(path, "format")
