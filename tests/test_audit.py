"""The audit trail (lvlm_studio/core/formats/audit.py, docs/AUDIT.md): every change to a written record is
found and named, a record whose append returned survives kill -9, two processes never interleave,
and no patient identifier gets in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hostile_helpers import ROOT, assert_refused, run_cli

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.formats import audit
from lvlm_studio.core.formats.audit import FIELDS, GENESIS, AuditEntry, AuditLog, verify
from lvlm_studio.core.io.identifiers import IDENTIFIER_KEYWORDS, identifier_values, is_identifier, redact, scrub_text

IMAGE = hashlib.sha256(b"image").hexdigest()
MODEL = hashlib.sha256(b"model").hexdigest()
PATIENT = {"PatientName": "Doe^John", "PatientID": "MRN-448812", "Modality": "CR"}


def entry(**changes) -> AuditEntry:
    fields = dict(reviewer="dr.reviewer", case="case-001", image=IMAGE, model=MODEL, answer="no fracture",
                  decision="accepted", scores={"confidence": 0.91, "faithfulness": 0.4},
                  thresholds={"confidence": 0.8}, comment="", app="0.1.0",
                  plugins={"lvlm_explainers": "lvlm-studio 0.1.0"})
    return AuditEntry(**{**fields, **changes})


def make_log(tmp_path: Path, n: int = 5) -> Path:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append(entry(case=f"case-{i + 1:03d}", comment=f"note {i + 1}",
                         decision=audit.DECISIONS[i % len(audit.DECISIONS)]))
    return log.path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)  # bytes.splitlines splits on \n and \r only


def write_lines(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(new))


def reserialize(record: dict, rehash: bool) -> bytes:
    """A record written back as the log writes it, with its own hash kept (a naive edit) or recomputed."""
    if rehash:
        return audit._line({k: v for k, v in record.items() if k != "hash"})
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def subprocess_env() -> dict[str, str]:
    path = [str(ROOT), str(ROOT / "plugins"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


# -- the chain ----------------------------------------------------------------------------------
def test_a_chain_verifies_and_links_each_record_to_the_one_before(tmp_path):
    path = make_log(tmp_path, 5)
    result = verify(path)
    assert result.ok and not result.tampered and result.records == 5
    written = lines(path)
    assert result.head == hashlib.sha256(written[-1]).hexdigest()
    previous = GENESIS
    for number, line in enumerate(written, 1):
        record = json.loads(line)
        assert list(record) == list(FIELDS)
        assert record["seq"] == number and record["prev"] == previous
        assert record["time"].endswith("Z") and record["format"] == 1
        body = line[:line.rindex(b',"hash":')] + b"}"
        assert record["hash"] == hashlib.sha256(body).hexdigest()
        previous = hashlib.sha256(line).hexdigest()
    assert [json.loads(line)["decision"] for line in written] == [*audit.DECISIONS, "pending"]
    assert result.summary() == "5 records, chain intact"


def test_an_empty_log_verifies(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    assert path.exists() and log.records == 0 and log.head == GENESIS
    assert verify(path).ok and verify(path).records == 0


def test_a_log_reopened_goes_on_from_its_last_record(tmp_path):
    path = make_log(tmp_path, 3)
    log = AuditLog(path)
    assert log.records == 3
    record = log.append(entry())
    assert record["seq"] == 4 and record["prev"] == hashlib.sha256(lines(path)[2]).hexdigest()
    assert verify(path).records == 4


EDITS = {  # field -> a different value of the right type
    "format": 2, "seq": 9, "prev": "1" * 64, "time": "2020-01-01T00:00:00.000Z", "reviewer": "someone.else",
    "case": "case-999", "image": "2" * 64, "model": "3" * 64, "app": "9.9", "plugins": {"x": "y 1"},
    "answer": "fracture", "scores": {"confidence": 0.1}, "thresholds": {"confidence": 0.05},
    "decision": "deferred", "comment": "changed", "hash": "4" * 64,
}


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("number", [1, 3, 5])
def test_editing_any_field_of_any_record_is_caught(tmp_path, field, number):
    path = make_log(tmp_path, 5)
    written = lines(path)
    record = json.loads(written[number - 1])
    assert record[field] != EDITS[field]
    record[field] = EDITS[field]
    written[number - 1] = reserialize(record, rehash=False)
    write_lines(path, written)
    result = verify(path)
    assert (result.problem, result.record, result.records) == ("edited", number, number - 1)
    assert result.tampered and f"record {number} was edited" in result.message


def test_an_edit_with_its_own_hash_recomputed_breaks_the_chain_at_the_next_record(tmp_path):
    path = make_log(tmp_path, 5)
    written = lines(path)
    record = json.loads(written[2])
    record["decision"] = "deferred"
    written[2] = reserialize(record, rehash=True)
    write_lines(path, written)
    result = verify(path)
    assert (result.problem, result.record) == ("edited", 4)
    assert "hash chain broken at record 4" in result.message and "record 3" in result.message


def test_a_one_byte_change_is_caught(tmp_path):
    path = make_log(tmp_path, 3)
    data = bytearray(path.read_bytes())
    data[data.index(b"note 2") + 5] = ord("7")
    path.write_bytes(bytes(data))
    assert (verify(path).problem, verify(path).record) == ("edited", 2)


def test_an_added_field_is_caught_even_with_its_hash_recomputed(tmp_path):
    path = make_log(tmp_path, 3)
    written = lines(path)
    record = json.loads(written[1])
    record["PatientName"] = "Doe^John"
    written[1] = reserialize(record, rehash=True)
    write_lines(path, written)
    result = verify(path)
    assert (result.problem, result.record) == ("edited", 2) and "unexpected field 'PatientName'" in result.message


@pytest.mark.parametrize("number", [1, 3])
def test_a_removed_record_is_caught(tmp_path, number):
    path = make_log(tmp_path, 5)
    written = lines(path)
    del written[number - 1]
    write_lines(path, written)
    result = verify(path)
    assert (result.problem, result.record) == ("removed", number)
    assert f"seq {number} missing" in result.message


def test_removed_records_are_counted(tmp_path):
    path = make_log(tmp_path, 6)
    written = lines(path)
    del written[1:4]
    write_lines(path, written)
    result = verify(path)
    assert result.problem == "removed" and "seqs 2 to 4 missing before record 2" in result.message


def test_a_record_cut_off_the_end_is_caught_with_the_head_kept_elsewhere(tmp_path):
    path = make_log(tmp_path, 5)
    head = verify(path).head
    write_lines(path, lines(path)[:-1])
    assert verify(path).ok  # the chain alone cannot see it...
    result = verify(path, head=head)  # ...the head kept elsewhere does
    assert result.problem == "removed" and "not in the log" in result.message
    AuditLog(path).append(entry())  # a record appended in place of the cut one does not hide the cut
    assert verify(path, head=head).problem == "removed"


def test_a_head_kept_earlier_still_verifies_as_the_log_grows(tmp_path):
    path = make_log(tmp_path, 2)
    head = verify(path).head
    AuditLog(path).append(entry())
    assert verify(path, head=head).ok and verify(path, head=head.upper()).ok
    assert verify(path, head="7" * 64).problem == "removed"


@pytest.mark.parametrize("first,second", [(2, 3), (1, 5)])
def test_swapped_records_are_caught(tmp_path, first, second):
    path = make_log(tmp_path, 5)
    written = lines(path)
    written[first - 1], written[second - 1] = written[second - 1], written[first - 1]
    write_lines(path, written)
    result = verify(path)
    assert (result.problem, result.record) == ("reordered", first)
    assert f"holds seq {second}" in result.message


def test_a_copied_record_is_caught(tmp_path):
    path = make_log(tmp_path, 4)
    write_lines(path, [*lines(path), lines(path)[1]])
    result = verify(path)
    assert (result.problem, result.record) == ("reordered", 5) and "holds seq 2" in result.message


def test_a_forged_record_with_a_wrong_prev_is_caught(tmp_path):
    path = make_log(tmp_path, 4)
    forged = json.loads(lines(path)[-1])
    forged.update(seq=5, prev="5" * 64, decision="accepted", comment="looks fine")
    with open(path, "ab") as file:
        file.write(reserialize(forged, rehash=True))
    result = verify(path)
    assert (result.problem, result.record) == ("edited", 5)
    assert "hash chain broken at record 5" in result.message and "forged" in result.message


@pytest.mark.parametrize("cut", [1, 2, 40])
def test_a_truncated_last_line_is_torn_not_tampering(tmp_path, cut):
    path = make_log(tmp_path, 4)
    path.write_bytes(path.read_bytes()[:-cut])
    result = verify(path)
    assert (result.problem, result.record, result.records) == ("torn", 4, 3)
    assert not result.tampered and "incomplete" in result.message and "not an edit" in result.message


def test_a_torn_log_is_refused_until_recovered_and_the_torn_bytes_are_kept(tmp_path):
    path = make_log(tmp_path, 4)
    intact = b"".join(lines(path)[:3])
    path.write_bytes(path.read_bytes()[:-30])
    torn = path.read_bytes()[len(intact):]
    with pytest.raises(InputError, match="audit recover"):
        AuditLog(path)
    result, kept = audit.recover(path)
    assert result.ok and result.records == 3 and path.read_bytes() == intact
    assert kept is not None and kept.read_bytes() == torn and kept.parent == path.parent
    assert AuditLog(path).append(entry())["seq"] == 4
    assert verify(path).ok
    assert audit.recover(path) == (verify(path), None)  # nothing to cut


def test_recover_leaves_a_tampered_log_as_it_is(tmp_path):
    path = make_log(tmp_path, 3)
    write_lines(path, lines(path)[1:])
    before = path.read_bytes()
    result, kept = audit.recover(path)
    assert result.problem == "removed" and kept is None and path.read_bytes() == before


def test_a_log_that_does_not_verify_is_never_appended_to(tmp_path):
    path = make_log(tmp_path, 3)
    written = lines(path)
    written[0], written[1] = written[1], written[0]
    write_lines(path, written)
    before = path.read_bytes()
    with pytest.raises(InputError, match="does not verify, so nothing is added to it: records were reordered"):
        AuditLog(path)
    assert path.read_bytes() == before


def test_a_log_changed_behind_an_open_one_is_not_appended_to(tmp_path):
    path = make_log(tmp_path, 3)
    log = AuditLog(path)
    written = lines(path)
    record = json.loads(written[2])
    record["comment"] = "note X"  # the same length: only its content changed
    written[2] = reserialize(record, rehash=True)
    write_lines(path, written)
    before = path.read_bytes()
    with pytest.raises(InputError, match="record 3 changed since it was opened"):
        log.append(entry())
    assert path.read_bytes() == before
    write_lines(path, lines(path)[:2])
    with pytest.raises(InputError, match="shrank"):
        log.append(entry())
    path.unlink()
    with pytest.raises(InputError, match="is gone"):
        log.append(entry())
    assert not path.exists()  # not created again


def test_records_appended_by_another_writer_are_verified_before_the_next_append(tmp_path):
    path = make_log(tmp_path, 2)
    first, second = AuditLog(path), AuditLog(path)
    first.append(entry(comment="from the first"))
    assert second.append(entry(comment="from the second"))["seq"] == 4
    with open(path, "ab") as file:  # a stranger appends a record that does not link
        file.write(reserialize({**json.loads(lines(path)[-1]), "seq": 5, "prev": "6" * 64}, rehash=True))
    with pytest.raises(InputError, match="hash chain broken at record 5"):
        first.append(entry())


# -- crashes and concurrency -----------------------------------------------------------------
WRITER = textwrap.dedent("""
    import os, signal, sys
    from lvlm_studio.core.formats.audit import AuditEntry, AuditLog
    path, count, name, self_kill = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
    log = AuditLog(path)
    print("ready", flush=True)
    while not os.path.exists(path + ".go"):  # both writers start together
        pass
    for i in range(count):
        record = log.append(AuditEntry(reviewer=name, case=f"case-{i}", image="a" * 64, model="b" * 64,
                                       answer="x", decision="pending", comment=f"{name} {i}", app="0.1.0",
                                       plugins={}))
        print(record["seq"], flush=True)
    if self_kill:
        os.kill(os.getpid(), signal.SIGKILL)
    """)


def start_writers(path: Path, count: int, names: tuple[str, ...] = ("writer",),
                  self_kill: bool = False) -> list[subprocess.Popen]:
    """Processes that each open the log, wait until all are ready, then append ``count`` records, printing
    each record's seq once ``append`` has returned."""
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(count), name, "1" if self_kill else "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
               for name in names]
    for writer in writers:
        assert writer.stdout.readline().strip() == "ready", writer.communicate(timeout=60)[1]
    Path(f"{path}.go").touch()
    return writers


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_right_after_append_returns_loses_no_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    [writer] = start_writers(path, 7, self_kill=True)
    out, err = writer.communicate(timeout=120)
    assert writer.returncode == -signal.SIGKILL, err
    assert out.split() == [str(i) for i in range(1, 8)]
    result = verify(path)
    assert result.ok and result.records == 7


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_9_in_the_middle_of_appending_keeps_every_returned_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    [writer] = start_writers(path, 100_000)
    returned = [int(writer.stdout.readline()) for _ in range(30)]
    writer.send_signal(signal.SIGKILL)
    writer.communicate(timeout=60)
    result = verify(path)
    assert result.problem in ("", "torn"), result.message  # a write cut off mid-way is torn, never tampering
    assert result.records >= max(returned)
    if result.problem == "torn":
        assert audit.recover(path)[0].ok


