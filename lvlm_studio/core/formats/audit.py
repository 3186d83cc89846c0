"""The audit trail of clinical review: an append-only JSON Lines file in which each record signs the one before it.

One line per decision about one case: who reviewed it, when (UTC), which image and which model
(their SHA-256), which versions of LVLM Studio and its plugins, what the model answered, its scores
and the thresholds they were held to, the decision ("pending", "accepted", "overridden" or
"deferred") and the reviewer's comment. Each line carries the SHA-256 of the line before it
(``prev``) and of its own content (``hash``), so an edited, removed, reordered or forged record is
found by ``verify``; docs/AUDIT.md says how to check a log by hand with ``sha256sum``.

Writing: each record is one ``write`` to a file opened with ``O_APPEND``, under an exclusive
``flock`` (two processes never interleave lines), followed by ``fsync`` before ``append`` returns,
so a record whose ``append`` returned survives ``kill -9`` and a power cut. A crash during the write
can leave an incomplete last line: ``verify`` reports it as such ("torn"), not as tampering, and
``recover`` moves it aside. A log that does not verify is never appended to.

Patient data: the record has a fixed set of fields and no free one. The case id is whatever the
review's manifest gives and must not be a patient identifier (give a study or case number); an
append is refused when the case id contains one of the image's identifiers, and the answer and
comment have them replaced by "[withheld]" (``lvlm_studio.core.io.identifiers``).

No Qt: the CLI (``lvlm-studio audit verify``), the headless review and the app use the same code.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import reporting, write_bytes, write_text
from lvlm_studio.core.io.identifiers import mentions, scrub_text
from lvlm_studio.core.io.records import package_version

try:
    import fcntl
except ImportError:  # not POSIX: appends from one process at a time only (docs/AUDIT.md)
    fcntl = None  # type: ignore[assignment]

FORMAT = 1
#: The ``prev`` of the first record: no line before it.
GENESIS = "0" * 64
DECISIONS = ("pending", "accepted", "overridden", "deferred")
#: Every record has exactly these fields, in this order (``hash`` last): no free field, so nothing else gets in.
FIELDS = ("format", "seq", "prev", "time", "reviewer", "case", "image", "model", "app", "plugins",
          "answer", "scores", "thresholds", "decision", "comment", "hash")
#: A line longer than this is not one of ours; reading stops there instead of filling memory.
MAX_LINE = 1 << 20
MAX_NAME = 200  # reviewer, case id, a score's or plugin's name
MAX_TEXT = 100_000  # answer, comment

_HEX = re.compile(r"^[0-9a-f]{64}$")
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: How every line ends: the hash of everything before it, as the last field.
_HASH_TAIL = re.compile(rb',"hash":"([0-9a-f]{64})"\}\n$')


# -- what a caller gives --------------------------------------------------------------------------
@dataclass(frozen=True)
class AuditEntry:
    """One decision to record. ``image`` and ``model`` are SHA-256 hex digests (``file_sha256``,
    ``model_folder_hash``); ``app`` and ``plugins`` default to what is installed (``app_version``,
    ``plugin_versions``). ``case`` must not be a patient identifier."""

    reviewer: str
    case: str
    image: str
    model: str
    answer: str
    decision: str
    scores: Mapping[str, float | None] = field(default_factory=dict)
    thresholds: Mapping[str, float | None] = field(default_factory=dict)
    comment: str = ""
    app: str | None = None
    plugins: Mapping[str, str] | None = None


# -- what verify finds ----------------------------------------------------------------------------
@dataclass
class VerifyResult:
    """The outcome of ``verify``. ``problem`` is "" when the chain is intact, else one of "edited"
    (a record's content or the chain's links do not match), "removed" (a seq gap, or the record
    ``head`` named is gone), "reordered" (a seq out of place or repeated), "damaged" (a line that
    is not a record) or "torn" (an incomplete last line: a write cut off by a crash or a full disk,
    not an edit). ``record`` is the 1-based line number of the first bad record; ``records`` how
    many records before it verified; ``head`` the SHA-256 of the last of them (the next ``prev``)."""

    path: Path
    records: int
    head: str
    problem: str = ""
    record: int | None = None
    message: str = ""
    size: int = 0  # bytes of the verified records
    last_start: int = 0  # where the last verified record begins

    @property
    def ok(self) -> bool:
        return not self.problem

    @property
    def tampered(self) -> bool:
        """A problem that a crash does not make: the log was changed after it was written."""
        return self.problem not in ("", "torn")

    def summary(self) -> str:
        """One line: "N records, chain intact" or what is wrong with which record."""
        if self.ok:
            return f"{_count(self.records)}, chain intact"
        return self.message


def _count(n: int) -> str:
    return f"{n} record{'' if n == 1 else 's'}"


class _Problem(Exception):
    def __init__(self, problem: str, message: str):
        super().__init__(message)
        self.problem = problem
        self.message = message


# -- the chain --------------------------------------------------------------------------------------
def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _line(fields: dict[str, Any]) -> bytes:
    """The bytes of one record: compact JSON in ``FIELDS`` order, UTF-8, ending with its own hash and a newline."""
    body = json.dumps(fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return body[:-1] + b',"hash":"' + sha256_hex(body).encode("ascii") + b'"}\n'


def _content_hash(line: bytes) -> tuple[str, str] | None:
    """(the hash a line states, the hash of its content) or None when it does not end like a record."""
    found = _HASH_TAIL.search(line)
    if found is None:
        return None
    return found.group(1).decode("ascii"), sha256_hex(line[:found.start()] + b"}")


@dataclass
class _Chain:
    """Where a walk along the log stands: records verified, the hash of the last line, byte offsets."""

    count: int = 0
    head: str = GENESIS
    size: int = 0
    last_start: int = 0

    def check(self, line: bytes, later_seqs: Iterator[int]) -> None:
        """Raise ``_Problem`` unless ``line`` is the next record; ``later_seqs`` are the seqs of the lines after it
        (read only when a seq is out of place, to tell a removed record from a moved one)."""
        number = self.count + 1
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise _Problem("damaged", f"record {number} is not a JSON record ({_short(exc)})") from None
        if not isinstance(record, dict):
            raise _Problem("damaged", f"record {number} is not a JSON object")
        wrong = _schema_problem(record)
        if wrong:
            raise _Problem("edited", f"record {number} was edited: {wrong}")
        hashes = _content_hash(line)
        if hashes is None or hashes[0] != hashes[1]:
            raise _Problem("edited", f"record {number} was edited: its content does not match its hash")
        seq, expected = record["seq"], self.count + 1
        if seq > expected:
            if any(s == expected for s in later_seqs):
                raise _Problem("reordered", f"records were reordered: record {number} holds seq {seq}, "
                                            f"and seq {expected} comes later")
            missing = f"seq {expected}" if seq == expected + 1 else f"seqs {expected} to {seq - 1}"
            raise _Problem("removed", f"records were removed: {missing} missing before record {number}")
        if seq < expected:
            raise _Problem("reordered", f"records were reordered or copied: record {number} holds seq {seq}, "
                                        f"which came before")
        if record["prev"] != self.head:
            before = f"record {number - 1}" if number > 1 else "the start of the log"
            raise _Problem("edited", f"hash chain broken at record {number}: its prev is not the hash of {before} "
                                     f"({before} was edited, or record {number} was forged)")

    def advance(self, line: bytes) -> None:
        self.count += 1
        self.head = sha256_hex(line)
        self.last_start = self.size
        self.size += len(line)


def _schema_problem(record: dict[str, Any]) -> str:
    """What is wrong with the fields of a record, or ""."""
    for name in record:
        if name not in FIELDS:
            return f"it has an unexpected field {_short(name)!r}"
    for name in FIELDS:
        if name not in record:
            return f"it has no field {name!r}"
    if list(record) != list(FIELDS):
        return "its fields are out of order"
    checks = {
        "format": lambda v: v == FORMAT and type(v) is int,
        "seq": lambda v: type(v) is int and v >= 1,
        "prev": _is_hex, "image": _is_hex, "model": _is_hex, "hash": _is_hex,
        "time": lambda v: isinstance(v, str) and bool(_TIME.match(v)),
        "reviewer": lambda v: isinstance(v, str) and bool(v.strip()),
        "case": lambda v: isinstance(v, str) and bool(v.strip()),
        "app": lambda v: isinstance(v, str),
        "plugins": lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "answer": lambda v: isinstance(v, str),
        "scores": _is_numbers, "thresholds": _is_numbers,
        "decision": lambda v: v in DECISIONS,
        "comment": lambda v: isinstance(v, str),
    }
    for name, check in checks.items():
        if not check(record[name]):
            return f"its {name} is {_short(record[name])}"
    return ""


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and bool(_HEX.match(value))


def _is_numbers(value: Any) -> bool:
    return isinstance(value, dict) and all(
        v is None or (type(v) in (int, float) and math.isfinite(v)) for v in value.values())


def _short(value: Any, limit: int = 60) -> str:
    text = str(value) if isinstance(value, (str, Exception)) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- verifying -----------------------------------------------------------------------------------
def verify(path: str | Path, head: str | None = None) -> VerifyResult:
    """Walk the whole log and report the first record that is not where, or what, it was written.

    ``head``: a hash that ``verify`` reported earlier (kept somewhere else): the log must still
    contain that record, which catches records cut off its end, or a log rewritten from scratch,
    that the chain alone cannot see. A missing or unreadable file is an ``InputError``."""
    path = Path(path)
    if head is not None and not _is_hex(head.strip().lower()):
        raise InputError(f"head {_short(head)!r} is not a SHA-256 hex digest.",
                         "Give the 64 hex digits that an earlier verify printed after \"head:\".")
    with _open_log(path, "rb") as handle:
        _lock(handle, exclusive=False)
        result = _walk(handle, path, _Chain(), head)
    return result


def _walk(handle: IO[bytes], path: Path, chain: _Chain, head: str | None = None) -> VerifyResult:
    """Check the lines from the handle's position on, continuing ``chain``."""
    heads = {chain.head} if head is not None else set()
    while True:
        line = handle.readline(MAX_LINE + 1)
        if not line:
            break
        number = chain.count + 1
        if not line.endswith(b"\n"):
            if len(line) > MAX_LINE:
                return _bad(path, chain, "damaged", f"record {number} is longer than {MAX_LINE} bytes: "
                                                    f"not a line of an audit log")
            return _bad(path, chain, "torn", f"the last line (record {number}) is incomplete: a write was cut off "
                                             f"by a crash or a full disk, not an edit; the {_count(chain.count)} "
                                             f"before it are intact")
        try:
            chain.check(line, _later_seqs(handle))
        except _Problem as problem:
            return _bad(path, chain, problem.problem, problem.message)
        chain.advance(line)
        if head is not None:
            heads.add(chain.head)
    result = VerifyResult(path, chain.count, chain.head, size=chain.size, last_start=chain.last_start)
    if head is not None and head.strip().lower() not in heads:
        result.problem, result.record = "removed", chain.count
        result.message = (f"the record with hash {head.strip()[:12]}... is not in the log: records were cut off "
                          f"its end, or it was rewritten ({_count(chain.count)} verify among themselves)")
    return result


