"""Writing results so that a failure never leaves half a file or loses the previous result.

Every file LVLM Studio writes goes to a temporary file beside its target, is flushed to disk
(fsync) and then renamed over the target (``os.replace``, atomic on one file system): a full disk,
a crash or Ctrl-C leaves the previous file as it was and no temporary file behind. An output folder
is written the same way: a new folder beside ``--out`` that replaces it only when complete.

A folder is replaced only when LVLM Studio wrote it (it holds our ``run.json``). The working
folder, its ancestors, the home folder and ``/`` are never an output folder, and a non-empty
folder of the user's is left alone. File-system faults (disk full, read-only, permission denied,
a file where a folder belongs) become an ``InputError`` that names the path and says what to do.

No Qt: the CLI, the core and the app use the same functions.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.records import package_version

RUN_RECORD = "run.json"

_ADVICE = {
    errno.ENOSPC: ("there is no space left on the device to write {path}.", "Free some space, or write elsewhere."),
    errno.EDQUOT: ("the disk quota is exceeded writing {path}.", "Free some space, or write elsewhere."),
    errno.EROFS: ("{path} is on a read-only file system.", "Choose a location you can write to."),
    errno.EACCES: ("permission denied writing {path}.", "Choose a location you can write to, or fix its permissions."),
    errno.EPERM: ("permission denied writing {path}.", "Choose a location you can write to, or fix its permissions."),
    errno.EISDIR: ("{path} is a folder, where a file is expected.", "Give a file name."),
    errno.ENOTDIR: ("a part of {path} is a file, where a folder is expected.", "Check the path."),
    errno.ENAMETOOLONG: ("the name {path} is too long for the file system.", "Choose a shorter name."),
}


class FileError(InputError):
    """A file-system fault while writing ``path``: what the user reads, and the fault itself."""

    def __init__(self, error: OSError, path: str | Path):
        message, hint = _ADVICE.get(error.errno or 0, ("cannot write {path} ({reason}).",
                                                       "Check the path and the disk."))
        super().__init__(message.format(path=path, reason=error.strerror or error), hint)
        self.error = error
        self.path = Path(path)


#: safetensors (Rust) reports a failed write as ``SafetensorError("... I/O error: ... (os error 28)")``.
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


@contextmanager
def reporting(path: str | Path) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block (or a library's error that carries one's number)
    into ``FileError(..., path)``."""
    try:
        yield
    except OSError as exc:
        raise FileError(exc, path) from exc
    except Exception as exc:
        found = _RUST_OS_ERROR.search(str(exc))
        if found is None:
            raise
        code = int(found.group(1))
        raise FileError(OSError(code, os.strerror(code)), path) from exc


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable; some file systems cannot fsync a folder, which is no fault of the write."""
    try:
        _fsync(folder)
    except OSError:
        pass


def _sibling(path: Path, label: str) -> Path:
    """A hidden name beside ``path`` that keeps its suffix (PIL, numpy and matplotlib read the format from it)."""
    return path.with_name(f".{path.stem}.{label}-{secrets.token_hex(4)}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write (by name, for libraries that want one);
    afterwards it is fsynced and renamed over ``path``. On any failure it is removed and ``path`` is
    as before. The file is created with the umask's permissions."""
    path = Path(path)
    with reporting(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _sibling(path, "tmp")
        os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            yield temporary
            _fsync(temporary)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_record(folder: str | Path, record: dict[str, Any]) -> Path:
    """Write ``run.json`` into ``folder``; its "lvlm_studio" key marks the folder as ours, so a later
    ``--overwrite`` may replace it."""
    return write_text(Path(folder) / RUN_RECORD, json.dumps({"lvlm_studio": package_version("lvlm-studio"),
                                                             **record}, indent=2, allow_nan=False))


# -- checks before any work -----------------------------------------------------------------------
def read_run_record(folder: str | Path) -> dict[str, Any] | None:
    """The ``run.json`` that LVLM Studio wrote into ``folder``, or None when there is none of ours.
    A damaged one is refused: what it belonged to cannot be told."""
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is damaged ({exc}), so this folder cannot be reused.",
                         "Choose another --out, or delete the folder to start again.") from None
    # "lvlm_studio" marks every output; "settings_key" marks benchmark runs written before it did
    if isinstance(record, dict) and ("lvlm_studio" in record or "settings_key" in record):
        return record
    return None


def _protected(target: Path) -> str | None:
    """What ``target`` is when it must never be an output folder, else None."""
    cwd = Path.cwd().resolve()
    if target == Path(target.anchor):
        return "the root folder"
    if target == Path.home().resolve():
        return "the home folder"
    if target == cwd:
        return "the working folder"
    if cwd.is_relative_to(target):
        return "a folder that holds the working folder"
    return None


def check_writable(path: str | Path) -> None:
    """Refuse now, before a model loads, a location where nothing can be written: the nearest
    existing folder of ``path`` is probed with a temporary file that is removed at once."""
    path = Path(path)
    existing = path if path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    with reporting(path):
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass


def check_output_file(path: str | Path) -> Path:
    """``path`` as an output file: not a folder, in a location that is writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"{path} is a folder, where a file is expected.", "Give a file name.")
    check_writable(path)
    return path


def check_output_folder(out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """``out`` as an output folder, refused before any work unless it is new, empty, or ours to replace
    (``overwrite``) or to continue (``resume``). Never the working folder, its ancestors, home or /."""
    out = Path(out).expanduser()
    protected = _protected(out.resolve())
    if protected:
        raise InputError(f"--out {out} is {protected}; LVLM Studio will not write its output there.",
                         "Choose a new folder, e.g. --out results.")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder.", "Choose a new folder name.")
    with reporting(out):
        empty = not out.is_dir() or not any(out.iterdir())
    if not empty:
        if read_run_record(out) is None:
            raise InputError(f"{out} is not empty and was not written by LVLM Studio, so it is left alone.",
                             "Pick a new folder for --out, or empty this one.")
        if not (overwrite or resume):
            raise InputError(f"output folder {out} is not empty.", "Choose another --out or pass --overwrite.")
    check_writable(out)
    return out


# -- writing a folder ---------------------------------------------------------------------------
@contextmanager
def staged_folder(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """A new empty folder beside ``out`` for the block to fill; when the block ends it replaces ``out``
    (which is checked again, as it may have changed meanwhile). A failure or Ctrl-C anywhere
    leaves the previous ``out`` as it was. The folder gets the umask's permissions."""
    out = check_output_folder(out, overwrite)
    with reporting(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = _sibling(out, "new")
        staging.mkdir()
        try:
            try:
                yield staging
            except FileError as exc:  # name the file as the user will know it, not its staging copy
                if not exc.path.is_relative_to(staging):
                    raise
                raise FileError(exc.error, out / exc.path.relative_to(staging)) from exc
            for written in staging.rglob("*"):
                if written.is_file():
                    _fsync(written)
            check_output_folder(out, overwrite)
            _swap(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: Path, out: Path) -> None:
    """Put ``staging`` where ``out`` is: the old folder is moved aside first and removed last."""
    if not out.exists():
        os.rename(staging, out)
    else:
        previous = _sibling(out, "old")
        os.rename(out, previous)
        try:
            os.rename(staging, out)
        except BaseException:
            os.rename(previous, out)
            raise
        shutil.rmtree(previous, ignore_errors=True)
    _fsync_folder(out.parent)