def test_two_processes_appending_at_once_never_interleave(tmp_path):
    path = tmp_path / "audit.jsonl"
    AuditLog(path)
    for writer in start_writers(path, 150, ("alice", "bob")):
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    result = verify(path)
    assert result.ok and result.records == 300
    records = audit.read_records(path)
    for name in ("alice", "bob"):
        assert [r["comment"] for r in records if r["reviewer"] == name] == [f"{name} {i}" for i in range(150)]


# -- what goes in ----------------------------------------------------------------------------
def test_unicode_comments_come_back_exactly(tmp_path):
    comments = ["Läsion links, ∅ Fraktur ✓", "مرحبا بالعالم", "多発性の陰影 🩻", "line\nbreak\r\nand\ttab",
                "separators \u2028 and \u2029 and \x85", 'quotes " and \\ backslash', "e\u0301 combining", ""]
    log = AuditLog(tmp_path / "audit.jsonl")
    for comment in comments:
        log.append(entry(comment=comment, answer=comment))
    assert [r["comment"] for r in audit.read_records(log.path)] == comments
    assert len(lines(log.path)) == len(comments)
    assert verify(log.path).ok


@pytest.mark.parametrize("change,message", [
    ({"decision": "approved"}, "not one of pending, accepted, overridden, deferred"),
    ({"image": "abc"}, "not a SHA-256"),
    ({"model": "A" * 64}, "not a SHA-256"),
    ({"scores": {"confidence": float("nan")}}, "not a finite number"),
    ({"thresholds": {"confidence": "high"}}, "not a finite number"),
    ({"case": ""}, "empty"),
    ({"case": "case\n1"}, "control characters"),
    ({"reviewer": "x" * 500}, "at most"),
    ({"comment": "bad \udc80 surrogate"}, "not Unicode"),
    ({"comment": 5}, "not text"),
])
def test_a_bad_field_is_refused_and_nothing_is_written(tmp_path, change, message):
    path = make_log(tmp_path, 1)
    before = path.read_bytes()
    with pytest.raises(InputError, match=message):
        AuditLog(path).append(entry(**change))
    assert path.read_bytes() == before