def _bad(path: Path, chain: _Chain, problem: str, message: str) -> VerifyResult:
    return VerifyResult(path, chain.count, chain.head, problem, chain.count + 1, message, chain.size, chain.last_start)


def _later_seqs(handle: IO[bytes]) -> Iterator[int]:
    """The seqs of the lines after the handle's position (a generator: read only if asked)."""
    while True:
        line = handle.readline(MAX_LINE + 1)
        if not line:
            return
        try:
            seq = json.loads(line).get("seq")
        except (ValueError, AttributeError):
            continue
        if type(seq) is int:
            yield seq


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a log that parse as JSON objects, in file order, whether or not the chain is intact
    (for showing; ``verify`` says whether to trust them). An incomplete last line is left out."""
    records = []
    with _open_log(Path(path), "rb") as handle:
        _lock(handle, exclusive=False)
        while True:
            line = handle.readline(MAX_LINE + 1)
            if not line.endswith(b"\n"):
                break
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


@contextlib.contextmanager
def _open_log(path: Path, mode: str = "rb") -> Iterator[IO[bytes]]:
    """The log opened (buffered) in ``mode``, or an ``InputError`` that names it and says why not."""
    if not path.exists():
        raise InputError(f"audit log {path} does not exist.", "Check the path.")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an audit log.", "Give the .jsonl file of the audit trail.")
    try:
        handle = open(path, mode)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"audit log {path} cannot be {'read' if mode == 'rb' else 'opened for writing'}: "
                         f"{exc.strerror or exc}.", "Check its permissions.") from None
    with handle:
        yield handle


def _lock(handle: IO[bytes] | int, exclusive: bool) -> None:
    """Hold a lock on the log until the file is closed: shared to read, exclusive to append."""
    if fcntl is not None:
        fcntl.flock(handle if isinstance(handle, int) else handle.fileno(),
                    fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)


# -- appending ------------------------------------------------------------------------------------
class AuditLog:
    """An audit log opened for appending. Opening creates the file (and makes its name durable) or
    verifies the whole of an existing one, refusing a log that does not verify: the evidence is kept
    as it is, and nothing is added to it. Other processes may append to the same file meanwhile;
    what they added is verified before each append."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            _create(self.path)
        result = verify(self.path)
        if not result.ok:
            raise _refusal(self.path, result)
        self._chain = _Chain(result.records, result.head, result.size, result.last_start)

    @property
    def records(self) -> int:
        """How many records the log holds (as of the last open or append)."""
        return self._chain.count

    @property
    def head(self) -> str:
        """The SHA-256 of the last record's line (the next record's ``prev``): keep it elsewhere to prove later
        that nothing was cut off the end (``verify(path, head=...)``)."""
        return self._chain.head

    def append(self, entry: AuditEntry, identifiers: Iterable[str] = ()) -> dict[str, Any]:
        """Write one record and return it once it is on disk (fsynced).

        ``identifiers``: the texts that identify this image's patient (``identifier_values`` of its
        metadata). A case id that contains one is refused; in the answer and comment they become
        "[withheld]". A bad field is an ``InputError``, and nothing is written."""
        identifiers = list(identifiers)
        fields = _fields(entry, identifiers)
        with reporting(self.path):
            try:
                descriptor = os.open(self.path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                raise InputError(f"audit log {self.path} is gone: it was deleted or moved after it was opened.",
                                 "Find out who removed it; start a new log only once it is accounted for.") from None
            with os.fdopen(descriptor, "r+b") as handle:  # read through the buffer, written with os.write
                _lock(descriptor, exclusive=True)
                self._catch_up(handle)
                line = _line({"format": FORMAT, "seq": self._chain.count + 1, "prev": self._chain.head,
                              "time": _utc_now(), **fields})
                if len(line) > MAX_LINE:
                    raise InputError(f"the record is {len(line)} bytes; an audit record holds at most {MAX_LINE}.",
                                     "Shorten the comment or the answer.")
                _write_all(descriptor, line, self._chain.size)
                os.fsync(descriptor)
        self._chain.advance(line)
        return json.loads(line)

    def _catch_up(self, handle: IO[bytes]) -> None:
        """Under the lock: check that the log still ends with the record we know, then verify what other
        processes appended since."""
        size = os.fstat(handle.fileno()).st_size
        chain = self._chain
        if size < chain.size:
            raise InputError(f"audit log {self.path} shrank since it was opened: records were removed or edited.",
                             "Keep the file as evidence; nothing was appended. Start a new log.")
        handle.seek(chain.last_start)
        last = handle.read(chain.size - chain.last_start)
        if chain.count and sha256_hex(last) != chain.head:
            raise InputError(f"audit log {self.path}: record {chain.count} changed since it was opened.",
                             "Keep the file as evidence; nothing was appended. Start a new log.")
        if size > chain.size:
            walked = _Chain(chain.count, chain.head, chain.size, chain.last_start)
            result = _walk(handle, self.path, walked)
            if not result.ok:
                raise _refusal(self.path, result)
            self._chain = walked


def _refusal(path: Path, result: VerifyResult) -> InputError:
    if result.problem == "torn":
        return InputError(f"audit log {path} does not verify: {result.message}.",
                          f"Run `lvlm-studio audit recover {path}` to move the incomplete line aside, then go on.")
    return InputError(f"audit log {path} does not verify, so nothing is added to it: {result.message}.",
                      "Keep the file as evidence and start a new log.")


def _create(path: Path) -> None:
    """Create an empty log, and fsync its folder so that the file's name survives a power cut."""
    with reporting(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666))
        except FileExistsError:  # another process created it first: fine
            return
        try:
            folder = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(folder)
        except OSError:  # some file systems cannot fsync a folder
            pass
        finally:
            os.close(folder)