def test_scores_may_be_missing_and_numpy_numbers_are_plain(tmp_path):
    np = pytest.importorskip("numpy")
    record = AuditLog(tmp_path / "a.jsonl").append(entry(scores={"a": np.float32(0.5), "b": None, "c": 2}))
    assert record["scores"] == {"a": 0.5, "b": None, "c": 2.0}


def test_a_case_id_that_is_a_patient_identifier_is_refused(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    for case in ("MRN-448812", "John Doe case", "doe^john"):
        with pytest.raises(InputError, match="patient identifier"):
            log.append(entry(case=case), identifiers=identifier_values(PATIENT))
    assert log.path.read_bytes() == b""


def test_identifiers_in_answer_and_comment_are_withheld(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    record = log.append(entry(answer="Label reads DOE^JOHN, MRN-448812", comment="John Doe, see prior; Johnson ok"),
                        identifiers=identifier_values(PATIENT))
    text = log.path.read_text(encoding="utf-8")
    assert "448812" not in text and "DOE" not in text.upper().replace("WITHHELD", "")
    assert record["answer"] == "Label reads [withheld], [withheld]"
    assert record["comment"] == "[withheld] [withheld], see prior; Johnson ok"


# -- identifiers ------------------------------------------------------------------------------
def test_redact_drops_identifiers_at_every_depth_unless_the_user_opts_in():
    metadata = {"PatientName": "Doe^John", "PatientID": "123", "Modality": "CR", "Rows": 512,
                "(0009,1010)": "private", "00111001": "private too", "(0010,0010)": "even group: a known tag",
                "RequestAttributesSequence": [{"RequestedProcedureID": "9"}],
                "ViewCodeSequence": [{"CodeMeaning": "frontal", "PatientID": "123"}]}
    redacted = redact(metadata)
    assert redacted == {"Modality": "CR", "Rows": 512, "(0010,0010)": "even group: a known tag",
                        "ViewCodeSequence": [{"CodeMeaning": "frontal"}]}
    assert redact(metadata, keep_identifiers=True) == metadata
    assert metadata["ViewCodeSequence"][0]["PatientID"] == "123"  # the input is left as it was
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                    "ReferringPhysicianName", "OtherPatientIDs", "StudyID"):
        assert keyword in IDENTIFIER_KEYWORDS and is_identifier(keyword)
    assert not is_identifier("Modality") and not is_identifier("PixelSpacing")


def test_identifier_values_give_names_and_their_parts():
    values = identifier_values({**PATIENT, "PatientSex": "M", "OtherPatientIDsSequence": [{"PatientID": "X-77"}]})
    assert {"Doe^John", "Doe", "John", "MRN-448812", "X-77"} == set(values)  # "M" is too short to search for
    assert scrub_text("john.doe@x, Doe-like, doe", values) == "[withheld].[withheld]@x, [withheld]-like, [withheld]"
    assert scrub_text("nothing here", []) == "nothing here"


# -- what a record names -------------------------------------------------------------------
def make_model_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "x"}')
    (folder / "model.safetensors").write_bytes(os.urandom(3000))
    (folder / "sub" / "tokenizer.json").write_text("{}")
    (folder / ".cache").mkdir()
    (folder / ".cache" / "download.lock").write_text("changes without the model changing")
    (folder / ".hidden").write_text("x")
    return folder


def test_model_folder_hash_is_the_sha256_of_its_sha256sum_listing(tmp_path):
    folder = make_model_folder(tmp_path / "model")
    digest = audit.model_folder_hash(folder)
    assert audit.model_files(folder) == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    listing = "".join(f"{hashlib.sha256((folder / f).read_bytes()).hexdigest()}  {f}\n"
                      for f in audit.model_files(folder))
    assert digest == hashlib.sha256(listing.encode()).hexdigest()
    (folder / ".cache" / "download.lock").write_text("changed")
    assert audit.model_folder_hash(folder) == digest
    time.sleep(0.01)
    (folder / "sub" / "tokenizer.json").write_text('{"changed": 1}')
    assert audit.model_folder_hash(folder) != digest


@pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "find", "sort", "xargs", "sha256sum")),
                    reason="needs coreutils")
def test_model_folder_hash_by_hand_as_docs_audit_says(tmp_path):
    folder = make_model_folder(tmp_path / "model")
    (tmp_path / "blob").write_bytes(b"weights in a cache")
    (folder / "linked.bin").symlink_to(tmp_path / "blob")  # a Hugging Face cache links to its blobs
    command = ("find -L . -type f ! -path '*/.*' | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum "
               "| sha256sum")
    by_hand = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True, check=True)
    assert by_hand.stdout.split()[0] == audit.model_folder_hash(folder)