def _write_all(descriptor: int, line: bytes, size_before: int) -> None:
    """One ``write`` of the whole line (short writes continued); on a failure (disk full) the partial line
    is cut off again, so the log stays as it was."""
    done = 0
    try:
        while done < len(line):
            done += os.write(descriptor, line[done:])
    except BaseException:
        with contextlib.suppress(OSError):
            os.ftruncate(descriptor, size_before)
            os.fsync(descriptor)
        raise


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- checking what goes in -----------------------------------------------------------------------
def _fields(entry: AuditEntry, identifiers: list[str]) -> dict[str, Any]:
    """The record's fields after ``seq``, ``prev`` and ``time``, checked; an ``InputError`` names the first bad one."""
    reviewer = _name("reviewer", entry.reviewer)
    case = _name("case id", entry.case)
    if mentions(case, identifiers):
        raise InputError(f"case id {case!r} contains a patient identifier, which never goes into the audit trail.",
                         "Give each case an id that is not a patient's name or number (e.g. a study number) "
                         "in the review's manifest.")
    for name, value in (("image", entry.image), ("model", entry.model)):
        if not _is_hex(value):
            raise InputError(f"the {name} hash {_short(value)!r} is not a SHA-256 hex digest.",
                             f"Compute it with {'file_sha256' if name == 'image' else 'model_folder_hash'}.")
    if entry.decision not in DECISIONS:
        raise InputError(f"decision {_short(entry.decision)!r} is not one of {', '.join(DECISIONS)}.",
                         "Record one of them.")
    plugins = plugin_versions() if entry.plugins is None else entry.plugins
    return {
        "reviewer": reviewer,
        "case": case,
        "image": entry.image,
        "model": entry.model,
        "app": _text("app version", app_version() if entry.app is None else entry.app, MAX_NAME),
        "plugins": {_name("plugin name", k): _text("plugin version", v, MAX_NAME) for k, v in plugins.items()},
        "answer": scrub_text(_text("answer", entry.answer, MAX_TEXT), identifiers),
        "scores": _numbers("score", entry.scores),
        "thresholds": _numbers("threshold", entry.thresholds),
        "decision": entry.decision,
        "comment": scrub_text(_text("comment", entry.comment, MAX_TEXT), identifiers),
    }