def test_model_folder_hash_keeps_file_digests_in_a_cache_file(tmp_path, monkeypatch):
    folder = make_model_folder(tmp_path / "model")
    cache = tmp_path / "cache" / "digests.json"
    digest = audit.model_folder_hash(folder, cache_file=cache)
    assert len(json.loads(cache.read_text())) == 3
    audit._DIGESTS.clear()
    monkeypatch.setattr(audit, "file_sha256", lambda path: pytest.fail(f"{path} was read again"))
    assert audit.model_folder_hash(folder, cache_file=cache) == digest
    cache.write_text("damaged")
    monkeypatch.undo()
    assert audit.model_folder_hash(folder, cache_file=cache) == digest


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path):
    image = tmp_path / "scan.png"
    image.write_bytes(b"\x89PNG not really")
    assert audit.file_sha256(image) == hashlib.sha256(image.read_bytes()).hexdigest()
    with pytest.raises(InputError, match="does not exist"):
        audit.file_sha256(tmp_path / "missing.png")
    with pytest.raises(InputError, match="folder"):
        audit.model_folder_hash(tmp_path / "missing")


def test_versions_of_the_app_and_its_plugins(tmp_path):
    from lvlm_studio.core.plugin.registry import FIRST_PARTY, PluginStatus

    assert audit.app_version() not in ("", None)
    installed = audit.plugin_versions()
    assert set(FIRST_PARTY) <= set(installed)

    class Registry:
        status = [PluginStatus("lvlm_explainers", "built-in", "loaded"),
                  PluginStatus("acme", "entry point (acme-lvlm 2.3)", "loaded"),
                  PluginStatus("broken", "entry point (broken 1.0)", "failed", "ImportError")]

    assert audit.plugin_versions(Registry()) == {"lvlm_explainers": f"lvlm-studio {audit.app_version()}",
                                                 "acme": "acme-lvlm 2.3"}
    record = AuditLog(tmp_path / "a.jsonl").append(entry(app=None, plugins=None))
    assert record["app"] == audit.app_version() and record["plugins"] == installed