def _text(what: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise InputError(f"the {what} is a {type(value).__name__}, not text.", "Give it as text.")
    if len(value) > limit:
        raise InputError(f"the {what} has {len(value)} characters; at most {limit} go into an audit record.",
                         "Shorten it.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"the {what} holds characters that are not Unicode text (lone surrogates).",
                         "Give it as plain text.") from None
    return value


def _name(what: str, value: Any) -> str:
    text = _text(what, value, MAX_NAME)
    if not text.strip() or _CONTROL.search(text):
        raise InputError(f"the {what} {_short(text)!r} is empty or holds control characters.",
                         f"Give a {what} on one line.")
    return text


def _numbers(what: str, values: Mapping[str, Any]) -> dict[str, float | None]:
    if not isinstance(values, Mapping):
        raise InputError(f"the {what}s are a {type(values).__name__}, not names with numbers.",
                         f"Give the {what}s as a mapping of name to number.")
    checked: dict[str, float | None] = {}
    for name, value in values.items():
        name = _name(f"{what} name", name)
        if value is None:
            checked[name] = None
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if isinstance(value, (bool, str)) or not math.isfinite(number):
            raise InputError(f"{what} {name!r} is {_short(value)!r}, not a finite number.",
                             "Record a number, or None when there is none.")
        checked[name] = number
    return checked


# -- recovering from a crash ------------------------------------------------------------------
def recover(path: str | Path) -> tuple[VerifyResult, Path | None]:
    """Cut an incomplete last line (a crash during a write) off the log, keeping its bytes in a file beside it
    (``LOG.torn-<UTC time>``). Returns the log's verification after, and that file (None when there was
    nothing to cut). A log that does not verify for any other reason is left as it is: see the result."""
    path = Path(path)
    with _open_log(path, "r+b") as handle, reporting(path):
        _lock(handle, exclusive=True)
        result = _walk(handle, path, _Chain())
        if result.problem != "torn":
            return result, None
        handle.seek(result.size)
        torn = handle.read()
        stamp = _utc_now().replace(":", "").replace("-", "")
        kept = write_bytes(path.with_name(f"{path.name}.torn-{stamp}"), torn)
        handle.truncate(result.size)
        handle.flush()
        os.fsync(handle.fileno())
        handle.seek(0)
        return _walk(handle, path, _Chain()), kept


# -- what a record names: image, model, versions ------------------------------------------------
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (an image's hash in the audit trail), read in chunks. Remembered for this
    process by (path, modification time, size, inode), so an unchanged file is read once."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist.", "Check the path.") from None
    if path.is_dir():
        raise InputError(f"{path} is a folder, where a file is expected.", "Give a file.")
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as file:
                for chunk in iter(lambda: file.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            raise InputError(f"{path} cannot be read: {exc.strerror or exc}.", "Check its permissions.") from None
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def model_files(folder: str | Path) -> list[str]:
    """The files of a model folder that its hash covers: relative paths with "/", sorted (by code point, which is
    the byte order of ``LC_ALL=C sort``). Links are followed (a Hugging Face cache links to its blobs);
    hidden files and folders (".cache", ".git") are left out, as they change without the model changing."""
    folder = Path(folder)
    found: list[str] = []
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            full = Path(root, name)
            if not name.startswith(".") and full.is_file():
                found.append(full.relative_to(folder).as_posix())
    return sorted(found)


def model_folder_hash(folder: str | Path, cache_file: str | Path | None = None) -> str:
    """The SHA-256 of a model folder: of the ``sha256sum`` listing of its files ("DIGEST  PATH" lines, sorted by
    path), so ``find -L . -type f ! -path '*/.*' | sed 's|^\\./||' | LC_ALL=C sort | xargs -d '\\n' sha256sum |
    sha256sum`` in the folder gives it too (docs/AUDIT.md). Each file's digest is remembered by (path, time,
    size, inode); ``cache_file``, a JSON file, keeps them between runs, so a folder of large weights
    is read once."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"model folder {folder} does not exist or is not a folder.", "Check the path.")
    cached = _read_cache(cache_file)
    listing = []
    for relative in model_files(folder):
        full = folder / relative
        stat = full.stat()
        key = f"{full.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{stat.st_ino}"
        if key not in cached:
            cached[key] = file_sha256(full)
        listing.append(f"{cached[key]}  {relative}\n")
    if not listing:
        raise InputError(f"model folder {folder} holds no files.", "Check the path.")
    if cache_file is not None:
        write_text(cache_file, json.dumps(cached, indent=0, sort_keys=True))
    return sha256_hex("".join(listing).encode("utf-8"))


def _read_cache(cache_file: str | Path | None) -> dict[str, str]:
    if cache_file is None or not Path(cache_file).is_file():
        return {}
    try:
        cached = json.loads(Path(cache_file).read_bytes())
    except (OSError, ValueError):  # a damaged cache only costs a new reading
        return {}
    if not isinstance(cached, dict):
        return {}
    return {k: v for k, v in cached.items() if isinstance(k, str) and _is_hex(v)}


def app_version() -> str:
    """LVLM Studio's installed version."""
    return package_version("lvlm-studio")


def plugin_versions(registry: Any = None) -> dict[str, str]:
    """Plugin name -> "distribution version". With a registry (``create_registry()``): the plugins it
    loaded, as ``lvlm-studio plugins`` lists them. Without one: every plugin installed, read from the
    packages' metadata without loading any (first-party plugins are LVLM Studio's own version)."""
    own = f"lvlm-studio {app_version()}"
    if registry is not None:
        versions = {}
        for status in registry.status:
            if status.state == "loaded":
                found = re.fullmatch(r"entry point \((.*)\)", status.origin)
                versions[status.name] = found.group(1) if found else own
        return versions
    return dict(_installed_plugins(own))


@functools.lru_cache(maxsize=4)
def _installed_plugins(own: str) -> tuple[tuple[str, str], ...]:
    """(name, "distribution version") of the first-party plugins and every entry point, read once per process."""
    from importlib.metadata import entry_points

    from lvlm_studio.core.plugin.registry import ENTRY_POINT_GROUP, FIRST_PARTY

    versions = dict.fromkeys(FIRST_PARTY, own)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        versions.setdefault(ep.name, f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution")
    return tuple(versions.items())