# -- the command ---------------------------------------------------------------------------
def test_cli_verify_an_intact_log(capsys, tmp_path):
    path = make_log(tmp_path, 3)
    outcome = run_cli(capsys, "audit", "verify", path)
    assert outcome.code == 0, outcome.err
    assert outcome.out.splitlines() == [f"{path}: 3 records, chain intact", f"head: {verify(path).head}"]
    assert run_cli(capsys, "audit", "verify", path, "--head", verify(path).head).code == 0


@pytest.mark.parametrize("damage,words", [
    (lambda w: w[:1] + w[2:], ["record 2", "removed", "seq 2 missing"]),
    (lambda w: [w[1], w[0], *w[2:]], ["record 1", "reordered"]),
    (lambda w: [*w[:2], w[2].replace(b"note 3", b"note X")], ["record 3", "edited"]),
    (lambda w: [*w[:2], w[2][:-9]], ["record 3", "incomplete", "not an edit"]),
])
def test_cli_verify_names_the_first_bad_record(capsys, tmp_path, damage, words):
    path = make_log(tmp_path, 3)
    write_lines(path, damage(lines(path)))
    outcome = run_cli(capsys, "audit", "verify", path)
    assert outcome.code == 1 and outcome.err == ""
    [line] = outcome.out.splitlines()
    assert line.startswith(f"{path}: ")
    for word in words:
        assert word in line


def test_cli_show_prints_a_table_and_filters_by_case(capsys, tmp_path):
    path = make_log(tmp_path, 3)
    outcome = run_cli(capsys, "audit", "show", path, "--case", "case-002")
    assert outcome.code == 0
    table = outcome.out.splitlines()
    assert table[0].split()[:5] == ["seq", "time", "reviewer", "case", "decision"]
    assert len(table) == 3 and "case-002" in table[1] and "note 2" in table[1]
    assert table[2] == f"{path}: 3 records, chain intact"
    write_lines(path, lines(path)[1:])
    outcome = run_cli(capsys, "audit", "show", path)
    assert outcome.code == 1 and len(outcome.out.splitlines()) == 3 and "removed" in outcome.err


def test_cli_recover(capsys, tmp_path):
    path = make_log(tmp_path, 3)
    path.write_bytes(path.read_bytes()[:-5])
    outcome = run_cli(capsys, "audit", "recover", path)
    assert outcome.code == 0 and "moved to" in outcome.out and outcome.out.endswith("2 records, chain intact\n")


# -- hostile ---------------------------------------------------------------------------------
@pytest.mark.hostile("audit")
@pytest.mark.parametrize("action", ["verify", "show", "recover"])
def test_a_missing_log_is_an_input_error(capsys, tmp_path, action):
    outcome = run_cli(capsys, "audit", action, tmp_path / "nope.jsonl")
    assert_refused(outcome, 2, "nope.jsonl", "does not exist")


@pytest.mark.hostile("audit")
def test_a_head_that_is_not_a_hash_is_an_input_error(capsys, tmp_path):
    path = make_log(tmp_path, 1)
    assert_refused(run_cli(capsys, "audit", "verify", path, "--head", "abc123"), 2, "head", "SHA-256")


@pytest.mark.hostile("audit")
def test_a_folder_given_as_the_log_is_an_input_error(capsys, tmp_path):
    assert_refused(run_cli(capsys, "audit", "verify", tmp_path), 2, "folder")


@pytest.mark.hostile("audit")
@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_log_is_an_input_error(capsys, tmp_path):
    path = make_log(tmp_path, 1)
    path.chmod(0)
    assert_refused(run_cli(capsys, "audit", "verify", path), 2, "audit.jsonl", "permission")


@pytest.mark.hostile("audit")
@pytest.mark.parametrize("content,words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", ["record 1", "not a JSON record"]),
    (b"[1, 2, 3]\n", ["record 1", "not a JSON object"]),
    (b'{"format": 1}\n', ["record 1", "no field"]),
    (b"x" * (audit.MAX_LINE + 10), ["record 1", "longer than"]),
])
def test_a_file_that_is_not_an_audit_log_is_named_not_trusted(capsys, tmp_path, content, words):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(content)
    outcome = run_cli(capsys, "audit", "verify", path)
    assert outcome.code == 1 and "Traceback" not in outcome.out + outcome.err
    [line] = outcome.out.splitlines()
    for word in words:
        assert word in line
    with pytest.raises(InputError, match="nothing is added"):
        AuditLog(path)


@pytest.mark.hostile("filesystem")
def test_a_full_disk_while_appending_leaves_the_log_as_it_was(tmp_path, monkeypatch):
    import errno

    path = make_log(tmp_path, 2)
    before = path.read_bytes()
    log = AuditLog(path)
    real_write = os.write

    def half_then_full(descriptor, data):
        if len(data) > 100:
            real_write(descriptor, data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(descriptor, data)

    monkeypatch.setattr(audit.os, "write", half_then_full)
    with pytest.raises(InputError, match="no space left"):
        log.append(entry())
    monkeypatch.undo()
    assert path.read_bytes() == before and verify(path).ok
    assert log.append(entry())["seq"] == 3 and verify(path).records == 3
